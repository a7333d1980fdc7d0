/**
 * iperf: iperf3 TCP through the TUN (`direct`) against loopback and the veth,
 * both directions, and what each path costs in CPU per byte.
 *   L / LR   loopback in the client ns (client sends / -R: server sends)
 *   V        over the veth to iperf3 -s in the upstream ns, no proxy
 *   P / PR   app → 127.0.0.1 → a splice port forwarder (bench/lib/splice-forward.ts, the
 *            daemon's native relay) → veth → iperf3 -s: a TCP-terminating proxy without
 *            the TUN and the engine, so T − P is what the TUN hop costs
 *   T / TR   app → fake IP → TUN → engine → Listener → direct → iperf3 -s (upstream ns)
 *   TN       T with --no-tun-offload
 *   TKR      TR with --tun-congestion kernel: the Listener's sockets keep the system's congestion
 *            control (BBR on our VMs) instead of the default cubic
 *   TM / TMR T and TR with --mtu 9000 (the default before 2026-12-02: what the 64 KiB MTU buys)
 * The second table is CPU seconds per GB delivered: both iperf3 processes
 * (iperf3's own accounting) plus, on the TUN rows, the daemon (/proc). On 2
 * CPUs the throughput ratio follows this cost once both CPUs are busy, and
 * it moves much less than Gbit/s when other work shares the machine.
 */
import { once } from 'node:events';
import { type Daemon, procCpuSecs } from '../lib/daemon.js';
import type { Ctx } from '../lib/env.js';
import { sleep } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import { type IperfTcp, iperfTcp } from '../lib/tools.js';
import { bigFile, IPERF_NAME, PORTS, Topology } from '../lib/topology.js';
import { GBPS, type Measure, MiB, path, repeat, row, type Scenario, section, spec } from './common.js';
import { withDaemon } from './tcp.js';

export const iperf: Scenario = {
  name: 'iperf',
  describe: 'iperf3 TCP both directions: TUN (direct) vs loopback and veth, Gbit/s and CPU s/GB',
  async run(ctx: Ctx): Promise<Section[]> {
    const secs = ctx.quick ? 2 : 5;
    const ip = section(
      'iperf',
      `iperf3 TCP ${secs} s, client sends (and -R: server sends), Gbit/s`,
      spec('L', 'iperf3 loopback', GBPS),
      spec('V', 'iperf3 over veth', GBPS, { compare: [{ to: 'L' }] }),
      spec('P', 'iperf3 through a splice forwarder, no TUN', GBPS, { compare: [{ to: 'L' }] }),
      spec('T', 'iperf3 through TUN (direct)', GBPS, { compare: [{ to: 'L', goal: 0.5 }, { to: 'V' }] }),
      spec('LR', 'iperf3 -R loopback', GBPS),
      spec('PR', 'iperf3 -R through a splice forwarder, no TUN', GBPS, { compare: [{ to: 'LR' }] }),
      spec('TR', 'iperf3 -R through TUN (direct)', GBPS, { compare: [{ to: 'LR', goal: 0.5 }] }),
      spec('TKR', 'iperf3 -R through TUN, --tun-congestion kernel', GBPS, { compare: [{ to: 'LR' }, { to: 'TR' }] }),
      spec('TN', 'iperf3 through TUN, --no-tun-offload', GBPS, { compare: [{ to: 'L' }, { to: 'T' }] }),
      spec('TM', 'iperf3 through TUN, --mtu 9000', GBPS, { compare: [{ to: 'L' }, { to: 'T' }] }),
      spec('TMR', 'iperf3 -R through TUN, --mtu 9000', GBPS, { compare: [{ to: 'LR' }, { to: 'TR' }] }),
    );
    const COST: Measure = { metric: 'cpu', unit: 's/GB', higherIsBetter: false };
    const cost = (id: string, label: string, compare?: { to: string }[]) =>
      spec(id, label, COST, compare ? { compare } : {});
    const cpu = section(
      'iperf',
      'CPU seconds per GB delivered (both iperf3 + the daemon), same runs',
      cost('Lc', 'loopback'),
      cost('Pc', 'through a splice forwarder, no TUN', [{ to: 'Lc' }]),
      cost('Tc', 'through TUN (direct)', [{ to: 'Lc' }, { to: 'Pc' }]),
      cost('LRc', '-R loopback'),
      cost('PRc', '-R through a splice forwarder, no TUN', [{ to: 'LRc' }]),
      cost('TRc', '-R through TUN (direct)', [{ to: 'LRc' }, { to: 'PRc' }]),
      cost('TKRc', '-R through TUN, --tun-congestion kernel', [{ to: 'LRc' }, { to: 'TRc' }]),
      cost('TNc', 'through TUN, --no-tun-offload', [{ to: 'Lc' }, { to: 'Tc' }]),
      cost('TMc', 'through TUN, --mtu 9000', [{ to: 'Lc' }, { to: 'Tc' }]),
      cost('TMRc', '-R through TUN, --mtu 9000', [{ to: 'LRc' }, { to: 'TRc' }]),
    );
    // One iperf3 run per repetition fills the throughput row and its cost row.
    const measure = async (id: string, run: () => Promise<IperfTcp>, d?: Pick<Daemon, 'cpuSecs'>) => {
      const samples = await repeat(ctx, async () => {
        const before = d?.cpuSecs() ?? 0;
        const r = await run();
        const daemon = d ? d.cpuSecs() - before : 0;
        if (!(r.cpuSecs > 0)) throw new Error(`iperf3 reported no CPU use (${r.cpuSecs})`);
        return { gbps: r.gbps, sPerGB: (r.cpuSecs + daemon) / (r.bytes / 1e9) };
      });
      row(ip, id).samples = samples.map((x) => x.gbps);
      const c = cpu.rows.find((x) => x.id === `${id}c`);
      if (c) c.samples = samples.map((x) => x.sPerGB);
    };

    const topo = await Topology.create(ctx, 'iperf');
    try {
      // probeTun fetches the origin's /small through the TUN before a TUN row runs.
      topo.big = bigFile(ctx, MiB);
      await topo.start('dnsmasq', 'origin', 'iperf3');
      const lo = PORTS.iperf3 + 1;
      await path(ctx, ip, ['L'], 'iperf3 loopback', async () => {
        topo.client.spawn('iperf3', ['-s', '-B', '127.0.0.1', '-p', String(lo)], { stdio: 'ignore' });
        await sleep(300);
        await measure('L', () => iperfTcp(topo.client, '127.0.0.1', lo, secs));
        await path(ctx, ip, ['LR'], 'iperf3 -R loopback', () =>
          measure('LR', () => iperfTcp(topo.client, '127.0.0.1', lo, secs, ['-R'])),
        );
      });
      await path(ctx, ip, ['V'], 'iperf3 veth', () =>
        measure('V', () => iperfTcp(topo.client, topo.upIp, PORTS.iperf3, secs)),
      );
      await path(ctx, ip, ['P', 'PR'], 'iperf3 through a splice forwarder', async () => {
        const fwd = lo + 1;
        const child = topo.client.spawn(
          process.execPath,
          [new URL('../lib/splice-forward.js', import.meta.url).pathname, String(fwd), topo.upIp, String(PORTS.iperf3)],
          { stdio: ['ignore', 'pipe', 'inherit'] },
        );
        try {
          await once(child.stdout as NodeJS.ReadableStream, 'data');
          const proc = { cpuSecs: () => procCpuSecs(child.pid as number) };
          await measure('P', () => iperfTcp(topo.client, '127.0.0.1', fwd, secs), proc);
          await path(ctx, ip, ['PR'], 'iperf3 -R through a splice forwarder', () =>
            measure('PR', () => iperfTcp(topo.client, '127.0.0.1', fwd, secs, ['-R']), proc),
          );
        } finally {
          child.kill('SIGTERM');
        }
      });
      await path(ctx, ip, ['T', 'TR'], 'iperf3 through TUN', () =>
        withDaemon(topo, 'direct', async (d) => {
          await path(ctx, ip, ['T'], 'iperf3 through TUN', () =>
            measure('T', () => iperfTcp(topo.client, IPERF_NAME, PORTS.iperf3, secs), d),
          );
          await path(ctx, ip, ['TR'], 'iperf3 -R through TUN', () =>
            measure('TR', () => iperfTcp(topo.client, IPERF_NAME, PORTS.iperf3, secs, ['-R']), d),
          );
        }),
      );
      await path(ctx, ip, ['TKR'], 'iperf3 -R through TUN, --tun-congestion kernel', () =>
        withDaemon(
          topo,
          'direct',
          (d) => measure('TKR', () => iperfTcp(topo.client, IPERF_NAME, PORTS.iperf3, secs, ['-R']), d),
          { extra: ['--tun-congestion', 'kernel'] },
        ),
      );
      await path(ctx, ip, ['TN'], 'iperf3 through TUN, no offload', () =>
        withDaemon(
          topo,
          'direct',
          (d) => measure('TN', () => iperfTcp(topo.client, IPERF_NAME, PORTS.iperf3, secs), d),
          {
            extra: ['--no-tun-offload'],
          },
        ),
      );
      await path(ctx, ip, ['TM', 'TMR'], 'iperf3 through TUN, --mtu 9000', () =>
        withDaemon(
          topo,
          'direct',
          async (d) => {
            await path(ctx, ip, ['TM'], 'iperf3 through TUN, --mtu 9000', () =>
              measure('TM', () => iperfTcp(topo.client, IPERF_NAME, PORTS.iperf3, secs), d),
            );
            await path(ctx, ip, ['TMR'], 'iperf3 -R through TUN, --mtu 9000', () =>
              measure('TMR', () => iperfTcp(topo.client, IPERF_NAME, PORTS.iperf3, secs, ['-R']), d),
            );
          },
          { extra: ['--mtu', '9000'] },
        ),
      );
      ip.notes.push(
        'iperf3 TCP checks received bytes ≈ sent bytes (≥ 99 %; -R ≥ 95 %: the server counts what was still in flight through both hops when the client stopped); "T" goes app → fake IP → TUN → engine → Listener → direct → iperf3 -s in the upstream ns',
      );
      cpu.notes.push(
        "iperf3's cpu_utilization_percent (host_total + remote_total) × seconds, plus the daemon's (or the forwarder's) utime+stime over the same run (/proc) on TUN (forwarder) rows, over the bytes the receiver counted; softirq work lands on whichever of these threads ran it",
      );
      // A cost row without samples says why its throughput row has none.
      for (const c of cpu.rows) {
        const r = row(ip, c.id.slice(0, -1));
        if (c.samples.length === 0 && r.unavailable) c.unavailable = r.unavailable;
      }
      return [ip, cpu];
    } finally {
      await topo.destroy();
    }
  },
};
