/** Real servers on 127.0.0.1 for the proxy tests: microsocks, tinyproxy, node origins. */
import { type ChildProcess, spawn } from 'node:child_process';
import * as dgram from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dnsPacket from 'dns-packet';
import { expect } from 'vitest';

import type { Logger } from '../../../src/log.js';
import type { FlowEntry, NatLookup, Proto } from '../../../src/nat/types.js';
import type { Outbound } from '../../../src/proxy/outbound.js';
import { Router } from '../../../src/proxy/router.js';
import type { Codec } from '../../../src/proxy/socks5-codec.js';

export const LO = '127.0.0.1';

import { tinyproxyConf } from '../../support/confs.js';
import { freePort } from '../../support/net.js';

export { freePort, until } from '../../support/net.js';

export async function listen(server: net.Server): Promise<number> {
  server.listen(0, LO);
  await once(server, 'listening');
  return (server.address() as net.AddressInfo).port;
}

export function closeServer(server: net.Server): Promise<void> {
  return new Promise((r) => server.close(() => r()));
}

/**
 * A scripted TCP peer, for protocol corner cases that real servers do not
 * produce on demand. `onConnection(c)` returns that connection's reader: after
 * each read it gets every byte received and not yet consumed, and returns
 * what it leaves for later. Connection errors are ignored (tests reset them
 * on purpose); close() destroys the open connections, then the server.
 */
export async function scriptedServer(onConnection: (c: net.Socket) => (buf: Buffer) => Buffer) {
  const conns: net.Socket[] = [];
  const server = net.createServer((c) => {
    conns.push(c);
    c.on('error', () => {});
    const read = onConnection(c);
    let buf: Buffer = Buffer.alloc(0);
    c.on('data', (d: Buffer) => {
      buf = read(Buffer.concat([buf, d]));
    });
  });
  const port = await listen(server);
  return {
    port,
    conns,
    close: async () => {
      for (const c of conns) c.destroy();
      await closeServer(server);
    },
  };
}

/** Resolves once something accepts on port (the spawned daemon is up). */
export async function waitForPort(port: number, proc?: ChildProcess, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    if (proc?.exitCode !== null && proc?.exitCode !== undefined) throw new Error(`process exited ${proc.exitCode}`);
    const ok = await new Promise<boolean>((r) => {
      const s = net.connect(port, LO);
      s.once('connect', () => {
        s.destroy();
        r(true);
      });
      s.once('error', () => r(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`nothing listens on ${port} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface Daemon {
  port: number;
  proc: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

export async function spawnDaemon(cmd: string, args: string[], port: number, cleanup?: () => void): Promise<Daemon> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  proc.stderr?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  await waitForPort(port, proc);
  return {
    port,
    proc,
    output: () => out,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const exited = once(proc, 'exit');
        proc.kill('SIGTERM');
        await exited;
      }
      cleanup?.();
    },
  };
}

export async function startMicrosocks(auth?: { user: string; pass: string }): Promise<Daemon> {
  const port = await freePort();
  const args = ['-i', LO, '-p', String(port)];
  if (auth) args.push('-u', auth.user, '-P', auth.pass);
  return spawnDaemon('/usr/bin/microsocks', args, port);
}

export async function startTinyproxy(extra: string[] = []): Promise<Daemon> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'fp-tinyproxy-'));
  const conf = join(dir, 'tinyproxy.conf');
  writeFileSync(
    conf,
    tinyproxyConf({ ip: LO, port, extra: ['Timeout 30', 'MaxClients 50', `PidFile "${join(dir, 'pid')}"`, ...extra] }),
  );
  return spawnDaemon('/usr/bin/tinyproxy', ['-d', '-c', conf], port, () =>
    rmSync(dir, { recursive: true, force: true }),
  );
}

/** TCP server answering each connection with `greet` then echoing; `received` collects what arrived. */
export async function echoOrigin(greet?: string) {
  const conns: net.Socket[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    conns.push(s);
    s.on('error', () => {});
    if (greet) s.write(greet);
    s.pipe(s);
  });
  const port = await listen(server);
  return {
    server,
    port,
    conns,
    close: () => {
      for (const c of conns) c.destroy();
      return closeServer(server);
    },
  };
}

export function readAll(s: net.Socket): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    s.on('data', (d: Buffer) => parts.push(d));
    s.once('end', () => resolve(Buffer.concat(parts)));
    s.once('error', reject);
  });
}

/** Resolves with the error a socket dies with (rejects if it closes cleanly). */
export function socketError(s: net.Socket): Promise<NodeJS.ErrnoException> {
  return new Promise((resolve, reject) => {
    s.once('error', resolve);
    s.once('close', (hadError) => {
      if (!hadError) reject(new Error('socket closed without an error'));
    });
    s.resume();
  });
}

/** Connected pair on loopback: [client, the server's accepted socket], both allowHalfOpen. */
export async function socketPair(): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ allowHalfOpen: true });
  const port = await listen(server);
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const client = net.connect({ port, host: LO, allowHalfOpen: true });
  await once(client, 'connect');
  const [srv] = await accepted;
  server.close();
  return [client, srv];
}

/** A NAT table row as the engine reports it, with zero counters and times; `proto`'s usual state. */
export function flowEntry(
  f: Pick<FlowEntry, 'id' | 'srcIp' | 'srcPort' | 'dstIp' | 'dstPort' | 'natPort'> & Partial<FlowEntry>,
): FlowEntry {
  const proto = f.proto ?? 'udp';
  return {
    proto,
    natIp: LO,
    state: proto === 'udp' ? 'udp' : 'established',
    createdMs: 0,
    lastSeenMs: 0,
    pktsOut: 0,
    bytesOut: 0,
    pktsIn: 0,
    bytesIn: 0,
    ...f,
  };
}

/** Maps app sockets (by their local port, read at lookup time) to an original destination. */
export class FakeNat implements NatLookup {
  readonly flows = new Map<net.Socket, { dstIp: string; dstPort: number }>();
  lookups = 0;
  #id = 0;
  lookup(proto: Proto, natIp: string, natPort: number): FlowEntry | undefined {
    this.lookups++;
    for (const [sock, dst] of this.flows) {
      if (proto === 'tcp' && natIp === LO && sock.localPort === natPort) {
        return flowEntry({ id: ++this.#id, proto, srcIp: '198.18.0.1', srcPort: 40000, ...dst, natIp, natPort });
      }
    }
    return undefined;
  }
}

/**
 * Write, wait for the echo, then close. (Not `end(msg)`: microsocks's copy
 * loop closes both sides on the first EOF, so it cannot carry a half-close.)
 */
export async function echoThrough(sock: net.Socket, msg: string, expectLen = msg.length): Promise<string> {
  let got = '';
  sock.setEncoding('latin1');
  const done = new Promise<string>((resolve, reject) => {
    sock.on('data', (d: string) => {
      got += d;
      if (got.length >= expectLen) resolve(got);
    });
    sock.once('error', reject);
    sock.once('end', () => resolve(got));
  });
  sock.write(msg);
  const out = await done;
  sock.destroy();
  return out;
}

/** A UDP socket bound on loopback (an app's NAT address, an echo); closed by `closers`. */
export async function boundUdp(closers: Array<() => unknown>): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4');
  s.bind(0, LO);
  await once(s, 'listening');
  closers.push(() => s.close());
  return s;
}

/** The options both Listeners (TcpListener, UdpListener) take that startListener fills in. */
interface ListenerBase {
  host: string;
  port?: number;
  router: Router;
  logger?: Logger;
}
/** What startListener calls on a Listener whose session events are E. */
interface Startable<E> {
  on(event: 'session', cb: (e: E) => void): unknown;
  start(): Promise<void>;
  close(): Promise<void>;
}

/**
 * A TcpListener or UdpListener started on an ephemeral loopback port, routing everything to `final`
 * (unless `opts.router` says otherwise), its log lines and session events collected; closed by `closers`.
 */
export async function startListener<O extends ListenerBase, L extends Startable<E>, E>(
  Listener: new (o: O) => L & Startable<E>,
  final: Outbound,
  opts: Omit<O, keyof ListenerBase> & Partial<ListenerBase>,
  closers: Array<() => unknown>,
): Promise<{ l: L; log: string[]; sessions: E[] }> {
  const log: string[] = [];
  const sessions: E[] = [];
  const l = new Listener({
    host: LO,
    port: 0,
    router: new Router({ final }),
    logger: (line: string) => log.push(line),
    ...opts,
  } as unknown as O);
  l.on('session', (e) => sessions.push(e));
  await l.start();
  closers.push(() => l.close());
  return { l, log, sessions };
}

/** dns-packet style: encode → length matches → decode gives the value back, also at an offset. */
export function roundTrip<T>(codec: Codec<T>, value: T): Buffer {
  const buf = codec.encode(value);
  expect(buf.length).toBe(codec.encodingLength(value));
  expect(codec.decode(buf)).toEqual(value);
  const padded = Buffer.alloc(buf.length + 7, 0xee);
  codec.encode(value, padded, 5);
  expect(codec.decode(padded, 5)).toEqual(value);
  return buf;
}

/**
 * A real UDP DNS server on loopback: `a[name]` are the A records of the names
 * it knows (other types of those names: NOERROR, no answer); any other name
 * is NXDOMAIN. `asked` records every question as "TYPE name".
 */
export async function loopbackDns(
  a: Record<string, Array<{ ttl: number; data: string }>>,
): Promise<{ port: number; asked: string[]; close: () => void }> {
  const asked: string[] = [];
  const dns = dgram.createSocket('udp4');
  dns.on('message', (msg, rinfo) => {
    const q = dnsPacket.decode(msg);
    const question = q.questions?.[0];
    if (!question) return;
    asked.push(`${question.type} ${question.name}`);
    const known = a[question.name];
    const answers =
      known && question.type === 'A' ? known.map((r) => ({ type: 'A' as const, name: question.name, ...r })) : [];
    const answer = dnsPacket.encode({
      id: q.id,
      type: 'response',
      flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (known ? 0 : 3),
      questions: [question],
      answers,
    });
    dns.send(answer, rinfo.port, rinfo.address);
  });
  dns.bind(0, LO);
  await once(dns, 'listening');
  return { port: dns.address().port, asked, close: () => dns.close() };
}
