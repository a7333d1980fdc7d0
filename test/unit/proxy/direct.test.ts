import { once } from 'node:events';
import type * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { upstreamResolver } from '../../../src/proxy/dial.js';
import { DirectOutbound } from '../../../src/proxy/outbounds/direct.js';
import { echoOrigin, freePort, LO, loopbackDns } from './helpers.js';

let origin: Awaited<ReturnType<typeof echoOrigin>>;
let dns: Awaited<ReturnType<typeof loopbackDns>>;

beforeAll(async () => {
  origin = await echoOrigin('hi');
  // Knows one name (not in /etc/hosts, so getaddrinfo could not find it).
  dns = await loopbackDns({ 'origin.fakeproxy.test': [{ ttl: 60, data: LO }] });
});
afterAll(async () => {
  dns?.close();
  await origin?.close();
});

async function greeting(sock: net.Socket): Promise<string> {
  const [d] = (await once(sock, 'data')) as [Buffer];
  sock.destroy();
  return d.toString();
}

describe('DirectOutbound', () => {
  it('connects to an IP literal without any resolver', async () => {
    const sock = await new DirectOutbound().connect({ host: LO, port: origin.port });
    expect(sock.allowHalfOpen).toBe(true);
    expect(await greeting(sock)).toBe('hi');
  });

  it('resolves a name through --dns-upstream (upstreamResolver → our DNS server), not the system', async () => {
    const out = new DirectOutbound({ resolve: upstreamResolver(`${LO}:${dns.port}`) });
    const sock = await out.connect({ host: 'origin.fakeproxy.test', port: origin.port });
    expect(await greeting(sock)).toBe('hi');
    expect(dns.asked).toContain('A origin.fakeproxy.test');
  });

  it('unknown name → ENOTFOUND naming the DNS server', async () => {
    const out = new DirectOutbound({ resolve: upstreamResolver(`${LO}:${dns.port}`) });
    const err = await out.connect({ host: 'nope.fakeproxy.test', port: 80 }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ENOTFOUND' });
    expect((err as Error).message).toContain(`via ${LO}:${dns.port}`);
  });

  it('a name with no resolver → ENORESOLVER (never getaddrinfo)', async () => {
    const err = await new DirectOutbound().connect({ host: 'localhost', port: origin.port }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ENORESOLVER' });
    expect((err as Error).message).toMatch(/pass --dns-upstream/);
  });

  it('tries the addresses in order: a refused first address falls through to the next', async () => {
    // 127.0.0.2 is loopback too, but the origin listens on 127.0.0.1 only → refused.
    const out = new DirectOutbound({ resolve: async () => ['127.0.0.2', LO] });
    const sock = await out.connect({ host: 'two.test', port: origin.port });
    expect(sock.remoteAddress).toBe(LO);
    expect(await greeting(sock)).toBe('hi');
  });

  it('a refused address starts the next one at once, not after attemptDelayMs', async () => {
    // With a 60 s delay and a 5 s budget, waiting for the delay would end in ETIMEDOUT.
    const out = new DirectOutbound({ resolve: async () => ['127.0.0.2', LO], attemptDelayMs: 60_000 });
    const sock = await out.connect({ host: 'two.test', port: origin.port }, { timeoutMs: 5000 });
    expect(await greeting(sock)).toBe('hi');
  });

  it('all addresses refused → ECONNREFUSED with the last address', async () => {
    const dead = await freePort();
    const out = new DirectOutbound({ resolve: async () => ['127.0.0.2', LO] });
    const err = await out.connect({ host: 'two.test', port: dead }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ECONNREFUSED' });
    expect((err as Error).message).toContain(`${LO}:${dead}`);
  });

  it('resolver slower than the budget → ETIMEDOUT', async () => {
    const out = new DirectOutbound({ resolve: () => new Promise(() => {}) });
    await expect(out.connect({ host: 'slow.test', port: 80 }, { timeoutMs: 50 })).rejects.toMatchObject({
      code: 'ETIMEDOUT',
    });
  });
});
