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
