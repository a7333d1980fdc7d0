/**
 * tcp-connect: new connections per second and connect+first-byte latency with
 * 64 concurrent clients and one request per connection (ab without -k), to
 * /small (128 bytes) on the origin: straight over the veth vs through the TUN
 * (direct, and via dante). ab cannot speak SOCKS, so there is no "straight to
 * dante" row; the dante row is compared with the plain veth.
 */
import { join } from 'node:path';
import type { Ctx } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import { abRun } from '../lib/tools.js';
import { bigFile, ORIGIN_NAME, PORTS, Topology } from '../lib/topology.js';
import { path, repeat, row, rows, type Scenario } from './common.js';
import { withDaemon } from './tcp.js';

export const CONCURRENCY = 64;

export const tcpConnect: Scenario = {
  name: 'tcp-connect',
  describe: 'connections/s and p50/p99 latency, 64 concurrent, no keep-alive (ab)',
  async run(ctx: Ctx): Promise<Section[]> {
    const n = ctx.quick ? 2_000 : 20_000;
    const limit = ctx.quick ? 4 : 15;
    const s: Section = {
      scenario: 'tcp-connect',
      title: `ab -n ${n} -c ${CONCURRENCY} (at most ${limit} s), one connection per request, GET /small (128 B)`,
      notes: [],
      rows: rows(
        { id: 'direct', label: 'veth, no proxy', metric: 'rate', unit: 'conn/s' },
        { id: 'direct-p50', label: 'veth, no proxy', metric: 'p50', unit: 'ms', higherIsBetter: false },
        { id: 'direct-p99', label: 'veth, no proxy', metric: 'p99', unit: 'ms', higherIsBetter: false },
        {
          id: 'tun',
          label: 'TUN → fakeproxy direct',
          metric: 'rate',
          unit: 'conn/s',
          // Issue 11: new connections/s through the TUN ≥ 0.6× the plain veth.
          compare: [{ to: 'direct', goal: 0.6 }],
        },
        {
          id: 'tun-p50',
          label: 'TUN → fakeproxy direct',
          metric: 'p50',
          unit: 'ms',
          higherIsBetter: false,
          compare: [{ to: 'direct-p50' }],
        },
        {
          id: 'tun-p99',
          label: 'TUN → fakeproxy direct',
          metric: 'p99',
          unit: 'ms',
          higherIsBetter: false,
          compare: [{ to: 'direct-p99' }],
        },
        {
          id: 'tun-added-p99',
          label: 'TUN direct − veth',
          metric: 'added p99',
          unit: 'ms',
          higherIsBetter: false,
          // Issue 11: added p99 < 2 ms (each repetition's TUN p99 minus the veth p99 of the same index).
          goal: { value: 2, text: '< 2 ms' },
        },
        {
          id: 'tun-noctl',
          label: 'TUN → fakeproxy direct, --controller off',
          metric: 'rate',
          unit: 'conn/s',
          // Issue 14: what the controller API (on by default) costs the connection rate.
          compare: [{ to: 'tun' }],
        },
        {
          id: 'tun-noctl-p99',
          label: 'TUN → fakeproxy direct, --controller off',
          metric: 'p99',
          unit: 'ms',
          higherIsBetter: false,
          compare: [{ to: 'tun-p99' }],
        },
        {
          id: 'tun-dante',
          label: 'TUN → fakeproxy → dante',
          metric: 'rate',
          unit: 'conn/s',
          compare: [{ to: 'direct' }, { to: 'tun' }],
        },
        {
          id: 'tun-dante-p99',
          label: 'TUN → fakeproxy → dante',
          metric: 'p99',
          unit: 'ms',
          higherIsBetter: false,
          compare: [{ to: 'direct-p99' }],
        },
      ),
    };
    const topo = await Topology.create(ctx, 'conn');
    try {
      topo.big = bigFile(ctx, 1 * 1024 * 1024);
      await topo.start('dnsmasq', 'origin', 'dante');
      const csv = join(ctx.tmp, 'ab.csv');
      const fill = async (prefix: string, url: string) => {
        // One untimed warm-up pass of 1000 (page cache, ARP, daemon JIT, dante's preforked children;
        // up to 20 s: a proxy's slow start is not measured), then the timed repetitions.
        await abRun(topo.client, url, Math.min(1000, n), CONCURRENCY, csv, 20);
        const rs = await repeat(ctx, () => abRun(topo.client, url, n, CONCURRENCY, csv, limit));
        if (rs.some((r) => r.complete < n))
          s.notes.push(
            `${prefix}: some repetitions hit the ${limit} s limit before ${n} requests (rate over what completed)`,
          );
        row(s, prefix).samples = rs.map((r) => r.rps);
        const p50 = s.rows.find((r) => r.id === `${prefix}-p50`);
        if (p50) p50.samples = rs.map((r) => r.p50ms);
        row(s, `${prefix}-p99`).samples = rs.map((r) => r.p99ms);
      };
      await path(ctx, s, ['direct', 'direct-p50', 'direct-p99'], 'tcp-connect: veth', () =>
        fill('direct', `http://${topo.upIp}:${PORTS.origin}/small`),
      );
      const viaName = `http://${ORIGIN_NAME}:${PORTS.origin}/small`;
      await path(ctx, s, ['tun', 'tun-p50', 'tun-p99', 'tun-added-p99'], 'tcp-connect: TUN direct', () =>
        withDaemon(topo, 'direct', async () => {
          await fill('tun', viaName);
          const d = row(s, 'direct-p99').samples;
          const t = row(s, 'tun-p99').samples;
          row(s, 'tun-added-p99').samples = t.map((x, i) => x - (d[i] ?? d[0]));
        }),
      );
      await path(ctx, s, ['tun-noctl', 'tun-noctl-p99'], 'tcp-connect: TUN direct, --controller off', () =>
        withDaemon(topo, 'direct', () => fill('tun-noctl', viaName), { extra: ['--controller', 'off'] }),
      );
      await path(ctx, s, ['tun-dante', 'tun-dante-p99'], 'tcp-connect: TUN → dante', () =>
        withDaemon(topo, 'dante', () => fill('tun-dante', viaName)),
      );
      s.notes.push(
        "latency = ab's per-request total (connect + request + first byte + 128 B), percentiles from ab -e (fractional ms); ab checks every response (complete = n, 0 failed, 0 non-2xx)",
        'tun-noctl: the same daemon without the controller API; the controller keeps a record per live connection for /connections whether or not a dashboard is open, so this is its cost with no client (nat-scale has its memory)',
        'ab is single-threaded: on 2 CPUs it competes with the origin, the daemon and the kernel, so the direct rate is a lower bound of what the origin can take',
      );
      return [s];
    } finally {
      await topo.destroy();
    }
  },
};
