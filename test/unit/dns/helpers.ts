/**
 * Test helpers: a real dnsmasq as the upstream resolver, the dig CLI as a
 * real client, and raw UDP/TCP senders for crafted bytes. Loopback only.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import { promisify } from 'node:util';
import dnsPacket from 'dns-packet';
import { FakeDns, type FakeDnsOptions } from '../../../src/dns/index.js';
import { dnsmasqArgs } from '../../support/confs.js';
import { freePort } from '../../support/net.js';

const execFileP = promisify(execFile);

export { freePort } from '../../support/net.js';

export interface Dnsmasq {
  port: number;
  stop(): Promise<void>;
}

/** Long TXT strings so the answer does not fit 512 bytes over UDP without EDNS. */
export const BIG_TXT = Array.from({ length: 6 }, (_, i) => `${String(i).repeat(200)}`);

export const DNSMASQ_RECORDS = [
  '--address=/filtered.lan/10.1.2.3',
  '--address=/time.apple.com/10.9.9.9',
  '--mx-host=example.test,mail.example.test,10',
  '--txt-record=txt.example.test,hello',
  ...BIG_TXT.map((t) => `--txt-record=big.example.test,${t}`),
  '--ptr-record=4.3.2.10.in-addr.arpa,real.example.test',
];

export async function startDnsmasq(extra: string[] = DNSMASQ_RECORDS): Promise<Dnsmasq> {
  const port = await freePort();
  const child: ChildProcess = spawn(
    '/usr/sbin/dnsmasq',
    dnsmasqArgs('127.0.0.1', ['--pid-file', `--port=${port}`, ...extra]),
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += String(d);
  });
  // Ready when it answers a query.
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) throw new Error(`dnsmasq exited: ${stderr}`);
    const r = await udpExchange(port, encodeQuery('txt.example.test', 'TXT'), 100);
    if (r) break;
  }
  return {
    port,
    stop: () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

export function encodeQuery(
  name: string,
  type: string,
  opts: { id?: number; edns?: number; rd?: boolean } = {},
): Buffer {
  return dnsPacket.encode({
    type: 'query',
    id: opts.id ?? 0x1234,
    flags: opts.rd === false ? 0 : dnsPacket.RECURSION_DESIRED,
    questions: [{ type: type as dnsPacket.RecordType, name }],
    additionals: opts.edns ? [{ type: 'OPT', name: '.', udpPayloadSize: opts.edns } as dnsPacket.Answer] : [],
  });
}

/** One datagram to 127.0.0.1:port; the first reply or undefined after `timeoutMs`. */
export function udpExchange(port: number, msg: Buffer, timeoutMs = 1000): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    const t = setTimeout(() => done(undefined), timeoutMs);
    const done = (b: Buffer | undefined) => {
      clearTimeout(t);
      s.close();
      resolve(b);
    };
    s.on('message', (m) => done(m));
    s.on('error', () => done(undefined));
    s.send(msg, port, '127.0.0.1');
  });
}

/** Send raw bytes over TCP; collect every length-prefixed reply until `count` arrived, close or timeout. */
export function tcpExchange(
  port: number,
  raw: Buffer,
  opts: { count?: number; timeoutMs?: number } = {},
): Promise<{ replies: Buffer[]; closed: boolean }> {
  const count = opts.count ?? 1;
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    let buf = Buffer.alloc(0);
    const replies: Buffer[] = [];
    let finished = false;
    const done = (closed: boolean) => {
      if (finished) return;
      finished = true;
      clearTimeout(t);
      s.destroy();
      resolve({ replies, closed });
    };
    const t = setTimeout(() => done(false), opts.timeoutMs ?? 2000);
    s.on('connect', () => s.write(raw));
    s.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        replies.push(buf.subarray(2, 2 + buf.readUInt16BE(0)));
        buf = buf.subarray(2 + buf.readUInt16BE(0));
      }
      if (replies.length >= count) done(false);
    });
    s.on('close', () => done(true));
    s.on('error', () => done(true));
  });
}

export function frame(msg: Buffer): Buffer {
  const b = Buffer.alloc(msg.length + 2);
  b.writeUInt16BE(msg.length, 0);
  msg.copy(b, 2);
  return b;
}

export interface DigResult {
  status: string;
  flags: string[];
  answers: { name: string; ttl: number; type: string; data: string }[];
  out: string;
}

/** Run the real dig client against 127.0.0.1:port. */
export async function dig(port: number, args: string[]): Promise<DigResult> {
  const { stdout } = await execFileP('dig', [
    '@127.0.0.1',
    '-p',
    String(port),
    '+tries=1',
    '+time=3',
    '+nocookie',
    ...args,
  ]);
  const status = /status: (\w+)/.exec(stdout)?.[1] ?? 'none';
  const flags = (/;; flags: ([^;]*);/.exec(stdout)?.[1] ?? '').trim().split(/\s+/);
  const answers: DigResult['answers'] = [];
  const sec = /;; ANSWER SECTION:\n([\s\S]*?)\n\n/.exec(stdout);
  if (sec) {
    for (const line of (sec[1] as string).split('\n')) {
      const m = /^(\S+)\s+(\d+)\s+IN\s+(\S+)\s+(.*)$/.exec(line);
      if (m) answers.push({ name: m[1] as string, ttl: Number(m[2]), type: m[3] as string, data: m[4] as string });
    }
  }
  return { status, flags, answers, out: stdout };
}

/** The data of the first answer of a decoded packet (undefined when none). */
export function firstData(d: dnsPacket.Packet | undefined): unknown {
  return (d?.answers?.[0] as { data?: unknown } | undefined)?.data;
}

/** The port FakeDns bound for its first listen address. */
export function portOf(d: { addresses: { port: number }[] }): number {
  const a = d.addresses[0];
  if (!a) throw new Error('server not listening');
  return a.port;
}

/** Value or a test failure. */
export function must<T>(v: T | undefined | null, what = 'value'): T {
  if (v === undefined || v === null) throw new Error(`expected a ${what}`);
  return v;
}

/**
 * A FakeDns (not yet started) for 198.18.0.0/16 on an ephemeral loopback
 * port, forwarding to 127.0.0.1:`upstreamPort` (9, discard: nothing answers),
 * silent; `extra` wins.
 */
export function fakeDnsOn(upstreamPort: number, extra: Partial<FakeDnsOptions> = {}): FakeDns {
  return new FakeDns({
    cidr: '198.18.0.0/16',
    listen: [{ host: '127.0.0.1', port: 0 }],
    upstream: { host: '127.0.0.1', port: upstreamPort },
    logger: () => {},
    ...extra,
  });
}
