/**
 * TcpListener end to end on loopback: app socket → Listener → (fake NAT,
 * fake names) → Router → real microsocks / direct → origin. The NAT is a
 * small object in the test (the engine is not available in unit tests): it
 * maps the app socket's own ephemeral port to a destination.
 */
import { once } from 'node:events';
import * as net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type SessionEvent, TcpListener, type TcpListenerOptions } from '../../../src/proxy/listener.js';
import type { Outbound } from '../../../src/proxy/outbound.js';
import { DirectOutbound } from '../../../src/proxy/outbounds/direct.js';
import { HttpOutbound } from '../../../src/proxy/outbounds/http.js';
import { RejectOutbound } from '../../../src/proxy/outbounds/reject.js';
import { Socks5Outbound } from '../../../src/proxy/outbounds/socks5.js';
import { Router } from '../../../src/proxy/router.js';
import {
  closeServer,
  type Daemon,
  echoOrigin,
  echoThrough,
  FakeNat,
  freePort,
  LO,
  listen,
  scriptedServer,
  socketError,
  startListener,
  startMicrosocks,
  startTinyproxy,
  until,
} from './helpers.js';

const FAKE = '198.18.2.2';
const EMPTY = Buffer.alloc(0);

const names = { reverse: (ip: string) => (ip === FAKE ? 'localhost' : undefined) };

let socks: Daemon;
let origin: Awaited<ReturnType<typeof echoOrigin>>;
const closers: Array<() => unknown> = [];
const sockets: net.Socket[] = [];

beforeAll(async () => {
  [socks, origin] = await Promise.all([startMicrosocks(), echoOrigin()]);
});
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(closers.splice(0).map((c) => c()));
});
afterAll(async () => {
  await Promise.all([socks?.stop(), origin?.close()]);
});

async function setup(
  final: Outbound = new Socks5Outbound({ host: LO, port: socks.port }),
  extra: Partial<TcpListenerOptions> = {},
) {
  const nat = new FakeNat();
  const { l, log, sessions } = await startListener(TcpListener, final, { nat, names, ...extra }, closers);
  /** An "app" connection whose NAT entry says it was headed for dst. */
  const app = (dst?: { dstIp: string; dstPort: number }) => {
    const s = net.connect({ host: LO, port: l.address().port, allowHalfOpen: true });
    sockets.push(s);
    if (dst) nat.flows.set(s, dst);
    return s;
  };
  return { l, nat, log, sessions, app };
}

/**
 * Through `outbound(password)`: the right password relays; a wrong one
 * resets the app and ends the session with `code` and one log line matching `text`.
 */
async function expectAuthChecked(
  outbound: (password: string) => ConstructorParameters<typeof Router>[0]['final'],
  right: string,
  code: string,
  text: RegExp,
) {
  const good = await setup(outbound(right));
  expect(await roundTrip(good.app({ dstIp: FAKE, dstPort: origin.port }), 'authed')).toBe('authed');
  const bad = await setup(outbound('wrong'));
  expect((await socketError(bad.app({ dstIp: FAKE, dstPort: origin.port }))).code).toBe('ECONNRESET');
  await until(() => bad.sessions.length === 2);
  expect(bad.sessions[1]).toMatchObject({ end: 'connect-failed', errorCode: code });
  expect(bad.log).toHaveLength(1);
  expect(bad.log[0]).toMatch(text);
  return [good, bad] as const;
}

/** Everything `s` receives from now on, as latin1 text. */
function received(s: net.Socket): () => string {
  let got = '';
  s.setEncoding('latin1');
  s.on('data', (d: string) => {
    got += d;
  });
  return () => got;
}

/**
 * The app speaks first ('hello', written before the listener even accepted:
 * it waits in the app's socket through the handshake) and the scripted proxy
 * `srv` sends 'BANNER|' right behind its reply: the app receives every byte
 * once, in order; `proxySaw` checks the handshake the proxy got; the session
 * closes with both directions counted, dialed on the relay thread.
 */
async function expectBannerRelayed(
  { app, l, sessions }: Awaited<ReturnType<typeof setup>>,
  srv: { seen: { got: string } },
  proxySaw: () => void,
) {
  const s = app({ dstIp: FAKE, dstPort: 4242 });
  s.write('hello');
  const got = received(s);
  await until(() => got() === 'BANNER|echo:hello');
  proxySaw();
  expect(srv.seen.got).toBe('hello');
  s.end();
  await until(() => sessions.length === 2);
  expect(sessions[1]).toMatchObject({ phase: 'close', bytesUp: 5, bytesDown: 'BANNER|echo:hello'.length });
  expect(l.stats().nativeDials).toBe(1);
}

/**
 * One connection to port `dst` through `final` fails: the app is reset and
 * the session ends with `code`. Returns what was reported to the router
 * (a failure of the proxy itself marks it dead for groups).
 */
async function failureReports(
  final: ConstructorParameters<typeof Router>[0]['final'],
  dst: number,
  code: string,
): Promise<string[]> {
  const router = new Router({ final });
  const reports: string[] = [];
  router.reportFailure = (_chain, why) => void reports.push(why);
  const { app, sessions } = await setup(final, { router });
  expect((await socketError(app({ dstIp: FAKE, dstPort: dst }))).code).toBe('ECONNRESET');
  await until(() => sessions.length === 2);
  expect(sessions[1]).toMatchObject({ end: 'connect-failed', errorCode: code });
  return reports;
}

async function roundTrip(s: net.Socket, msg: string): Promise<string> {
  s.setEncoding('latin1');
  let got = '';
  const done = new Promise<string>((resolve, reject) => {
    s.on('data', (d: string) => {
      got += d;
      if (got.length >= msg.length) resolve(got);
    });
    s.once('error', reject);
  });
  s.write(msg);
  return done;
}

describe('TcpListener', () => {
  it('fake IP → name → socks5 CONNECT by name → origin; session events carry name, outbound, bytes', async () => {
    const { app, sessions, l } = await setup();
    const s = app({ dstIp: FAKE, dstPort: origin.port });
    expect(await roundTrip(s, 'hello')).toBe('hello');
    s.destroy();
    await until(() => sessions.length === 2);
    const [open, close] = sessions as [SessionEvent, SessionEvent];
    expect(open).toMatchObject({
      phase: 'open',
      name: 'localhost',
      ip: FAKE,
      port: origin.port,
      outbound: `socks5://${LO}:${socks.port}`,
    });
    expect(close).toMatchObject({ phase: 'close', flowId: open.flowId, name: 'localhost', bytesUp: 5, bytesDown: 5 });
    // The proxy's address is a literal: the relay thread ran the SOCKS5 handshake, not JavaScript.
    expect(l.stats()).toMatchObject({
      accepted: 1,
      rejectedPeers: 0,
      active: 0,
      bytesUp: 5,
      bytesDown: 5,
      nativeDials: 1,
    });
  });

  it('closeFlow(id) resets a live session whose NAT flow left the table; unknown ids are ignored', async () => {
    const { app, sessions, l } = await setup(new DirectOutbound());
    const s = app({ dstIp: LO, dstPort: origin.port });
    expect(await roundTrip(s, 'before')).toBe('before');
    const open = sessions[0] as SessionEvent;
    expect(l.closeFlow(open.flowId + 1000)).toBe(false);
    const err = socketError(s);
    expect(l.closeFlow(open.flowId)).toBe(true);
    expect((await err)?.code).toBe('ECONNRESET');
    await until(() => sessions.length === 2);
    expect(l.stats().active).toBe(0);
    expect(l.closeFlow(open.flowId)).toBe(false);
  });

  it('a destination that is not a fake address goes out by its real IP', async () => {
    const { app, sessions } = await setup(new DirectOutbound());
    const s = app({ dstIp: LO, dstPort: origin.port });
    expect(await roundTrip(s, 'real ip')).toBe('real ip');
    expect(sessions[0]).toMatchObject({ phase: 'open', name: undefined, ip: LO, outbound: 'direct' });
  });

  it('half-close through the listener: app ends, still gets the reply', async () => {
    const late = net.createServer({ allowHalfOpen: true }, (c) => {
      let body = '';
      c.setEncoding('utf8');
      c.on('data', (d: string) => {
        body += d;
      });
      c.on('end', () => c.end(`got ${body.length} bytes`));
    });
    const port = await listen(late);
    try {
      const { app } = await setup(new DirectOutbound());
      const s = app({ dstIp: LO, dstPort: port });
      let reply = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        reply += d;
      });
      s.end('0123456789');
      await once(s, 'end');
      expect(reply).toBe('got 10 bytes');
    } finally {
      await closeServer(late);
    }
  });

  it('a peer that is not a live NAT address is reset at once and counted', async () => {
    const { app, l, log, nat } = await setup();
    const s = app(); // no NAT entry
    const err = await socketError(s);
    expect(err.code).toBe('ECONNRESET');
    expect(nat.lookups).toBe(1);
    expect(l.stats()).toMatchObject({ accepted: 1, rejectedPeers: 1, active: 0 });
    expect(log.join('\n')).toMatch(/non-NAT peers/);
  });

  it('upstream refuses → the app is reset; one log line names name:port, outbound and reason', async () => {
    const dead = await freePort();
    const { app, log, sessions, l } = await setup();
    const s = app({ dstIp: FAKE, dstPort: dead });
    s.write('GET / HTTP/1.0\r\n\r\n');
    const err = await socketError(s);
    expect(err.code).toBe('ECONNRESET');
    // The native relay resets the app before JavaScript hears of the end.
    await until(() => sessions.length === 2);
    expect(log).toHaveLength(1);
    expect(log[0]).toContain(`tcp localhost:${dead} via socks5://${LO}:${socks.port}`);
    expect(log[0]).toContain('ESOCKS5_REFUSED');
    await until(() => sessions.length === 2);
    expect(sessions[1]).toMatchObject({ phase: 'close', end: 'connect-failed', errorCode: 'ESOCKS5_REFUSED' });
    expect(l.stats().connectFailed).toBe(1);
  });

  it('upstream proxy dead → the app is reset (not hung), listener keeps serving', async () => {
    const { app, log } = await setup(new Socks5Outbound({ host: LO, port: await freePort() }));
    const err = await socketError(app({ dstIp: FAKE, dstPort: origin.port }));
    expect(err.code).toBe('ECONNRESET');
    await until(() => log.length > 0);
    expect(log[0]).toMatch(/reach the proxy: connect .*ECONNREFUSED/);
    const ok = await setup(new DirectOutbound());
    expect(await roundTrip(ok.app({ dstIp: LO, dstPort: origin.port }), 'still up')).toBe('still up');
  });

  it('upstream silent → reset after connectTimeoutMs with ETIMEDOUT logged', async () => {
    const held: net.Socket[] = [];
    const mute = net.createServer((c) => held.push(c.on('error', () => {})));
    const port = await listen(mute);
    try {
      const { app, log } = await setup(new Socks5Outbound({ host: LO, port }), { connectTimeoutMs: 100 });
      const err = await socketError(app({ dstIp: FAKE, dstPort: 80 }));
      expect(err.code).toBe('ECONNRESET');
      await until(() => log.length > 0);
      expect(log[0]).toMatch(/tcp localhost:80 via socks5:.*ETIMEDOUT.*no answer within 100 ms/);
    } finally {
      for (const c of held) c.destroy();
      await closeServer(mute);
    }
  });

  it('router rule → reject outbound resets the app', async () => {
    const router = new Router({
      final: new DirectOutbound(),
      rules: [{ domain: 'localhost', outbound: new RejectOutbound() }],
    });
    const { app, log } = await setup(new DirectOutbound(), { router });
    expect((await socketError(app({ dstIp: FAKE, dstPort: origin.port }))).code).toBe('ECONNRESET');
    expect(log[0]).toMatch(/via reject: EREJECT/);
  });

  it('idle timeout from the options reaches the relay', async () => {
    const { app, sessions } = await setup(new DirectOutbound(), { idleTimeoutMs: 100 });
    const s = app({ dstIp: LO, dstPort: origin.port });
    expect(await roundTrip(s, 'x')).toBe('x');
    await until(() => sessions.length === 2);
    expect(sessions[1]).toMatchObject({ phase: 'close', end: 'idle' });
  });

  it('close() ends live sessions and stops accepting', async () => {
    const { app, l, sessions } = await setup(new DirectOutbound());
    const s = app({ dstIp: LO, dstPort: origin.port });
    expect(await roundTrip(s, 'live')).toBe('live');
    const port = l.address().port;
    const ended = new Promise((r) => s.once('end', r)); // FIN from the listener
    await l.close();
    await ended;
    expect(sessions.at(-1)).toMatchObject({ phase: 'close', end: 'closed' });
    const again = net.connect({ host: LO, port });
    sockets.push(again);
    expect((await socketError(again)).code).toBe('ECONNREFUSED');
  });

  it('start() on a taken port fails with EADDRINUSE and a hint', async () => {
    const blocker = net.createServer();
    const port = await listen(blocker);
    try {
      const l = new TcpListener({
        host: LO,
        port,
        nat: new FakeNat(),
        names,
        router: new Router({ final: new DirectOutbound() }),
        logger: () => {},
      });
      await expect(l.start()).rejects.toMatchObject({
        code: 'EADDRINUSE',
        message: expect.stringMatching(/--listen-port/),
      });
    } finally {
      await closeServer(blocker);
    }
  });
});

/**
 * A SOCKS5 server in the test, for what real servers do not do on demand:
 * it answers the greeting with `method` (or hangs up), the CONNECT with
 * `reply` in ONE write with `banner` appended (a server-first protocol right
 * behind the reply), then echoes. `got` is every byte after the request.
 */
async function scriptedSocks(script: {
  method: number;
  hangUpAfterGreeting?: boolean;
  reply?: Buffer;
  banner?: string;
}) {
  const seen: { request: Buffer; got: string } = { request: Buffer.alloc(0), got: '' };
  const srv = await scriptedServer((c) => {
    let stage = 0;
    return (buf) => {
      if (stage === 0 && buf.length >= 2 && buf.length >= 2 + (buf[1] as number)) {
        buf = buf.subarray(2 + (buf[1] as number));
        if (script.hangUpAfterGreeting) {
          c.end();
          return buf;
        }
        c.write(Buffer.from([5, script.method]));
        stage = 1;
      }
      // VER CMD RSV ATYP=3 LEN NAME PORT (the Listener asks by name).
      if (stage === 1 && buf.length >= 5 && buf.length >= 7 + (buf[4] as number)) {
        const n = 7 + (buf[4] as number);
        seen.request = buf.subarray(0, n);
        buf = buf.subarray(n);
        c.write(
          Buffer.concat([
            script.reply ?? Buffer.from([5, 0, 0, 1, 127, 0, 0, 1, 0, 80]),
            Buffer.from(script.banner ?? ''),
          ]),
        );
        stage = 2;
      }
      if (stage === 2 && buf.length > 0) {
        seen.got += buf.toString('latin1');
        c.write(`echo:${buf.toString('latin1')}`);
        return EMPTY;
      }
      return buf;
    };
  });
  return { ...srv, seen };
}

describe('TcpListener: SOCKS5 handshake on the relay thread', () => {
  const servers: Array<{ close(): Promise<void> }> = [];
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((x) => x.close()));
  });

  it('the app speaks first and the proxy sends a banner right behind a domain-name reply: every byte once, in order', async () => {
    const bnd = Buffer.from('bnd.example');
    const reply = Buffer.concat([Buffer.from([5, 0, 0, 3, bnd.length]), bnd, Buffer.from([0x1f, 0x90])]);
    const srv = await scriptedSocks({ method: 0, reply, banner: 'BANNER|' });
    servers.push(srv);
    const request = Buffer.from([5, 1, 0, 3, 9, ...Buffer.from('localhost'), 0x10, 0x92]);
    await expectBannerRelayed(await setup(new Socks5Outbound({ host: LO, port: srv.port })), srv, () => {
      expect(srv.seen.request.equals(request)).toBe(true);
    });
  });

  it('username/password (RFC 1929) against microsocks: the right pair relays, a wrong one is ESOCKS5_AUTH_FAILED', async () => {
    const authed = await startMicrosocks({ user: 'u1', pass: 'secret' });
    servers.push({ close: () => authed.stop() });
    await expectAuthChecked(
      (password) => new Socks5Outbound({ host: LO, port: authed.port, auth: { username: 'u1', password } }),
      'secret',
      'ESOCKS5_AUTH_FAILED',
      /rejected user "u1" \(RFC 1929 status [1-9]\d*\): check user:pass/,
    );
  });

  it('protocol failures reset the app with the stable code and one line naming the fix', async () => {
    const cases: Array<[Parameters<typeof scriptedSocks>[0], string, RegExp]> = [
      [{ method: 0xff }, 'ESOCKS5_NO_METHOD', /requires authentication: put user:pass in the URL/],
      [{ method: 2 }, 'ESOCKS5_PROTOCOL', /chose method 2, which we did not offer/],
      [{ method: 0, hangUpAfterGreeting: true }, 'EUPSTREAM_CLOSED', /closed the connection mid-handshake/],
      [{ method: 0, reply: Buffer.from([5, 2, 0, 1, 0, 0, 0, 0, 0, 0]) }, 'ESOCKS5_NOT_ALLOWED', /check the proxy ACL/],
      [{ method: 0, reply: Buffer.from([4, 0, 0, 1, 0, 0, 0, 0, 0, 0]) }, 'ESOCKS5_PROTOCOL', /version 4, expected 5/],
      [{ method: 0, reply: Buffer.from([5, 0, 0, 9, 0, 0, 0, 0, 0, 0]) }, 'ESOCKS5_PROTOCOL', /address type 9/],
    ];
    for (const [script, code, text] of cases) {
      const srv = await scriptedSocks(script);
      servers.push(srv);
      const { app, log, sessions } = await setup(new Socks5Outbound({ host: LO, port: srv.port }));
      const s = app({ dstIp: FAKE, dstPort: 80 });
      expect((await socketError(s)).code).toBe('ECONNRESET');
      await until(() => sessions.length === 2);
      expect(sessions[1], code).toMatchObject({ end: 'connect-failed', errorCode: code });
      expect(log).toHaveLength(1);
      expect(log[0]).toMatch(text);
      expect(srv.seen.got).toBe(''); // nothing of the app's reached the proxy
    }
  });

  it('a proxy that cannot be reached is reported to the router (proxyDown); a refusing destination is not', async () => {
    const dead = await freePort();
    for (const [port, dst, code, reported] of [
      [dead, origin.port, 'ECONNREFUSED', ['ECONNREFUSED']],
      [socks.port, await freePort(), 'ESOCKS5_REFUSED', []],
    ] as const) {
      expect(await failureReports(new Socks5Outbound({ host: LO, port }), dst, code)).toEqual(reported);
    }
  });
});

/**
 * An HTTP proxy in the test: reads the CONNECT head, waits `delayMs`, then
 * answers `reply` in ONE write (a banner may be part of it: a server-first
 * protocol right behind the 200) and echoes what follows ("echo:" + bytes).
 * `hangUp` ends the connection after the reply; `silent` never answers.
 * `early` is every byte that came after the request head before the reply
 * went out (the app's bytes must wait for the tunnel).
 */
async function scriptedHttp(script: { reply: string; delayMs?: number; hangUp?: boolean; silent?: boolean }) {
  const seen = { heads: [] as string[], early: '', got: '' };
  const srv = await scriptedServer((c) => {
    let acc = '';
    let stage: 'head' | 'waiting' | 'answered' = 'head';
    return (buf) => {
      const d = buf.toString('latin1');
      if (stage === 'answered') {
        seen.got += d;
        c.write(`echo:${d}`);
        return EMPTY;
      }
      acc += d;
      const end = acc.indexOf('\r\n\r\n');
      if (stage !== 'head' || end < 0) return EMPTY;
      stage = 'waiting';
      seen.heads.push(acc.slice(0, end + 4));
      if (script.silent) return EMPTY;
      setTimeout(() => {
        seen.early = acc.slice(end + 4);
        stage = 'answered';
        if (script.hangUp) c.end(script.reply);
        else c.write(script.reply);
      }, script.delayMs ?? 0);
      return EMPTY;
    };
  });
  return { ...srv, seen };
}

describe('TcpListener: HTTP CONNECT on the relay thread', () => {
  const servers: Array<{ close(): Promise<void> }> = [];
  let tiny: Daemon;
  let tinyAuth: Daemon;
  beforeAll(async () => {
    [tiny, tinyAuth] = await Promise.all([startTinyproxy(), startTinyproxy(['BasicAuth alice s3cret'])]);
  });
  afterAll(async () => {
    await Promise.all([tiny?.stop(), tinyAuth?.stop()]);
  });
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((x) => x.close()));
  });

  it('the app speaks first and a banner rides in the 200 segment: the app waits for the tunnel, every byte once, in order', async () => {
    const srv = await scriptedHttp({
      reply: 'HTTP/1.1 200 Connection established\r\nProxy-Agent: t\r\n\r\nBANNER|',
      delayMs: 100,
    });
    servers.push(srv);
    const out = new HttpOutbound({ host: LO, port: srv.port, auth: { username: 'u', password: 'p' } });
    await expectBannerRelayed(await setup(out), srv, () => {
      expect(srv.seen.heads).toEqual([
        'CONNECT localhost:4242 HTTP/1.1\r\nHost: localhost:4242\r\nProxy-Authorization: Basic dTpw\r\n\r\n',
      ]);
      expect(srv.seen.early).toBe(''); // nothing of the app's before the 200
    });
  });

  it('real tinyproxy: relays by name, Basic auth right and wrong, a refused destination is the proxy status', async () => {
    const plain = await setup(new HttpOutbound({ host: LO, port: tiny.port }));
    expect(await roundTrip(plain.app({ dstIp: FAKE, dstPort: origin.port }), 'through tinyproxy')).toBe(
      'through tinyproxy',
    );
    const [good, bad] = await expectAuthChecked(
      (password) => new HttpOutbound({ host: LO, port: tinyAuth.port, auth: { username: 'alice', password } }),
      's3cret',
      'EHTTP_PROXY_AUTH',
      /: 40[17] .*the proxy rejected user "alice" \(check user:pass in --upstream\)/,
    );
    const refused = await setup(new HttpOutbound({ host: LO, port: tiny.port }));
    expect((await socketError(refused.app({ dstIp: FAKE, dstPort: await freePort() }))).code).toBe('ECONNRESET');
    await until(() => refused.sessions.length === 2);
    expect(refused.sessions[1]).toMatchObject({ end: 'connect-failed', errorCode: 'EHTTP_PROXY_STATUS' });
    expect(refused.log[0]).toMatch(/the proxy answered 5\d\d /);
    for (const x of [plain, good, bad, refused]) expect(x.l.stats().nativeDials).toBe(1);
  });

  it('every answer ends as the JavaScript client ends it: same code, same line; nothing of the app reaches the proxy', async () => {
    const big = `HTTP/1.1 200 OK\r\nX: ${'a'.repeat(70_000)}`;
    const cases: Array<[string, Parameters<typeof scriptedHttp>[0]]> = [
      ['502', { reply: 'HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n' }],
      ['407', { reply: 'HTTP/1.1 407 Proxy Authentication Required\r\n\r\n' }],
      ['403', { reply: 'HTTP/1.0 403 Forbidden\r\n\r\n' }],
      ['100', { reply: 'HTTP/1.1 100 Continue\r\n\r\n' }],
      ['not http', { reply: 'SSH-2.0-OpenSSH_9.6\r\n\r\n' }],
      ['space in a field name', { reply: 'HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n' }],
      ['field without colon', { reply: 'HTTP/1.1 200 OK\r\nnocolon\r\n\r\n' }],
      ['CR inside the reason', { reply: 'HTTP/1.1 200 O\rK\r\n\r\n' }],
      ['four-digit status', { reply: 'HTTP/1.1 2000 OK\r\n\r\n' }],
      ['head too large', { reply: big }],
      ['hang-up mid-head', { reply: 'HTTP/1.1 200 OK\r\n', hangUp: true }],
      ['silent', { reply: '', silent: true }],
    ];
    for (const [name, script] of cases) {
      const srv = await scriptedHttp(script);
      servers.push(srv);
      const out = () => new HttpOutbound({ host: LO, port: srv.port, maxHeadBytes: 4096 });
      const js = (await out()
        .connect({ host: 'localhost', port: 80 }, { timeoutMs: 300 })
        .then(
          (s) => s.destroy(),
          (e: unknown) => e,
        )) as ProxyErrorLike;
      expect(js?.code, name).toMatch(/^E/);
      const { app, log, sessions } = await setup(out(), { connectTimeoutMs: 300 });
      const s = app({ dstIp: FAKE, dstPort: 80 });
      s.write('early');
      expect((await socketError(s)).code, name).toBe('ECONNRESET');
      await until(() => sessions.length === 2);
      expect(sessions[1], name).toMatchObject({ end: 'connect-failed', errorCode: js.code });
      expect(log, name).toHaveLength(1);
      expect(log[0], name).toContain(`${js.code}: ${js.message} (rule`);
      expect(srv.seen.early + srv.seen.got, name).toBe('');
    }
  });

  it('heads the JavaScript client accepts open the tunnel natively too (HTTP/1.0, bare LF, no reason, odd fields)', async () => {
    const heads = [
      'HTTP/1.0 200 Connection established\r\n\r\n',
      'HTTP/1.1 200 OK\n\n',
      'HTTP/1.1 200\r\n\r\n',
      'HTTP/1.1 204 No Content\r\nX-A:\r\nx-b:\tv\r\n\n',
      'HTTP/1.1 299 \r\n\r\n',
    ];
    for (const reply of heads) {
      const srv = await scriptedHttp({ reply });
      servers.push(srv);
      const out = new HttpOutbound({ host: LO, port: srv.port });
      const js = await out.connect({ host: 'localhost', port: 80 });
      expect(await echoThrough(js, 'js', 7), reply).toBe('echo:js');
      const { app, l } = await setup(out);
      const s = app({ dstIp: FAKE, dstPort: 80 });
      const got = received(s);
      s.write('native');
      await until(() => got() === 'echo:native');
      expect(l.stats().nativeDials).toBe(1);
    }
  });

  it('a proxy that cannot be reached or hangs up mid-head is reported to the router (proxyDown); a status is not', async () => {
    const hangUp = await scriptedHttp({ reply: 'HTTP/1.1 200', hangUp: true });
    servers.push(hangUp);
    const cases = [
      [await freePort(), origin.port, 'ECONNREFUSED', ['ECONNREFUSED']],
      [hangUp.port, origin.port, 'EUPSTREAM_CLOSED', ['EUPSTREAM_CLOSED']],
      [tiny.port, await freePort(), 'EHTTP_PROXY_STATUS', []],
    ] as const;
    for (const [port, dst, code, reported] of cases) {
      expect(await failureReports(new HttpOutbound({ host: LO, port }), dst, code), code).toEqual(reported);
    }
  });
});

type ProxyErrorLike = { code: string; message: string };
