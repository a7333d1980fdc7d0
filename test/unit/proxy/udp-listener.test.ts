import { spawn } from 'node:child_process';
import * as dgram from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FlowEntry, Proto } from '../../../src/nat/types.js';
import type { Outbound } from '../../../src/proxy/outbound.js';
import { DirectOutbound } from '../../../src/proxy/outbounds/direct.js';
import { HttpOutbound } from '../../../src/proxy/outbounds/http.js';
import { Socks5Outbound } from '../../../src/proxy/outbounds/socks5.js';
import type { UdpNat } from '../../../src/proxy/udp/association.js';
import { UdpListener, type UdpListenerOptions } from '../../../src/proxy/udp/udpListener.js';
import { danteConf } from '../../support/confs.js';
import { type Daemon, flowEntry, freePort, LO, listen, spawnDaemon, startListener, until } from './helpers.js';

const FAKE1 = '198.18.2.2';
const FAKE2 = '198.18.2.3';
const FAKE_DNS = '198.18.2.53';
const NAMES: Record<string, string> = { [FAKE1]: 'localhost', [FAKE2]: 'echo2.test', [FAKE_DNS]: 'dns.test' };
const names = { reverse: (ip: string) => NAMES[ip] };
/** Resolver injected into direct; counts calls (one per name per association). */
const resolveCalls: string[] = [];
const resolve = async (name: string) => {
  resolveCalls.push(name);
  if (name === 'localhost' || name === 'echo2.test' || name === 'dns.test') return [LO];
  throw new Error(`no such name ${name}`);
};

// ---------------------------------------------------------------- fakes and servers

class FakeNat implements UdpNat {
  readonly flows = new Map<number, FlowEntry>();
  readonly spare: dgram.Socket[] = [];
  readonly ensured: Array<[string, number, string, number]> = [];
  #id = 0;

  add(natPort: number, app: { ip: string; port: number }, dst: { ip: string; port: number }): FlowEntry {
    const e = flowEntry({
      id: ++this.#id,
      srcIp: app.ip,
      srcPort: app.port,
      dstIp: dst.ip,
      dstPort: dst.port,
      natPort,
    });
    this.flows.set(natPort, e);
    return e;
  }
  lookup(proto: Proto, natIp: string, natPort: number): FlowEntry | undefined {
    return proto === 'udp' && natIp === LO ? this.flows.get(natPort) : undefined;
  }
  ensureFlow(_p: 'udp', srcIp: string, srcPort: number, dstIp: string, dstPort: number): FlowEntry | undefined {
    for (const e of this.flows.values()) {
      if (e.srcIp === srcIp && e.srcPort === srcPort && e.dstIp === dstIp && e.dstPort === dstPort) return e;
    }
    const s = this.spare.shift();
    if (!s) return undefined;
    this.ensured.push([srcIp, srcPort, dstIp, dstPort]);
    return this.add(s.address().port, { ip: srcIp, port: srcPort }, { ip: dstIp, port: dstPort });
  }
}

const sockets: dgram.Socket[] = [];
async function udpSocket(): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4');
  sockets.push(s);
  s.bind(0, LO);
  await once(s, 'listening');
  return s;
}

/** UDP echo server; `peers` records every source (ip:port) it heard from. */
async function echoServer(onMsg?: (msg: Buffer, r: dgram.RemoteInfo) => void) {
  const s = await udpSocket();
  const peers = new Set<string>();
  let count = 0;
  s.on('message', (m, r) => {
    count++;
    peers.add(`${r.address}:${r.port}`);
    s.send(m, r.port, r.address);
    onMsg?.(m, r);
  });
  return { sock: s, port: s.address().port, peers, count: () => count };
}

/** Real dante (danted) allowing UDP ASSOCIATE on loopback, in the foreground with one process. */
async function startDante(): Promise<Daemon> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'fp-dante-'));
  const conf = join(dir, 'danted.conf');
  writeFileSync(conf, danteConf({ ip: LO, port }));
  return spawnDaemon('/usr/sbin/danted', ['-f', conf, '-N', '1'], port, () =>
    rmSync(dir, { recursive: true, force: true }),
  );
}

// ---------------------------------------------------------------- setup

let dante: Daemon;
let echo: Awaited<ReturnType<typeof echoServer>>;
const closers: Array<() => unknown> = [];

beforeAll(async () => {
  [dante, echo] = await Promise.all([startDante(), echoServer()]);
});
afterEach(async () => {
  await Promise.all(closers.splice(0).map((c) => c()));
  for (const s of sockets.splice(0)) if (s !== echo.sock) s.close();
  sockets.push(echo.sock);
  resolveCalls.length = 0;
});
afterAll(async () => {
  await dante?.stop();
  echo?.sock.close();
});

async function setup<N extends FakeNat = FakeNat>(
  final: Outbound,
  extra: Partial<UdpListenerOptions> = {},
  spares = 0,
  nat: N = new FakeNat() as N,
) {
  for (let i = 0; i < spares; i++) nat.spare.push(await udpSocket());
  const { l, log, sessions } = await startListener(UdpListener, final, { nat, names, ...extra }, closers);
  const lport = l.address().port;
  /** A NAT address (client socket) for app socket `app` headed for dst; `send` goes to the listener. */
  const flow = async (app: { ip: string; port: number }, dst: { ip: string; port: number }) => {
    const s = await udpSocket();
    const entry = nat.add(s.address().port, app, dst);
    const got: Buffer[] = [];
    s.on('message', (m) => got.push(m));
    return { sock: s, entry, got, send: (b: Buffer | string) => s.send(b, lport, LO) };
  };
  return { l, nat, log, sessions, flow, lport };
}

const APP_A = { ip: '198.18.0.1', port: 40001 };
const APP_B = { ip: '198.18.0.1', port: 40002 };

/** Deterministic payloads: 4-byte index, then bytes from a small LCG; sizes 4…1472 (a 1500 MTU's UDP payload). */
function payload(i: number): Buffer {
  const sizes = [4, 5, 64, 512, 1200, 1472];
  const size = i < sizes.length ? (sizes[i] as number) : 4 + ((i * 7919) % 1469);
  const b = Buffer.alloc(size);
  b.writeUInt32BE(i, 0);
  let x = i * 2654435761;
  for (let j = 4; j < size; j++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[j] = x >>> 24;
  }
  return b;
}

/**
 * Send `n` payloads through `sock` → listener with at most `window` in
 * flight (loopback UDP drops bursts that overrun socket buffers; the test is
 * about integrity, not burst tolerance). Returns what came back by index.
 * Gives up when nothing arrives for `stallMs` (a loss), so a failure is
 * reported as a count rather than a test timeout.
 */
async function pump(sock: dgram.Socket, lport: number, n: number, window = 16, stallMs = 3000) {
  const back = new Map<number, Buffer>();
  let next = 0;
  let inFlight = 0;
  return new Promise<Map<number, Buffer>>((resolve) => {
    let timer: NodeJS.Timeout;
    const done = () => {
      clearTimeout(timer);
      sock.removeListener('message', onMsg);
      resolve(back);
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(done, stallMs);
    };
    const fill = () => {
      while (inFlight < window && next < n) {
        sock.send(payload(next++), lport, LO);
        inFlight++;
      }
    };
    const onMsg = (m: Buffer) => {
      inFlight--;
      back.set(m.readUInt32BE(0), m);
      if (back.size === n) return done();
      arm();
      fill();
    };
    sock.on('message', onMsg);
    arm();
    fill();
  });
}

function expectIntact(back: Map<number, Buffer>, n: number) {
  let bad = 0;
  for (let i = 0; i < n; i++) if (!back.get(i)?.equals(payload(i))) bad++;
  expect({ received: back.size, bad }).toEqual({ received: n, bad: 0 });
}

// ---------------------------------------------------------------- tests

/** Two app sockets to one destination through `out`: an association and an upstream port each, `n` replies each, intact. */
async function twoAppsStaySeparate(out: Outbound, n: number) {
  const { l, flow, lport } = await setup(out);
  const a = await flow(APP_A, { ip: FAKE1, port: echo.port });
  const b = await flow(APP_B, { ip: FAKE1, port: echo.port });
  echo.peers.clear();
  const [ba, bb] = await Promise.all([pump(a.sock, lport, n), pump(b.sock, lport, n)]);
  expectIntact(ba, n);
  expectIntact(bb, n);
  expect(echo.peers.size).toBe(2);
  expect(l.stats()).toMatchObject({ opened: 2, associations: 2 });
}

describe('UdpListener via direct', () => {
  it('1000 datagrams of assorted sizes echo intact; the name is resolved once per association', async () => {
    const { l, flow, lport, sessions } = await setup(new DirectOutbound({ resolve }));
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    const back = await pump(f.sock, lport, 1000);
    expectIntact(back, 1000);
    expect(resolveCalls).toEqual(['localhost']);
    const st = l.stats();
    expect(st).toMatchObject({ datagramsUp: 1000, datagramsDown: 1000, associations: 1, opened: 1, rejectedPeers: 0 });
    expect(Object.values(st.dropped).reduce((a, b) => a + b, 0)).toBe(0);
    expect(sessions[0]).toMatchObject({
      phase: 'open',
      proto: 'udp',
      name: 'localhost',
      ip: FAKE1,
      port: echo.port,
      outbound: 'direct',
      app: '198.18.0.1:40001',
      // The routing decision rides in the event (the Redis mirror stores it).
      rule: expect.stringMatching(/^MATCH \(final\),\S+$/),
      chain: expect.stringMatching(/^\S+$/),
    });
  });

  it('one association per app socket: two destinations share one upstream port, replies reach each flow', async () => {
    const echo2 = await echoServer();
    const { l, flow } = await setup(new DirectOutbound({ resolve }));
    const f1 = await flow(APP_A, { ip: FAKE1, port: echo.port });
    const f2 = await flow(APP_A, { ip: FAKE2, port: echo2.port });
    echo.peers.clear();
    f1.send('to one');
    f2.send('to two');
    await until(() => f1.got.length === 1 && f2.got.length === 1);
    expect(f1.got[0]?.toString()).toBe('to one');
    expect(f2.got[0]?.toString()).toBe('to two');
    expect(l.stats()).toMatchObject({ opened: 1, associations: 1 });
    // Endpoint-independent mapping: both remotes saw the same source.
    expect([...echo.peers]).toEqual([...echo2.peers]);
  });

  it('two app sockets stay separate: own association, own upstream port, own replies', async () => {
    await twoAppsStaySeparate(new DirectOutbound({ resolve }), 100);
  });

  it('a destination without a name goes out to its real IP', async () => {
    const { flow, sessions } = await setup(new DirectOutbound());
    const f = await flow(APP_A, { ip: LO, port: echo.port });
    f.send('by ip');
    await until(() => f.got.length === 1);
    expect(f.got[0]?.toString()).toBe('by ip');
    expect(sessions[0]).toMatchObject({ name: undefined, ip: LO });
  });

  it('a datagram from a non-NAT peer is dropped and counted, no association', async () => {
    const { l, lport, log } = await setup(new DirectOutbound({ resolve }));
    const stranger = await udpSocket();
    stranger.send('hi', lport, LO);
    await until(() => l.stats().rejectedPeers === 1);
    expect(l.stats()).toMatchObject({ opened: 0, associations: 0 });
    expect(log.join('\n')).toMatch(/non-NAT peers/);
  });
});

describe('UdpListener: replies from a remote the app never sent to', () => {
  /** An origin that echoes and also answers from a second socket (another remote). */
  async function twoFacedOrigin() {
    const other = await udpSocket();
    const origin = await echoServer((m, r) => other.send(Buffer.concat([Buffer.from('other:'), m]), r.port, r.address));
    return { origin, otherPort: other.address().port };
  }

  it('full cone (default): delivered via nat.ensureFlow, so the app sees the real remote as source', async () => {
    const { origin, otherPort } = await twoFacedOrigin();
    const { l, flow, nat } = await setup(new DirectOutbound({ resolve }), {}, 1);
    const spare = nat.spare[0] as dgram.Socket;
    const spareGot: Buffer[] = [];
    spare.on('message', (m) => spareGot.push(m));
    const f = await flow(APP_A, { ip: FAKE1, port: origin.port });
    f.send('ping');
    await until(() => f.got.length === 1 && spareGot.length === 1);
    expect(f.got[0]?.toString()).toBe('ping');
    expect(spareGot[0]?.toString()).toBe('other:ping');
    expect(nat.ensured).toEqual([[APP_A.ip, APP_A.port, LO, otherPort]]);
    // A second reply from that remote reuses the entry.
    f.send('again');
    await until(() => spareGot.length === 2);
    expect(nat.ensured).toHaveLength(1);
    expect(l.stats().dropped['unknown-remote']).toBe(0);
  });

  it('fullCone: false → dropped and counted; ensureFlow never called', async () => {
    const { origin } = await twoFacedOrigin();
    const { l, flow, nat } = await setup(new DirectOutbound({ resolve }), { fullCone: false }, 1);
    const f = await flow(APP_A, { ip: FAKE1, port: origin.port });
    f.send('ping');
    await until(() => f.got.length === 1 && l.stats().dropped['unknown-remote'] === 1);
    expect(nat.ensured).toHaveLength(0);
  });

  it('a NAT entry that vanished is re-created with ensureFlow for the same fake source', async () => {
    const { flow, nat } = await setup(new DirectOutbound({ resolve }), {}, 1);
    const spare = nat.spare[0] as dgram.Socket;
    const spareGot: Buffer[] = [];
    spare.on('message', (m) => spareGot.push(m));
    const slow = await echoServer();
    const f = await flow(APP_A, { ip: FAKE1, port: slow.port });
    // Swap the echo for a delayed one: the NAT entry expires before the reply.
    slow.sock.removeAllListeners('message');
    slow.sock.on('message', (m, r) => {
      nat.flows.delete(f.entry.natPort);
      slow.sock.send(m, r.port, r.address);
    });
    f.send('late');
    await until(() => spareGot.length === 1);
    expect(spareGot[0]?.toString()).toBe('late');
    expect(nat.ensured).toEqual([[APP_A.ip, APP_A.port, FAKE1, slow.port]]);
    expect(f.got).toHaveLength(0);
  });
});

describe('UdpListener via dante (SOCKS5 UDP ASSOCIATE)', () => {
  it('1000 datagrams of assorted sizes echo intact; dante gets the name, we learn its reply address', async () => {
    const { l, flow, lport } = await setup(new Socks5Outbound({ host: LO, port: dante.port }));
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    const back = await pump(f.sock, lport, 1000);
    expectIntact(back, 1000);
    const st = l.stats();
    expect(st).toMatchObject({ datagramsUp: 1000, datagramsDown: 1000, associations: 1, opened: 1 });
    expect(Object.values(st.dropped).reduce((a, b) => a + b, 0)).toBe(0);
    expect(resolveCalls).toEqual([]); // the proxy resolved "localhost", not us
  });

  it('two app sockets: two associations (two control connections), replies stay separate', async () => {
    await twoAppsStaySeparate(new Socks5Outbound({ host: LO, port: dante.port }), 50);
  });

  it('closing the listener ends every association with a close event', async () => {
    const { l, flow, sessions } = await setup(new Socks5Outbound({ host: LO, port: dante.port }));
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    f.send('x');
    await until(() => f.got.length === 1);
    await l.close();
    expect(sessions.at(-1)).toMatchObject({ phase: 'close', end: 'closed', datagramsUp: 1, datagramsDown: 1 });
    expect(l.stats().associations).toBe(0);
  });
});

describe('UdpListener: idle, bounds, outbounds that cannot carry UDP', () => {
  it('an association expires after the idle timeout; the next datagram opens a new one', async () => {
    const { l, flow, sessions } = await setup(new DirectOutbound({ resolve }), { idleTimeoutMs: 100 });
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    f.send('1');
    await until(() => f.got.length === 1);
    await until(() => l.stats().associations === 0);
    expect(sessions.at(-1)).toMatchObject({ phase: 'close', end: 'idle', datagramsUp: 1, datagramsDown: 1 });
    expect(l.stats().expired).toBe(1);
    f.send('2');
    await until(() => f.got.length === 2);
    expect(l.stats()).toMatchObject({ opened: 2, associations: 1 });
  });

  it('DNS-only associations (port 53) expire on the shorter timeout; others stay', async () => {
    const { l, flow, sessions } = await setup(new DirectOutbound({ resolve }), {
      idleTimeoutMs: 600_000,
      dnsIdleTimeoutMs: 100,
    });
    const other = await flow(APP_A, { ip: FAKE1, port: echo.port });
    const dns = await flow(APP_B, { ip: FAKE_DNS, port: 53 });
    other.send('keep');
    dns.send('query');
    await until(() => sessions.some((e) => e.phase === 'close'));
    const closed = sessions.filter((e) => e.phase === 'close');
    expect(closed).toHaveLength(1);
    expect(closed[0]).toMatchObject({ end: 'idle', name: 'dns.test', port: 53, app: '198.18.0.1:40002' });
    expect(l.stats().associations).toBe(1);
  });

  it('past maxAssociations the least recently active one is evicted, counted', async () => {
    const { l, flow, sessions } = await setup(new DirectOutbound({ resolve }), { maxAssociations: 2 });
    const apps = [APP_A, APP_B, { ip: '198.18.0.1', port: 40003 }];
    const fs = [];
    for (const app of apps) {
      const f = await flow(app, { ip: FAKE1, port: echo.port });
      f.send('x');
      await until(() => f.got.length === 1);
      fs.push(f);
    }
    expect(l.stats()).toMatchObject({ associations: 2, evicted: 1, opened: 3 });
    expect(sessions.find((e) => e.phase === 'close')).toMatchObject({ end: 'evicted', app: '198.18.0.1:40001' });
  });

  it('http cannot carry UDP: every datagram dropped and counted, one log line per flow', async () => {
    const { l, flow, log } = await setup(new HttpOutbound({ host: LO, port: 9 }));
    const f1 = await flow(APP_A, { ip: FAKE1, port: echo.port });
    const f2 = await flow(APP_A, { ip: FAKE2, port: echo.port });
    const before = echo.count();
    for (let i = 0; i < 5; i++) f1.send(`a${i}`);
    for (let i = 0; i < 3; i++) f2.send(`b${i}`);
    await until(() => l.stats().dropped['no-udp'] === 8);
    expect(log.filter((x) => x.includes('cannot carry UDP'))).toHaveLength(2);
    expect(log[0]).toMatch(
      /udp localhost:\d+ via http:\/\/127\.0\.0\.1:9: dropped: the http outbound cannot carry UDP/,
    );
    expect(echo.count()).toBe(before);
  });

  it('setup queue is bounded (drop oldest, counted); a silent proxy fails the setup and the rest is dropped', async () => {
    const held: net.Socket[] = [];
    const mute = net.createServer((c) => held.push(c.on('error', () => {})));
    const port = await listen(mute);
    try {
      const { l, flow, log, sessions } = await setup(new Socks5Outbound({ host: LO, port }), {
        maxQueue: 4,
        connectTimeoutMs: 200,
        retryAfterFailureMs: 600_000,
      });
      const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
      for (let i = 0; i < 10; i++) f.send(`q${i}`);
      await until(() => l.stats().datagramsUp === 10);
      expect(l.stats().dropped['queue-full']).toBe(6);
      await until(() => l.stats().setupFailed === 1);
      expect(l.stats().dropped['setup-failed']).toBe(4);
      expect(sessions.at(-1)).toMatchObject({ phase: 'close', end: 'connect-failed', errorCode: 'ETIMEDOUT' });
      expect(log.join('\n')).toMatch(/via socks5:\/\/127\.0\.0\.1:\d+: ETIMEDOUT/);
      // In the retry hold: dropped without another dial.
      f.send('held');
      await until(() => l.stats().dropped['setup-failed'] === 5);
      expect(held).toHaveLength(1);
    } finally {
      for (const c of held) c.destroy();
      await new Promise<void>((r) => mute.close(() => r()));
    }
  });
});

/** A FakeNat that counts lookups and reports closes like NatManager's 'udpClose' event. */
class ClosingNat extends FakeNat {
  lookups = 0;
  readonly #cbs = new Set<(flow: FlowEntry) => void>();
  override lookup(proto: Proto, natIp: string, natPort: number): FlowEntry | undefined {
    this.lookups++;
    return super.lookup(proto, natIp, natPort);
  }
  on(_e: 'udpClose', cb: (flow: FlowEntry) => void): this {
    this.#cbs.add(cb);
    return this;
  }
  off(_e: 'udpClose', cb: (flow: FlowEntry) => void): this {
    this.#cbs.delete(cb);
    return this;
  }
  /** The flow leaves the table; `report` false = its close event has not arrived yet. */
  close(e: FlowEntry, report = true): void {
    this.flows.delete(e.natPort);
    if (report) for (const cb of this.#cbs) cb(e);
  }
  listeners(): number {
    return this.#cbs.size;
  }
}

describe('UdpListener with a NAT that reports closes: per-flow cache', () => {
  it('looks a flow up once, not per datagram or per reply', async () => {
    const nat = new ClosingNat();
    const { l, flow, lport } = await setup(new DirectOutbound({ resolve }), {}, 0, nat);
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    const back = await pump(f.sock, lport, 200);
    expectIntact(back, 200);
    expect(nat.lookups).toBe(1);
    expect(l.stats()).toMatchObject({ datagramsUp: 200, datagramsDown: 200, rejectedPeers: 0 });
  });

  it('after the close event the NAT address is looked up again (and rejected when gone)', async () => {
    const nat = new ClosingNat();
    const { l, flow } = await setup(new DirectOutbound({ resolve }), {}, 0, nat);
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    f.send('one');
    await until(() => f.got.length === 1);
    nat.close(f.entry);
    f.send('two');
    await until(() => l.stats().rejectedPeers === 1);
    expect(f.got).toHaveLength(1);
    expect(nat.lookups).toBe(2);
  });

  it('a reply after the close event re-creates the flow with ensureFlow', async () => {
    const nat = new ClosingNat();
    const { flow } = await setup(new DirectOutbound({ resolve }), {}, 1, nat);
    const spare = nat.spare[0] as dgram.Socket;
    const spareGot: Buffer[] = [];
    spare.on('message', (m) => spareGot.push(m));
    const slow = await echoServer();
    const f = await flow(APP_A, { ip: FAKE1, port: slow.port });
    f.send('warm');
    await until(() => f.got.length === 1);
    slow.sock.removeAllListeners('message');
    slow.sock.on('message', (m, r) => {
      nat.close(f.entry);
      slow.sock.send(m, r.port, r.address);
    });
    f.send('late');
    await until(() => spareGot.length === 1);
    expect(spareGot[0]?.toString()).toBe('late');
    expect(nat.ensured).toEqual([[APP_A.ip, APP_A.port, FAKE1, slow.port]]);
  });

  it('close() unsubscribes from the NAT', async () => {
    const nat = new ClosingNat();
    const { l } = await setup(new DirectOutbound({ resolve }), {}, 0, nat);
    expect(nat.listeners()).toBe(1);
    await l.close();
    expect(nat.listeners()).toBe(0);
  });
});

describe('UdpListener on the native relay (native/udp_relay.h)', () => {
  it('10 000 datagrams echo intact and move natively: JS sees only the ones before the flow is bound', async () => {
    const nat = new ClosingNat();
    const { l, flow, lport, sessions } = await setup(new DirectOutbound({ resolve }), {}, 0, nat);
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    const window = 64;
    const back = await pump(f.sock, lport, 10_000, window);
    expectIntact(back, 10_000);
    const s = l.stats();
    expect(s).toMatchObject({ datagramsUp: 10_000, datagramsDown: 10_000, associations: 1, opened: 1 });
    // Before the name resolved and the flow was bound, at most one window went through JS; none after.
    expect(s.nativeMisses).toBeGreaterThanOrEqual(1);
    expect(s.nativeMisses).toBeLessThanOrEqual(window);
    expect(nat.lookups).toBe(1);
    expect(sessions.map((e) => e.phase)).toEqual(['open']);
  });

  it('a coalesced receive (UDP_GRO: what the engine writes as one GSO packet) is split into its datagrams, both before and after the flow is bound', async () => {
    const nat = new ClosingNat();
    const { l, lport } = await setup(new DirectOutbound({ resolve }), {}, 0, nat);
    // A sender Node cannot be: one sendmsg with UDP_SEGMENT, which loopback hands to the listener whole.
    // Segment i of a send is `seg` bytes of (tag + i), the last one shorter; the echoes are printed as tag:len.
    const py = spawn('python3', [
      '-c',
      `import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('${LO}', 0))
print(s.getsockname()[1], flush=True)
s.settimeout(20)
for line in sys.stdin:
    tag, n, seg = (int(x) for x in line.split())
    data = b''.join(bytes([tag + i]) * (seg if i < n - 1 else seg // 2) for i in range(n))
    s.sendmsg([data], [(socket.SOL_UDP, 103, struct.pack('H', seg))], 0, ('${LO}', ${lport}))
    got = sorted((s.recv(65535) for _ in range(n)), key=lambda b: b[0])
    ok = all(b == bytes([tag + i]) * len(b) for i, b in enumerate(got))
    print(' '.join('%d:%d' % (b[0], len(b)) for b in got) if ok else 'corrupt', flush=True)
`,
    ]);
    try {
      const lines: string[] = [];
      let err = '';
      py.stderr.on('data', (d: Buffer) => {
        err += d.toString();
      });
      let buf = '';
      py.stdout.on('data', (d: Buffer) => {
        buf += d.toString();
        const parts = buf.split('\n');
        buf = parts.pop() ?? '';
        lines.push(...parts);
      });
      // Generous: python's start and the echoes on a saturated CI machine.
      const line = (n: number) =>
        until(() => lines.length >= n, 30_000).catch((e: Error) => {
          throw new Error(`${e.message}: python printed ${JSON.stringify(lines)}, stderr ${err}`);
        });
      await line(1);
      nat.add(Number(lines[0]), APP_A, { ip: FAKE1, port: echo.port });
      // Before the flow is bound: 3 datagrams that reach JavaScript as 3 misses.
      py.stdin.write('10 3 1000\n');
      await line(2);
      expect(lines[1]).toBe('10:1000 11:1000 12:500');
      expect(l.stats().nativeMisses).toBe(3);
      // Bound: 20 datagrams relayed natively (and, equal-sized, sent on as GSO).
      py.stdin.write('40 20 1200\n');
      await line(3);
      expect(lines[2]).toBe(Array.from({ length: 20 }, (_, i) => `${40 + i}:${i < 19 ? 1200 : 600}`).join(' '));
      const s = l.stats();
      expect(s.gro).toEqual({ receives: 2, segments: 23 });
      expect(s).toMatchObject({ datagramsUp: 23, datagramsDown: 23, nativeMisses: 3 });
      expect(s.bytesUp).toBe(2 * 1000 + 500 + 19 * 1200 + 600);
    } finally {
      py.kill();
    }
  });

  it('the close event carries the counts the relay kept; the listener socket is the relay’s', async () => {
    const nat = new ClosingNat();
    const { l, flow, lport, sessions } = await setup(new DirectOutbound({ resolve }), { native: true }, 0, nat);
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    const back = await pump(f.sock, lport, 50, 1);
    expectIntact(back, 50);
    await l.close();
    const close = sessions.find((e) => e.phase === 'close');
    expect(close).toMatchObject({ end: 'closed', datagramsUp: 50, datagramsDown: 50 });
    expect(close?.bytesUp).toBe([...back.values()].reduce((n, b) => n + b.length, 0));
  });

  it('idle: the relay ends the association with its counts; the next datagram opens a new one', async () => {
    const nat = new ClosingNat();
    const { l, flow, sessions } = await setup(new DirectOutbound({ resolve }), { idleTimeoutMs: 150 }, 0, nat);
    const f = await flow(APP_A, { ip: FAKE1, port: echo.port });
    f.send('one');
    await until(() => f.got.length === 1);
    await until(() => sessions.some((e) => e.phase === 'close'));
    expect(sessions.find((e) => e.phase === 'close')).toMatchObject({ end: 'idle', datagramsUp: 1, datagramsDown: 1 });
    expect(l.stats()).toMatchObject({ associations: 0, expired: 1 });
    f.send('two');
    await until(() => f.got.length === 2);
    expect(l.stats().opened).toBe(2);
  });

  it('oversized datagrams are dropped and counted natively, both ways', async () => {
    const nat = new ClosingNat();
    const big = await echoServer();
    // The echo server answers every datagram with a 300-byte one.
    big.sock.removeAllListeners('message');
    big.sock.on('message', (_m, r) => big.sock.send(Buffer.alloc(300), r.port, r.address));
    const { l, flow } = await setup(new DirectOutbound({ resolve }), { maxPayloadBytes: 200 }, 0, nat);
    const f = await flow(APP_A, { ip: FAKE1, port: big.port });
    f.send(Buffer.alloc(100));
    await until(() => l.stats().dropped.oversized === 1);
    f.send(Buffer.alloc(201));
    await until(() => l.stats().dropped.oversized === 2);
    expect(f.got).toHaveLength(0);
    expect(l.stats().datagramsUp).toBe(1);
  });
});
