/** Socks5Outbound against real microsocks on 127.0.0.1 (RFC 1928 / 1929). */
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Socks5Outbound } from '../../../src/proxy/outbounds/socks5.js';
import { closeServer, type Daemon, echoOrigin, echoThrough, freePort, LO, listen, startMicrosocks } from './helpers.js';

let open: Daemon;
let authed: Daemon;
let origin: Awaited<ReturnType<typeof echoOrigin>>;

beforeAll(async () => {
  [open, authed, origin] = await Promise.all([
    startMicrosocks(),
    startMicrosocks({ user: 'alice', pass: 's3cret' }),
    echoOrigin(),
  ]);
});
afterAll(async () => {
  await Promise.all([open?.stop(), authed?.stop(), origin?.close()]);
});

describe('Socks5Outbound via microsocks', () => {
  it('CONNECTs to an IPv4 literal', async () => {
    const out = new Socks5Outbound({ host: LO, port: open.port });
    const sock = await out.connect({ host: LO, port: origin.port });
    expect(await echoThrough(sock, 'v4')).toBe('v4');
  });

  it('authenticates with RFC 1929 username/password', async () => {
    const out = new Socks5Outbound({ host: LO, port: authed.port, auth: { username: 'alice', password: 's3cret' } });
    const sock = await out.connect({ host: 'localhost', port: origin.port });
    expect(await echoThrough(sock, 'authed')).toBe('authed');
  });

  it('keeps bytes the destination sent right after the reply (server-first protocols)', async () => {
    const banner = await echoOrigin('220 banner\r\n');
    try {
      const out = new Socks5Outbound({ host: LO, port: open.port });
      const sock = await out.connect({ host: LO, port: banner.port });
      // Give the banner time to land in the same buffer as (or right after) the reply.
      await new Promise((r) => setTimeout(r, 50));
      expect(await echoThrough(sock, 'x', 13)).toBe('220 banner\r\nx');
    } finally {
      await banner.close();
    }
  });

  it('sends the name as ATYP 3 and keeps bytes that share a segment with the reply', async () => {
    // A scripted SOCKS5 server: records the request, then writes reply + banner in ONE write.
    let req: Buffer | undefined;
    const scripted = net.createServer((s) => {
      s.once('data', () => {
        s.write(Buffer.from([5, 0]));
        s.once('data', (d: Buffer) => {
          req = d;
          s.write(Buffer.concat([Buffer.from([5, 0, 0, 1, 127, 0, 0, 1, 0, 80]), Buffer.from('BANNER')]));
          s.pipe(s);
        });
      });
    });
    const port = await listen(scripted);
    try {
      const out = new Socks5Outbound({ host: LO, port });
      const sock = await out.connect({ host: 'origin.test', port: 8080 });
      expect(await echoThrough(sock, '+x', 8)).toBe('BANNER+x');
      expect([...(req as Buffer).subarray(0, 5)]).toEqual([5, 1, 0, 3, 'origin.test'.length]);
      expect((req as Buffer).subarray(5, 16).toString()).toBe('origin.test');
    } finally {
      await closeServer(scripted);
    }
  });

  it.each([
    [
      'wrong password',
      { username: 'alice', password: 'nope' },
      'ESOCKS5_AUTH_FAILED',
      /rejected user "alice".*check user:pass/,
    ],
    ['no credentials for an auth-only proxy', undefined, 'ESOCKS5_NO_METHOD', /requires authentication: put user:pass/],
  ])('%s → %s', async (_n, auth, code, msg) => {
    const out = new Socks5Outbound({ host: LO, port: authed.port, auth });
    const err = await out.connect({ host: 'localhost', port: origin.port }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code });
    expect((err as Error).message).toMatch(msg);
  });

  it('destination refuses → ESOCKS5_REFUSED (REP 5)', async () => {
    const dead = await freePort();
    const out = new Socks5Outbound({ host: LO, port: open.port });
    const err = await out.connect({ host: LO, port: dead }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ESOCKS5_REFUSED', status: 5 });
    expect((err as Error).message).toContain(`connect to ${LO}:${dead} via socks5://${LO}:${open.port}`);
  });

  it('proxy not running → ECONNREFUSED naming the proxy', async () => {
    const dead = await freePort();
    const out = new Socks5Outbound({ host: LO, port: dead });
    const err = await out.connect({ host: 'localhost', port: origin.port }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ECONNREFUSED' });
    expect((err as Error).message).toContain('reach the proxy');
  });

  it('proxy accepts but never answers → ETIMEDOUT after timeoutMs, socket destroyed', async () => {
    const held: net.Socket[] = [];
    const mute = net.createServer((s) => held.push(s));
    const port = await listen(mute);
    try {
      const out = new Socks5Outbound({ host: LO, port });
      const err = await out.connect({ host: 'localhost', port: 80 }, { timeoutMs: 150 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'ETIMEDOUT' });
      expect((err as Error).message).toMatch(/no answer within 150 ms/);
      // Our side closed the connection: the server sees EOF.
      await new Promise<void>((r) => (held[0]?.readableEnded ? r() : held[0]?.once('end', r).resume()));
    } finally {
      for (const s of held) s.destroy();
      await closeServer(mute);
    }
  });

  it('abort signal cancels the handshake → EABORTED', async () => {
    const held: net.Socket[] = [];
    const mute = net.createServer((s) => held.push(s));
    const port = await listen(mute);
    try {
      const ac = new AbortController();
      const out = new Socks5Outbound({ host: LO, port });
      const p = out.connect({ host: 'localhost', port: 80 }, { signal: ac.signal });
      setTimeout(() => ac.abort(), 20);
      await expect(p).rejects.toMatchObject({ code: 'EABORTED' });
    } finally {
      for (const s of held) s.destroy();
      await closeServer(mute);
    }
  });

  it('a non-SOCKS server (HTTP) → ESOCKS5_PROTOCOL', async () => {
    const http = net.createServer((s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n').resume());
    const port = await listen(http);
    try {
      const out = new Socks5Outbound({ host: LO, port });
      await expect(out.connect({ host: 'localhost', port: 80 })).rejects.toMatchObject({ code: 'ESOCKS5_PROTOCOL' });
    } finally {
      await closeServer(http);
    }
  });

  it('proxy host given by name without a resolver → ENORESOLVER (never getaddrinfo)', async () => {
    const out = new Socks5Outbound({ host: 'localhost', port: open.port });
    const err = await out.connect({ host: 'localhost', port: origin.port }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ENORESOLVER' });
    expect((err as Error).message).toMatch(/--dns-upstream/);
  });

  it('proxy host given by name resolves through the injected resolver', async () => {
    const asked: string[] = [];
    const out = new Socks5Outbound({
      host: 'proxy.test',
      port: open.port,
      resolve: async (n) => {
        asked.push(n);
        return [LO];
      },
    });
    const sock = await out.connect({ host: 'localhost', port: origin.port });
    expect(await echoThrough(sock, 'ok')).toBe('ok');
    expect(asked).toEqual(['proxy.test']);
  });
});
