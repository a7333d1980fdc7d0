import { once } from 'node:events';
import net from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FakeproxyError } from '../../../src/errors.js';
import { parsePoolCidr, RedisSharedPool } from '../../../src/redis/sharedPool.js';
import { captureLog, eventually, freePort, TestRedis } from './redisServer.js';

let redis: TestRedis;
const pools: RedisSharedPool[] = [];

beforeAll(async () => {
  redis = await TestRedis.start();
});
afterEach(() => {
  for (const p of pools.splice(0)) p.close();
});
afterAll(async () => {
  await redis.destroy();
});

async function pool(
  cidr: string,
  gateway: string,
  url = redis.url,
  extra: Partial<ConstructorParameters<typeof RedisSharedPool>[0]> = {},
) {
  const p = new RedisSharedPool({ url, cidr, gateway, logger: captureLog(), maxBackoffMs: 200, ...extra });
  pools.push(p);
  await p.start();
  return p;
}

const ipInt = (ip: string) => ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);

describe('parsePoolCidr', () => {
  it.each([
    ['198.18.0.0/16', '198.18.0.0/16', 65534],
    ['198.18.3.4/16', '198.18.0.0/16', 65534],
    ['10.0.0.8/29', '10.0.0.8/29', 6],
  ])('%s → %s with %d hosts', (input, cidr, size) => {
    expect(parsePoolCidr(input)).toMatchObject({ cidr, size });
  });
  it.each(['198.18.0.0', '198.18.0.0/31', '300.1.1.1/16', 'fe80::/64'])('rejects %s', (bad) => {
    expect(() => parsePoolCidr(bad)).toThrow(/invalid fake-IP CIDR/);
  });
});

describe('RedisSharedPool', () => {
  it('gives the same name the same address on two daemons, and answers known names from the cache', async () => {
    const a = await pool('198.18.0.0/16', '198.18.0.1');
    const b = await pool('198.18.0.0/16', '198.18.0.1');
    const ip = await a.allocate('Example.COM.');
    expect(await b.allocate('example.com')).toBe(ip);
    expect(a.lookup('example.com')).toBe(ip);
    expect(b.reverseCached(ip)).toBe('example.com');
    expect(await a.reverse(ip)).toBe('example.com');
    expect(ip).not.toBe('198.18.0.1');
    expect((await redis.cli('HGET', 'fakeproxy:pool:{198.18.0.0/16}:n2i', 'example.com')).trim()).toBe(ip);
    expect(await a.reverse('198.18.255.254')).toBeUndefined();
  });

  it('never gives two names one address: 1 000 names allocated concurrently from both daemons', async () => {
    const a = await pool('198.19.0.0/16', '198.19.0.1');
    const b = await pool('198.19.0.0/16', '198.19.0.1');
    const names = Array.from({ length: 1000 }, (_, i) => `host-${i}.example`);
    // Each daemon asks for every name, in opposite orders, all at once.
    const [fromA, fromB] = await Promise.all([
      Promise.all(names.map((n) => a.allocate(n))),
      Promise.all([...names].reverse().map((n) => b.allocate(n))).then((r) => r.reverse()),
    ]);
    expect(fromB).toEqual(fromA);
    expect(new Set(fromA).size).toBe(1000);
    for (const ip of fromA) {
      expect(ip.startsWith('198.19.')).toBe(true);
      expect(['198.19.0.0', '198.19.0.1', '198.19.255.255']).not.toContain(ip);
    }
    expect(Number(await redis.cli('HLEN', 'fakeproxy:pool:{198.19.0.0/16}:i2n'))).toBe(1000);
  });

  it('names its two connections in CLIENT LIST: fakeproxy:pool and fakeproxy:pool:events', async () => {
    const p = await pool('198.19.0.0/24', '198.19.0.1');
    await p.allocate('named.example');
    const names = async (type: string) =>
      (await redis.cliLines('CLIENT', 'LIST', 'TYPE', type)).map((l) => / name=(\S*) /.exec(l)?.[1]);
    expect(await names('normal')).toContain('fakeproxy:pool');
    // The subscriber is in pub/sub mode once its SUBSCRIBE (sent on its own 'ready', not awaited by start()) is in.
    await eventually(async () => (await names('pubsub')).includes('fakeproxy:pool:events'), 'the named subscriber');
  });

  it("recycles the least recently used address of a full /29 and invalidates other daemons' caches", async () => {
    const a = await pool('10.0.0.8/29', '10.0.0.9');
    const b = await pool('10.0.0.8/29', '10.0.0.9');
    expect(a.capacity).toBe(5);
    const ips: string[] = [];
    for (let i = 1; i <= 5; i++) ips.push(await a.allocate(`n${i}`));
    expect(ips.map(ipInt).sort((x, y) => x - y)).toEqual(
      ['10.0.0.10', '10.0.0.11', '10.0.0.12', '10.0.0.13', '10.0.0.14'].map(ipInt),
    );
    // n1 used again (through the other daemon, which has no cache entry): n2 is now the LRU.
    expect(await b.allocate('n1')).toBe(ips[0]);
    const recycled: [string, string][] = [];
    a.on('recycled', (name: string, ip: string) => recycled.push([name, ip]));
    const ip6 = await b.allocate('n6');
    expect(ip6).toBe(ips[1]);
    await eventually(() => a.lookup('n2') === undefined, 'a forgets n2');
    expect(recycled).toEqual([['n2', ips[1]]]);
    expect(await a.reverse(ip6)).toBe('n6');
    // touch() (batched) counts as use too: n3 touched, so n4 goes next.
    a.touch(ips[2]);
    await eventually(async () => {
      const order = await redis.cliLines('ZRANGE', 'fakeproxy:pool:{10.0.0.8/29}:lru', '0', '-1');
      return order[order.length - 1] === ips[2];
    }, 'touch reaches Redis');
    expect(await a.allocate('n7')).toBe(ips[3]);
    // Never the network, broadcast or gateway address.
    const all = await redis.cliLines('HKEYS', 'fakeproxy:pool:{10.0.0.8/29}:i2n');
    expect(all).not.toContain('10.0.0.8');
    expect(all).not.toContain('10.0.0.9');
    expect(all).not.toContain('10.0.0.15');
    expect(all).toHaveLength(5);
  });

  it('falls back from EVALSHA to EVAL after SCRIPT FLUSH', async () => {
    const a = await pool('198.20.0.0/24', '198.20.0.1');
    await a.allocate('one.example');
    await redis.cli('SCRIPT', 'FLUSH');
    const ip = await a.allocate('two.example');
    expect(ip).toMatch(/^198\.20\.0\./);
    expect(await redis.cliLines('HGET', 'fakeproxy:pool:{198.20.0.0/24}:n2i', 'two.example')).toEqual([ip]);
  });

  it('rejects start() with a one-line error when Redis refuses the password', async () => {
    const locked = await TestRedis.start({ password: 'pw' });
    try {
      const log = captureLog();
      const p = new RedisSharedPool({
        url: `redis://:bad@127.0.0.1:${locked.port}`,
        cidr: '198.18.0.0/16',
        gateway: '198.18.0.1',
        logger: log,
      });
      pools.push(p);
      const err = await p.start().then(
        () => undefined,
        (e: unknown) => e,
      );
      // The rejection is the one line (the CLI prints it); nothing logged besides, no "retrying".
      expect(log.lines).toEqual([]);
      expect(err).toBeInstanceOf(FakeproxyError);
      expect(err).toMatchObject({ code: 'EREDISAUTH' });
      expect((err as Error).message).toMatch(/rejected the credentials/);
      expect((err as Error).message).not.toContain('bad@');
    } finally {
      await locked.destroy();
    }
  });
});

describe('RedisSharedPool with a replica (what a failover keeps)', () => {
  it('answers an address only once the replica has it, and refuses (EPOOLUNAVAILABLE) while the replica does not ack', async () => {
    const replica = await TestRedis.start({ args: ['--replicaof', '127.0.0.1', String(redis.port)] });
    const onReplica = new Redis(replica.url);
    try {
      // In sync on both sides: the replica's link is up, and the primary lists it
      // as online (what ROLE, and so the pool's WAIT count, sees; the primary
      // puts it online only at the replica's first ACK, a moment later).
      await eventually(
        async () =>
          (await replica.cli('INFO', 'replication')).includes('master_link_status:up') &&
          (await redis.cli('INFO', 'replication')).includes('state=online'),
        'replica in sync',
      );
      const a = await pool('198.23.0.0/16', '198.23.0.1');
      const b = await pool('198.23.0.0/16', '198.23.0.1');
      const names = Array.from({ length: 200 }, (_, i) => `r${i}.example`);
      // Every answer, the moment it is given, is already on the replica (WAIT before answering).
      const missing: string[] = [];
      await Promise.all(
        names.map(async (n, i) => {
          const ip = await (i % 2 ? a : b).allocate(n);
          const there = await onReplica.hget('fakeproxy:pool:{198.23.0.0/16}:n2i', n);
          if (there !== ip) missing.push(`${n}: ${ip} answered, replica has ${there}`);
        }),
      );
      // On failure, what the primary saw of its replica says which side lagged.
      if (missing.length) missing.unshift(`primary: ${await redis.cli('INFO', 'replication')}`);
      expect(missing).toEqual([]);

      // A replica that is connected but silent (SIGSTOP): new names are refused after the WAIT timeout …
      replica.signal('SIGSTOP');
      try {
        await expect(a.allocate('while-stopped.example')).rejects.toMatchObject({ code: 'EPOOLUNAVAILABLE' });
        // … and cached ones still answer.
        expect(await a.allocate('r1.example')).toBe(a.lookup('r1.example'));
      } finally {
        replica.signal('SIGCONT');
      }
      // Back: the same name is answered, with the address the primary kept for it.
      const ip = await b.allocate('while-stopped.example');
      expect(await onReplica.hget('fakeproxy:pool:{198.23.0.0/16}:n2i', 'while-stopped.example')).toBe(ip);
    } finally {
      onReplica.disconnect();
      await replica.destroy();
    }
  });

  it('a primary without replicas (standalone) answers without waiting', async () => {
    const p = await pool('198.24.0.0/16', '198.24.0.1', redis.url, { waitReplicas: 1 });
    expect(await p.allocate('alone.example')).toMatch(/^198\.24\./);
  });
});

describe('RedisSharedPool when Redis is unreachable (policy: cached names only, others EPOOLUNAVAILABLE → SERVFAIL)', () => {
  it('starts anyway, refuses unknown names, and allocates once Redis appears', async () => {
    const port = await freePort();
    const log = captureLog();
    const p = await pool('198.21.0.0/16', '198.21.0.1', `redis://127.0.0.1:${port}`, {
      logger: log,
      startTimeoutMs: 500,
    });
    expect(p.isConnected).toBe(false);
    await expect(p.allocate('x.example')).rejects.toMatchObject({ code: 'EPOOLUNAVAILABLE' });
    await expect(p.reverse('198.21.0.2')).rejects.toMatchObject({ code: 'EPOOLUNAVAILABLE' });
    expect(log.lines).toHaveLength(1);
    expect(log.lines[0]).toMatch(/cannot reach Redis/);
    const late = await TestRedis.start({ port });
    try {
      await eventually(() => p.isConnected, 'connected');
      expect(await p.allocate('x.example')).toMatch(/^198\.21\./);
    } finally {
      p.close();
      await late.destroy();
    }
  });

  it('keeps answering cached names during an outage and drops stale cache entries after it', async () => {
    // `a` reaches Redis through a proxy the test cuts, so another daemon can
    // recycle addresses while `a` misses the notifications.
    const cut = await CuttableProxy.start(redis.port);
    try {
      const a = await pool('198.22.0.0/29', '198.22.0.1', `redis://127.0.0.1:${cut.port}`);
      const b = await pool('198.22.0.0/29', '198.22.0.1');
      const known = await a.allocate('known.example');
      const other = await a.allocate('other.example');
      await cut.cut();
      await eventually(() => !a.isConnected, 'outage noticed');
      expect(await a.allocate('known.example')).toBe(known);
      expect(a.lookup('known.example')).toBe(known);
      expect(a.reverseCached(known)).toBe('known.example');
      const err = await a.allocate('new.example').then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(FakeproxyError);
      expect(err).toMatchObject({ code: 'EPOOLUNAVAILABLE' });

      // While `a` is cut off, `b` fills the /29 (5 usable) and recycles `other`, the LRU.
      for (const n of ['f1', 'f2', 'f3']) await b.allocate(n);
      await b.allocate('known.example');
      expect(await b.allocate('thief.example')).toBe(other);
      expect(a.lookup('other.example')).toBe(other); // stale, and `a` cannot know yet

      await cut.restore();
      await eventually(() => a.isConnected, 'a reconnected');
      expect(a.lookup('other.example')).toBeUndefined(); // revalidated before allocate() is re-enabled
      expect(a.lookup('known.example')).toBe(known);
      expect(await a.reverse(other)).toBe('thief.example');
    } finally {
      await cut.close();
    }
  });
});

/** A TCP relay to Redis that the test can cut (all connections reset, new ones refused) and restore. */
class CuttableProxy {
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();
  private constructor(
    readonly port: number,
    private readonly target: number,
  ) {}

  static async start(target: number): Promise<CuttableProxy> {
    const p = new CuttableProxy(await freePort(), target);
    await p.restore();
    return p;
  }

  async restore(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.target, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    this.server = server;
    server.listen(this.port, '127.0.0.1');
    await once(server, 'listening');
  }

  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise((r) => server.close(r));
  }

  close(): Promise<void> {
    return this.cut();
  }
}
