import { getEventListeners } from 'node:events';
import { describe, expect, it } from 'vitest';
import { Group, type GroupSpec } from '../../../src/proxy/groups.js';
import type { Outbound } from '../../../src/proxy/outbound.js';
import { RejectOutbound } from '../../../src/proxy/outbounds/reject.js';

/** Members are fake outbounds; `delays` says what a probe through each answers (undefined: dead). */
function setup(type: GroupSpec['type'], extra: Partial<GroupSpec> = {}) {
  const obs = new Map<string, Outbound>(['a', 'b', 'c'].map((n) => [n, Object.assign(new RejectOutbound(), { n })]));
  const delays: Record<string, number | undefined> = { a: 50, b: 20, c: 30 };
  const log: string[] = [];
  const g = new Group(
    {
      name: 'G',
      type,
      members: ['a', 'b', 'c'],
      health: { url: 'http://origin.test/', intervalSec: 1, timeoutMs: 100 },
      line: 1,
      ...extra,
    },
    {
      leaf: (m) => obs.get(m),
      probe: async (ob) => delays[(ob as unknown as { n: string }).n],
      log: (l) => log.push(l),
    },
  );
  return { g, delays, log };
}

describe('groups', () => {
  it('select: first member, switchable, only to members', () => {
    const { g } = setup('select');
    expect(g.pick('x')).toBe('a');
    expect(g.select('c')).toBe(true);
    expect(g.pick('x')).toBe('c');
    expect(g.select('nope')).toBe(false);
    expect(g.pick('x')).toBe('c');
  });

  it('fallback: first live member; moves on when it dies, returns when it is back', async () => {
    const { g, delays, log } = setup('fallback');
    await g.check();
    expect(g.pick('x')).toBe('a');
    delays.a = undefined;
    await g.check();
    expect(g.pick('x')).toBe('b');
    expect(log).toContain('group G: a is dead');
    delays.a = 40;
    await g.check();
    expect(g.pick('x')).toBe('a');
    expect(log.at(-1)).toMatch(/group G: a is alive again \(40 ms\)/);
  });

  it('fallback: all dead → the first member (connections fail visibly rather than nowhere)', async () => {
    const { g, delays } = setup('fallback');
    delays.a = delays.b = delays.c = undefined;
    await g.check();
    expect(g.pick('x')).toBe('a');
  });

  it.each([
    [0, { a: 50, b: 20, c: 30 }, { a: 50, b: 25, c: 22 }, 'c'],
    [10, { a: 50, b: 20, c: 30 }, { a: 50, b: 25, c: 22 }, 'b'],
    [10, { a: 50, b: 20, c: 30 }, { a: 50, b: 40, c: 22 }, 'c'],
    [10, { a: 50, b: 20, c: 30 }, { a: 50, b: undefined, c: 29 }, 'c'],
  ])('url-test with tolerance %i: %o then %o → %s', async (tolerance, d1, d2, want) => {
    const { g, delays } = setup('url-test', { tolerance });
    Object.assign(delays, d1);
    await g.check();
    expect(g.pick('x')).toBe('b');
    Object.assign(delays, d2);
    await g.check();
    expect(g.pick('x')).toBe(want);
  });

  it('load-balance: the same destination sticks to one member; a dead member is skipped', async () => {
    const { g, delays } = setup('load-balance');
    await g.check();
    const picks = new Map<string, string>();
    for (let i = 0; i < 60; i++) picks.set(`host${i}.test`, g.pick(`host${i}.test`));
    for (const [k, v] of picks) expect(g.pick(k)).toBe(v);
    expect(new Set(picks.values()).size).toBe(3);
    delays.b = undefined;
    await g.check();
    for (const k of picks.keys()) expect(g.pick(k)).not.toBe('b');
  });

  it('load-balance round-robin cycles through live members', async () => {
    const { g } = setup('load-balance', { strategy: 'round-robin' });
    expect([g.pick('x'), g.pick('x'), g.pick('x'), g.pick('x')]).toEqual(['a', 'b', 'c', 'a']);
  });
});

describe('probe: a real HTTP fetch through the member', () => {
  it('answers the delay through a live path and undefined through a dead one', async () => {
    const http = await import('node:http');
    const { probe } = await import('../../../src/proxy/groups.js');
    const { DirectOutbound } = await import('../../../src/proxy/outbounds/direct.js');
    const seen: string[] = [];
    const server = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url} ${req.headers.host}`);
      res.statusCode = 204;
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const d = await probe(new DirectOutbound(), `http://127.0.0.1:${port}/generate_204`, 2000);
      expect(d).toBeGreaterThan(0);
      expect(seen).toEqual([`GET /generate_204 127.0.0.1:${port}`]);
    } finally {
      await new Promise((r) => server.close(r));
    }
    expect(await probe(new DirectOutbound(), `http://127.0.0.1:${port}/`, 2000)).toBeUndefined();
  });
});

describe('passive health: a connection that cannot reach its proxy', () => {
  it('marks the member dead at once in fallback / url-test / load-balance; select and unchecked groups ignore it', async () => {
    const { g, log } = setup('fallback');
    await g.check();
    expect(g.pick('x')).toBe('a');
    g.reportFailure('a', 'ECONNREFUSED');
    expect(g.pick('x')).toBe('b');
    expect(log.at(-1)).toBe('group G: a is dead (a connection through it failed: ECONNREFUSED)');
    g.reportFailure('a', 'ECONNREFUSED');
    expect(log.filter((l) => l.includes('a is dead'))).toHaveLength(1);
    // The next check decides again: a answers, so it is back.
    await g.check();
    expect(g.pick('x')).toBe('a');

    const u = setup('url-test');
    await u.g.check();
    expect(u.g.pick('x')).toBe('b');
    u.g.reportFailure('b', 'ETIMEDOUT');
    expect(u.g.pick('x')).not.toBe('b');

    const s = setup('select');
    s.g.reportFailure('a', 'ECONNREFUSED');
    expect(s.g.pick('x')).toBe('a');
    const n = setup('fallback', { health: undefined });
    n.g.reportFailure('a', 'ECONNREFUSED');
    expect(n.g.pick('x')).toBe('a'); // nothing would ever mark it alive again
  });

  it('the router reports to the group that picked the proxy (nested groups: the innermost)', async () => {
    const { RouteTable } = await import('../../../src/proxy/router.js');
    const obs = new Map<string, Outbound>(['p1', 'p2'].map((n) => [n, new RejectOutbound()]));
    const health = { url: 'http://origin.test/', intervalSec: 300, timeoutMs: 100 };
    const t = new RouteTable({
      outbounds: obs,
      final: 'outer',
      groups: [
        { name: 'outer', type: 'select', members: ['inner'], line: 1 },
        { name: 'inner', type: 'fallback', members: ['p1', 'p2'], health, line: 2 },
      ],
    });
    const d = t.decide({ name: 'example.com', ip: '198.18.0.9', port: 80, proto: 'tcp' });
    expect(d.chain).toEqual(['outer', 'inner', 'p1']);
    t.reportFailure(d.chain, 'ECONNREFUSED');
    expect(t.decide({ name: 'example.com', ip: '198.18.0.9', port: 80, proto: 'tcp' }).chain).toEqual([
      'outer',
      'inner',
      'p2',
    ]);
  });

  it('connectViaProxy flags failures at the proxy, not the destination’s', async () => {
    const net = await import('node:net');
    const { isProxyDown } = await import('../../../src/proxy/dial.js');
    const { Socks5Outbound } = await import('../../../src/proxy/outbounds/socks5.js');
    // A SOCKS5 proxy that answers "host unreachable" (REP 4): the destination's fault.
    const server = net.createServer((s) => {
      s.once('data', () => {
        s.write(Buffer.from([5, 0]));
        s.once('data', () => s.end(Buffer.from([5, 4, 0, 1, 0, 0, 0, 0, 0, 0])));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    const dst = { host: 'example.com', port: 80 };
    const err = (p: Promise<unknown>) =>
      p.then(
        () => undefined,
        (e: unknown) => e,
      );
    try {
      const answered = await err(new Socks5Outbound({ host: '127.0.0.1', port }).connect(dst, { timeoutMs: 2000 }));
      expect((answered as { code: string }).code).toBe('ESOCKS5_HOST_UNREACHABLE');
      expect(isProxyDown(answered)).toBe(false);
    } finally {
      await new Promise((r) => server.close(r));
    }
    const refused = await err(new Socks5Outbound({ host: '127.0.0.1', port }).connect(dst, { timeoutMs: 2000 }));
    expect(isProxyDown(refused)).toBe(true);
  });
});

describe('probe: no listener left on the group’s lifetime signal', () => {
  it('after a timed-out, a refused and a successful probe; stop() ends a probe in flight', async () => {
    const net = await import('node:net');
    const http = await import('node:http');
    const { probe } = await import('../../../src/proxy/groups.js');
    const { DirectOutbound } = await import('../../../src/proxy/outbounds/direct.js');
    const silent = net.createServer(() => {}); // accepts, never answers
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const ok = http.createServer((_q, res) => res.end());
    await new Promise<void>((r) => ok.listen(0, '127.0.0.1', r));
    const sp = (silent.address() as { port: number }).port;
    const op = (ok.address() as { port: number }).port;
    const life = new AbortController();
    try {
      expect(await probe(new DirectOutbound(), `http://127.0.0.1:${sp}/`, 200, life.signal)).toBeUndefined();
      expect(getEventListeners(life.signal, 'abort')).toHaveLength(0);
      expect(await probe(new DirectOutbound(), `http://127.0.0.1:${op}/`, 2000, life.signal)).toBeGreaterThan(0);
      expect(getEventListeners(life.signal, 'abort')).toHaveLength(0);
      silent.close();
      expect(await probe(new DirectOutbound(), `http://127.0.0.1:${sp}/`, 2000, life.signal)).toBeUndefined();
      expect(getEventListeners(life.signal, 'abort')).toHaveLength(0);
      // A probe with a budget longer than the test's own timeout ends when the group stops.
      const s2 = net.createServer(() => {});
      await new Promise<void>((r) => s2.listen(0, '127.0.0.1', r));
      const port2 = (s2.address() as { port: number }).port;
      const inflight = probe(new DirectOutbound(), `http://127.0.0.1:${port2}/`, 600_000, life.signal);
      await new Promise((r) => setTimeout(r, 50));
      life.abort();
      expect(await inflight).toBeUndefined();
      s2.close();
    } finally {
      silent.close();
      ok.close();
    }
  });
});
