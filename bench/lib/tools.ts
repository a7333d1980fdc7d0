/**
 * Load generators (curl, ab, iperf3, dnsperf, fpbench-socks-udp) run inside a namespace, each
 * returning parsed numbers and throwing when the result does not verify.
 */
import { readFileSync } from 'node:fs';
import type { Ctx, Netns } from './env.js';
import { need, sleep } from './env.js';
import { type BigFile, benchBinary } from './topology.js';

export class VerifyError extends Error {}

/** curl args that route a request the way a path needs (proxy flags, --resolve). */
export type CurlVia = string[];

/**
 * Downloads `url` to /dev/null and returns Gbit/s; verifies HTTP 200 and that
 * size_download equals the file size.
 */
export async function curlGbps(
  ns: Netns,
  url: string,
  via: CurlVia,
  file: BigFile,
  timeoutMs: number,
): Promise<number> {
  need('curl');
  const r = await ns.exec(
    'curl',
    [
      '-sS',
      '--max-time',
      String(Math.ceil(timeoutMs / 1000)),
      ...via,
      '-o',
      '/dev/null',
      '-w',
      '%{http_code} %{size_download} %{speed_download} %{time_total}',
      url,
    ],
    { timeoutMs: timeoutMs + 5_000 },
  );
  const [code, size, speed] = r.stdout.trim().split(/\s+/);
  if (r.code !== 0 || code !== '200')
    throw new VerifyError(`curl ${url} → exit ${r.code}, http ${code}: ${r.stderr.trim()}`);
  if (Number(size) !== file.size) throw new VerifyError(`curl ${url}: got ${size} bytes, expected ${file.size}`);
  return (Number(speed) * 8) / 1e9;
}

/** Downloads `url` once through `via`, hashing it (untimed): the path delivers exactly the origin's bytes. */
export async function curlVerifySha(
  ns: Netns,
  url: string,
  via: CurlVia,
  file: BigFile,
  timeoutMs: number,
): Promise<void> {
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const cmd = `set -o pipefail; curl -sS --fail --max-time ${Math.ceil(timeoutMs / 1000)} ${via.map(q).join(' ')} ${q(url)} | sha256sum`;
  const r = await ns.exec('bash', ['-c', cmd], { timeoutMs: timeoutMs + 5_000 });
  const got = r.stdout.trim().split(/\s+/)[0];
  if (r.code !== 0) throw new VerifyError(`verify download ${url}: exit ${r.code}: ${r.stderr.trim()}`);
  if (got !== file.sha256) throw new VerifyError(`verify download ${url}: sha256 ${got} ≠ origin ${file.sha256}`);
}

export interface AbResult {
  rps: number;
  p50ms: number;
  p99ms: number;
  complete: number;
  failed: number;
}

/**
 * ApacheBench with one connection per request (no -k): `n` requests, `c` at a
 * time; percentiles of connect+first-byte+transfer from ab's CSV (ms, fractional).
 */
export async function abRun(
  ns: Netns,
  url: string,
  n: number,
  c: number,
  csvPath: string,
  limitSecs = 60,
): Promise<AbResult> {
  need('ab', 'apache2-utils');
  // -t before -n: stop at n requests or after limitSecs, whichever comes first (a slow path
  // cannot stretch the run); the rate is computed over what completed.
  const r = await ns.exec(
    'ab',
    ['-q', '-r', '-s', '10', '-t', String(limitSecs), '-n', String(n), '-c', String(c), '-e', csvPath, url],
    {
      timeoutMs: (limitSecs + 30) * 1000,
    },
  );
  if (r.code !== 0) throw new VerifyError(`ab ${url}: exit ${r.code}: ${(r.stderr || r.stdout).trim().slice(-400)}`);
  const num = (re: RegExp) => Number(re.exec(r.stdout)?.[1] ?? Number.NaN);
  const complete = num(/Complete requests:\s+(\d+)/);
  const failed = num(/Failed requests:\s+(\d+)/);
  const non2xx = num(/Non-2xx responses:\s+(\d+)/);
  const rps = num(/Requests per second:\s+([\d.]+)/);
  // Stopped by -t: fewer than n, but every completed request must still be a good one.
  if (!(complete > 0) || failed > 0 || non2xx > 0)
    throw new VerifyError(`ab ${url}: ${complete}/${n} complete, ${failed} failed, ${non2xx || 0} non-2xx`);
  const csv = (await ns.exec('cat', [csvPath])).stdout;
  const pct = new Map<number, number>();
  for (const line of csv.split('\n').slice(1)) {
    const [p, ms] = line.split(',').map(Number);
    if (Number.isFinite(p) && Number.isFinite(ms)) pct.set(p, ms);
  }
  return { rps, p50ms: pct.get(50) ?? Number.NaN, p99ms: pct.get(99) ?? Number.NaN, complete, failed };
}

export interface PacedResult {
  ok: number;
  p50ms: number;
  p99ms: number;
  /** connect(2) done, from the scheduled start (through the TUN: engine + kernel only, no JavaScript). */
  connectP99ms: number;
  /** Connections the client itself started more than 1 ms late (it was the bottleneck). */
  late: number;
}

/**
 * Open-loop connections (bench/lib/pacer.c): one new connection every 1/rate s for
 * `secs` seconds whatever the others do, GET `url`, read to EOF; latency from the
 * scheduled start. Unlike ab's closed loop (latency = concurrency / rate), the same
 * offered load on two paths makes the latency difference what the path adds.
 * Every response must be HTTP 200 with a complete body, or the run is an error;
 * `late` says how often the client itself fell behind (the caller reports it).
 */
export async function pacedRun(ctx: Ctx, ns: Netns, url: string, rate: number, secs: number): Promise<PacedResult> {
  const bin = await benchBinary(ctx, 'pacer');
  const u = new URL(url);
  const r = await ns.exec(bin, [u.hostname, u.port || '80', u.pathname, String(rate), String(secs), '5000'], {
    timeoutMs: (secs + 20) * 1000,
  });
  const m = /sent=(\d+) ok=(\d+) failed=(\d+) late=(\d+) p50=([\d.]+) p90=[\d.]+ p99=([\d.]+) .* cp99=([\d.]+)/.exec(
    r.stdout,
  );
  if (r.code !== 0 || !m)
    throw new VerifyError(`pacer ${url}: exit ${r.code}: ${(r.stderr || r.stdout).trim().slice(-400)}`);
  const [sent, ok, failed, late] = [m[1], m[2], m[3], m[4]].map(Number);
  if (failed > 0 || ok !== sent || ok === 0)
    throw new VerifyError(`pacer ${url}: ${ok}/${sent} complete, ${failed} failed: ${r.stderr.trim().slice(-300)}`);
  return { ok, p50ms: Number(m[5]), p99ms: Number(m[6]), connectP99ms: Number(m[7]), late };
}

export interface IperfTcp {
  gbps: number;
  bytes: number;
  /** CPU seconds both iperf3 processes used (iperf3's own host + remote totals). */
  cpuSecs: number;
}

/** The max (third) field of /proc/sys/net/ipv4/<name>, e.g. tcp_rmem. */
function sysctlMax(name: string): number {
  const max = Number(readFileSync(`/proc/sys/net/ipv4/${name}`, 'utf8').trim().split(/\s+/)[2]);
  if (!(max > 0)) throw new Error(`cannot read the max of net.ipv4.${name}`);
  return max;
}

/** iperf3 TCP, client in `ns` → host:port for `secs`; receiver-side Gbit/s. */
export async function iperfTcp(
  ns: Netns,
  host: string,
  port: number,
  secs: number,
  extra: string[] = [],
  /**
   * Least received/sent accepted. With -R the sender is the server and its
   * count includes what was still in flight (socket buffers of both hops, the
   * relay's pipe) when the client stopped: 0.95 there, 0.99 otherwise.
   */
  minRecvRatio = extra.includes('-R') ? 0.95 : 0.99,
): Promise<IperfTcp> {
  // Either way the server stops counting when the client ends the test, so bytes
  // still in the path's buffers are never counted: through a proxy two hops of
  // socket buffers (tcp_wmem + tcp_rmem maxima each; a new namespace copies the
  // host's) and the relay's 1 MiB pipe. On a loaded machine a short run moves
  // little enough that this exceeds 1 % (5 %), so that much shortfall is accepted too.
  const inFlight = 2 * (sysctlMax('tcp_rmem') + sysctlMax('tcp_wmem')) + 2 ** 20;
  need('iperf3');
  const r = await ns.exec('iperf3', ['-J', '-c', host, '-p', String(port), '-t', String(secs), ...extra], {
    timeoutMs: (secs + 20) * 1000,
  });
  const j = parseJson(r.stdout);
  if (r.code !== 0 || !j?.end?.sum_received)
    throw new VerifyError(`iperf3 -c ${host}: exit ${r.code}: ${j?.error ?? r.stderr.trim()}`);
  const sent = j.end.sum_sent.bytes as number;
  const recv = j.end.sum_received.bytes as number;
  // TCP: what the server received must be what the client sent, but for what was in flight at the end.
  if (recv <= 0 || recv < Math.min(sent * minRecvRatio, sent - inFlight))
    throw new VerifyError(`iperf3 -c ${host}: received ${recv} of ${sent} bytes`);
  const cpu = j.end.cpu_utilization_percent;
  const cpuSecs = cpu ? ((cpu.host_total + cpu.remote_total) / 100) * j.end.sum_received.seconds : Number.NaN;
  return { gbps: j.end.sum_received.bits_per_second / 1e9, bytes: recv, cpuSecs };
}

export interface IperfUdp {
  /** datagrams per second delivered to the server */
  pps: number;
  lossPct: number;
  mbps: number;
  packets: number;
}

/** The `Udp:` counters of /proc/net/snmp in `ns` (InDatagrams, RcvbufErrors, …): per network namespace. */
export async function udpSnmp(ns: Netns): Promise<Record<string, number>> {
  const r = await ns.exec('cat', ['/proc/net/snmp']);
  const [keys, vals] = r.stdout
    .split('\n')
    .filter((l) => l.startsWith('Udp:'))
    .map((l) => l.split(/\s+/).slice(1));
  if (!keys || !vals) throw new Error(`no Udp: lines in /proc/net/snmp of ${ns.name}`);
  return Object.fromEntries(keys.map((k, i) => [k, Number(vals[i])]));
}

/**
 * iperf3 UDP at `rate` (e.g. "500M"), `len`-byte datagrams, server-side counts.
 * `window` (e.g. "4M"): iperf3's -w, the socket buffers of both ends (the
 * server's receive buffer too); the kernel default when absent.
 */
export async function iperfUdp(
  ns: Netns,
  host: string,
  port: number,
  secs: number,
  rate: string,
  len: number,
  window?: string,
): Promise<IperfUdp> {
  need('iperf3');
  const r = await ns.exec(
    'iperf3',
    [
      ...['-J', '-u', '-c', host, '-p', String(port), '-t', String(secs), '-b', rate, '-l', String(len)],
      ...(window ? ['-w', window] : []),
    ],
    {
      timeoutMs: (secs + 20) * 1000,
    },
  );
  const j = parseJson(r.stdout);
  const s = j?.end?.sum;
  if (r.code !== 0 || !s)
    throw new VerifyError(
      `iperf3 -u -c ${host}:${port}: exit ${r.code}: ${j?.error ?? (r.stderr.trim() || r.stdout.trim().slice(-200) || 'no output')}`,
    );
  const packets = s.packets as number;
  const lost = s.lost_packets as number;
  if (!(packets > 0)) throw new VerifyError(`iperf3 -u -c ${host}: no datagrams counted`);
  const delivered = packets - lost;
  if (delivered <= 0) throw new VerifyError(`iperf3 -u -c ${host}: every datagram lost`);
  return {
    pps: delivered / s.seconds,
    lossPct: (100 * lost) / packets,
    mbps: (delivered * len * 8) / s.seconds / 1e6,
    packets,
  };
}

export interface DnsperfResult {
  qps: number;
  avgMs: number;
  lostPct: number;
  sent: number;
  completed: number;
}

/** dnsperf for `secs` against server:port with the given query file, at most `outstanding` queries in flight (-q). */
export async function dnsperf(
  ns: Netns,
  server: string,
  port: number,
  queryFile: string,
  secs: number,
  clients = 8,
  outstanding = 500,
): Promise<DnsperfResult> {
  need('dnsperf');
  const r = await ns.exec(
    'dnsperf',
    [
      '-s',
      server,
      '-p',
      String(port),
      '-d',
      queryFile,
      '-l',
      String(secs),
      '-c',
      String(clients),
      '-T',
      '2',
      '-q',
      String(outstanding),
      '-t',
      '2',
    ],
    {
      timeoutMs: (secs + 20) * 1000,
    },
  );
  const num = (re: RegExp) => Number(re.exec(r.stdout)?.[1] ?? Number.NaN);
  const sent = num(/Queries sent:\s+(\d+)/);
  const completed = num(/Queries completed:\s+(\d+)/);
  const qps = num(/Queries per second:\s+([\d.]+)/);
  const avg = num(/Average Latency \(s\):\s+([\d.]+)/);
  const noerror = num(/NOERROR (\d+)/);
  if (r.code !== 0 || !(completed > 0))
    throw new VerifyError(`dnsperf ${server}:${port}: exit ${r.code}: ${(r.stderr || r.stdout).trim().slice(-300)}`);
  if (noerror < completed * 0.99)
    throw new VerifyError(`dnsperf ${server}:${port}: only ${noerror} of ${completed} answers were NOERROR`);
  return { qps, avgMs: avg * 1000, lostPct: (100 * (sent - completed)) / sent, sent, completed };
}

// biome-ignore lint/suspicious/noExplicitAny: iperf3 JSON is untyped
function parseJson(s: string): any {
  try {
    return JSON.parse(s);
  } catch {
    return undefined;
  }
}

/** Compiles bench/lib/socks-udp.c (SOCKS5 UDP ASSOCIATE sender and a counting sink) once per run. */
export function socksUdpBinary(ctx: Ctx): Promise<string> {
  return benchBinary(ctx, 'socks-udp');
}

/** Parses iperf3-style rates: "500M" → 5e8 bits/s. */
export function rateBps(rate: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMG]?)$/.exec(rate);
  if (!m) throw new Error(`rate ${rate}: expected a number with an optional K/M/G suffix`);
  return Number(m[1]) * ({ '': 1, K: 1e3, M: 1e6, G: 1e9 } as Record<string, number>)[m[2] as string];
}

/**
 * `len`-byte datagrams at `rate` for `secs` from `client` straight through the SOCKS5 relay at
 * proxy:proxyPort (UDP ASSOCIATE, no fakeproxy) to a counting sink at sinkIp:sinkPort in `server`,
 * addressed to `sink.name` when given (ATYP 3: the relay resolves it to sinkIp), else to sinkIp.
 * Verifies that the sink got only whole datagrams and no more than were sent.
 */
export async function socksUdp(
  ctx: Ctx,
  client: Netns,
  server: Netns,
  proxy: { ip: string; port: number },
  sink: { ip: string; port: number; name?: string },
  secs: number,
  rate: string,
  len: number,
): Promise<IperfUdp> {
  const bin = await socksUdpBinary(ctx);
  const srv = server.spawn(bin, ['sink', sink.ip, String(sink.port), '1000'], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    let out = '';
    srv.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const done = new Promise<void>((resolve) => srv.once('exit', () => resolve()));
    for (let i = 0; i < 100 && !out.includes('ready'); i++) await sleep(20);
    if (!out.includes('ready')) throw new Error(`fpbench-socks-udp sink on ${sink.ip}:${sink.port} did not start`);
    const s = await client.exec(
      bin,
      [
        'send',
        proxy.ip,
        String(proxy.port),
        sink.name ?? sink.ip,
        String(sink.port),
        String(rateBps(rate)),
        String(len),
        String(secs),
      ],
      { timeoutMs: (secs + 20) * 1000 },
    );
    const sent = parseJson(s.stdout);
    if (s.code !== 0 || !(sent?.sent > 0))
      throw new VerifyError(`fpbench-socks-udp send via ${proxy.ip}:${proxy.port}: exit ${s.code}: ${s.stderr.trim()}`);
    // The sink stops 1 s after the last datagram.
    await Promise.race([done, sleep(15_000)]);
    const got = parseJson(out.slice(out.indexOf('{')));
    const received = got?.received as number;
    if (!(received > 0)) throw new VerifyError(`fpbench-socks-udp: the sink counted nothing (${out.trim()})`);
    if (received > sent.sent || got.bytes !== received * len)
      throw new VerifyError(
        `fpbench-socks-udp: sink counted ${received} datagrams / ${got.bytes} bytes for ${sent.sent} sent of ${len} bytes`,
      );
    const lost = sent.sent - received;
    return {
      pps: received / sent.seconds,
      lossPct: (100 * lost) / sent.sent,
      mbps: (received * len * 8) / sent.seconds / 1e6,
      packets: sent.sent,
    };
  } finally {
    srv.kill('SIGKILL');
  }
}
