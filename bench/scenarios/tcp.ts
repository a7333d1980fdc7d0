/**
 * tcp-throughput: bulk download from the origin in the upstream namespace.
 *   a  plain loopback (curl and origin in the upstream ns)
 *   v  plain veth, no proxy (client ns → origin)
 *   b  curl --socks5-hostname → dante (no TUN)
 *   e  iptables REDIRECT → redsocks → dante (client ns; the classic alternative)
 *   c  TUN path, --upstream socks5://dante
 *   d  TUN path, --upstream direct
 * iperf3 over the same paths is its own scenario (iperf.ts).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Daemon, probeTun } from '../lib/daemon.js';
import { type Ctx, need, sleep, Unavailable } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import { type CurlVia, curlGbps, curlVerifySha, VerifyError } from '../lib/tools.js';
import { bigFile, ORIGIN_NAME, PORTS, Topology } from '../lib/topology.js';
import { alternate, GBPS, GiB, MiB, path, repeat, row, type Scenario, section, spec } from './common.js';

const REDSOCKS_PORT = 12345;

export const tcpThroughput: Scenario = {
  name: 'tcp',
  aliases: ['tcp-throughput'],
  describe: 'bulk TCP download (1 GiB): TUN path vs loopback, dante, redsocks',
  async run(ctx: Ctx): Promise<Section[]> {
    const size = ctx.quick ? 128 * MiB : GiB;
    const dl = section(
      'tcp',
      `download ${size / MiB} MiB with curl, Gbit/s`,
      spec('a', 'loopback, no proxy', GBPS),
      spec('v', 'veth, no proxy', GBPS, { compare: [{ to: 'a' }] }),
      spec('b', 'curl --socks5-hostname → dante', GBPS, { compare: [{ to: 'a' }] }),
      spec('e', 'iptables REDIRECT → redsocks → dante', GBPS, { compare: [{ to: 'b' }] }),
      spec('c', 'TUN → fakeproxy → dante', GBPS, {
        compare: [
          { to: 'b', goal: 0.9 },
          { to: 'e', goal: 1 },
        ],
      }),
      spec('d', 'TUN → fakeproxy direct', GBPS, { compare: [{ to: 'v', goal: 0.5 }, { to: 'a' }] }),
      spec('dn', 'TUN → fakeproxy direct, --no-tun-offload', GBPS, { compare: [{ to: 'a' }, { to: 'd' }] }),
    );
    const topo = await Topology.create(ctx, 'tcp');
    try {
      topo.big = bigFile(ctx, size);
      await topo.start('dnsmasq', 'origin', 'dante');
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
      // b, e and c all end in dante, and c's goals are ratios to b and e; dante's own rate drifts by
      // ±20 % from one minute to the next on this host. So their repetitions alternate (b, e, c, b, e,
      // c, …) with redsocks and the daemon both up, and a drift hits the three alike.
      await path(ctx, dl, ['b', 'e', 'c'], 'tcp (b, e, c) → dante, alternating', () =>
        withRedsocks(ctx, topo, (redsocks) =>
          withDaemon(topo, 'dante', async () => {
            const legs: [string, string, CurlVia][] = [
              ['b', originName, ['--socks5-hostname', `${topo.upIp}:${PORTS.dante}`]],
              ['c', originName, []],
            ];
            if (redsocks instanceof Error) row(dl, 'e').unavailable = redsocks.message;
            else legs.splice(1, 0, ['e', originIp, []]);
            const gbps = await alternate(
              ctx,
              legs,
              ([id]) => ({ section: dl, ids: [id], what: `tcp (${id})` }),
              async ([, url, via], rep) => {
                if (rep === 0) await curlVerifySha(topo.client, url, via, file, timeout);
                return curlGbps(topo.client, url, via, file, timeout);
              },
            );
            for (const [leg, samples] of gbps) row(dl, leg[0]).samples = samples;
          }),
        ),
      );
      await path(ctx, dl, ['d'], 'tcp (d) TUN direct', () =>
        withDaemon(topo, 'direct', () => fill('d', topo.client, originName, [])),
      );
      // The same TUN paths with the offloads off (one read + one write per MTU-sized packet).
      await path(ctx, dl, ['dn'], 'tcp (dn) TUN direct, no offload', () =>
        withDaemon(topo, 'direct', () => fill('dn', topo.client, originName, []), { extra: ['--no-tun-offload'] }),
      );

      dl.notes.push(
        `every path first downloads the file once through a sha256 check (${file.sha256.slice(0, 16)}…, untimed); each timed repetition checks HTTP 200 and ${file.size} bytes`,
        'origin: bench/lib/origin.c (sendfile); curl writes to /dev/null; 2 CPUs are shared by curl, the origin, the proxies and the kernel',
        "b, e and c alternate repetition by repetition (b, e, c, b, …) with redsocks and the daemon both running, so a drift in dante's rate hits all three",
      );
      return [dl];
    } finally {
      await topo.destroy();
    }
  },
};

/**
 * Runs `body` with redsocks in the client namespace and the origin's port redirected to it
 * (iptables REDIRECT), or, where redsocks or iptables is missing, with the Unavailable that says so.
 */
async function withRedsocks<T>(ctx: Ctx, topo: Topology, body: (up: true | Unavailable) => Promise<T>): Promise<T> {
  try {
    need('redsocks');
    need('iptables');
  } catch (e) {
    if (e instanceof Unavailable) return body(e);
    throw e;
  }
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
    return await body(true);
  } finally {
    await topo.client.exec('iptables', ['-w', '-t', 'nat', '-D', 'OUTPUT', ...rule]);
    rs.kill('SIGKILL');
  }
}

/** Runs `body` with a daemon in the client namespace; a VerifyError when the TUN path does not work. */
export async function withDaemon<T>(
  topo: Topology,
  upstream: string,
  body: (d: Daemon) => Promise<T>,
  extra: { redis?: string; extra?: string[] } = {},
): Promise<T> {
  const d = await Daemon.start(topo, { upstream, ...extra });
  try {
    const why = await probeTun(topo, d);
    if (why) throw new VerifyError(`the TUN path does not work: ${why}`);
    return await body(d);
  } finally {
    await d.stop();
  }
}
