import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachedResolver, type ResolvedAnswer, upstreamQuery, upstreamResolver } from '../../../src/proxy/dial.js';
import { LO, loopbackDns } from './helpers.js';

function fakeQuery(answers: Record<string, ResolvedAnswer | Error>) {
  const calls: string[] = [];
  const pending: Array<() => void> = [];
  let hold = false;
  const query = (name: string): Promise<ResolvedAnswer> => {
    calls.push(name);
    const a = answers[name] ?? new Error(`ENOTFOUND ${name}`);
    const settle = (res: (v: ResolvedAnswer) => void, rej: (e: unknown) => void) =>
      a instanceof Error ? rej(a) : res({ addrs: [...a.addrs], ttlSec: a.ttlSec });
    return new Promise((res, rej) => {
      if (hold) pending.push(() => settle(res, rej));
      else settle(res, rej);
    });
  };
  return {
    query,
    calls,
    hold() {
      hold = true;
    },
    release() {
      hold = false;
      for (const p of pending.splice(0)) p();
    },
  };
}

describe('cachedResolver', () => {
  it('reuses an answer for its TTL, then asks again', async () => {
    let now = 0;
    const q = fakeQuery({ 'a.test': { addrs: ['10.0.0.1'], ttlSec: 30 } });
    const resolve = cachedResolver(q.query, { clock: () => now });
    expect(await resolve('a.test')).toEqual(['10.0.0.1']);
    now = 29_999;
    expect(await resolve('a.test')).toEqual(['10.0.0.1']);
    expect(q.calls).toHaveLength(1);
    now = 30_000;
    expect(await resolve('a.test')).toEqual(['10.0.0.1']);
    expect(q.calls).toHaveLength(2);
  });

  it('clamps the TTL to [minTtlMs, maxTtlMs] (defaults 5 s and 5 min)', async () => {
    let now = 0;
    const q = fakeQuery({
      'zero.test': { addrs: ['10.0.0.2'], ttlSec: 0 },
      'day.test': { addrs: ['10.0.0.3'], ttlSec: 86_400 },
    });
    const resolve = cachedResolver(q.query, { clock: () => now });
    await resolve('zero.test');
    await resolve('day.test');
    now = 4_999;
    await resolve('zero.test');
    expect(q.calls).toEqual(['zero.test', 'day.test']);
    now = 5_000;
    await resolve('zero.test');
    expect(q.calls).toEqual(['zero.test', 'day.test', 'zero.test']);
    now = 299_999;
    await resolve('day.test');
    expect(q.calls.filter((c) => c === 'day.test')).toHaveLength(1);
    now = 300_000;
    await resolve('day.test');
    expect(q.calls.filter((c) => c === 'day.test')).toHaveLength(2);
  });

  it('coalesces concurrent lookups of one name into one query', async () => {
    const q = fakeQuery({ 'c.test': { addrs: ['10.0.0.4', '10.0.0.5'], ttlSec: 60 } });
    const resolve = cachedResolver(q.query, { clock: () => 0 });
    q.hold();
    const all = Array.from({ length: 64 }, () => resolve('c.test'));
    expect(q.calls).toHaveLength(1);
    q.release();
    for (const r of await Promise.all(all)) expect(r).toEqual(['10.0.0.4', '10.0.0.5']);
    expect(q.calls).toHaveLength(1);
  });

  it('coalesced failures reject every waiter', async () => {
    const q = fakeQuery({});
    const resolve = cachedResolver(q.query, { clock: () => 0 });
    q.hold();
    const all = [resolve('gone.test'), resolve('gone.test')];
    q.release();
    for (const p of all) await expect(p).rejects.toThrow(/ENOTFOUND gone.test/);
    expect(q.calls).toHaveLength(1);
  });

  it('remembers a failure for negativeTtlMs (default 1 s), then asks again', async () => {
    let now = 0;
    const answers: Record<string, ResolvedAnswer | Error> = {};
    const q = fakeQuery(answers);
    const resolve = cachedResolver(q.query, { clock: () => now });
    await expect(resolve('late.test')).rejects.toThrow(/ENOTFOUND/);
    now = 999;
    await expect(resolve('late.test')).rejects.toThrow(/ENOTFOUND/);
    expect(q.calls).toHaveLength(1);
    answers['late.test'] = { addrs: ['10.0.0.6'], ttlSec: 60 };
    now = 1_000;
    expect(await resolve('late.test')).toEqual(['10.0.0.6']);
    expect(q.calls).toHaveLength(2);
  });

  it('names compare case-insensitively, without a trailing dot', async () => {
    const q = fakeQuery({ 'Mixed.Test': { addrs: ['10.0.0.7'], ttlSec: 60 } });
    const resolve = cachedResolver(q.query, { clock: () => 0 });
    await resolve('Mixed.Test');
    expect(await resolve('mixed.test.')).toEqual(['10.0.0.7']);
    expect(q.calls).toHaveLength(1);
  });

  it('holds at most maxEntries names (oldest dropped)', async () => {
    const q = fakeQuery({
      'a.test': { addrs: ['10.0.0.1'], ttlSec: 60 },
      'b.test': { addrs: ['10.0.0.2'], ttlSec: 60 },
    });
    const resolve = cachedResolver(q.query, { clock: () => 0, maxEntries: 1 });
    await resolve('a.test');
    await resolve('b.test');
    await resolve('a.test');
    expect(q.calls).toEqual(['a.test', 'b.test', 'a.test']);
  });

  it('hands out an array callers cannot corrupt for each other', async () => {
    const q = fakeQuery({ 'f.test': { addrs: ['10.0.0.8'], ttlSec: 60 } });
    const resolve = cachedResolver(q.query, { clock: () => 0 });
    const a = await resolve('f.test');
    expect(() => a.push('6.6.6.6')).toThrow();
    expect(await resolve('f.test')).toEqual(['10.0.0.8']);
  });
});

describe('upstreamResolver against a real DNS server', () => {
  let dns: Awaited<ReturnType<typeof loopbackDns>>;
  let port: number;
  let asked: string[];
  beforeAll(async () => {
    dns = await loopbackDns({
      'ttl.fakeproxy.test': [
        { ttl: 42, data: '10.9.0.1' },
        { ttl: 17, data: '10.9.0.2' },
      ],
    });
    ({ port, asked } = dns);
  });
  afterAll(() => dns?.close());

  it('reports the smallest TTL of the answer', async () => {
    const ans = await upstreamQuery(`${LO}:${port}`)('ttl.fakeproxy.test');
    expect(ans.addrs.sort()).toEqual(['10.9.0.1', '10.9.0.2']);
    expect(ans.ttlSec).toBe(17);
  });

  it('asks the server once for many connections to one name', async () => {
    asked.length = 0;
    const resolve = upstreamResolver(`${LO}:${port}`);
    const first = await Promise.all(Array.from({ length: 16 }, () => resolve('ttl.fakeproxy.test')));
    const again = await resolve('TTL.fakeproxy.test');
    for (const r of [...first, again]) expect([...r].sort()).toEqual(['10.9.0.1', '10.9.0.2']);
    expect(asked.filter((a) => a === 'A ttl.fakeproxy.test')).toHaveLength(1);
    expect(asked.filter((a) => a === 'AAAA ttl.fakeproxy.test')).toHaveLength(1);
  });

  it('an unknown name fails once, and the failure is served from the cache', async () => {
    asked.length = 0;
    const resolve = upstreamResolver(`${LO}:${port}`);
    await expect(resolve('nope.fakeproxy.test')).rejects.toMatchObject({ code: 'ENOTFOUND' });
    await expect(resolve('nope.fakeproxy.test')).rejects.toMatchObject({ code: 'ENOTFOUND' });
    expect(asked.filter((a) => a === 'A nope.fakeproxy.test')).toHaveLength(1);
  });

  it('cache: false asks for every lookup', async () => {
    asked.length = 0;
    const resolve = upstreamResolver(`${LO}:${port}`, { cache: false });
    await resolve('ttl.fakeproxy.test');
    await resolve('ttl.fakeproxy.test');
    expect(asked.filter((a) => a === 'A ttl.fakeproxy.test')).toHaveLength(2);
  });
});
