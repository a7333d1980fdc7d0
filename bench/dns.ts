/**
 * DNS benchmark: dnsperf against our FakeDns and against dnsmasq answering
 * a local zone, both on 127.0.0.1 in the same run, and the ratio.
 *
 * Both servers get the same query file: `names` distinct A queries under
 * bench.test, cycled by dnsperf for `seconds`. For FakeDns the first pass
 * maps every name, then every query is the hot path (known name → fake IP).
 * dnsmasq answers the same names from `--address=/bench.test/192.0.2.1`
 * (its in-memory local-zone path; no upstream). Loopback only.
 *
 * No number is reported unverified: before timing, sample names are asked
 * of each server and their answers checked (FakeDns: a stable address in its
 * range; dnsmasq: 192.0.2.1); every dnsperf run must end with NOERROR as its
 * only response code and at least one completed query, or benchDns throws.
 *
 * Needs /usr/bin/dnsperf and /usr/sbin/dnsmasq (Debian packages dnsperf,
 * dnsmasq-base).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as dnsPacket from 'dns-packet';
import { FakeDns } from '../src/dns/index.js';
import { parseCidr } from '../src/util/cidr.js';
import { dnsmasqArgs } from '../test/support/confs.js';
import { freePort } from '../test/support/net.js';

export interface BenchDnsOptions {
  /** dnsperf run length for each server. @default 10 */
  seconds?: number;
  /** Runs of each server, alternating; the result is the median. @default 3 */
  rounds?: number;
  /** Distinct names in the query file. @default 1000 */
  names?: number;
  /** dnsperf -q: queries outstanding. @default 100 (dnsperf's default) */
  outstanding?: number;
  /** dnsperf -c: client sockets. @default 4 */
  clients?: number;
  dnsperf?: string;
  dnsmasq?: string;
  log?: (line: string) => void;
}

export interface BenchDnsResult {
  /** Median queries per second of FakeDns. */
  ours: number;
  /** Median queries per second of dnsmasq on a local zone. */
  dnsmasq: number;
  ratio: number;
}

export async function benchDns(opts: BenchDnsOptions = {}): Promise<BenchDnsResult> {
  const seconds = opts.seconds ?? 10;
  const rounds = opts.rounds ?? 3;
  const names = opts.names ?? 1000;
  const dnsperf = opts.dnsperf ?? '/usr/bin/dnsperf';
  const log = opts.log ?? (() => {});
  const dir = await mkdtemp(join(tmpdir(), 'fakeproxy-bench-dns-'));
  const file = join(dir, 'queries.txt');
  await writeFile(file, Array.from({ length: names }, (_, i) => `host${i}.bench.test A\n`).join(''));
  const perfArgs = (port: number) => [
    '-s',
    '127.0.0.1',
    '-p',
    String(port),
    '-d',
    file,
    '-l',
    String(seconds),
    '-q',
    String(opts.outstanding ?? 100),
    '-c',
    String(opts.clients ?? 4),
    '-T',
    '1',
  ];
  const dns = new FakeDns({
    cidr: '198.18.0.0/16',
    listen: [{ host: '127.0.0.1', port: 0 }],
    upstream: { host: '127.0.0.1', port: 9 },
    logger: log,
  });
  let child: ChildProcess | undefined;
  try {
    await dns.start();
    const port = await freePort();
    // dnsmasq on a local zone
    child = spawn(
      opts.dnsmasq ?? '/usr/sbin/dnsmasq',
      dnsmasqArgs('127.0.0.1', ['--pid-file', `--port=${port}`, '--address=/bench.test/192.0.2.1']),
      { stdio: 'ignore' },
    );
    await waitUdp(port, child);
    const fakePort = dns.addresses[0]?.port as number;
    const range = parseCidr('198.18.0.0/16');
    for (const i of [0, 1, Math.floor(names / 2), names - 1]) {
      const name = `host${i}.bench.test`;
      const a = await askA(fakePort, name);
      const n = a === undefined ? Number.NaN : ipInt(a);
      if (a === undefined || !(n >= range.network && n <= range.broadcast)) {
        throw new Error(`FakeDns answered ${name} with ${a ?? 'no A record'}, not an address in ${range.text}`);
      }
      if ((await askA(fakePort, name)) !== a) throw new Error(`FakeDns gave ${name} two different addresses`);
      const theirs = await askA(port, name);
      if (theirs !== '192.0.2.1') throw new Error(`dnsmasq answered ${name} with ${theirs ?? 'no A record'}`);
    }
    // Alternate the two so background load on the machine hits both alike; report medians.
    const ours: number[] = [];
    const theirs: number[] = [];
    for (let r = 0; r < rounds; r++) {
      ours.push(await runDnsperf(dnsperf, perfArgs(fakePort)));
      theirs.push(await runDnsperf(dnsperf, perfArgs(port)));
      log(`round ${r + 1}/${rounds}: fakedns ${ours[r]?.toFixed(0)} qps, dnsmasq ${theirs[r]?.toFixed(0)} qps`);
    }
    const o = median(ours);
    const d = median(theirs);
    return { ours: o, dnsmasq: d, ratio: d > 0 ? o / d : 0 };
  } finally {
    child?.kill('SIGTERM');
    await dns.close();
    await rm(dir, { recursive: true, force: true });
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function runDnsperf(bin: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => {
      out += String(d);
    });
    p.stderr.on('data', (d) => {
      out += String(d);
    });
    p.on('error', reject);
    p.on('close', (code) => {
      const m = /Queries per second:\s+([\d.]+)/.exec(out);
      const completed = Number(/Queries completed:\s+(\d+)/.exec(out)?.[1] ?? 0);
      const codes = /Response codes:\s+(.*)/.exec(out)?.[1] ?? '';
      const others = codes.split(',').filter((c) => c.trim() && !c.trim().startsWith('NOERROR '));
      if (code !== 0 || !m) reject(new Error(`dnsperf failed (exit ${code}): ${out.slice(-500)}`));
      else if (completed === 0) reject(new Error(`dnsperf: no query completed: ${out.slice(-500)}`));
      else if (others.length) reject(new Error(`dnsperf: answers other than NOERROR (${codes.trim()})`));
      else resolve(Number(m[1]));
    });
  });
}

function ipInt(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

/** The A record of `name` from 127.0.0.1:port (undefined when none, or no answer in 2 s). */
function askA(port: number, name: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const done = (v: string | undefined) => {
      clearTimeout(t);
      s.close();
      resolve(v);
    };
    const t = setTimeout(() => done(undefined), 2000);
    s.on('message', (msg) => {
      const r = dnsPacket.decode(msg);
      const a = r.answers?.find((x) => x.type === 'A');
      // RCODE is the low 4 bits of the flags; 0 = NOERROR.
      done(((r.flags ?? 0) & 0xf) === 0 && a && 'data' in a ? String(a.data) : undefined);
    });
    s.send(
      dnsPacket.encode({ type: 'query', id: 7, flags: dnsPacket.RECURSION_DESIRED, questions: [{ type: 'A', name }] }),
      port,
      '127.0.0.1',
    );
  });
}

/** Wait until something answers a DNS query on 127.0.0.1:port. */
async function waitUdp(port: number, child: ChildProcess): Promise<void> {
  // id 1, RD, one question: host0.bench.test A IN
  const q = Buffer.concat([
    Buffer.from([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]),
    Buffer.from('\x05host0\x05bench\x04test\x00\x00\x01\x00\x01', 'latin1'),
  ]);
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`dnsmasq exited with ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const s = dgram.createSocket('udp4');
      const t = setTimeout(() => {
        s.close();
        resolve(false);
      }, 100);
      s.on('message', () => {
        clearTimeout(t);
        s.close();
        resolve(true);
      });
      s.send(q, port, '127.0.0.1');
    });
    if (ok) return;
  }
  throw new Error(`dnsmasq did not answer on 127.0.0.1:${port}`);
}
