import type { Scenario } from './common.js';
import { dnsJournal } from './dnsJournal.js';
import { dns } from './dnsScenario.js';
import { engine } from './engine.js';
import { iperf } from './iperf.js';
import { natScale } from './natScale.js';
import { redis } from './redis.js';
import { rules } from './rules.js';
import { tcpThroughput } from './tcp.js';
import { tcpConnect } from './tcpConnect.js';
import { udp } from './udp.js';

export type { Scenario };

/** In the order `npm run bench` runs them. */
export const SCENARIOS: Scenario[] = [
  engine,
  tcpThroughput,
  iperf,
  tcpConnect,
  udp,
  dns,
  dnsJournal,
  natScale,
  redis,
  rules,
];
