/**
 * The fakeproxy daemon under test, started inside the client namespace only
 * (never in the root namespace: it creates a TUN, an address and a route).
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dottedToU32 } from '../../src/util/cidr.js';
import { cliNodeFlags } from '../../src/util/nodeFlags.js';
import { CLI, run, sleep } from './env.js';
import { ORIGIN_NAME, PORTS, type Topology } from './topology.js';

/**
 * Fake ranges handed to successive daemons in one topology. A daemon restarted in the same
 * namespace within 60 s would start its NAT cursor where the previous one did and hand out
 * pairs the previous Listener still holds in TIME_WAIT (SYNs are then retransmitted after
 * 1 s): every daemon gets the next range, so each configuration is measured from a clean
 * slate. Eight /18s of 198.18.0.0/15 (RFC 2544 benchmarking space), so that a scenario that
 * alternates fresh daemons (redis: two legs × the repetitions) comes back to a range only
 * after seven other daemons; each holds 16 384 addresses, above the most names (dns: 10 000)
 * or connections (nat-scale) a scenario asks of one daemon.
 */
export const RANGES = Array.from({ length: 8 }, (_, i) => {
  const base = ((198 << 24) | (18 << 16)) + i * 64 * 256;
  const dotted = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
  return { cidr: `${dotted(base)}/18`, gateway: dotted(base + 1), base: base >>> 0 };
});
export type Range = (typeof RANGES)[number];
const nextRange = new WeakMap<Topology, number>();

/**
 * `sh -c RAISE_NOFILE sh cmd args…`: raises the fd limit as far as allowed (the hard
 * limit needs CAP_SYS_RESOURCE; without it the soft limit goes up to the hard one), then execs.
 */
export const RAISE_NOFILE = 'ulimit -Hn 200000 2>/dev/null; ulimit -Sn "$(ulimit -Hn)" 2>/dev/null; exec "$@"';

/** The fd hard limit a process started through RAISE_NOFILE gets here. */
export async function nofileLimit(): Promise<number> {
  const r = await run('sh', ['-c', 'ulimit -Hn 200000 2>/dev/null; ulimit -Hn']);
  const v = r.stdout.trim();
  return v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v);
}

export interface DaemonOpts {
  /** 'direct' | 'dante' (socks5 to the upstream dante) | 'microsocks' | 'tinyproxy' (http) | a full URL */
  upstream: string;
  redis?: string;
  extra?: string[];
  /** The daemon's cli.js (default CLI): an A/B run starts two builds in one topology. */
  cli?: string;
}

export class Daemon {
  out = '';
  readonly exited: Promise<number | null>;
  private constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      this.out = (this.out + d).slice(-20_000);
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.out = (this.out + d).slice(-20_000);
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve(code ?? (sig ? -1 : null))));
  }

  range: Range = RANGES[0];

  get gateway(): string {
    return this.range.gateway;
  }

  /** True for an address of this daemon's fake range other than its gateway. */
  isFake(ip: string): boolean {
    const n = dottedToU32(ip);
    return n >= 0 && n >>> 14 === this.range.base >>> 14 && ip !== this.range.gateway;
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  static upstreamUrl(topo: Topology, upstream: string): string {
    switch (upstream) {
      case 'direct':
        return 'direct';
      case 'dante':
        return `socks5://${topo.upIp}:${PORTS.dante}`;
      case 'microsocks':
        return `socks5://${topo.upIp}:${PORTS.microsocks}`;
      case 'tinyproxy':
        return `http://${topo.upIp}:${PORTS.tinyproxy}`;
      default:
        return upstream;
    }
  }

  /** Starts `fakeproxy start …` in the client namespace and waits for "running". */
  static async start(topo: Topology, opts: DaemonOpts): Promise<Daemon> {
    const cli = opts.cli ?? CLI;
    if (!existsSync(cli)) throw new Error(`${cli} is missing (run \`npm run build\`)`);
    const k = nextRange.get(topo) ?? 0;
    nextRange.set(topo, k + 1);
    const range = RANGES[k % RANGES.length];
    // The client namespace resolves through this daemon (bind-mounted by every later `ip netns exec`).
    topo.client.writeEtc('resolv.conf', `nameserver ${range.gateway}\n`);
    const args = [
      cli,
      'start',
      '--cidr',
      range.cidr,
      '--tun',
      'fp0',
      '--state-dir',
      '',
      '--dns-listen',
      `${range.gateway}:53`,
      '--dns-upstream',
      `${topo.upIp}:${PORTS.dns}`,
      // '' → no --upstream: the outbound comes from a --config in `extra`.
      ...(opts.upstream === '' ? [] : ['--upstream', Daemon.upstreamUrl(topo, opts.upstream)]),
      ...(opts.redis ? ['--redis', opts.redis] : []),
      ...(opts.extra ?? []),
    ];
    // nat-scale holds 2 fds per proxied connection: raise the fd limit for the daemon only
    // (root may raise the hard limit; the namespace shell is the daemon's own parent).
    // FAKEPROXY_BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=/tmp/prof": node flags for the daemon
    // only (NODE_OPTIONS refuses --cpu-prof), to profile it while a scenario runs.
    // The flags on the #! line come first: `fakeproxy start` runs with them (src/util/nodeFlags.ts).
    const nodeArgs = [
      ...cliNodeFlags(cli),
      ...(process.env.FAKEPROXY_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean),
    ];
    const child = topo.client.spawn('sh', ['-c', RAISE_NOFILE, 'sh', 'node', ...nodeArgs, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const d = new Daemon(child);
    d.range = range;
    const deadline = Date.now() + 20_000;
    let exited = false;
    void d.exited.then(() => {
      exited = true;
    });
    while (!/\brunning\b/.test(d.out)) {
      if (exited) throw new Error(`daemon exited before "running": ${lastLines(d.out)}`);
      if (Date.now() > deadline) {
        await d.stop();
        throw new Error(`daemon did not print "running" within 20 s: ${lastLines(d.out)}`);
      }
      await sleep(50);
    }
    return d;
  }

  async stop(): Promise<number | null> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.child.exitCode;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }

  /** CPU seconds (user + system, every thread) the daemon has used, from /proc/<pid>/stat. */
  cpuSecs(): number {
    return procCpuSecs(this.pid);
  }

  /** CPU seconds (user + system) of the daemon's JavaScript thread alone (its main thread: tid = pid). */
  jsThreadCpuSecs(): number {
    const f = readFileSync(`/proc/${this.pid}/task/${this.pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  }

  /**
   * VmRSS and VmHWM in bytes, RSS split into anonymous memory (heaps, stacks) and file pages
   * (mostly the node binary's code, shared with every node process), and the open fds, from /proc.
   */
  usage(): { rss: number; hwm: number; anon: number; file: number; fds: number } {
    const st = readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(st)?.[1] ?? Number.NaN) * 1024;
    return {
      rss: kb('VmRSS'),
      hwm: kb('VmHWM'),
      anon: kb('RssAnon'),
      file: kb('RssFile'),
      fds: readdirSync(`/proc/${this.pid}/fd`).length,
    };
  }

  /** `fakeproxy status --json` of this daemon (its control socket, in the client namespace). */
  async status(topo: Topology): Promise<Record<string, unknown>> {
    const r = await topo.client.exec('node', [CLI, 'status', '--json', '--tun', 'fp0'], { timeoutMs: 10_000 });
    if (r.code !== 0) throw new Error(`fakeproxy status: ${(r.stderr || r.stdout).trim().split('\n')[0]}`);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  }
}

/** CPU seconds (user + system, every thread) process `pid` has used, from /proc/<pid>/stat. */
export function procCpuSecs(pid: number): number {
  // Fields after "(comm) ": state is [0], utime [11], stime [12], in clock ticks.
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/**
 * CPU seconds the whole machine has been busy so far, every CPU (user, nice, system, irq and
 * softirq from /proc/stat; idle, iowait and the hypervisor's steal left out): namespaces share
 * one kernel, so this counts the client, the servers, the daemon and the softirq work between
 * them alike.
 */
export function machineBusySecs(): number {
  const f = (/^cpu\s+(.*)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1] ?? '').split(/\s+/).map(Number);
  // user nice system idle iowait irq softirq steal …
  const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0);
  if (!Number.isFinite(busy) || f.length < 8) throw new Error('cannot read the cpu line of /proc/stat');
  return busy / CLK_TCK;
}

/** USER_HZ: Linux reports /proc times in 1/100 s on every architecture it runs on (sysconf(_SC_CLK_TCK)). */
const CLK_TCK = 100;

function lastLines(s: string, n = 8): string {
  return s.trim().split('\n').slice(-n).join(' | ') || '(no output)';
}

/**
 * Whether the TUN path proxies end to end: resolve ORIGIN_NAME through the
 * daemon and fetch /small (128 bytes) through the TUN. Returns a reason when not.
 */
export async function probeTun(topo: Topology, d: Daemon): Promise<string | undefined> {
  const dig = await topo.client.exec('dig', ['+short', '+time=2', '+tries=1', `@${d.gateway}`, ORIGIN_NAME, 'A'], {
    timeoutMs: 5_000,
  });
  const ip = dig.stdout.trim().split('\n')[0] ?? '';
  if (!d.isFake(ip))
    return `fake DNS did not answer ${ORIGIN_NAME} with a ${d.range.cidr} address (got "${ip || dig.stderr.trim() || 'nothing'}")`;
  const r = await topo.client.exec(
    'curl',
    [
      '-sS',
      '--max-time',
      '5',
      '-o',
      '/dev/null',
      '-w',
      '%{http_code} %{size_download}',
      `http://${ORIGIN_NAME}:${PORTS.origin}/small`,
    ],
    {
      timeoutMs: 8_000,
    },
  );
  if (r.stdout.trim() !== '200 128')
    return `curl through the TUN failed (${r.stdout.trim() || r.stderr.trim()}); daemon: ${lastLines(d.out, 3)}`;
  return undefined;
}

/**
 * Whether UDP crosses the TUN end to end: one datagram to echo.test:9000 (socat
 * echo in the upstream ns) must come back. Returns a reason when not.
 */
export async function probeUdp(topo: Topology, host = 'echo.test'): Promise<string | undefined> {
  const line = `fp-probe-${process.pid}`;
  const r = await topo.client.exec('bash', ['-c', `echo ${line} | socat -t 3 -T 3 - UDP4:${host}:${PORTS.udpecho}`], {
    timeoutMs: 10_000,
  });
  const err = r.stderr
    .trim()
    .split('\n')[0]
    ?.replace(/^.*? E /, '');
  if (r.stdout.trim() !== line)
    return `no UDP echo from ${host}:${PORTS.udpecho} (${err || `got "${r.stdout.trim()}"`})`;
  return undefined;
}
