/**
 * RedisMirror: an eventually-consistent copy of this node's NAT table and
 * fake-IP map in Redis, for operators (`fakeproxy nat ls`, redis-cli).
 * Key and event schema: docs/redis.md.
 *
 * The packet path and the Listener never wait for Redis (DESIGN.md "Redis
 * view"): callers only mutate in-memory state here; a timer flushes it in
 * pipelines. ioredis's offline queue is disabled, so during an outage
 * nothing accumulates: pending writes are dropped and counted, and the next
 * connection rewrites everything from the in-memory view (a full resync),
 * which is always bounded by the number of live flows and names.
 */
import type { Redis, RedisOptions } from 'ioredis';
import {
  checkNodeId,
  classifyRedisError,
  defaultRedisFactory,
  describeRedisError,
  nodePrefix,
  parseRedisUrl,
  type RedisFactory,
  type RedisLogger,
  redactRedisUrl,
} from '../inspect/redisConn.js';
import type { CloseReason, FlowEntry, FlowEvent } from './types.js';

/** What the mirror needs from NatManager (structural: anything with these works). */
export interface NatEventSource {
  on(event: 'events', listener: (evs: FlowEvent[]) => void): unknown;
  entries(): FlowEntry[];
}

/** What the mirror needs from FakeDns. */
export interface DnsEventSource {
  on(event: 'mapped' | 'unmapped', listener: (name: string, ip: string) => void): unknown;
  entries(): { name: string; ip: string }[];
}

export interface RedisMirrorOptions {
  /** redis://[user:pass@]host:port[/db] or rediss://… */
  url: string;
  /** Key namespace `fakeproxy:<nodeId>:`; the CLI defaults it to os.hostname(). */
  nodeId: string;
  /**
   * Longest time a change waits before it is written.
   * @default 100 — an operator's `nat ls` is a human-scale read; 10 flushes a
   * second keep Redis round trips negligible even at thousands of flows/s.
   */
  batchMs?: number;
  /** Flush early once this many operations are pending. @default 500 */
  batchMax?: number;
  /**
   * TTL on every key, refreshed while the node lives, so a crashed node's rows
   * vanish on their own. @default 60 — long enough to ride out a slow
   * refresh (every ttl/3), short enough that a dead gateway disappears from
   * `nat ls` within a minute.
   */
  keyTtlSec?: number;
  /**
   * How often live flows' counters are polled from `entries()`. @default 1000
   * — stretched for big tables: the poll copies every flow out of the
   * engine (~4 µs each through N-API), so it waits at least
   * POLL_DUTY_FACTOR × the last poll's duration (≤ ~2 % of the event loop;
   * 20 000 flows → about every 4 s), keeping the Listener's latency flat.
   */
  refreshMs?: number;
  /** Cap of the reconnect backoff. @default 2000 — resync "within a few seconds" of Redis coming back. */
  maxBackoffMs?: number;
  /** Remove this node's keys in close() (a clean shutdown leaves nothing). @default true */
  clearOnClose?: boolean;
  logger?: RedisLogger;
  redisFactory?: RedisFactory;
  /** Clock, for tests. @default Date.now */
  now?: () => number;
}

export interface RedisMirrorStats {
  /** Redis commands acknowledged. */
  written: number;
  /** Commands not written (Redis unreachable, or an error reply); repaired by the next resync. */
  dropped: number;
  /** Full resynchronisations done (the first connection counts as one). */
  resyncs: number;
  connected: boolean;
  /** Operations waiting for the next flush (bounded: see the module comment). */
  pending: number;
  /** Flows and names held in memory (the view that a resync writes). */
  flows: number;
  names: number;
}

/** Flow object as stored (hash fields) and published (events JSON); docs/redis.md. */
export interface MirroredFlow {
  id: number;
  proto: string;
  app: string;
  dst: string;
  name: string;
  nat: string;
  outbound: string;
  state: string;
  createdMs: number;
  lastSeenMs: number;
  bytesOut: number;
  bytesIn: number;
  pktsOut: number;
  pktsIn: number;
}

export interface FlowEventMessage {
  v: 1;
  type: 'open' | 'close';
  node: string;
  ts: number;
  reason?: CloseReason;
  flow: MirroredFlow;
}

interface Tracked {
  entry: FlowEntry;
  key: string;
  member: string;
  name: string;
  outbound: string;
  /** A write of this key has been sent; a close must delete it. */
  inRedis: boolean;
  /** Counters as last written, to skip unchanged flows on refresh. */
  written?: { bytesIn: number; bytesOut: number; state: string; lastSeenMs: number };
  lastExpireMs: number;
  /** Consecutive polls of entries() that did not list this flow (a lost close event). */
  missing: number;
  /** An open event was queued for it (a flow first seen by polling gets one when its event arrives). */
  announced: boolean;
}

type PendingEvent =
  | { type: 'open'; t: Tracked; ts: number }
  | { type: 'close'; t: Tracked; reason: CloseReason; ts: number };

const MAX_PENDING_EVENTS = 10_000;
const MAX_PENDING_ANNOTATIONS = 10_000;
const ANNOTATION_MAX_AGE_MS = 10_000;
/** Commands per pipeline during a resync: big enough to be fast, small enough not to stall Redis. */
const RESYNC_CHUNK = 1_000;
/** The next poll of entries() waits at least this many times the last poll's duration (see refreshMs). */
const POLL_DUTY_FACTOR = 50;

export function flowToMirrored(entry: FlowEntry, name: string, outbound: string): MirroredFlow {
  return {
    id: entry.id,
    proto: entry.proto,
    app: `${entry.srcIp}:${entry.srcPort}`,
    dst: `${entry.dstIp}:${entry.dstPort}`,
    name,
    nat: `${entry.natIp}:${entry.natPort}`,
    outbound,
    state: entry.state,
    createdMs: entry.createdMs,
    lastSeenMs: entry.lastSeenMs,
    bytesOut: entry.bytesOut,
    bytesIn: entry.bytesIn,
    pktsOut: entry.pktsOut,
    pktsIn: entry.pktsIn,
  };
}

/**
 * Hash fields of a flow key as HSET's flat field/value list (every field
 * always written, so an overwrite leaves nothing stale). Flat, in a fixed
 * order: no intermediate object for ioredis to flatten again.
 */
function hashArgs(m: MirroredFlow): string[] {
  // biome-ignore format: field/value pairs, one per line
  return [
    'id', String(m.id),
    'proto', m.proto,
    'app', m.app,
    'dst', m.dst,
    'name', m.name,
    'nat', m.nat,
    'outbound', m.outbound,
    'state', m.state,
    'createdMs', String(m.createdMs),
    'lastSeenMs', String(m.lastSeenMs),
    'bytesOut', String(m.bytesOut),
    'bytesIn', String(m.bytesIn),
    'pktsOut', String(m.pktsOut),
    'pktsIn', String(m.pktsIn),
  ];
}

export class RedisMirror {
  readonly nodeId: string;
  private readonly url: string;
  private readonly prefix: string;
  private readonly zsetKey: string;
  private readonly dnsNameKey: string;
  private readonly dnsIpKey: string;
  private readonly infoKey: string;
  private readonly channel: string;
  private readonly batchMs: number;
  private readonly batchMax: number;
  private readonly ttlMs: number;
  private readonly refreshMs: number;
  private readonly maxBackoffMs: number;
  private readonly clearOnClose: boolean;
  private readonly logger: RedisLogger;
  private readonly factory: RedisFactory;
  private readonly now: () => number;
  private readonly startedMs: number;

  private client?: Redis;
  private nat?: NatEventSource;
  private dns?: DnsEventSource;

  private readonly flows = new Map<number, Tracked>();
  private readonly annotations = new Map<number, { name?: string; outbound?: string; atMs: number }>();
  private readonly dnsByName = new Map<string, string>();
  private readonly dnsByIp = new Map<string, string>();

  private readonly dirty = new Set<number>();
  private readonly deleted = new Map<string, string>();
  private events: PendingEvent[] = [];
  private readonly dnsDirtyNames = new Set<string>();
  private readonly dnsDirtyIps = new Set<string>();

  private flushTimer?: NodeJS.Timeout;
  private tickTimer?: NodeJS.Timeout;
  private flushing = false;
  private resyncing = false;
  private needResync = true;
  private lastResyncAttemptMs = 0;
  private connected = false;
  private closed = false;
  /** The failure kind last logged, so an outage logs one line, not one per retry. */
  private loggedFailure?: string;
  /** Earliest performance.now() of the next entries() poll in tick(). */
  private nextPollMono = 0;
  private authFailed = false;
  private counters = { written: 0, dropped: 0, resyncs: 0 };

  constructor(opts: RedisMirrorOptions) {
    parseRedisUrl(opts.url);
    this.url = opts.url;
    this.nodeId = checkNodeId(opts.nodeId);
    this.prefix = nodePrefix(this.nodeId);
    this.zsetKey = `${this.prefix}flows`;
    this.dnsNameKey = `${this.prefix}dns:name`;
    this.dnsIpKey = `${this.prefix}dns:ip`;
    this.infoKey = `${this.prefix}info`;
    this.channel = `${this.prefix}events`;
    this.batchMs = opts.batchMs ?? 100;
    this.batchMax = opts.batchMax ?? 500;
    this.ttlMs = (opts.keyTtlSec ?? 60) * 1000;
    this.refreshMs = opts.refreshMs ?? 1000;
    this.maxBackoffMs = opts.maxBackoffMs ?? 2000;
    this.clearOnClose = opts.clearOnClose ?? true;
    this.logger = opts.logger ?? console;
    this.factory = opts.redisFactory ?? defaultRedisFactory;
    this.now = opts.now ?? Date.now;
    this.startedMs = this.now();
  }

  /** The Redis key of a flow's hash. */
  flowKey(proto: string, id: number): string {
    return `${this.prefix}flow:${proto}:${id}`;
  }

  /**
   * Connect in the background. Never throws for an unreachable or
   * misconfigured Redis: it logs one line and keeps retrying with backoff,
   * because proxying matters more than the mirror.
   */
  start(): void {
    if (this.client || this.closed) return;
    const options: RedisOptions = {
      lazyConnect: true,
      // An outage must not grow memory: commands fail fast instead of queueing,
      // and the resync on reconnect repairs whatever was dropped.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      autoResendUnfulfilledCommands: false,
      connectTimeout: 5_000,
      retryStrategy: (times) => {
        // A wrong password will not fix itself quickly; retry slowly and quietly
        // so fixing the server (or its ACL) heals without restarting the daemon.
        if (this.authFailed) return 30_000;
        const base = Math.min(100 * 2 ** Math.min(times, 10), this.maxBackoffMs);
        return Math.round(base / 2 + Math.random() * (base / 2));
      },
    };
    const client = this.factory(this.url, options);
    this.client = client;
    client.on('ready', () => this.onReady());
    client.on('close', () => this.onClose());
    client.on('error', (err: unknown) => this.onError(err));
    client.connect().catch(() => {
      /* reported through 'error'; retryStrategy keeps trying */
    });
    this.tickTimer = setInterval(() => this.tick(), this.refreshMs);
    this.tickTimer.unref();
  }

  attachNat(source: NatEventSource): void {
    this.nat = source;
    source.on('events', (evs) => this.onFlowEvents(evs));
    const ts = this.now();
    for (const e of source.entries()) {
      if (!this.flows.has(e.id)) this.track(e, ts);
    }
  }

  attachDns(source: DnsEventSource): void {
    this.dns = source;
    source.on('mapped', (name, ip) => this.onMapped(name, ip));
    source.on('unmapped', (name, ip) => this.onUnmapped(name, ip));
    for (const { name, ip } of source.entries()) this.onMapped(name, ip);
  }

  /** The Listener tells which name and outbound a flow serves. Cheap; never waits. */
  annotate(flowId: number, info: { name?: string; outbound?: string }): void {
    const t = this.flows.get(flowId);
    if (t) {
      if (info.name !== undefined) t.name = info.name;
      if (info.outbound !== undefined) t.outbound = info.outbound;
      this.markDirty(flowId);
      return;
    }
    // The Listener usually accepts before the engine's batched open event arrives.
    if (this.annotations.size >= MAX_PENDING_ANNOTATIONS) {
      const oldest = this.annotations.keys().next().value;
      if (oldest !== undefined) this.annotations.delete(oldest);
    }
    this.annotations.set(flowId, { ...info, atMs: this.now() });
  }

  stats(): RedisMirrorStats {
    return {
      ...this.counters,
      connected: this.connected,
      pending: this.pendingCount(),
      flows: this.flows.size,
      names: this.dnsByName.size,
    };
  }

  /** Final flush, remove this node's keys (clearOnClose), disconnect. Never throws. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.flushTimer) clearTimeout(this.flushTimer);
    if (this.tickTimer) clearInterval(this.tickTimer);
    const client = this.client;
    if (!client) return;
    try {
      if (this.connected) {
        while (this.flushing || this.resyncing) await new Promise((r) => setTimeout(r, 5));
        if (this.clearOnClose) {
          const keys = await this.scanKeys(`${this.prefix}*`);
          for (let i = 0; i < keys.length; i += RESYNC_CHUNK) await client.unlink(...keys.slice(i, i + RESYNC_CHUNK));
        } else {
          await this.flush();
        }
      }
      await client.quit();
    } catch {
      client.disconnect();
    }
  }

  // ---- event intake (synchronous, allocation-light) ----

  private onFlowEvents(evs: FlowEvent[]): void {
    const ts = this.now();
    for (const ev of evs) {
      if (ev.type === 'open') {
        const t = this.flows.get(ev.flow.id) ?? this.track(ev.flow, ts);
        t.entry = ev.flow;
        if (!t.announced) {
          t.announced = true;
          this.pushEvent({ type: 'open', t, ts });
        }
      } else {
        let t = this.flows.get(ev.flow.id);
        if (t) {
          this.flows.delete(ev.flow.id);
          this.dirty.delete(ev.flow.id);
          t.entry = ev.flow;
        } else {
          // Opened and closed between two of our looks: publish both, write no hash.
          t = this.newTracked(ev.flow, ts);
          this.pushEvent({ type: 'open', t, ts });
        }
        if (t.inRedis) this.deleted.set(t.key, t.member);
        this.pushEvent({ type: 'close', t, reason: ev.reason, ts });
      }
    }
    this.scheduleFlush();
  }

  private newTracked(entry: FlowEntry, ts: number): Tracked {
    const ann = this.annotations.get(entry.id);
    if (ann) this.annotations.delete(entry.id);
    return {
      entry,
      key: this.flowKey(entry.proto, entry.id),
      member: `${entry.proto}:${entry.id}`,
      // The name the app asked for is the one mapped to the destination *now*;
      // captured at open so a later recycling of the address does not rename it.
      name: ann?.name ?? this.dnsByIp.get(entry.dstIp) ?? '',
      outbound: ann?.outbound ?? '',
      inRedis: false,
      lastExpireMs: ts,
      missing: 0,
      announced: false,
    };
  }

  /** Add a flow to the view; its open event is queued when the engine's event arrives. */
  private track(entry: FlowEntry, ts: number): Tracked {
    const t = this.newTracked(entry, ts);
    this.flows.set(entry.id, t);
    this.dirty.add(entry.id);
    return t;
  }

  private pushEvent(ev: PendingEvent): void {
    if (this.events.length >= MAX_PENDING_EVENTS) {
      this.counters.dropped++;
      return;
    }
    this.events.push(ev);
  }

  private markDirty(id: number): void {
    this.dirty.add(id);
    this.scheduleFlush();
  }

  private onMapped(name: string, ip: string): void {
    const oldIp = this.dnsByName.get(name);
    if (oldIp !== undefined && oldIp !== ip) {
      this.dnsByIp.delete(oldIp);
      this.dnsDirtyIps.add(oldIp);
    }
    const oldName = this.dnsByIp.get(ip);
    if (oldName !== undefined && oldName !== name) {
      this.dnsByName.delete(oldName);
      this.dnsDirtyNames.add(oldName);
    }
    this.dnsByName.set(name, ip);
    this.dnsByIp.set(ip, name);
    this.dnsDirtyNames.add(name);
    this.dnsDirtyIps.add(ip);
    this.scheduleFlush();
  }

  private onUnmapped(name: string, ip: string): void {
    if (this.dnsByName.get(name) === ip) {
      this.dnsByName.delete(name);
      this.dnsDirtyNames.add(name);
    }
    if (this.dnsByIp.get(ip) === name) {
      this.dnsByIp.delete(ip);
      this.dnsDirtyIps.add(ip);
    }
    this.scheduleFlush();
  }

  private pendingCount(): number {
    return this.dirty.size + this.deleted.size + this.events.length + this.dnsDirtyNames.size + this.dnsDirtyIps.size;
  }

  private scheduleFlush(): void {
    if (this.closed || !this.client) return;
    if (this.pendingCount() >= this.batchMax) {
      if (this.flushTimer) clearTimeout(this.flushTimer);
      this.flushTimer = undefined;
      setImmediate(() => void this.flush());
      return;
    }
    if (this.flushTimer) return;
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      void this.flush();
    }, this.batchMs);
    this.flushTimer.unref();
  }

  // ---- writing ----

  /** Drop everything pending (Redis is away); the resync after reconnecting rewrites it. */
  private dropPending(): void {
    // Commands the flush would have sent: a flow write is HSET+ZADD, a delete DEL+ZREM.
    this.counters.dropped +=
      2 * this.dirty.size +
      2 * this.deleted.size +
      this.events.length +
      this.dnsDirtyNames.size +
      this.dnsDirtyIps.size;
    this.dirty.clear();
    this.deleted.clear();
    this.events = [];
    this.dnsDirtyNames.clear();
    this.dnsDirtyIps.clear();
    this.needResync = true;
  }

  private async flush(): Promise<void> {
    const client = this.client;
    if (!client || this.pendingCount() === 0) return;
    if (!this.connected) {
      this.dropPending();
      return;
    }
    if (this.flushing || this.resyncing) {
      // One pipeline in flight at a time; what arrives meanwhile coalesces.
      // (A timer, not setImmediate: a long resync must not become a busy loop.)
      if (!this.flushTimer) {
        this.flushTimer = setTimeout(() => {
          this.flushTimer = undefined;
          void this.flush();
        }, this.batchMs);
        this.flushTimer.unref();
      }
      return;
    }
    this.flushing = true;
    const p = client.pipeline();
    let n = 0;
    // Deletes and index updates of the whole batch go in one command each
    // (UNLINK k…, ZREM zset m…, ZADD zset s m…): per flow only its HSET
    // (+ PEXPIRE the first time) is a command of its own.
    if (this.deleted.size > 0) {
      p.unlink(...this.deleted.keys());
      p.zrem(this.zsetKey, ...this.deleted.values());
      n += 2;
    }
    this.deleted.clear();
    const index: (string | number)[] = [];
    for (const id of this.dirty) {
      const t = this.flows.get(id);
      if (t) n += this.writeFlow(p, t, index);
    }
    this.dirty.clear();
    if (index.length > 0) {
      p.zadd(this.zsetKey, ...index);
      n++;
    }
    for (const name of this.dnsDirtyNames) {
      const ip = this.dnsByName.get(name);
      if (ip !== undefined) p.hset(this.dnsNameKey, name, ip);
      else p.hdel(this.dnsNameKey, name);
      n++;
    }
    for (const ip of this.dnsDirtyIps) {
      const name = this.dnsByIp.get(ip);
      if (name !== undefined) p.hset(this.dnsIpKey, ip, name);
      else p.hdel(this.dnsIpKey, ip);
      n++;
    }
    if (this.dnsDirtyNames.size + this.dnsDirtyIps.size > 0) {
      p.pexpire(this.dnsNameKey, this.ttlMs);
      p.pexpire(this.dnsIpKey, this.ttlMs);
      n += 2;
    }
    this.dnsDirtyNames.clear();
    this.dnsDirtyIps.clear();
    for (const ev of this.events) {
      p.publish(this.channel, JSON.stringify(this.eventMessage(ev)));
      n++;
    }
    this.events = [];
    await this.execCounted(p, n);
    this.flushing = false;
    if (this.pendingCount() > 0) this.scheduleFlush();
  }

  /**
   * Queue one flow's hash (+TTL the first time) and its index entry — ZADD
   * now, or appended to `index` (score, member) for one ZADD of the batch;
   * returns the command count.
   */
  private writeFlow(p: ReturnType<Redis['pipeline']>, t: Tracked, index?: (string | number)[]): number {
    const m = flowToMirrored(t.entry, t.name, t.outbound);
    p.hset(t.key, ...hashArgs(m));
    let n = 1;
    if (index) index.push(m.lastSeenMs, t.member);
    else {
      p.zadd(this.zsetKey, m.lastSeenMs, t.member);
      n++;
    }
    if (!t.inRedis) {
      p.pexpire(t.key, this.ttlMs);
      t.lastExpireMs = this.now();
      n++;
    }
    t.inRedis = true;
    t.written = { bytesIn: m.bytesIn, bytesOut: m.bytesOut, state: m.state, lastSeenMs: m.lastSeenMs };
    return n;
  }

  private eventMessage(ev: PendingEvent): FlowEventMessage {
    const msg: FlowEventMessage = {
      v: 1,
      type: ev.type,
      node: this.nodeId,
      ts: ev.ts,
      flow: flowToMirrored(ev.t.entry, ev.t.name, ev.t.outbound),
    };
    if (ev.type === 'close') msg.reason = ev.reason;
    return msg;
  }

  private async execCounted(p: ReturnType<Redis['pipeline']>, n: number): Promise<boolean> {
    try {
      const results = (await p.exec()) ?? [];
      let failed = n - results.length;
      for (const [err] of results) if (err) failed++;
      this.counters.written += n - failed;
      this.counters.dropped += failed;
      if (failed > 0) this.needResync = true;
      return failed === 0;
    } catch {
      this.counters.dropped += n;
      this.needResync = true;
      return false;
    }
  }

  // ---- periodic work: counters, TTLs, lost events, resync retries ----

  private tick(): void {
    if (this.closed) return;
    const now = this.now();
    const t0 = performance.now();
    if (this.nat && t0 >= this.nextPollMono) {
      const entries = this.nat.entries();
      const seen = new Set<number>();
      for (const e of entries) {
        seen.add(e.id);
        const t = this.flows.get(e.id);
        if (!t) {
          this.track(e, now);
          continue;
        }
        // Copy what a poll can change into the entry we hold instead of
        // keeping the fresh object: the poll's objects then die young
        // (cheap scavenges) rather than being promoted, one per flow per
        // poll, into garbage for the major GC.
        const h = t.entry;
        h.state = e.state;
        h.lastSeenMs = e.lastSeenMs;
        h.bytesOut = e.bytesOut;
        h.bytesIn = e.bytesIn;
        h.pktsOut = e.pktsOut;
        h.pktsIn = e.pktsIn;
        t.missing = 0;
        const w = t.written;
        if (
          !w ||
          w.bytesIn !== e.bytesIn ||
          w.bytesOut !== e.bytesOut ||
          w.state !== e.state ||
          w.lastSeenMs !== e.lastSeenMs
        ) {
          this.dirty.add(e.id);
        }
      }
      // A flow the engine no longer lists for two polls in a row had its close event lost.
      for (const [id, t] of this.flows) {
        if (seen.has(id)) continue;
        if (++t.missing >= 2) {
          this.flows.delete(id);
          this.dirty.delete(id);
          if (t.inRedis) this.deleted.set(t.key, t.member);
        }
      }
      this.nextPollMono = t0 + (performance.now() - t0) * POLL_DUTY_FACTOR;
    }
    for (const [id, a] of this.annotations) {
      if (now - a.atMs <= ANNOTATION_MAX_AGE_MS) break; // insertion order = age order
      this.annotations.delete(id);
    }
    if (!this.connected) {
      this.dropPending();
      return;
    }
    if (this.needResync && !this.resyncing && now - this.lastResyncAttemptMs >= 5_000) {
      void this.resync();
      return;
    }
    void this.refreshTtls(now);
    this.scheduleFlush();
  }

  private async refreshTtls(now: number): Promise<void> {
    const client = this.client;
    if (!client || this.resyncing) return;
    const p = client.pipeline();
    p.hset(this.infoKey, {
      node: this.nodeId,
      pid: String(process.pid),
      startedMs: String(this.startedMs),
      heartbeatMs: String(now),
    });
    p.pexpire(this.infoKey, this.ttlMs);
    p.pexpire(this.zsetKey, this.ttlMs);
    p.pexpire(this.dnsNameKey, this.ttlMs);
    p.pexpire(this.dnsIpKey, this.ttlMs);
    let n = 5;
    // Each flow key's TTL is renewed every ttl/3, spread over the ticks.
    for (const t of this.flows.values()) {
      if (t.inRedis && now - t.lastExpireMs >= this.ttlMs / 3) {
        p.pexpire(t.key, this.ttlMs);
        t.lastExpireMs = now;
        n++;
      }
    }
    await this.execCounted(p, n);
  }

  // ---- connection state ----

  private onReady(): void {
    this.connected = true;
    this.authFailed = false;
    if (this.loggedFailure !== undefined) {
      this.logger.info(`redis mirror: connected to ${redactRedisUrl(this.url)}; resynchronising`);
    }
    this.loggedFailure = undefined;
    void this.resync();
  }

  private onClose(): void {
    if (this.connected && !this.closed) {
      this.logger.warn(
        `redis mirror: lost connection to ${redactRedisUrl(this.url)}; proxying continues, mirror writes are dropped until it is back`,
      );
      this.loggedFailure = 'lost';
    }
    this.connected = false;
    this.needResync = true;
  }

  private onError(err: unknown): void {
    if (this.closed) return;
    const kind = classifyRedisError(err);
    if (kind === 'auth' || kind === 'noauth') this.authFailed = true;
    if (this.loggedFailure === kind || (this.loggedFailure === 'lost' && kind === 'unreachable')) return;
    this.loggedFailure = kind;
    const retry = kind === 'auth' || kind === 'noauth' ? 'retrying every 30 s' : 'retrying in the background';
    this.logger.warn(`redis mirror: ${describeRedisError(this.url, err)}; proxying continues, ${retry}`);
  }

  /**
   * Make Redis equal to the in-memory view: delete this node's flow keys that
   * are not live (stale rows from before an outage or a previous run), rewrite
   * every live flow, replace the DNS map atomically.
   */
  private async resync(): Promise<void> {
    const client = this.client;
    if (!client || this.resyncing || this.closed) return;
    this.resyncing = true;
    this.lastResyncAttemptMs = this.now();
    try {
      // Wait for an in-flight flush so it cannot land after (and undo) the resync.
      while (this.flushing) await new Promise((r) => setTimeout(r, 5));
      if (this.nat) this.reconcile(this.nat.entries());
      if (this.dns) {
        for (const { name, ip } of this.dns.entries()) if (this.dnsByName.get(name) !== ip) this.onMapped(name, ip);
      }
      // Everything pending is subsumed by the rewrite; later changes queue as usual.
      this.dirty.clear();
      this.deleted.clear();
      this.dnsDirtyNames.clear();
      this.dnsDirtyIps.clear();
      const live = [...this.flows.values()];
      for (const t of live) t.inRedis = true;
      const liveKeys = new Set(live.map((t) => t.key));
      const liveMembers = new Set(live.map((t) => t.member));

      const staleKeys = (await this.scanKeys(`${this.prefix}flow:*`)).filter((k) => !liveKeys.has(k));
      const staleMembers = (await client.zrange(this.zsetKey, 0, -1)).filter((m) => !liveMembers.has(m));
      let removed = 0;
      for (let i = 0; i < staleKeys.length; i += RESYNC_CHUNK) {
        const chunk = staleKeys.slice(i, i + RESYNC_CHUNK);
        removed += await client.unlink(...chunk);
        this.counters.written++;
      }
      for (let i = 0; i < staleMembers.length; i += RESYNC_CHUNK) {
        await client.zrem(this.zsetKey, ...staleMembers.slice(i, i + RESYNC_CHUNK));
        this.counters.written++;
      }
      for (let i = 0; i < live.length; i += RESYNC_CHUNK / 4) {
        const p = client.pipeline();
        let n = 0;
        for (const t of live.slice(i, i + RESYNC_CHUNK / 4)) {
          if (!this.flows.has(t.entry.id)) continue; // closed meanwhile; its delete is queued
          t.inRedis = false; // makes writeFlow add the TTL
          n += this.writeFlow(p, t);
        }
        if (!(await this.execCounted(p, n))) throw new Error('resync write failed');
      }
      // The DNS map is replaced in one transaction so readers never see it empty.
      const m = client.multi();
      m.del(this.dnsNameKey, this.dnsIpKey);
      if (this.dnsByName.size > 0) {
        m.hset(this.dnsNameKey, Object.fromEntries(this.dnsByName));
        m.hset(this.dnsIpKey, Object.fromEntries(this.dnsByIp));
      }
      m.pexpire(this.dnsNameKey, this.ttlMs);
      m.pexpire(this.dnsIpKey, this.ttlMs);
      m.pexpire(this.zsetKey, this.ttlMs);
      m.hset(this.infoKey, {
        node: this.nodeId,
        pid: String(process.pid),
        startedMs: String(this.startedMs),
        heartbeatMs: String(this.now()),
      });
      m.pexpire(this.infoKey, this.ttlMs);
      const res = await m.exec();
      if (!res || res.some(([err]) => err)) throw new Error('resync of the DNS map failed');
      this.counters.written += res.length;
      this.counters.resyncs++;
      this.needResync = false;
      if (removed > 0 || this.counters.resyncs > 1) {
        this.logger.info(
          `redis mirror: resynchronised ${live.length} flows and ${this.dnsByName.size} names (${removed} stale keys removed)`,
        );
      }
    } catch {
      this.needResync = true; // retried on the next 'ready' or tick
    } finally {
      this.resyncing = false;
    }
    if (this.pendingCount() > 0) this.scheduleFlush();
  }

  /** Bring the in-memory view in line with the engine's table (missed events, attach-time flows). */
  private reconcile(entries: FlowEntry[]): void {
    const now = this.now();
    const seen = new Set<number>();
    for (const e of entries) {
      seen.add(e.id);
      const t = this.flows.get(e.id);
      if (t) t.entry = e;
      else this.track(e, now);
    }
    for (const [id] of this.flows) if (!seen.has(id)) this.flows.delete(id);
  }

  private async scanKeys(pattern: string): Promise<string[]> {
    const client = this.client;
    if (!client) return [];
    const keys: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0');
    return keys;
  }
}
