import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import type { RedisFactory } from '../../../src/redis/client.js';
import { type FlowEventMessage, RedisMirror } from '../../../src/redis/mirror.js';
import { LiveDns, LiveNat } from './liveNat.js';
import { captureLog, eventually, freePort, TestRedis } from './redisServer.js';

let redis: TestRedis;
let reader: Redis;
const mirrors: RedisMirror[] = [];

beforeAll(async () => {
  redis = await TestRedis.start();
  reader = new Redis(redis.url);
});
afterEach(async () => {
  await Promise.all(mirrors.splice(0).map((m) => m.close()));
});
afterAll(async () => {
  reader.disconnect();
  await redis.destroy();
});

function mirror(opts: Partial<ConstructorParameters<typeof RedisMirror>[0]> & { nodeId: string }): RedisMirror {
  const m = new RedisMirror({ url: redis.url, logger: captureLog(), ...opts });
  mirrors.push(m);
  return m;
}

/** A RedisFactory that keeps every client it makes, so a test can reach the mirror's connections. */
function recordingFactory(): { clients: Redis[]; factory: RedisFactory } {
  const clients: Redis[] = [];
  const factory: RedisFactory = (url, options) => {
    const c = new Redis(url, options);
    clients.push(c);
    return c;
  };
  return { clients, factory };
}

const flowKeys = async (node: string) =>
  (await redis.cliLines('--scan', '--pattern', `fakeproxy:{${node}}:flow:*`)).sort();

describe('RedisMirror', () => {
  it('writes one hash per live flow with an index, a TTL and the name, and removes it on close', async () => {
    const nat = new LiveNat();
    const dns = new LiveDns();
    const ip = await dns.resolve('example.com');
    const m = mirror({ nodeId: 'gw-basic', keyTtlSec: 60 });
    m.attachDns(dns.dns);
    m.attachNat(nat.nat);
    m.start();
    await eventually(() => m.stats().connected, 'connected');

    const flows = Array.from({ length: 20 }, () => nat.open({ dst: ip }));
    m.annotate(flows[0].id, { outbound: 'socks5' });
    await eventually(async () => (await flowKeys('gw-basic')).length === 20, '20 flow hashes');

    const h = await reader.hgetall(`fakeproxy:{gw-basic}:flow:tcp:${flows[0].id}`);
    expect(h).toMatchObject({
      id: String(flows[0].id),
      proto: 'tcp',
      app: `198.18.0.1:${flows[0].srcPort}`,
      dst: `${ip}:80`,
      name: 'example.com',
      nat: `${flows[0].natIp}:${flows[0].natPort}`,
      outbound: 'socks5',
      state: 'established',
      createdMs: String(nat.now),
    });
    const ttl = Number(await redis.cli('TTL', `fakeproxy:{gw-basic}:flow:tcp:${flows[0].id}`));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(60);
    expect(await reader.zcard('fakeproxy:{gw-basic}:flows')).toBe(20);
    expect(await reader.hget('fakeproxy:{gw-basic}:dns:name', 'example.com')).toBe(ip);
    expect(await reader.hget('fakeproxy:{gw-basic}:dns:ip', ip)).toBe('example.com');

    for (const f of flows) nat.close(f);
    await eventually(async () => (await flowKeys('gw-basic')).length === 0, 'flow hashes gone');
    expect(await reader.zcard('fakeproxy:{gw-basic}:flows')).toBe(0);
    expect(m.stats().dropped).toBe(0);
  });

  it('names its connection fakeproxy:<node>:mirror in CLIENT LIST, again after a reconnect', async () => {
    const m = mirror({ nodeId: 'gw-named', maxBackoffMs: 200 });
    m.attachNat(new LiveNat().nat);
    m.start();
    const named = async () =>
      (await redis.cliLines('CLIENT', 'LIST')).filter((l) => l.includes(' name=fakeproxy:gw-named:mirror '));
    const first = await eventually(async () => {
      const l = await named();
      return l.length === 1 ? l[0] : undefined;
    }, 'one connection of that name');
    const id = /^id=(\d+) /.exec(first ?? '')?.[1];
    expect(id).toBeDefined();
    expect((await redis.cli('CLIENT', 'KILL', 'ID', String(id))).trim()).toBe('1');
    await eventually(async () => {
      const l = await named();
      return l.length === 1 && !l[0]?.startsWith(`id=${id} `);
    }, 'the new connection named too');
  });

  it('polls entries() less often when a poll is slow (big tables), so the event loop stays free', async () => {
    // The real table, big enough that copying it out takes milliseconds; each poll timed.
    const live = new LiveNat();
    for (let i = 0; i < 3000; i++) live.open({ sport: 20_000 + i });
    const polls: { start: number; ms: number }[] = [];
    const source = {
      on: live.nat.on.bind(live.nat),
      entries: () => {
        const start = performance.now();
        const e = live.nat.entries();
        polls.push({ start, ms: performance.now() - start });
        return e;
      },
    };
    const m = mirror({ nodeId: 'gw-slowpoll', refreshMs: 20 });
    m.attachNat(source);
    m.start();
    // The resync at connection reads the table too; only the ticks' polls count.
    await eventually(() => m.stats().resyncs === 1, 'first resync');
    polls.length = 0;
    // Under load a poll can take 100 ms and the next then waits 5 s: allow for two such gaps.
    await eventually(() => polls.length >= 3, 'three polls', 25_000);
    // Ticks come every 20 ms; a poll waits at least 50 × the previous one's duration.
    for (let i = 1; i < polls.length; i++) {
      expect(polls[i].start - polls[i - 1].start).toBeGreaterThanOrEqual(50 * polls[i - 1].ms);
    }
    // Not vacuous: each poll took long enough that 50 × its duration exceeds the 20 ms tick.
    for (const p of polls) expect(p.ms).toBeGreaterThan(0.4);
  }, 40_000);

  it('refreshes byte counters from entries() without any event', async () => {
    const nat = new LiveNat();
    const m = mirror({ nodeId: 'gw-bytes', refreshMs: 200 });
    m.attachNat(nat.nat);
    m.start();
    const f = nat.open();
    const key = `fakeproxy:{gw-bytes}:flow:tcp:${f.id}`;
    // The handshake open() completes: the SYN and the ACK, 40 bytes of IPv4 + TCP headers each.
    await eventually(async () => (await reader.hget(key, 'bytesOut')) === '80', 'initial counters');
    let now = nat.now;
    for (let i = 1; i <= 3; i++) {
      now += 1000;
      nat.traffic(f, 1000, 5000, now);
      // Listener → app: the SYN-ACK (40) once, then 5 000 bytes + 40 of headers per round.
      await eventually(
        async () => (await redis.cli('HGET', key, 'bytesIn')).trim() === String(40 + 5040 * i),
        `bytesIn = ${40 + 5040 * i}`,
      );
    }
    // App → Listener: SYN, the handshake's ACK, then 1 000 + 40 per round.
    expect(await reader.hget(key, 'bytesOut')).toBe(String(40 + 40 + 3 * 1040));
    expect(await reader.hget(key, 'state')).toBe('established');
    expect(Number(await reader.zscore('fakeproxy:{gw-bytes}:flows', `tcp:${f.id}`))).toBe(now);
  });

  it('publishes open and close events as JSON on fakeproxy:{<node>}:events', async () => {
    const sub = new Redis(redis.url);
    const got: FlowEventMessage[] = [];
    sub.on('message', (_c, msg: string) => got.push(JSON.parse(msg)));
    await sub.subscribe('fakeproxy:{gw-events}:events');
    try {
      const nat = new LiveNat();
      const m = mirror({ nodeId: 'gw-events' });
      m.attachNat(nat.nat);
      m.start();
      await eventually(() => m.stats().connected, 'connected');
      const f = nat.open({ proto: 'udp', dport: 443 });
      m.annotate(f.id, { name: 'quic.example', outbound: 'direct' });
      nat.traffic(f, 100, 200);
      nat.close(f, 'timeout');
      await eventually(() => got.length >= 2, 'two events');
      expect(got.map((e) => e.type)).toEqual(['open', 'close']);
      expect(got[0]).toMatchObject({
        v: 1,
        node: 'gw-events',
        flow: { id: f.id, proto: 'udp', name: 'quic.example', outbound: 'direct' },
      });
      // UDP datagrams: 28 bytes of headers each; out = the first (4 bytes) + 100, in = 200.
      expect(got[1]).toMatchObject({
        reason: 'timeout',
        flow: { id: f.id, state: 'udp', bytesIn: 228, bytesOut: 32 + 128, pktsOut: 2, pktsIn: 1 },
      });
      // Opened and closed within one batch: both events, and no hash is left behind.
      expect(await flowKeys('gw-events')).toEqual([]);
    } finally {
      sub.disconnect();
    }
  });

  it('mirrors mapped names and an address recycled to another name', async () => {
    // A /29: five usable addresses, so the sixth name takes the least recently used one.
    const dns = new LiveDns('10.9.0.8/29');
    const m = mirror({ nodeId: 'gw-dns' });
    m.attachDns(dns.dns);
    m.start();
    const ips = [];
    for (let i = 1; i <= 5; i++) ips.push(await dns.resolve(`n${i}.example`));
    await eventually(async () => (await reader.hlen('fakeproxy:{gw-dns}:dns:name')) === 5, 'five names');
    const ip6 = await dns.resolve('n6.example');
    expect(ip6).toBe(ips[0]); // recycled: n1 loses its address
    const expected = Object.fromEntries([
      ['n6.example', ip6],
      ...ips.slice(1).map((ip, i) => [`n${i + 2}.example`, ip]),
    ]);
    await eventually(async () => (await reader.hget('fakeproxy:{gw-dns}:dns:name', 'n6.example')) === ip6, 'n6 mapped');
    expect(await reader.hgetall('fakeproxy:{gw-dns}:dns:name')).toEqual(expected);
    expect(await reader.hget('fakeproxy:{gw-dns}:dns:ip', ip6)).toBe('n6.example');
    expect(await reader.hlen('fakeproxy:{gw-dns}:dns:ip')).toBe(5);
  });

  it('removes stale rows a previous run of the same node left behind', async () => {
    await redis.cli('HSET', 'fakeproxy:{gw-stale}:flow:tcp:999', 'id', '999', 'proto', 'tcp');
    await redis.cli('ZADD', 'fakeproxy:{gw-stale}:flows', '1', 'tcp:999');
    await redis.cli('HSET', 'fakeproxy:{gw-stale}:dns:name', 'old.example', '198.18.9.9');
    const nat = new LiveNat();
    const live = nat.open();
    const m = mirror({ nodeId: 'gw-stale' });
    m.attachNat(nat.nat);
    m.attachDns(new LiveDns().dns);
    m.start();
    await eventually(
      async () =>
        JSON.stringify(await flowKeys('gw-stale')) === JSON.stringify([`fakeproxy:{gw-stale}:flow:tcp:${live.id}`]),
      'only the live flow',
    );
    expect(await reader.zrange('fakeproxy:{gw-stale}:flows', 0, -1)).toEqual([`tcp:${live.id}`]);
    expect(await reader.exists('fakeproxy:{gw-stale}:dns:name')).toBe(0);
    expect(m.stats().resyncs).toBe(1);
  });

  it('close() removes every key of the node', async () => {
    const nat = new LiveNat();
    const dns = new LiveDns();
    await dns.resolve('x.example');
    const m = new RedisMirror({ url: redis.url, nodeId: 'gw-close', logger: captureLog() });
    m.attachNat(nat.nat);
    m.attachDns(dns.dns);
    m.start();
    nat.open();
    await eventually(async () => (await flowKeys('gw-close')).length === 1, 'flow written');
    await m.close();
    expect(await redis.cliLines('--scan', '--pattern', 'fakeproxy:{gw-close}:*')).toEqual([]);
  });

  it('rejects a malformed URL or node id with a UsageError', () => {
    expect(() => new RedisMirror({ url: 'http://127.0.0.1:6379', nodeId: 'n' })).toThrow(UsageError);
    expect(() => new RedisMirror({ url: 'redis://127.0.0.1:6379/x', nodeId: 'n' })).toThrow(/database/);
    expect(() => new RedisMirror({ url: redis.url, nodeId: 'a:b' })).toThrow(/node id/);
  });
});

describe('RedisMirror without Redis', () => {
  it('starts against an unreachable Redis with one log line, then syncs fully once Redis appears', async () => {
    const port = await freePort();
    const log = captureLog();
    const nat = new LiveNat();
    const m = new RedisMirror({ url: `redis://127.0.0.1:${port}`, nodeId: 'gw-late', logger: log, maxBackoffMs: 200 });
    mirrors.push(m);
    m.attachNat(nat.nat);
    expect(() => m.start()).not.toThrow();
    for (let i = 0; i < 5; i++) nat.open();
    await eventually(() => m.stats().dropped > 0, 'writes dropped while unreachable');
    await new Promise((r) => setTimeout(r, 1000)); // several retries happen in here
    expect(log.lines).toHaveLength(1);
    expect(log.lines[0]).toMatch(/cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);

    const late = await TestRedis.start({ port });
    try {
      await eventually(
        async () => (await late.cliLines('--scan', '--pattern', 'fakeproxy:{gw-late}:flow:*')).length === 5,
        '5 flows after connecting',
      );
      expect(m.stats().connected).toBe(true);
    } finally {
      await m.close();
      await late.destroy();
    }
  });

  it.each([
    ['a wrong password', ':wrong@', /rejected the credentials \(WRONGPASS\)/],
    ['no password', '', /requires a password/],
  ])('logs one clear line for %s and keeps accepting events', async (_what, auth, pattern) => {
    const locked = await TestRedis.start({ password: 's3cret' });
    const log = captureLog();
    const nat = new LiveNat();
    const m = new RedisMirror({ url: `redis://${auth}127.0.0.1:${locked.port}`, nodeId: 'gw-auth', logger: log });
    mirrors.push(m);
    try {
      m.attachNat(nat.nat);
      m.start();
      nat.open();
      await eventually(() => log.lines.length > 0, 'a log line');
      await eventually(() => m.stats().dropped > 0, 'dropped writes');
      expect(log.lines).toHaveLength(1);
      expect(log.lines[0]).toMatch(pattern);
      expect(log.lines[0]).not.toContain('wrong@');
      expect(m.stats().connected).toBe(false);
    } finally {
      await m.close();
      await locked.destroy();
    }
  });
});

describe('RedisMirror across a Redis outage', () => {
  it('keeps accepting events without queueing, counts drops, and resyncs fully after a restart', async () => {
    const r = await TestRedis.start();
    const { clients, factory } = recordingFactory();
    const nat = new LiveNat();
    // A /29 (five addresses): names resolved during the outage recycle before.example's.
    const dns = new LiveDns('10.9.0.8/29');
    const m = new RedisMirror({
      url: r.url,
      nodeId: 'gw-outage',
      logger: captureLog(),
      redisFactory: factory,
      refreshMs: 200,
      maxBackoffMs: 200,
    });
    mirrors.push(m);
    try {
      m.attachNat(nat.nat);
      m.attachDns(dns.dns);
      m.start();
      await dns.resolve('before.example');
      const before = Array.from({ length: 10 }, () => nat.open());
      await eventually(
        async () => (await r.cliLines('--scan', '--pattern', 'fakeproxy:{gw-outage}:flow:*')).length === 10,
        '10 flows',
      );

      // Persist, then kill: the restarted server comes back with what was there (incl. soon-stale rows).
      await r.cli('SAVE');
      await r.stop();
      await eventually(() => !m.stats().connected, 'disconnect noticed');
      const droppedAtStart = m.stats().dropped;

      for (const f of before.slice(0, 5)) nat.close(f);
      const during: number[] = [];
      for (let i = 0; i < 2000; i++) {
        const f = nat.open();
        if (i % 2 === 0) nat.close(f);
        else during.push(f.id);
      }
      const during5: Record<string, string> = {};
      for (let i = 1; i <= 5; i++) during5[`d${i}.example`] = await dns.resolve(`d${i}.example`);
      expect(dns.dns.lookup('before.example')).toBeUndefined();
      await eventually(() => m.stats().pending === 0, 'pending writes discarded, not queued');
      expect(m.stats().dropped).toBeGreaterThan(droppedAtStart);
      for (const c of clients) {
        expect((c as unknown as { offlineQueue: { length: number } }).offlineQueue.length).toBe(0);
      }
      expect(m.stats().flows).toBe(5 + during.length); // the view is the live table, nothing more

      await r.start();
      const expected = [...before.slice(5).map((f) => f.id), ...during]
        .map((id) => `fakeproxy:{gw-outage}:flow:tcp:${id}`)
        .sort();
      await eventually(async () => {
        const keys = (await r.cliLines('--scan', '--pattern', 'fakeproxy:{gw-outage}:flow:*')).sort();
        return JSON.stringify(keys) === JSON.stringify(expected);
      }, 'exactly the live flows after the restart');
      expect(Number(await r.cli('ZCARD', 'fakeproxy:{gw-outage}:flows'))).toBe(expected.length);
      const map = await r.cliLines('HGETALL', 'fakeproxy:{gw-outage}:dns:name');
      expect(
        Object.fromEntries(Array.from({ length: map.length / 2 }, (_, i) => [map[2 * i], map[2 * i + 1]])),
      ).toEqual(during5);
      expect(m.stats().resyncs).toBeGreaterThanOrEqual(2);
    } finally {
      await m.close();
      await r.destroy();
    }
  });
});

describe('RedisMirror flushes as one EVAL', () => {
  const T = 1_700_000_000_000;
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  async function commandCalls(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const l of await redis.cliLines('INFO', 'commandstats')) {
      const m = /^cmdstat_(\w+):calls=(\d+)/.exec(l);
      if (m) out[m[1] as string] = Number(m[2]);
    }
    return out;
  }

  /** Everything one node left in Redis (every key's value and whether it expires) and its events, in order. */
  async function scenario(batchScript: boolean) {
    const node = 'gw-eval';
    await redis.cli('FLUSHALL');
    await redis.cli('CONFIG', 'RESETSTAT');
    const sub = new Redis(redis.url);
    const events: string[] = [];
    sub.on('message', (_channel: string, msg: string) => events.push(msg));
    await sub.subscribe(`fakeproxy:{${node}}:events`);
    const nat = new LiveNat();
    nat.now = T;
    const dns = new LiveDns();
    // One flush takes everything pending (batchMax above the flow count): more than the script's chunk of 512.
    const m = mirror({ nodeId: node, batchScript, batchMs: 50, batchMax: 100_000, refreshMs: 100, now: () => T });
    try {
      m.attachDns(dns.dns);
      m.attachNat(nat.nat);
      m.start();
      await eventually(() => m.stats().connected, 'connected');
      const a = await dns.resolve('a.example');
      await dns.resolve('b.example');
      const flows = Array.from({ length: 1200 }, (_, i) =>
        nat.open({ dst: i % 2 === 0 ? a : undefined, sport: 20_000 + i }),
      );
      m.annotate(flows[1].id, { outbound: 'socks5', rule: 'DOMAIN,a.example' });
      await eventually(async () => (await flowKeys(node)).length === 1200, '1 200 rows');
      for (const f of flows.slice(0, 700)) nat.close(f);
      await eventually(async () => (await flowKeys(node)).length === 500, '500 rows left');
      // Polls of the counters (every refreshMs) after the last change, written: the rows hold the final counts.
      await sleep(500);
      await eventually(async () => {
        const n = events.length;
        await sleep(200);
        return n === events.length && m.stats().pending === 0;
      }, 'every event delivered, every row final');
      const dump: Record<string, unknown> = {};
      for (const key of (await redis.cliLines('--scan', '--pattern', 'fakeproxy:*')).sort()) {
        const type = await reader.type(key);
        const value =
          type === 'hash'
            ? await reader.hgetall(key)
            : type === 'zset'
              ? await reader.zrange(key, 0, -1, 'WITHSCORES')
              : await reader.get(key);
        // NAT addresses are drawn at random: the same in a flow's row and its events, and nowhere else.
        if (type === 'hash' && key.includes(':flow:')) (value as Record<string, string>).nat = 'random';
        dump[key] = { type, value, expires: (await reader.pttl(key)) > 0 };
      }
      const evs = events.map((e) => {
        const ev = JSON.parse(e) as FlowEventMessage;
        return JSON.stringify({ ...ev, flow: { ...ev.flow, nat: 'random' } });
      });
      return { dump, events: evs, calls: await commandCalls(), stats: m.stats() };
    } finally {
      sub.disconnect();
      await m.close();
    }
  }

  it('leaves the same keys, values, TTLs and events as the commands one by one, in a few commands', async () => {
    const one = await scenario(false);
    const script = await scenario(true);
    expect(Object.keys(script.dump)).toHaveLength(500 + 4); // rows, index, both maps, node info
    expect(script.dump).toEqual(one.dump);
    expect(script.events.length).toBeGreaterThanOrEqual(1200 + 700);
    expect(script.events).toEqual(one.events);
    expect(script.stats.dropped).toBe(0);
    expect(one.calls.eval ?? 0).toBe(0);
    // ~3 600 commands one by one (rows, TTLs, events); a few flushes as scripts, which run the same commands inside.
    expect(one.calls.publish).toBe(one.events.length);
    expect(script.calls.publish).toBe(script.events.length);
    expect(script.calls.eval).toBeGreaterThan(0);
    expect(script.calls.eval).toBeLessThan(50);
  });

  it('runs the rest of a flush when one of its commands fails, counts it, and the resync repairs it', async () => {
    const node = 'gw-pcall';
    // The fake-IP map's key holds a string: the flush's HSET on it fails with WRONGTYPE.
    await redis.cli('SET', `fakeproxy:{${node}}:dns:name`, 'not a hash');
    const sub = new Redis(redis.url);
    const events: string[] = [];
    sub.on('message', (_channel: string, msg: string) => events.push(msg));
    await sub.subscribe(`fakeproxy:{${node}}:events`);
    try {
      const nat = new LiveNat();
      const dns = new LiveDns();
      const m = mirror({ nodeId: node, batchMs: 50 });
      m.attachNat(nat.nat);
      m.attachDns(dns.dns);
      m.start();
      await eventually(() => m.stats().connected && m.stats().resyncs === 1, 'connected and resynced');
      await redis.cli('SET', `fakeproxy:{${node}}:dns:name`, 'not a hash');
      const ip = await dns.resolve('pcall.example');
      for (let i = 0; i < 5; i++) nat.open({ dst: ip });
      // Rows after the failing command's place in the script, and every event, still land.
      await eventually(async () => (await flowKeys(node)).length === 5 && events.length === 5, 'rows and events');
      expect(m.stats().dropped).toBeGreaterThan(0);
      expect(await reader.hget(`fakeproxy:{${node}}:dns:ip`, ip)).toBe('pcall.example');
      // The failure asked for a resync, which replaces the map with a hash.
      await eventually(
        async () => (await reader.hget(`fakeproxy:{${node}}:dns:name`, 'pcall.example').catch(() => null)) === ip,
        'the map repaired by the resync',
      );
    } finally {
      sub.disconnect();
    }
  });

  it('writes each change as its own command, logging once and losing nothing, for a user that may not EVAL', async () => {
    // Nor name its connection (CLIENT SETNAME): that is ignored.
    await redis.cli(
      'ACL',
      'SETUSER',
      'noeval',
      'on',
      '>pw',
      '~*',
      '&*',
      '+@all',
      '-eval',
      '-evalsha',
      '-client|setname',
    );
    try {
      const log = captureLog();
      const nat = new LiveNat();
      const m = mirror({ url: `redis://noeval:pw@127.0.0.1:${redis.port}`, nodeId: 'gw-noeval', logger: log });
      m.attachNat(nat.nat);
      m.start();
      await eventually(() => m.stats().connected, 'connected');
      const flows = Array.from({ length: 20 }, () => nat.open());
      await eventually(async () => (await flowKeys('gw-noeval')).length === 20, '20 rows');
      for (const f of flows.slice(0, 5)) nat.close(f);
      await eventually(async () => (await flowKeys('gw-noeval')).length === 15, '15 rows left');
      expect(m.stats().dropped).toBe(0);
      const refused = log.lines.filter((l) => l.includes('refuses EVAL'));
      expect(refused).toHaveLength(1);
      expect(refused[0]).toMatch(/^warn redis mirror: .* refuses EVAL \(NOPERM .*eval.*\); writing each change/);
      expect(refused[0]).not.toContain('pw@');
    } finally {
      await redis.cli('ACL', 'DELUSER', 'noeval');
    }
  });

  it('does not wait for the reply of a flush whose connection closed under it: counts it and resyncs', async () => {
    const node = 'gw-inflight';
    const { clients, factory } = recordingFactory();
    const nat = new LiveNat();
    const m = mirror({ nodeId: node, redisFactory: factory, batchMs: 50, refreshMs: 200, maxBackoffMs: 200 });
    m.attachNat(nat.nat);
    m.start();
    await eventually(() => m.stats().connected && m.stats().resyncs === 1, 'connected and resynced');
    expect(clients).toHaveLength(1);
    const conn = clients[0] as Redis;
    const id = await conn.client('ID');
    let readies = 0;
    conn.on('ready', () => readies++);
    // Redis holds every write (EVAL included) unanswered; the flush of these five is sent and waits.
    await redis.cli('CLIENT', 'PAUSE', '20000', 'WRITE');
    try {
      for (let i = 0; i < 5; i++) nat.open();
      await eventually(() => m.stats().pending === 0, 'the flush taken and sent');
      await sleep(100);
      expect(await flowKeys(node)).toEqual([]);
      // The connection drops with the EVAL in flight; ioredis reconnects and never settles that EVAL.
      expect((await redis.cli('CLIENT', 'KILL', 'ID', String(id))).trim()).toBe('1');
      await eventually(() => readies === 1, 'reconnected');
    } finally {
      await redis.cli('CLIENT', 'UNPAUSE');
    }
    // Later changes are flushed (no flush is left waiting), and the resync rewrites the lost flush's rows.
    for (let i = 0; i < 5; i++) nat.open();
    await eventually(async () => (await flowKeys(node)).length === 10, 'all ten rows');
    expect(m.stats().dropped).toBeGreaterThan(0);
    expect(m.stats().resyncs).toBeGreaterThanOrEqual(2);
  });
});
