/**
 * tcp-connect: new connections per second and connect+first-byte latency with
 * 64 concurrent clients and one request per connection (ab without -k), to
 * /small (128 bytes) on the origin: straight over the veth vs through the TUN
 * (direct, and via dante). ab cannot speak SOCKS, so there is no "straight to
 * dante" row; the dante row is compared with the plain veth.
 *
 * Latency is measured twice. ab is closed-loop: 64 clients each start the next
 * request when the last ends, so its latency is 64 / rate (Little's law) and a
 * slower path shows a higher p99 even when nothing queues in it. The "added
 * p99" goal therefore comes from an open-loop run (bench/lib/pacer.c): the
 * same PACED_RATE of new connections on every path, latency from each
 * connection's scheduled start, so the difference is what the path adds.
 */
import { join } from 'node:path';
import { type Daemon, machineBusySecs, procCpuSecs } from '../lib/daemon.js';
import type { Ctx } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import { abRun, pacedRun } from '../lib/tools.js';
import { bigFile, ORIGIN_NAME, PORTS, Topology } from '../lib/topology.js';
import { CONN_RATE, failed, latencyRows, MS, path, repeat, row, type Scenario, section, spec } from './common.js';
import { withDaemon } from './tcp.js';

export const CONCURRENCY = 64;
/** Open-loop new connections/s for the latency rows: well under every path's closed-loop rate. */
export const PACED_RATE = 1000;
/**
 * Open-loop new connections/s of the "idle" rows: a trickle, so the latency is what one new
 * connection costs on a machine with nothing queued, not what queues behind the others.
 */
export const IDLE_RATE = 100;
/** The daemon JavaScript thread's CPU per connection. */
export const JS_US = { metric: 'JS thread CPU/conn', unit: 'µs', higherIsBetter: false };
/** The daemon's CPU per connection, every thread (JS, engine, relays). */
const DAEMON_US = { metric: 'daemon CPU/conn', unit: 'µs', higherIsBetter: false };
/** The whole machine's busy CPU per connection: client, origin, daemon and the kernel between them. */
const MACHINE_US = { metric: 'machine CPU/conn', unit: 'µs', higherIsBetter: false };

export const tcpConnect: Scenario = {
  name: 'tcp-connect',
  describe: 'connections/s and p50/p99 latency, 64 concurrent, no keep-alive (ab)',
  async run(ctx: Ctx): Promise<Section[]> {
    const n = ctx.quick ? 2_000 : 20_000;
    const limit = ctx.quick ? 4 : 15;
    const pacedSecs = ctx.quick ? 2 : 8;
    const idleSecs = ctx.quick ? 2 : 4;
    const veth = 'veth, no proxy';
    const tun = 'TUN → fakeproxy direct';
    const paced = `${PACED_RATE} conn/s paced`;
    const idle = `${IDLE_RATE} conn/s paced`;
    const s = section(
      'tcp-connect',
      `ab -n ${n} -c ${CONCURRENCY} (at most ${limit} s), one connection per request, GET /small (128 B)`,
      spec('direct', veth, CONN_RATE),
      ...latencyRows('direct', veth),
      // Issue 11: new connections/s through the TUN ≥ 0.6× the plain veth.
      spec('tun', tun, CONN_RATE, { compare: [{ to: 'direct', goal: 0.6 }] }),
      ...latencyRows('tun', tun, 'direct'),
      ...latencyRows('direct-paced', `${veth}, ${paced}`),
      ...latencyRows('tun-paced', `${tun}, ${paced}`, 'direct-paced'),
      spec('tun-added-p99', `TUN direct − veth, ${paced}`, MS('added p99'), {
        // Issue 11: added p99 < 2 ms (each repetition's paced TUN p99 minus the paced veth p99 of the same index).
        goal: { value: 2, text: '< 2 ms' },
      }),
      spec('direct-paced-machine-us', `${veth}, ${paced}`, MACHINE_US),
      spec('tun-paced-machine-us', `${tun}, ${paced}`, MACHINE_US, { compare: [{ to: 'direct-paced-machine-us' }] }),
      spec('tun-paced-cpu-us', `${tun}, ${paced}`, DAEMON_US),
      spec('direct-idle-p50', `${veth}, ${idle}`, MS('p50')),
      spec('tun-idle-p50', `${tun}, ${idle}`, MS('p50'), { compare: [{ to: 'direct-idle-p50' }] }),
      spec('tun-idle-added-p50', `TUN direct − veth, ${idle}`, MS('added p50')),
      // Issue 14: what the controller API (on by default) costs the connection rate.
      spec('tun-noctl', `${tun}, --controller off`, CONN_RATE, { compare: [{ to: 'tun' }] }),
      spec('tun-noctl-p99', `${tun}, --controller off`, MS('p99'), { compare: [{ to: 'tun-p99' }] }),
      spec('tun-dante', 'TUN → fakeproxy → dante', CONN_RATE, { compare: [{ to: 'direct' }, { to: 'tun' }] }),
      spec('tun-dante-p99', 'TUN → fakeproxy → dante', MS('p99'), { compare: [{ to: 'direct-p99' }] }),
      spec('tun-js-us', tun, JS_US),
      spec('tun-dante-js-us', 'TUN → fakeproxy → dante', JS_US, { compare: [{ to: 'tun-js-us' }] }),
    );
    /** The rows fill(prefix, paced) writes (a path without a p50 row just has none). */
    const filled = (prefix: string, withPaced = true) => [
      prefix,
      `${prefix}-p50`,
      `${prefix}-p99`,
      ...(withPaced
        ? [`${prefix}-paced-p50`, `${prefix}-paced-p99`, `${prefix}-paced-machine-us`, `${prefix}-idle-p50`]
        : []),
    ];
    const topo = await Topology.create(ctx, 'conn');
    try {
      topo.big = bigFile(ctx, 1 * 1024 * 1024);
      await topo.start('dnsmasq', 'origin', 'dante');
      const csv = join(ctx.tmp, 'ab.csv');
      interface Leg {
        prefix: string;
        url: string;
        paced: boolean;
        d?: Daemon;
      }
      /**
       * Measures the legs with their repetitions alternating (leg 1, leg 2, leg 1, …; ab, then the
       * paced runs), so that a drift of this host's load hits every leg alike and each paced TUN run
       * has its veth run of the same index right beside it.
       */
      const fill = async (...legs: Leg[]) => {
        const ab = new Map(legs.map((l) => [l, [] as Awaited<ReturnType<typeof abRun>>[]]));
        const jsUs = new Map(legs.map((l) => [l, [] as number[]]));
        const paced = new Map(legs.map((l) => [l, [] as Awaited<ReturnType<typeof pacedRun>>[]]));
        const pacedCpuUs = new Map(legs.map((l) => [l, [] as number[]]));
        const pacedMachineUs = new Map(legs.map((l) => [l, [] as number[]]));
        const idle = new Map(legs.map((l) => [l, [] as Awaited<ReturnType<typeof pacedRun>>[]]));
        // A leg that fails (warm-up included) loses its own rows and sits out the rest; the others go on.
        const live = new Set(legs);
        const guard = async (l: Leg, what: string, fn: () => Promise<void>) => {
          if (!live.has(l)) return;
          try {
            await fn();
          } catch (e) {
            const ids = [
              ...filled(l.prefix, l.paced),
              ...(l.d ? [`${l.prefix}-js-us`] : []),
              ...(l.d && l.paced ? [`${l.prefix}-paced-cpu-us`] : []),
            ];
            failed(ctx, { section: s, ids, what: `tcp-connect: ${l.prefix} (${what})` }, e);
            live.delete(l);
          }
        };
        // One untimed warm-up pass of 1000 per leg (page cache, ARP, daemon JIT, dante's preforked
        // children; up to 20 s: a proxy's slow start is not measured), then the timed repetitions.
        for (const l of legs)
          await guard(l, 'warm-up', async () => {
            await abRun(topo.client, l.url, Math.min(1000, n), CONCURRENCY, csv, 20);
          });
        await repeat(ctx, async () => {
          for (const l of legs)
            await guard(l, 'ab', async () => {
              const cpu0 = l.d?.jsThreadCpuSecs() ?? 0;
              const r = await abRun(topo.client, l.url, n, CONCURRENCY, csv, limit);
              if (l.d && r.complete > 0) jsUs.get(l)?.push(((l.d.jsThreadCpuSecs() - cpu0) * 1e6) / r.complete);
              ab.get(l)?.push(r);
            });
          for (const l of legs)
            if (l.paced)
              await guard(l, 'paced', async () => {
                const cpu0 = l.d ? procCpuSecs(l.d.pid) : 0;
                const m0 = machineBusySecs();
                const r = await pacedRun(ctx, topo.client, l.url, PACED_RATE, pacedSecs);
                pacedMachineUs.get(l)?.push(((machineBusySecs() - m0) * 1e6) / r.ok);
                if (l.d) pacedCpuUs.get(l)?.push(((procCpuSecs(l.d.pid) - cpu0) * 1e6) / r.ok);
                paced.get(l)?.push(r);
              });
          for (const l of legs)
            if (l.paced)
              await guard(l, 'idle', async () => {
                idle.get(l)?.push(await pacedRun(ctx, topo.client, l.url, IDLE_RATE, idleSecs));
              });
        });
        for (const l of live) {
          const { prefix } = l;
          const rs = ab.get(l) ?? [];
          if (l.d) row(s, `${prefix}-js-us`).samples = jsUs.get(l) ?? [];
          if (rs.some((r) => r.complete < n))
            s.notes.push(
              `${prefix}: some repetitions hit the ${limit} s limit before ${n} requests (rate over what completed)`,
            );
          row(s, prefix).samples = rs.map((r) => r.rps);
          const p50 = s.rows.find((r) => r.id === `${prefix}-p50`);
          if (p50) p50.samples = rs.map((r) => r.p50ms);
          row(s, `${prefix}-p99`).samples = rs.map((r) => r.p99ms);
          if (!l.paced) continue;
          const ps = paced.get(l) ?? [];
          row(s, `${prefix}-paced-p50`).samples = ps.map((r) => r.p50ms);
          row(s, `${prefix}-paced-p99`).samples = ps.map((r) => r.p99ms);
          row(s, `${prefix}-idle-p50`).samples = (idle.get(l) ?? []).map((r) => r.p50ms);
          row(s, `${prefix}-paced-machine-us`).samples = pacedMachineUs.get(l) ?? [];
          if (l.d) row(s, `${prefix}-paced-cpu-us`).samples = pacedCpuUs.get(l) ?? [];
          const late = ps.reduce((a, r) => a + r.late, 0);
          if (late > 0)
            s.notes.push(
              `${prefix} paced: the client started ${late} of ${ps.length * PACED_RATE * pacedSecs} connections > 1 ms behind schedule (busy machine; counted against the path)`,
            );
        }
      };
      const viaName = `http://${ORIGIN_NAME}:${PORTS.origin}/small`;
      // The plain veth and the TUN alternate with the daemon up (the veth path does not touch the TUN).
      await path(
        ctx,
        s,
        [...filled('direct'), ...filled('tun'), 'tun-added-p99', 'tun-idle-added-p50', 'tun-js-us', 'tun-paced-cpu-us'],
        'tcp-connect: veth and TUN direct, alternating',
        () =>
          withDaemon(topo, 'direct', async (daemon) => {
            await fill(
              { prefix: 'direct', url: `http://${topo.upIp}:${PORTS.origin}/small`, paced: true },
              { prefix: 'tun', url: viaName, paced: true, d: daemon },
            );
            const d = row(s, 'direct-paced-p99').samples;
            const t = row(s, 'tun-paced-p99').samples;
            if (d.length === 0 || t.length === 0)
              row(s, 'tun-added-p99').unavailable = 'needs the paced p99 of both direct and tun';
            else row(s, 'tun-added-p99').samples = t.map((x, i) => x - (d[i] ?? d[0]));
            const di = row(s, 'direct-idle-p50').samples;
            const ti = row(s, 'tun-idle-p50').samples;
            if (di.length === 0 || ti.length === 0)
              row(s, 'tun-idle-added-p50').unavailable = 'needs the idle p50 of both direct and tun';
            else row(s, 'tun-idle-added-p50').samples = ti.map((x, i) => x - (di[i] ?? di[0]));
          }),
      );
      await path(ctx, s, filled('tun-noctl', false), 'tcp-connect: TUN direct, --controller off', () =>
        withDaemon(topo, 'direct', () => fill({ prefix: 'tun-noctl', url: viaName, paced: false }), {
          extra: ['--controller', 'off'],
        }),
      );
      await path(ctx, s, [...filled('tun-dante', false), 'tun-dante-js-us'], 'tcp-connect: TUN → dante', () =>
        // No paced row: PACED_RATE is above what dante's path takes today (its queue would grow for the whole run).
        withDaemon(topo, 'dante', (daemon) => fill({ prefix: 'tun-dante', url: viaName, paced: false, d: daemon })),
      );
      s.notes.push(
        "JS thread CPU/conn: the daemon main thread's user + system CPU (/proc/<pid>/task/<pid>/stat, clock ticks) over the timed ab runs ÷ completed connections; a cost per connection that moves far less with machine load than conn/s",
        "latency = ab's per-request total (connect + request + first byte + 128 B), percentiles from ab -e (fractional ms); ab checks every response (complete = n, 0 failed, 0 non-2xx)",
        'tun-noctl: the same daemon without the controller API; the controller keeps a record per live connection for /connections whether or not a dashboard is open, so this is its cost with no client (nat-scale has its memory)',
        `paced = open loop (bench/lib/pacer.c): a new connection every 1/${PACED_RATE} s for ${pacedSecs} s, latency from its scheduled start to the response's EOF; every response checked (HTTP 200, body = Content-Length). ab's p99 is closed-loop (≈ ${CONCURRENCY} / rate), so "added p99" uses the paced rows`,
        'direct and tun alternate repetition by repetition (ab on each, then the paced run on each, then the idle run on each) with the daemon up, so each tun-added-p99 sample pairs two paced runs taken one after the other',
        `idle = the same open loop at ${IDLE_RATE} conn/s for ${idleSecs} s: what one new connection costs with nothing queued behind it (its p50; at this rate a p99 is a handful of connections and says more about the host's other tenants)`,
        "daemon CPU/conn: the daemon's user + system CPU, every thread (/proc/<pid>/stat), over each paced run ÷ its connections: at a paced rate nothing batches, so this is the per-connection cost the added p99 queues behind; machine CPU/conn: the whole machine's busy time (/proc/stat: user, nice, system, irq, softirq; steal left out) over the same run ÷ its connections, the client, origin and kernel included, so the difference of the two machine rows is what a connection through fakeproxy costs on top",
        'ab is single-threaded: on 2 CPUs it competes with the origin, the daemon and the kernel, so the direct rate is a lower bound of what the origin can take',
      );
      return [s];
    } finally {
      await topo.destroy();
    }
  },
};
