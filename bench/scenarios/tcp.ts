/**
 * tcp-throughput: bulk download from the origin in the upstream namespace.
 *   a  plain loopback (curl and origin in the upstream ns)
 *   v  plain veth, no proxy (client ns → origin)
 *   b  curl --socks5-hostname → dante (no TUN)
 *   e  iptables REDIRECT → redsocks → dante (client ns; the classic alternative)
 *   c  TUN path, --upstream socks5://dante
 *   d  TUN path, --upstream direct
 * and iperf3 (client sends) over loopback, over the veth, and through the TUN with direct.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Daemon, probeTun } from '../lib/daemon.js';
import { type Ctx, need, sleep, Unavailable } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import { type CurlVia, curlGbps, curlVerifySha, iperfTcp } from '../lib/tools.js';
import { bigFile, ORIGIN_NAME, PORTS, Topology } from '../lib/topology.js';
import { GiB, MiB, path, repeat, rows, type Scenario } from './common.js';

const REDSOCKS_PORT = 12345;

export const tcpThroughput: Scenario = {
  name: 'tcp',
  aliases: ['tcp-throughput'],
  describe: 'bulk TCP download (1 GiB) and iperf3: TUN path vs loopback, dante, redsocks',
  async run(ctx: Ctx): Promise<Section[]> {
    const size = ctx.quick ? 128 * MiB : GiB;
    const secs = ctx.quick ? 2 : 5;
    const dl: Section = {
      scenario: 'tcp',
      title: `download ${size / MiB} MiB with curl, Gbit/s`,
      notes: [],
      rows: rows(
        { id: 'a', label: 'loopback, no proxy', metric: 'throughput', unit: 'Gbit/s' },
        { id: 'v', label: 'veth, no proxy', metric: 'throughput', unit: 'Gbit/s', compare: [{ to: 'a' }] },
        {
          id: 'b',
          label: 'curl --socks5-hostname → dante',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [{ to: 'a' }],
        },
        {
          id: 'e',
          label: 'iptables REDIRECT → redsocks → dante',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [{ to: 'b' }],
        },
        {
          id: 'c',
          label: 'TUN → fakeproxy → dante',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [
            { to: 'b', goal: 0.9 },
            { to: 'e', goal: 1 },
          ],
        },
        {
          id: 'd',
          label: 'TUN → fakeproxy direct',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [{ to: 'v', goal: 0.5 }, { to: 'a' }],
        },
        {
          id: 'dn',
          label: 'TUN → fakeproxy direct, --no-tun-offload',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [{ to: 'a' }, { to: 'd' }],
        },
      ),
    };
    const ip: Section = {
      scenario: 'tcp',
      title: `iperf3 TCP ${secs} s, client sends (and -R: server sends), Gbit/s`,
      notes: [],
      rows: rows(
        { id: 'L', label: 'iperf3 loopback', metric: 'throughput', unit: 'Gbit/s' },
        { id: 'V', label: 'iperf3 over veth', metric: 'throughput', unit: 'Gbit/s', compare: [{ to: 'L' }] },
        {
          id: 'T',
          label: 'iperf3 through TUN (direct)',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [{ to: 'L', goal: 0.5 }, { to: 'V' }],
        },
        { id: 'LR', label: 'iperf3 -R loopback', metric: 'throughput', unit: 'Gbit/s' },
        {
          id: 'TR',
          label: 'iperf3 -R through TUN (direct)',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [{ to: 'LR', goal: 0.5 }],
        },
        {
          id: 'TN',
          label: 'iperf3 through TUN, --no-tun-offload',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [{ to: 'L' }, { to: 'T' }],
        },
      ),
    };
    const topo = await Topology.create(ctx, 'tcp');
    try {
      topo.big = bigFile(ctx, size);
      await topo.start('dnsmasq', 'origin', 'dante', 'iperf3');
      const file = topo.big;
      const timeout = 180_000;
      const fill = async (id: string, ns: typeof topo.client, url: string, via: CurlVia) => {
        await curlVerifySha(ns, url, via, file, timeout);
        const r = dl.rows.find((x) => x.id === id);
        if (r) r.samples = await repeat(ctx, () => curlGbps(ns, url, via, file, timeout));
      };
      const originIp = `http://${topo.upIp}:${PORTS.origin}/big`;
      const originName = `http://${ORIGIN_NAME}:${PORTS.origin}/big`;

      await path(ctx, dl, ['a'], 'tcp (a) loopback', () =>
        fill('a', topo.upstream, `http://127.0.0.1:${PORTS.origin}/big`, []),
      );
      await path(ctx, dl, ['v'], 'tcp (v) veth', () => fill('v', topo.client, originIp, []));
      await path(ctx, dl, ['b'], 'tcp (b) curl → dante', () =>
        fill('b', topo.client, originName, ['--socks5-hostname', `${topo.upIp}:${PORTS.dante}`]),
      );
      await path(ctx, dl, ['e'], 'tcp (e) redsocks', async () => {
        need('redsocks');
        need('iptables');
        const conf = join(ctx.tmp, 'redsocks.conf');
        writeFileSync(
          conf,
          `base { log_debug = off; log_info = off; log = stderr; daemon = off; redirector = iptables; }
redsocks { local_ip = 127.0.0.1; local_port = ${REDSOCKS_PORT}; ip = ${topo.upIp}; port = ${PORTS.dante}; type = socks5; }
`,
        );
        const rs = topo.client.spawn('redsocks', ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
        // Only the origin's port is redirected, so redsocks's own connection to dante (:1080) is not.
        const rule = [
          '-p',
          'tcp',
          '-d',
          topo.upIp,
          '--dport',
          String(PORTS.origin),
          '-j',
          'REDIRECT',
          '--to-ports',
          String(REDSOCKS_PORT),
        ];
        try {
          await sleep(300);
          if (rs.exitCode !== null) throw new Error('redsocks exited at start');
          await topo.client.must('iptables', ['-w', '-t', 'nat', '-A', 'OUTPUT', ...rule]);
          await fill('e', topo.client, originIp, []);
        } finally {
          await topo.client.exec('iptables', ['-w', '-t', 'nat', '-D', 'OUTPUT', ...rule]);
          rs.kill('SIGKILL');
        }
      });

      // iperf3 baselines (no daemon): loopback in the client ns, and over the veth.
      await path(ctx, ip, ['L'], 'iperf3 loopback', async () => {
        topo.client.spawn('iperf3', ['-s', '-B', '127.0.0.1', '-p', String(PORTS.iperf3 + 1)], { stdio: 'ignore' });
        await sleep(300);
        ip.rows[0].samples = (await repeat(ctx, () => iperfTcp(topo.client, '127.0.0.1', PORTS.iperf3 + 1, secs))).map(
          (x) => x.gbps,
        );
        await path(ctx, ip, ['LR'], 'iperf3 -R loopback', async () => {
          row(ip, 'LR').samples = (
            await repeat(ctx, () => iperfTcp(topo.client, '127.0.0.1', PORTS.iperf3 + 1, secs, ['-R']))
          ).map((x) => x.gbps);
        });
      });
      await path(ctx, ip, ['V'], 'iperf3 veth', async () => {
        ip.rows[1].samples = (await repeat(ctx, () => iperfTcp(topo.client, topo.upIp, PORTS.iperf3, secs))).map(
          (x) => x.gbps,
        );
      });

      // TUN paths: one daemon per upstream.
      await path(ctx, dl, ['c'], 'tcp (c) TUN → dante', () =>
        withDaemon(topo, 'dante', () => fill('c', topo.client, originName, [])),
      );
      let daemonNote: string | undefined;
      await path(ctx, dl, ['d'], 'tcp (d) TUN direct', () =>
        withDaemon(topo, 'direct', async () => {
          await fill('d', topo.client, originName, []);
          await path(ctx, ip, ['T'], 'iperf3 through TUN', async () => {
            ip.rows[2].samples = (await repeat(ctx, () => iperfTcp(topo.client, 'iperf.test', PORTS.iperf3, secs))).map(
              (x) => x.gbps,
            );
          });
          await path(ctx, ip, ['TR'], 'iperf3 -R through TUN', async () => {
            row(ip, 'TR').samples = (
              await repeat(ctx, () => iperfTcp(topo.client, 'iperf.test', PORTS.iperf3, secs, ['-R']))
            ).map((x) => x.gbps);
          });
        }).catch((e) => {
          daemonNote = (e as Error).message;
          throw e;
        }),
      );
      if (daemonNote && !ip.rows[2].unavailable) ip.rows[2].unavailable = daemonNote;
      if (daemonNote && !row(ip, 'TR').unavailable) row(ip, 'TR').unavailable = daemonNote;
      // The same TUN paths with the offloads off (one read + one write per MTU-sized packet).
      await path(ctx, dl, ['dn'], 'tcp (dn) TUN direct, no offload', () =>
        withDaemon(
          topo,
          'direct',
          async () => {
            await fill('dn', topo.client, originName, []);
            await path(ctx, ip, ['TN'], 'iperf3 through TUN, no offload', async () => {
              row(ip, 'TN').samples = (
                await repeat(ctx, () => iperfTcp(topo.client, 'iperf.test', PORTS.iperf3, secs))
              ).map((x) => x.gbps);
            });
          },
          { extra: ['--no-tun-offload'] },
        ),
      );

      dl.notes.push(
        `every path first downloads the file once through a sha256 check (${file.sha256.slice(0, 16)}…, untimed); each timed repetition checks HTTP 200 and ${file.size} bytes`,
        'origin: bench/lib/origin.c (sendfile); curl writes to /dev/null; 2 CPUs are shared by curl, the origin, the proxies and the kernel',
      );
      ip.notes.push(
        'iperf3 TCP checks received bytes ≈ sent bytes (≥ 99 %; -R ≥ 95 %: the server counts what was still in flight through both hops when the client stopped); "T" goes app → fake IP → TUN → engine → Listener → direct → iperf3 -s in the upstream ns',
      );
      return [dl, ip];
    } finally {
      await topo.destroy();
    }
  },
};

function row(sec: Section, id: string): Section['rows'][number] {
  const r = sec.rows.find((x) => x.id === id);
  if (!r) throw new Error(`no row ${id}`);
  return r;
}

/** Runs `body` with a daemon in the client namespace; Unavailable when the TUN path does not work yet. */
export async function withDaemon<T>(
  topo: Topology,
  upstream: string,
  body: (d: Daemon) => Promise<T>,
  extra: { redis?: string; extra?: string[] } = {},
): Promise<T> {
  const d = await Daemon.start(topo, { upstream, ...extra });
  try {
    const why = await probeTun(topo, d);
    if (why) throw new Unavailable(`TUN path not functional yet: ${why}`);
    return await body(d);
  } finally {
    await d.stop();
  }
}
