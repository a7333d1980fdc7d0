/**
 * RedisSharedPool: the fake-IP pool kept in Redis for `--redis-shared-pool`,
 * so every daemon with the same CIDR answers the same address for the same
 * name. Allocation and LRU recycling run as one Lua script (atomic on the
 * server), so two daemons can never give two names one address.
 *
 * Keys: poolKeys() in src/redis/schema.ts (one hash tag, so the script's
 * keys share a Cluster slot).
 *
 * A local cache answers known names without a round trip; recycling
 * messages invalidate it on every daemon, and after a reconnect the cache is
 * revalidated against Redis (messages sent while away are lost).
 *
 * Redis unreachable (policy, docs/redis.md "Shared pool"): names already in
 * the local cache keep their answers; a name that is not cached makes
 * allocate() reject with EPOOLUNAVAILABLE, which FakeDns answers as SERVFAIL.
 * Consistency over availability: a local fallback would hand out addresses
 * another gateway may already give to another name, and since apps cache
 * DNS answers that conflict would outlive the outage and silently send
 * traffic to the wrong site; a SERVFAIL is visible and retried.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { FakeproxyError, UsageError } from '../errors.js';
import { intToIp, parseIpv4 } from '../util/cidr.js';
import {
  classifyRedisError,
  type RedisClient,
  type RedisConnectOptions,
  RedisEndpoint,
  redisErrorCode,
  subscribeAlways,
} from './client.js';
import { clientName, decodeRecycled, type PoolKeys, poolKeys } from './schema.js';

export interface RedisSharedPoolOptions extends RedisConnectOptions {
  /** IPv4 CIDR of the fake range; the pool is shared by every daemon with the same (normalised) CIDR. */
  cidr: string;
  /** Never handed out (the TUN address). Every daemon sharing the pool must use the same one. */
  gateway: string;
  /** How often batched touch() calls are written. @default 1000 */
  touchFlushMs?: number;
  /** start() waits this long for a first connection before resolving anyway. @default 5000 */
  startTimeoutMs?: number;
  /** Replicas an allocation must reach before it is answered. @default POOL_WAIT_REPLICAS */
  waitReplicas?: number;
}

const ALLOCATE_LUA = `
local n2i, i2n, lru, cursor, clock = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local name = ARGV[1]
local first, size, gw, channel, by = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
local t = redis.call('INCR', clock)
local ip = redis.call('HGET', n2i, name)
if ip then
  redis.call('ZADD', lru, t, ip)
  return {ip}
end
local function dotted(a)
  return string.format('%d.%d.%d.%d', math.floor(a / 16777216) % 256, math.floor(a / 65536) % 256,
    math.floor(a / 256) % 256, a % 256)
end
local n = tonumber(redis.call('GET', cursor) or '0')
while n < size do
  local a = first + n
  n = n + 1
  if a ~= gw then
    local cand = dotted(a)
    if redis.call('HEXISTS', i2n, cand) == 0 then
      redis.call('SET', cursor, n)
      redis.call('HSET', n2i, name, cand)
      redis.call('HSET', i2n, cand, name)
      redis.call('ZADD', lru, t, cand)
      return {cand}
    end
  end
end
redis.call('SET', cursor, n)
local oldest = redis.call('ZRANGE', lru, 0, 0)[1]
if not oldest then
  return redis.error_reply('EPOOLEMPTY the fake-IP pool has no usable address')
end
local old = redis.call('HGET', i2n, oldest)
if old then redis.call('HDEL', n2i, old) end
redis.call('HSET', n2i, name, oldest)
redis.call('HSET', i2n, oldest, name)
redis.call('ZADD', lru, t, oldest)
if old then
  redis.call('PUBLISH', channel, cjson.encode({name = old, ip = oldest, by = by}))
  return {oldest, old}
end
return {oldest}
`;

/** Mark addresses used (one logical tick for the batch); XX: never resurrect a recycled entry. */
const TOUCH_LUA = `
local t = redis.call('INCR', KEYS[2])
for i = 1, #ARGV do redis.call('ZADD', KEYS[1], 'XX', t, ARGV[i]) end
return #ARGV
`;

interface LuaScript {
  lua: string;
  sha: string;
}
const script = (lua: string): LuaScript => ({ lua, sha: createHash('sha1').update(lua).digest('hex') });
const ALLOCATE = script(ALLOCATE_LUA);
const isNoScript = (err: unknown) => String((err as Error)?.message).startsWith('NOSCRIPT');

/**
 * An allocation is answered only once it reached this many replicas (or all
 * the primary has, if fewer): a failover then promotes a replica that has it.
 * @default 1 — Sentinel promotes the most up-to-date replica and a Cluster
 * primary's replica takes over its slots, so one copy is what a failover of
 * one node needs; more would make every allocation wait on the slowest replica.
 */
export const POOL_WAIT_REPLICAS = 1;
/** How long an allocation waits for its replica before it is refused (SERVFAIL, retried by the resolver). */
export const POOL_WAIT_TIMEOUT_MS = 1_000;
const WAIT_TIMEOUT_MS = POOL_WAIT_TIMEOUT_MS;
/**
 * The most a name waits on Redis for its address (the allocation and its
 * replica WAIT) before it is refused: SERVFAIL, retried by the resolver.
 * Without it a Cluster failover held queries for seconds (ioredis queues a
 * Cluster's commands while a node is down), so the apps' resolvers timed out
 * instead of getting a fast answer to retry on. The allocation itself goes on:
 * when it lands, the name is cached and the retry is answered at once.
 */
export const POOL_ALLOCATE_DEADLINE_MS = POOL_WAIT_TIMEOUT_MS + 500;
const TOUCH = script(TOUCH_LUA);

/** Normalised CIDR and its usable host range (network and broadcast excluded). */
export function parsePoolCidr(cidr: string): { cidr: string; first: number; size: number } {
  const m = /^([\d.]+)\/(\d{1,2})$/.exec(cidr.trim());
  const base = m ? parseIpv4(m[1]) : undefined;
  const prefix = m ? Number(m[2]) : NaN;
  if (base === undefined || !(prefix >= 0 && prefix <= 30)) {
    throw new UsageError(`invalid fake-IP CIDR "${cidr}": expected an IPv4 range such as 198.18.0.0/16 (prefix ≤ 30)`);
  }
  const hostBits = 32 - prefix;
  const network = hostBits === 32 ? 0 : (Math.floor(base / 2 ** hostBits) * 2 ** hostBits) >>> 0;
  return { cidr: `${intToIp(network)}/${prefix}`, first: network + 1, size: 2 ** hostBits - 2 };
}

export function normaliseName(name: string): string {
  return name.toLowerCase().replace(/\.$/, '');
}

export class RedisSharedPool extends EventEmitter {
  readonly cidr: string;
  private readonly redis: RedisEndpoint;
  private readonly first: number;
  private readonly size: number;
  private readonly gatewayInt: number;
  private readonly keys: PoolKeys;
  private readonly touchFlushMs: number;
  private readonly startTimeoutMs: number;
  private readonly waitReplicas: number;
  /**
   * Replicas the primary had at the last allocation (ROLE); the next WAIT
   * asks for that many. Starts at 0: a first allocation that finds replicas
   * runs once more (idempotent) with a WAIT for them.
   */
  private replicas = 0;
  /** The WAIT in flight, which allocations whose reply arrived meanwhile join. */
  private waiting?: { k: number; acked: Promise<number> };
  /** Identifies this instance in recycling messages. */
  private readonly instanceId = `${process.pid}-${Math.random().toString(36).slice(2, 10)}`;

  private client?: RedisClient;
  private sub?: RedisClient;
  private connected = false;
  private everConnected = false;
  private closed = false;
  /** start() is waiting for the first outcome: a refused password becomes its rejection, not a log line. */
  private starting = false;
  private readonly byName = new Map<string, string>();
  private readonly byIp = new Map<string, string>();
  private readonly inflight = new Map<string, Promise<string>>();
  private touched = new Set<string>();
  private touchTimer?: NodeJS.Timeout;

  constructor(opts: RedisSharedPoolOptions) {
    super();
    this.redis = new RedisEndpoint(opts, () => !this.closed);
    const range = parsePoolCidr(opts.cidr);
    this.cidr = range.cidr;
    this.first = range.first;
    this.size = range.size;
    const gw = parseIpv4(opts.gateway);
    if (gw === undefined) throw new UsageError(`invalid gateway address "${opts.gateway}"`);
    this.gatewayInt = gw;
    this.keys = poolKeys(this.cidr);
    this.touchFlushMs = opts.touchFlushMs ?? 1000;
    this.startTimeoutMs = opts.startTimeoutMs ?? 5000;
    this.waitReplicas = opts.waitReplicas ?? POOL_WAIT_REPLICAS;
  }

  /** Addresses the pool can hand out (hosts of the CIDR minus the gateway). */
  get capacity(): number {
    const gwInside = this.gatewayInt >= this.first && this.gatewayInt < this.first + this.size;
    return this.size - (gwInside ? 1 : 0);
  }

  get isConnected(): boolean {
    return this.connected;
  }

  /**
   * Connect. Rejects on credentials Redis refuses (a configuration error that
   * retrying will not fix); resolves when connected, or after startTimeoutMs
   * with one logged line if Redis is unreachable (retries continue; until
   * then only cached names are answered).
   */
  async start(): Promise<void> {
    if (this.client) return;
    const client = this.redis.client(clientName('pool'));
    this.client = client;
    const sub = this.redis.client(clientName('pool', 'events'), true);
    this.sub = sub;
    sub.on('error', () => {
      /* the main client reports connection problems */
    });
    sub.on('message', (_ch: string, msg: string) => this.onRecycled(msg));
    // Queued until connected, and again after every reconnect.
    subscribeAlways(sub, 'subscribe', this.keys.recycled).catch(() => {});
    sub.connect().catch(() => {});

    client.on('close', () => {
      if (this.connected && !this.closed) {
        this.redis.logger.warn(
          `shared fake-IP pool: lost Redis at ${this.redis.redacted}; answering cached names only (others get SERVFAIL) until it is back`,
        );
        this.redis.failures.lost();
      }
      this.connected = false;
    });
    const firstOutcome = new Promise<unknown>((resolve) => {
      client.once('ready', () => resolve(undefined));
      client.on('error', (err: unknown) => {
        this.onError(err);
        resolve(err);
      });
    });
    client.on('ready', () => void this.onReady());
    // A Cluster stays 'ready' while a primary fails over; recycling messages
    // may have been missed meanwhile, so check the cache as after a reconnect.
    client.on('-node', () => void this.revalidate());
    client.connect().catch(() => {});
    this.touchTimer = setInterval(() => void this.flushTouches(), this.touchFlushMs);
    this.touchTimer.unref();

    let timer: NodeJS.Timeout | undefined;
    this.starting = true;
    const outcome = await Promise.race([
      firstOutcome,
      new Promise((resolve) => {
        timer = setTimeout(() => resolve('timeout'), this.startTimeoutMs);
      }),
    ]);
    clearTimeout(timer);
    this.starting = false;
    const kind = outcome === undefined || outcome === 'timeout' ? undefined : classifyRedisError(outcome);
    if (kind === 'auth' || kind === 'noauth') {
      this.close();
      throw new FakeproxyError(redisErrorCode(outcome), `shared fake-IP pool: ${this.redis.describe(outcome)}`, {
        cause: outcome,
      });
    }
  }

  /** The address of a name, allocating (or recycling the least recently used one) in Redis if needed. */
  allocate(name: string): Promise<string> {
    const key = normaliseName(name);
    const cached = this.lookup(key);
    if (cached !== undefined) return Promise.resolve(cached);
    const pending = this.inflight.get(key);
    if (pending) return pending;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(this.unavailable(new Error(`no reply within ${POOL_ALLOCATE_DEADLINE_MS} ms`))),
        POOL_ALLOCATE_DEADLINE_MS,
      );
    });
    const p = Promise.race([this.allocateRemote(key), late]).finally(() => {
      clearTimeout(timer);
      this.inflight.delete(key);
    });
    this.inflight.set(key, p);
    return p;
  }

  /** Cached address of a name (no round trip); marks it used. */
  lookup(name: string): string | undefined {
    const ip = this.byName.get(normaliseName(name));
    if (ip !== undefined) this.touch(ip);
    return ip;
  }

  /** Name of an address: the cache, else Redis. Rejects with EPOOLUNAVAILABLE when Redis is away and the cache does not know it. */
  async reverse(ip: string): Promise<string | undefined> {
    const cached = this.byIp.get(ip);
    if (cached !== undefined) return cached;
    const client = this.requireClient();
    let name: string | null;
    try {
      name = await client.hget(this.keys.i2n, ip);
    } catch (err) {
      throw this.unavailable(err);
    }
    if (name === null) return undefined;
    this.remember(name, ip);
    return name;
  }

  reverseCached(ip: string): string | undefined {
    return this.byIp.get(ip);
  }

  /** Mark an address used (LRU); batched, written every touchFlushMs. */
  touch(ip: string): void {
    this.touched.add(ip);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.touchTimer) clearInterval(this.touchTimer);
    this.client?.disconnect();
    this.sub?.disconnect();
  }

  // ---- internals ----

  private async allocateRemote(name: string): Promise<string> {
    this.requireClient();
    let reply: unknown;
    try {
      reply = await this.evalScript(
        ALLOCATE,
        [this.keys.n2i, this.keys.i2n, this.keys.lru, this.keys.cursor, this.keys.clock],
        [name, String(this.first), String(this.size), String(this.gatewayInt), this.keys.recycled, this.instanceId],
      );
    } catch (err) {
      if (/EPOOLEMPTY/.test(String((err as Error).message))) {
        throw new FakeproxyError('EPOOLEMPTY', `shared fake-IP pool ${this.cidr} has no usable address`, {
          cause: err,
        });
      }
      throw this.unavailable(err);
    }
    const [ip, recycledName] = reply as [string, string?];
    // The primary took the address from its old name whether or not a replica has it yet.
    if (recycledName !== undefined) this.forget(recycledName, ip);
    // Not on a replica in time: a failover now could lose it and hand the
    // address to another name, so it is not answered (SERVFAIL, retried).
    if (!(await this.replicated())) {
      throw this.unavailable(new Error(`the allocation of ${name} did not reach a replica in time`));
    }
    this.remember(name, ip);
    return ip;
  }

  /**
   * Whether every write this connection made so far reached the replicas
   * (up to waitReplicas) the primary has. One WAIT serves every allocation
   * waiting at the time (group commit): a WAIT blocks its connection, so one
   * still in flight when an allocation's reply arrives was sent after that
   * allocation and covers it. A second round runs when the first asked for
   * fewer replicas than ROLE then showed.
   */
  private async replicated(): Promise<boolean> {
    if (this.waitReplicas === 0) return true;
    for (let round = 0; round < 2; round++) {
      let wait = this.waiting;
      if (!wait) {
        const k = Math.min(this.waitReplicas, this.replicas);
        const w = { k, acked: this.waitRound(k) };
        this.waiting = w;
        wait = w;
        w.acked
          .finally(() => {
            if (this.waiting === w) this.waiting = undefined;
          })
          .catch(() => {});
      }
      let acked: number;
      try {
        acked = await wait.acked;
      } catch (err) {
        throw this.unavailable(err);
      }
      const needed = Math.min(this.waitReplicas, this.replicas);
      if (acked >= needed) return true;
      if (wait.k >= needed) return false; // asked for enough, they did not answer in time
    }
    return false;
  }

  /**
   * One pipeline to the node that owns the pool's keys (a keyed EXISTS routes
   * it on a Cluster; ROLE and WAIT have no key): how many replicas it has
   * now, and how many acknowledged its writes within WAIT_TIMEOUT_MS.
   */
  private async waitRound(k: number): Promise<number> {
    const p = this.requireClient().pipeline();
    p.exists(this.keys.cursor);
    p.role();
    p.wait(k, WAIT_TIMEOUT_MS);
    const res = (await p.exec()) ?? [];
    for (const [err] of res) if (err) throw err;
    const role = res[1]?.[1] as [string, number, unknown[]?] | undefined;
    if (role?.[0] !== 'master') throw new Error(`READONLY the pool's node is a ${role?.[0]}, not a primary`);
    this.replicas = role[2]?.length ?? 0;
    return Number(res[2]?.[1] ?? 0);
  }

  private requireClient(): RedisClient {
    if (!this.client || !this.connected || this.closed) throw this.unavailable();
    return this.client;
  }

  private unavailable(cause?: unknown): FakeproxyError {
    return new FakeproxyError(
      'EPOOLUNAVAILABLE',
      `shared fake-IP pool: Redis at ${this.redis.redacted} is unavailable; only cached names are answered`,
      cause === undefined ? undefined : { cause },
    );
  }

  /** EVALSHA, falling back to EVAL (which also loads the script) when the server does not have it. */
  private async evalScript(s: LuaScript, keys: string[], args: string[]): Promise<unknown> {
    const client = this.requireClient();
    try {
      return await client.evalsha(s.sha, keys.length, ...keys, ...args);
    } catch (err) {
      if (!isNoScript(err)) throw err;
      return await client.eval(s.lua, keys.length, ...keys, ...args);
    }
  }

  /** Cache name ⇄ ip, keeping both directions one-to-one. */
  private remember(name: string, ip: string): void {
    const oldIp = this.byName.get(name);
    if (oldIp !== undefined && oldIp !== ip) this.byIp.delete(oldIp);
    const oldName = this.byIp.get(ip);
    if (oldName !== undefined && oldName !== name) this.byName.delete(oldName);
    this.byName.set(name, ip);
    this.byIp.set(ip, name);
  }

  private forget(name: string, ip: string): void {
    let changed = false;
    if (this.byName.get(name) === ip) {
      this.byName.delete(name);
      changed = true;
    }
    if (this.byIp.get(ip) === name) {
      this.byIp.delete(ip);
      changed = true;
    }
    if (changed) this.emit('recycled', name, ip);
  }

  private onRecycled(raw: string): void {
    const m = decodeRecycled(raw);
    if (m) this.forget(m.name, m.ip);
  }

  private onError(err: unknown): void {
    if (this.closed) return;
    const auth = /^(auth|noauth)$/.test(classifyRedisError(err));
    // start() rejects with a refused password (one line from the CLI); logging
    // it too, with "retrying", would be a second and misleading line.
    if (auth && this.starting) {
      this.redis.failures.authFailed = true;
      return;
    }
    if (!this.redis.failures.error(err).log) return;
    this.redis.logger.warn(
      `shared fake-IP pool: ${this.redis.describe(err)}; answering cached names only (others get SERVFAIL), retrying`,
    );
  }

  private async onReady(): Promise<void> {
    const reconnect = this.everConnected;
    this.everConnected = true;
    if (this.redis.failures.ready()) this.redis.logger.info(`shared fake-IP pool: connected to ${this.redis.redacted}`);
    if (reconnect) await this.revalidate();
    this.connected = true;
  }

  /**
   * After an outage recycling messages may have been missed: keep only cache
   * entries Redis still agrees with. Runs before allocate() is re-enabled.
   */
  private async revalidate(): Promise<void> {
    const client = this.client;
    if (!client) return;
    const names = [...this.byName.keys()];
    try {
      for (let i = 0; i < names.length; i += 1000) {
        const chunk = names.slice(i, i + 1000);
        const ips = await client.hmget(this.keys.n2i, ...chunk);
        chunk.forEach((name, j) => {
          const cached = this.byName.get(name);
          if (cached !== undefined && ips[j] !== cached) this.forget(name, cached);
        });
      }
    } catch {
      // Lost again mid-way: drop what could not be checked rather than serve it unverified.
      this.byName.clear();
      this.byIp.clear();
    }
  }

  private async flushTouches(): Promise<void> {
    if (this.touched.size === 0) return;
    const ips = [...this.touched];
    this.touched = new Set();
    if (!this.connected) return; // LRU order is a hint; losing touches during an outage is harmless
    try {
      await this.evalScript(TOUCH, [this.keys.lru, this.keys.clock], ips);
    } catch {
      /* as above */
    }
  }
}
