/**
 * A Sentinel failover announced while a client is reconnecting must not end
 * the client for good (src/redis/client.ts reconnectAfterEnd). A scripted
 * Sentinel (RESP over real TCP) names a real redis-server as the primary and
 * publishes +switch-master exactly while the client asks it where the
 * primary is, after the client's connection was killed: the timing of a
 * real failover, made deterministic. And a real redis-sentinel with a
 * password of its own (?sentinelPassword=).
 */
import { once } from 'node:events';
import net from 'node:net';
import type { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeproxyError } from '../../../src/errors.js';
import {
  connectOnce,
  defaultRedisFactory,
  type RedisClient,
  resilientClient,
  resilientOptions,
} from '../../../src/redis/client.js';
import { eventually, TestRedis, TestSentinel } from './redisServer.js';

const bulk = (s: string) => `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
const array = (items: string[]) => `*${items.length}\r\n${items.join('')}`;
/** Resolves on the client's next 'end' (events.once would reject on the 'error' that precedes it). */
const nextEnd = (c: RedisClient) => new Promise<void>((resolve) => c.once('end', () => resolve()));

/** Complete RESP command arrays at the front of `buf`, and what is left over. */
function parseCommands(buf: string): { cmds: string[][]; rest: string } {
  const cmds: string[][] = [];
  let at = 0;
  for (;;) {
    const head = /^\*(\d+)\r\n/.exec(buf.slice(at));
    if (!head) break;
    let pos = at + head[0].length;
    const cmd: string[] = [];
    for (let i = 0; i < Number(head[1]); i++) {
      const len = /^\$(\d+)\r\n/.exec(buf.slice(pos));
      if (!len) break;
      const start = pos + len[0].length;
      if (buf.length < start + Number(len[1]) + 2) break;
      cmd.push(buf.slice(start, start + Number(len[1])));
      pos = start + Number(len[1]) + 2;
    }
    if (cmd.length < Number(head[1])) break;
    cmds.push(cmd);
    at = pos;
  }
  return { cmds, rest: buf.slice(at) };
}

/**
 * Just enough of a Sentinel for ioredis: get-master-addr-by-name answers
 * `primary`, SENTINEL sentinels is empty, SUBSCRIBE is acknowledged,
 * anything else (CLIENT SETINFO…) +OK. While `announceOnNextAsk` is set, the
 * next get-master-addr-by-name first publishes +switch-master to the
 * subscribers and answers 100 ms later.
 */
async function scriptedSentinel(primary: { host: string; port: number }) {
  const subscribers = new Set<net.Socket>();
  const state = { announceOnNextAsk: false, asks: 0, announced: 0 };
  const server = net.createServer((sock) => {
    let buf = '';
    sock.setEncoding('latin1');
    sock.on('error', () => {});
    sock.on('close', () => subscribers.delete(sock));
    sock.on('data', (d: string) => {
      const { cmds, rest } = parseCommands(buf + d);
      buf = rest;
      for (const [name, ...args] of cmds) {
        const sub = args[0]?.toLowerCase();
        if (name.toLowerCase() === 'sentinel' && sub === 'get-master-addr-by-name') {
          state.asks++;
          const reply = array([bulk(primary.host), bulk(String(primary.port))]);
          if (state.announceOnNextAsk) {
            state.announceOnNextAsk = false;
            state.announced++;
            const msg = `mymaster ${primary.host} ${primary.port} ${primary.host} ${primary.port}`;
            for (const s of subscribers) s.write(array([bulk('message'), bulk('+switch-master'), bulk(msg)]));
            setTimeout(() => sock.write(reply), 100);
          } else {
            sock.write(reply);
          }
        } else if (name.toLowerCase() === 'sentinel' && sub === 'sentinels') {
          sock.write('*0\r\n');
        } else if (name.toLowerCase() === 'subscribe') {
          subscribers.add(sock);
          sock.write(array([bulk('subscribe'), bulk(args[0]), ':1\r\n']));
        } else {
          sock.write('+OK\r\n');
        }
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    state,
    subscribers,
    close: () => server.close(),
  };
}

describe('a Sentinel client through a failover announced during its reconnection', () => {
  let redis: TestRedis;
  let sentinel: Awaited<ReturnType<typeof scriptedSentinel>>;
  const clients: RedisClient[] = [];
  let wanted = true;

  beforeAll(async () => {
    redis = await TestRedis.start();
    sentinel = await scriptedSentinel({ host: '127.0.0.1', port: redis.port });
  });
  afterAll(async () => {
    wanted = false;
    for (const c of clients) c.disconnect();
    sentinel?.close();
    await redis?.destroy();
  });

  /** Connect `client`, wait until its failover detector subscribed, then kill its connection with the announcement armed. */
  async function failOverUnder(client: RedisClient): Promise<void> {
    clients.push(client);
    client.on('error', () => {});
    const subscribedBefore = sentinel.subscribers.size;
    await client.connect();
    expect(await client.ping()).toBe('PONG');
    await eventually(() => sentinel.subscribers.size > subscribedBefore, 'the failover detector to subscribe');
    const announced = sentinel.state.announced;
    sentinel.state.announceOnNextAsk = true;
    // The primary drops its clients (as a dying primary does); redis-cli itself is spared (SKIPME).
    await redis.cli('CLIENT', 'KILL', 'TYPE', 'normal');
    await eventually(() => sentinel.state.announced > announced, 'the announcement during the reconnection');
  }

  const url = () => `redis+sentinel://127.0.0.1:${sentinel.port}/mymaster`;

  it('ends a bare ioredis Sentinel client for good (the ioredis behaviour guarded against)', async () => {
    const bare = defaultRedisFactory(url(), resilientOptions()) as Redis;
    const ended = nextEnd(bare);
    await failOverUnder(bare);
    await ended;
    // Several retry intervals later it is still ended: nothing reconnects it.
    await new Promise((r) => setTimeout(r, 1_000));
    expect(bare.status).toBe('end');
  });

  it('resilientClient connects again and serves commands', async () => {
    const client = resilientClient(defaultRedisFactory, url(), { wanted: () => wanted }) as Redis;
    const ended = nextEnd(client);
    await failOverUnder(client);
    await ended;
    await eventually(() => client.status === 'ready', 'the client to be ready again');
    expect(await client.set('fakeproxy:failover-test', 'ok')).toBe('OK');
    expect(await client.get('fakeproxy:failover-test')).toBe('ok');
  });

  it('stays closed once its owner no longer wants it', async () => {
    let mine = true;
    const client = resilientClient(defaultRedisFactory, url(), { wanted: () => mine }) as Redis;
    clients.push(client);
    client.on('error', () => {});
    await client.connect();
    mine = false;
    const ended = nextEnd(client);
    client.disconnect();
    await ended;
    await new Promise((r) => setTimeout(r, 1_000));
    expect(client.status).toBe('end');
  });
});

describe('Sentinels with a password of their own (?sentinelPassword=)', () => {
  let redis: TestRedis;
  let sentinel: TestSentinel;

  beforeAll(async () => {
    redis = await TestRedis.start({ password: 'nodes-pw' });
    sentinel = await TestSentinel.start(redis, { password: 'sentinel-pw' });
  });
  afterAll(async () => {
    await sentinel?.destroy();
    await redis?.destroy();
  });

  const base = () => `redis+sentinel://:nodes-pw@127.0.0.1:${sentinel.port}/mymaster`;

  it('connects with both passwords and reaches the primary', async () => {
    const client = await connectOnce(`${base()}?sentinelPassword=sentinel-pw`);
    try {
      expect(await client.set('fakeproxy:sentinel-auth', 'ok')).toBe('OK');
      expect((await redis.cli('GET', 'fakeproxy:sentinel-auth')).trim()).toBe('ok');
    } finally {
      client.disconnect();
    }
  });

  it.each([
    ['no Sentinel password', '', /requires a password: .*\?sentinelUsername=…&sentinelPassword=… for the Sentinels/],
    ['a wrong one', '?sentinelPassword=wrong', /rejected the credentials \(WRONGPASS\)/],
  ])('%s: one line naming the fix, nothing secret in it', async (_what, query, message) => {
    const err = await connectOnce(`${base()}${query}`).then(
      (c: RedisClient) => {
        c.disconnect();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(FakeproxyError);
    const msg = (err as Error).message;
    expect(msg.split('\n')).toHaveLength(1);
    expect(msg).toMatch(message);
    expect(msg).toMatch(/^Redis at redis\+sentinel:\/\/:\*\*\*@127\.0\.0\.1:\d+\/mymaster/);
    expect(msg).not.toMatch(/nodes-pw|wrong/);
  });
});
