/**
 * dns: (1) the in-process benchmark of bench/dns.ts (`benchDns()`); (2) dnsperf inside the client namespace against
 * the daemon's fake DNS on gateway:53 vs dnsmasq (and unbound when installed)
 * answering a local zone from the same namespace.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dnsmasqArgs } from '../../test/support/confs.js';
import { benchDns } from '../dns.js';
import { procCpuSecs } from '../lib/daemon.js';
import { type Ctx, need, sleep, Unavailable, waitListening, which } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import { dnsperf, VerifyError } from '../lib/tools.js';
import { bigFile, Topology } from '../lib/topology.js';
import { type Measure, MS, path, QPS, repeat, row, type Scenario, section, spec } from './common.js';
import { withDaemon } from './tcp.js';

const NAMES = 10_000;
const ZONE = 'bench.test';
const DNSMASQ_IP = '127.0.0.2';
const UNBOUND_IP = '127.0.0.3';
const LOCAL_ANSWER = '10.0.0.1';
/** dnsperf -q for the saturated QPS runs. */
const WINDOW = 500;
/** dnsperf -q (its default) for the latency comparison: a window no server here overflows. */
const SMALL_WINDOW = 100;

export const dns: Scenario = {
  name: 'dns',
  describe: 'fake DNS: dnsperf QPS vs dnsmasq (and unbound), plus bench/dns.ts benchDns()',
  async run(ctx: Ctx): Promise<Section[]> {
    return [await inProcess(ctx), await namespaced(ctx)];
  },
};

/** bench/dns.ts's benchDns(): FakeDns in this process vs dnsmasq on 127.0.0.1, answers checked there. */
async function inProcess(ctx: Ctx): Promise<Section> {
  const seconds = ctx.quick ? 2 : 10;
  const s: Section = {
    scenario: 'dns',
    title: `in-process FakeDns vs dnsmasq on 127.0.0.1, dnsperf ${seconds} s × ${ctx.reps} rounds (bench/dns.ts benchDns())`,
    rows: [],
    notes: [],
  };
  const t0 = Date.now();
  try {
    const res = await benchDns({ seconds, rounds: ctx.reps });
    s.rows.push(
      { id: 'dnsmasq', label: 'dnsmasq (median of rounds)', metric: 'QPS', unit: 'q/s', samples: [res.dnsmasq] },
      {
        id: 'fake',
        label: 'FakeDns in-process (median of rounds)',
        metric: 'QPS',
        unit: 'q/s',
        samples: [res.ours],
        compare: [{ to: 'dnsmasq', goal: 1 }],
      },
    );
    s.notes.push('n = 1 because benchDns() returns the median of its own rounds');
  } catch (e) {
    s.error = `benchDns() failed: ${(e as Error).message}`;
  }
  s.seconds = (Date.now() - t0) / 1000;
  return s;
}

async function namespaced(ctx: Ctx): Promise<Section> {
  const secs = ctx.quick ? 2 : 5;
  const lat = (w: number) => MS(`avg latency -q ${w}`);
  const lost = (w: number): Measure => ({ metric: `lost -q ${w}`, unit: '%', higherIsBetter: false });
  // The server's own CPU (every thread) per answered query at -q 500: what it leaves dnsperf on 2 CPUs.
  const cpu: Measure = { metric: `CPU per query -q ${WINDOW}`, unit: 'µs', higherIsBetter: false };
  const fake = 'fakeproxy fake DNS';
  const s = section(
    'dns',
    `dnsperf ${secs} s, ${NAMES} names in a local zone, from the same namespace`,
    spec('dnsmasq', 'dnsmasq --address=/bench.test/', QPS),
    spec('dnsmasq-lat', 'dnsmasq', lat(WINDOW)),
    spec('dnsmasq-lost', 'dnsmasq', lost(WINDOW)),
    spec('dnsmasq-lat2', 'dnsmasq', lat(SMALL_WINDOW)),
    spec('dnsmasq-lost2', 'dnsmasq', lost(SMALL_WINDOW)),
    spec('dnsmasq-cpu', 'dnsmasq', cpu),
    spec('unbound', 'unbound local-zone', QPS, { compare: [{ to: 'dnsmasq' }] }),
    spec('unbound-lat', 'unbound', lat(WINDOW)),
    spec('unbound-lat2', 'unbound', lat(SMALL_WINDOW)),
    spec('unbound-cpu', 'unbound', cpu),
    // Issue 12: ≥ 1.2× dnsmasq's QPS in the same run, average latency ≤ dnsmasq's.
    spec('fake', 'fakeproxy fake DNS gateway:53', QPS, { compare: [{ to: 'dnsmasq', goal: 1.2 }, { to: 'unbound' }] }),
    // No goal here: see the note on dnsmasq's lost queries.
    spec('fake-lat', fake, lat(WINDOW), { compare: [{ to: 'dnsmasq-lat' }] }),
    spec('fake-lost', fake, lost(WINDOW)),
    spec('fake-lat2', fake, lat(SMALL_WINDOW), { compare: [{ to: 'dnsmasq-lat2', goal: 1 }] }),
    spec('fake-lost2', fake, lost(SMALL_WINDOW)),
    spec('fake-cpu', fake, cpu, { compare: [{ to: 'dnsmasq-cpu' }] }),
  );
  need('dnsperf');
  const topo = await Topology.create(ctx, 'dns');
  try {
    topo.big = bigFile(ctx, 1024 * 1024);
    await topo.start('dnsmasq', 'origin');
    const qfile = join(ctx.tmp, 'dnsperf-queries.txt');
    writeFileSync(qfile, Array.from({ length: NAMES }, (_, i) => `n${i}.${ZONE} A\n`).join(''));
    const c = topo.client;
    const inFlightNotes: string[] = [];
    /** `cpuSecs`: the server's CPU seconds so far (every thread), for the `-cpu` row. */
    const measure = async (id: string, server: string, cpuSecs: () => number) => {
      await dnsperf(c, server, 53, qfile, ctx.quick ? 1 : 2); // warm-up (JIT, pool allocation of the names), untimed
      const rs = await repeat(ctx, async () => {
        const c0 = cpuSecs();
        const full = await dnsperf(c, server, 53, qfile, secs, 8, WINDOW);
        const usPerQuery = ((cpuSecs() - c0) * 1e6) / full.completed;
        if (!(usPerQuery > 0)) throw new VerifyError(`${id}: no CPU time measured for ${full.completed} answers`);
        return { full, usPerQuery, small: await dnsperf(c, server, 53, qfile, secs, 8, SMALL_WINDOW) };
      });
      row(s, `${id}-cpu`).samples = rs.map((r) => r.usPerQuery);
      row(s, id).samples = rs.map((r) => r.full.qps);
      row(s, `${id}-lat`).samples = rs.map((r) => r.full.avgMs);
      row(s, `${id}-lat2`).samples = rs.map((r) => r.small.avgMs);
      for (const [suffix, pick] of [
        ['lost', (r: (typeof rs)[number]) => r.full],
        ['lost2', (r: (typeof rs)[number]) => r.small],
      ] as const) {
        const lost = s.rows.find((r) => r.id === `${id}-${suffix}`);
        if (lost) lost.samples = rs.map((r) => pick(r).lostPct);
      }
      // Little's law: queries in flight on average = QPS × latency (dnsperf keeps at most -q of them out).
      const inFlight = rs.map((r) => (r.full.qps * r.full.avgMs) / 1000);
      inFlightNotes.push(`${id}: ${inFlight.map((n) => n.toFixed(0)).join(', ')} of ${WINDOW}`);
    };
    const digA = async (server: string, name: string): Promise<string> => {
      const r = await c.exec('dig', ['+short', '+time=2', '+tries=1', `@${server}`, name, 'A'], { timeoutMs: 5_000 });
      return r.stdout.trim();
    };

    await path(
      ctx,
      s,
      ['dnsmasq', 'dnsmasq-lat', 'dnsmasq-lost', 'dnsmasq-lat2', 'dnsmasq-lost2', 'dnsmasq-cpu'],
      'dns: dnsmasq',
      async () => {
        const dnsmasq = c.spawn(
          'dnsmasq',
          dnsmasqArgs(DNSMASQ_IP, [
            `--address=/${ZONE}/${LOCAL_ANSWER}`,
            `--pid-file=${join(ctx.tmp, 'dnsmasq-local.pid')}`,
          ]),
          { stdio: 'ignore' },
        );
        await waitListening(c, 'udp', DNSMASQ_IP, 53);
        const a = await digA(DNSMASQ_IP, `n1.${ZONE}`);
        if (a !== LOCAL_ANSWER) throw new VerifyError(`dnsmasq answered "${a}", expected ${LOCAL_ANSWER}`);
        await measure('dnsmasq', DNSMASQ_IP, () => procCpuSecs(dnsmasq.pid ?? -1));
      },
    );

    await path(ctx, s, ['unbound', 'unbound-lat', 'unbound-lat2', 'unbound-cpu'], 'dns: unbound', async () => {
      if (!which('unbound'))
        throw new Unavailable('unbound is not installed (Debian package unbound); optional baseline');
      const conf = join(ctx.tmp, 'unbound.conf');
      writeFileSync(
        conf,
        `server:
  interface: ${UNBOUND_IP}
  port: 53
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "${ctx.tmp}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 2
  do-ip6: no
  access-control: 0.0.0.0/0 allow
  local-zone: "${ZONE}." redirect
  local-data: "${ZONE}. 60 IN A ${LOCAL_ANSWER}"
remote-control:
  control-enable: no
`,
      );
      const unbound = c.spawn('unbound', ['-d', '-c', conf], { stdio: 'ignore' });
      await waitListening(c, 'udp', UNBOUND_IP, 53);
      const a = await digA(UNBOUND_IP, `n1.${ZONE}`);
      if (a !== LOCAL_ANSWER) throw new VerifyError(`unbound answered "${a}", expected ${LOCAL_ANSWER}`);
      await measure('unbound', UNBOUND_IP, () => procCpuSecs(unbound.pid ?? -1));
    });

    await path(ctx, s, ['fake', 'fake-lat', 'fake-lost', 'fake-lat2', 'fake-lost2', 'fake-cpu'], 'dns: fakeproxy', () =>
      withDaemon(topo, 'direct', async (d) => {
        // Every answer is a fake address in the range (not the gateway), stable across queries.
        for (const i of [0, 1, 4242]) {
          const a = await digA(d.gateway, `n${i}.${ZONE}`);
          if (!d.isFake(a)) throw new VerifyError(`fake DNS answered n${i}.${ZONE} with "${a}"`);
          await sleep(10);
          const again = await digA(d.gateway, `n${i}.${ZONE}`);
          if (again !== a) throw new VerifyError(`fake DNS answered n${i}.${ZONE} with ${a} then ${again}`);
        }
        const before = dnsCounters(await d.status(topo));
        await measure('fake', d.gateway, () => d.cpuSecs());
        const after = dnsCounters(await d.status(topo));
        const q = after.queries - before.queries;
        const f = after.fastAnswered - before.fastAnswered;
        if (!(q > 0)) throw new VerifyError(`fakeproxy status counted no DNS queries during the runs`);
        s.notes.push(
          `fakeproxy answered ${f} of the ${q} queries of its runs (${((100 * f) / q).toFixed(1)} %) on the native fast path (names already mapped, native/fake_answers.h), the rest in JavaScript`,
        );
      }),
    );
    s.notes.push(
      `dnsperf -c 8 -T 2 over UDP, each run ${secs} s with -q ${WINDOW} (QPS at saturation) then -q ${SMALL_WINDOW}; each server first answers n1.${ZONE} as expected (dig), and ≥ 99 % of dnsperf answers must be NOERROR`,
      `latency at -q ${WINDOW} is queueing, not service time: a closed loop keeps QPS × latency queries in flight (Little's law), per run ${inFlightNotes.join('; ')}. A query a server drops holds one of dnsperf's slots for its 2 s timeout, so a server that overflows its receive buffer (dnsmasq's default SO_RCVBUF: see dnsmasq lost) runs with a smaller window and shows a lower latency for it`,
      `the latency goal (issue 12: ≤ dnsmasq) is checked at -q ${SMALL_WINDOW} (dnsperf's default), where neither server should lose a query (see the lost rows): there the latency is the service path`,
      'dnsperf takes about one of the 2 CPUs, so every server here has roughly one core',
    );
    return s;
  } finally {
    await topo.destroy();
  }
}

/** The DNS query counters of `fakeproxy status --json` (see src/daemon.ts status()). */
function dnsCounters(status: Record<string, unknown>): { queries: number; fastAnswered: number } {
  const d = status.dns as Record<string, unknown> | null;
  const queries = Number(d?.queries);
  const fastAnswered = Number(d?.fastAnswered);
  if (!Number.isFinite(queries) || !Number.isFinite(fastAnswered))
    throw new VerifyError('fakeproxy status --json has no dns.queries/dns.fastAnswered');
  return { queries, fastAnswered };
}
