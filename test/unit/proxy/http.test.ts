/** HttpOutbound against real tinyproxy on 127.0.0.1, plus scripted servers for wire corner cases. */
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HttpOutbound } from '../../../src/proxy/outbounds/http.js';
import { closeServer, type Daemon, echoOrigin, echoThrough, freePort, LO, listen, startTinyproxy } from './helpers.js';

let plain: Daemon;
let authed: Daemon;
let portLocked: Daemon;
let origin: Awaited<ReturnType<typeof echoOrigin>>;

beforeAll(async () => {
  [plain, authed, portLocked, origin] = await Promise.all([
    startTinyproxy(),
    startTinyproxy(['BasicAuth alice s3cret']),
    startTinyproxy(['ConnectPort 1']),
    echoOrigin(),
  ]);
});
afterAll(async () => {
  await Promise.all([plain?.stop(), authed?.stop(), portLocked?.stop(), origin?.close()]);
});

/** A one-shot scripted "proxy": records the request head, answers `reply` in one write, then echoes. */
async function scripted(reply: string | Buffer) {
  const heads: string[] = [];
  const server = net.createServer((s) => {
    let acc = '';
    s.on('error', () => {}); // we reset it on purpose in some cases
    s.setEncoding('latin1');
    const onData = (d: string) => {
      acc += d;
      if (!acc.includes('\r\n\r\n')) return;
      s.removeListener('data', onData);
      heads.push(acc);
      s.write(reply);
      s.pipe(s);
    };
    s.on('data', onData);
  });
  const port = await listen(server);
  return { port, heads, close: () => closeServer(server) };
}

describe('HttpOutbound via tinyproxy', () => {
  it('Basic auth accepted', async () => {
    const out = new HttpOutbound({ host: LO, port: authed.port, auth: { username: 'alice', password: 's3cret' } });
    const sock = await out.connect({ host: LO, port: origin.port });
    expect(await echoThrough(sock, 'authed')).toBe('authed');
  });

  it.each([
    ['no credentials', undefined, /requires authentication: put user:pass/],
    // tinyproxy 1.11 answers 401 (not 407) to wrong credentials; both mean "fix user:pass".
    ['wrong password', { username: 'alice', password: 'bad' }, /rejected user "alice"/],
  ])('auth refused with %s → EHTTP_PROXY_AUTH', async (_n, auth, msg) => {
    const out = new HttpOutbound({ host: LO, port: authed.port, auth });
    const err = await out.connect({ host: LO, port: origin.port }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EHTTP_PROXY_AUTH' });
    expect([401, 407]).toContain((err as { status: number }).status);
    expect((err as Error).message).toMatch(msg);
  });

  it('destination refused → EHTTP_PROXY_STATUS with the status tinyproxy gives', async () => {
    const dead = await freePort();
    const out = new HttpOutbound({ host: LO, port: plain.port });
    const err = await out.connect({ host: LO, port: dead }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EHTTP_PROXY_STATUS' });
    const status = (err as { status: number }).status;
    expect(status).toBeGreaterThanOrEqual(500);
    expect((err as Error).message).toContain(`answered ${status}`);
  });

  it('port not allowed by ConnectPort → 403 naming the ACL', async () => {
    const out = new HttpOutbound({ host: LO, port: portLocked.port });
    const err = await out.connect({ host: LO, port: origin.port }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'EHTTP_PROXY_STATUS', status: 403 });
    expect((err as Error).message).toMatch(/ACL/);
  });

  it('proxy not running → ECONNREFUSED', async () => {
    const out = new HttpOutbound({ host: LO, port: await freePort() });
    await expect(out.connect({ host: LO, port: origin.port })).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });
});

describe('HttpOutbound wire handling (scripted proxy)', () => {
  it('sends CONNECT host:port with Host and Basic auth', async () => {
    const p = await scripted('HTTP/1.1 200 OK\r\n\r\n');
    try {
      const out = new HttpOutbound({ host: LO, port: p.port, auth: { username: 'u', password: 'p' } });
      await echoThrough(await out.connect({ host: 'origin.test', port: 443 }), 'x');
      expect(p.heads[0]).toBe(
        'CONNECT origin.test:443 HTTP/1.1\r\nHost: origin.test:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n',
      );
    } finally {
      await p.close();
    }
  });

  it('bytes after the head in the same segment go to the stream', async () => {
    const p = await scripted('HTTP/1.0 200 Connection established\r\nProxy-Agent: x\r\n\r\nBANNER');
    try {
      const sock = await new HttpOutbound({ host: LO, port: p.port }).connect({ host: 'a.test', port: 25 });
      expect(await echoThrough(sock, '+y', 8)).toBe('BANNER+y');
    } finally {
      await p.close();
    }
  });

  it('502 → EHTTP_PROXY_STATUS with status and reason', async () => {
    const p = await scripted('HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n');
    try {
      const err = await new HttpOutbound({ host: LO, port: p.port })
        .connect({ host: 'a.test', port: 80 })
        .catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'EHTTP_PROXY_STATUS', status: 502 });
      expect((err as Error).message).toMatch(/answered 502 Bad Gateway \(the proxy could not reach the destination\)/);
    } finally {
      await p.close();
    }
  });

  it('an endless head → EHTTP_PROXY_HEADER_TOO_LARGE (bounded)', async () => {
    const p = await scripted(`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(70_000)}`);
    try {
      const err = await new HttpOutbound({ host: LO, port: p.port, maxHeadBytes: 4096 })
        .connect({ host: 'a.test', port: 80 })
        .catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'EHTTP_PROXY_HEADER_TOO_LARGE' });
    } finally {
      await p.close();
    }
  });

  it('proxy closes mid-head → EUPSTREAM_CLOSED', async () => {
    const server = net.createServer((s) => {
      s.on('error', () => {});
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\n'));
    });
    const port = await listen(server);
    try {
      await expect(new HttpOutbound({ host: LO, port }).connect({ host: 'a.test', port: 80 })).rejects.toMatchObject({
        code: 'EUPSTREAM_CLOSED',
      });
    } finally {
      await closeServer(server);
    }
  });

  it('silent proxy → ETIMEDOUT', async () => {
    const held: net.Socket[] = [];
    const server = net.createServer((s) => held.push(s.on('error', () => {})));
    const port = await listen(server);
    try {
      await expect(
        new HttpOutbound({ host: LO, port }).connect({ host: 'a.test', port: 80 }, { timeoutMs: 100 }),
      ).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    } finally {
      for (const s of held) s.destroy();
      await closeServer(server);
    }
  });
});
