/**
 * RedisMirror: writes this node's NAT table and fake-IP map to Redis, for
 * operators (`fakeproxy nat ls`, redis-cli). Key and event schema:
 * src/redis/schema.ts, docs/redis.md.
 *
 * The packet path and the Listener never wait for Redis (DESIGN.md "Redis
 * view"): events only update the in-memory MirrorView (src/redis/view.ts);
 * a timer writes what changed, one EVAL per flush (./batchScript.ts). ioredis's offline queue is
 * disabled, so during an outage nothing accumulates: pending writes are
 * dropped and counted, and the next connection rewrites everything from the
 * view (a full resync), which is always bounded by the number of live flows
 * and names.
 */
import type { ChainableCommander, Command } from 'ioredis';
import type { FlowEntry, FlowEvent } from '../nat/types.js';
import { errorText } from '../util/errorText.js';
import { batchCommands, evalBatch, refusesScripts, splitBatch } from './batchScript.js';
import { type RedisClient, type RedisConnectOptions, RedisEndpoint, scanKeys } from './client.js';
import { RespWriter } from './resp.js';
import { clientName, encodeNodeInfo, type FlowAnnotation, hsetFlow, type NodeKeys, nodeKeys } from './schema.js';
import { type Batch, MirrorView } from './view.js';

export type { FlowEventMessage, MirroredFlow } from './schema.js';

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

export interface RedisMirrorOptions extends RedisConnectOptions {
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
  /**
   * Send each flush as one EVAL of a Lua script instead of a pipeline of
   * commands (./batchScript.ts); a server that refuses scripts gets the
   * pipeline anyway. @default true
   */
  batchScript?: boolean;
  /** Remove this node's keys in close() (a clean shutdown leaves nothing). @default true */
  clearOnClose?: boolean;
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

/** A pipeline, which also takes Commands made elsewhere (ioredis's Pipeline.sendCommand; ./resp.ts). */
type Pipe = ChainableCommander & { sendCommand(c: Command): unknown };

/** What unlessClosed() yields for a command whose connection closed before its reply. */
const LOST = Symbol('lost');

/** A promise and the function that resolves it to LOST (once). */
function settleOnce(): { promise: Promise<typeof LOST>; settle: () => void } {
  let settle = () => {};
  const promise = new Promise<typeof LOST>((r) => {
    settle = () => r(LOST);
  });
  return { promise, settle };
}

/** Commands per pipeline during a resync: big enough to be fast, small enough not to stall Redis. */
const RESYNC_CHUNK = 1_000;
/** The next poll of entries() waits at least this many times the last poll's duration (see refreshMs). */
const POLL_DUTY_FACTOR = 50;
/** Least time between two resync attempts started by the tick. */
const RESYNC_RETRY_MS = 5_000;

/** What a Listener's session-open event tells the mirror about its flow. */
export function sessionAnnotation(e: {
  name?: string | undefined;
  outbound: string;
  rule?: string | undefined;
  chain?: string | undefined;
}): Partial<FlowAnnotation> {
  return { name: e.name, outbound: e.outbound, rule: e.rule, chain: e.chain };
}

export class RedisMirror {
  readonly nodeId: string;
  private readonly redis: RedisEndpoint;
  private readonly keys: NodeKeys;
  private readonly view: MirrorView;
  private readonly batchMs: number;
  private readonly batchMax: number;
  private readonly ttlMs: number;
  private readonly refreshMs: number;
  private readonly clearOnClose: boolean;
  private readonly now: () => number;
  private readonly startedMs: number;
  /** Encodes the flow writes and events (one scratch buffer, reused: ./resp.ts). */
  private readonly resp = new RespWriter();
  /** Whether flushes may go as EVALs at all (the option). */
  private readonly batchScript: boolean;
  /** Flushes go as EVALs (./batchScript.ts) until the server refuses scripts; each connection's probe decides anew. */
  private scripted: boolean;
  /** Settles when the current connection closes (see unlessClosed). */
  private lost = settleOnce();

  private client?: RedisClient;
  private nat?: NatEventSource;
  private dns?: DnsEventSource;

  private flushTimer?: NodeJS.Timeout;
  private tickTimer?: NodeJS.Timeout;
  private flushing = false;
  private resyncing = false;
  private needResync = true;
  private lastResyncAttemptMs = 0;
  private connected = false;
  private closed = false;
  /** Earliest performance.now() of the next entries() poll in tick(). */
  private nextPollMono = 0;
  private counters = { written: 0, dropped: 0, resyncs: 0 };

  constructor(opts: RedisMirrorOptions) {
    this.redis = new RedisEndpoint(opts, () => !this.closed);
    this.keys = nodeKeys(opts.nodeId);
    this.nodeId = opts.nodeId;
    this.view = new MirrorView(this.nodeId, this.keys);
    this.batchMs = opts.batchMs ?? 100;
    this.batchMax = opts.batchMax ?? 500;
    this.ttlMs = (opts.keyTtlSec ?? 60) * 1000;
    this.refreshMs = opts.refreshMs ?? 1000;
    this.clearOnClose = opts.clearOnClose ?? true;
    this.now = opts.now ?? Date.now;
    this.startedMs = this.now();
    this.batchScript = opts.batchScript ?? true;
    this.scripted = this.batchScript;
  }

  /**
   * Connect in the background. Never throws for an unreachable or
   * misconfigured Redis: it logs one line and keeps retrying with backoff,
   * because proxying matters more than the mirror.
   */
  start(): void {
    if (this.client || this.closed) return;
    const client = this.redis.client(clientName(this.nodeId, 'mirror'));
    this.client = client;
    client.on('ready', () => this.onReady());
    // A Cluster stays 'ready' while one primary fails over: what that primary
    // acknowledged but had not replicated is gone, so rewrite everything.
    client.on('-node', () => {
      this.needResync = true;
    });
    client.on('close', () => this.onClose());
    client.on('error', (err: unknown) => this.onError(err));
    client.connect().catch(() => {
      /* reported through 'error'; the retry strategy keeps trying */
    });
    this.tickTimer = setInterval(() => this.tick(), this.refreshMs);
    this.tickTimer.unref();
  }

  attachNat(source: NatEventSource): void {
    this.nat = source;
    source.on('events', (evs) => {
      this.view.onFlowEvents(evs, this.now());
      this.scheduleFlush();
    });
    this.view.addEntries(source.entries(), this.now());
  }

  attachDns(source: DnsEventSource): void {
    this.dns = source;
    source.on('mapped', (name, ip) => {
      this.view.onMapped(name, ip);
      this.scheduleFlush();
    });
    source.on('unmapped', (name, ip) => {
      this.view.onUnmapped(name, ip);
      this.scheduleFlush();
    });
    for (const { name, ip } of source.entries()) this.view.onMapped(name, ip);
    this.scheduleFlush();
  }

  /** The Listener tells which name and outbound a flow serves. Cheap; never waits. */
  annotate(flowId: number, info: Partial<FlowAnnotation>): void {
    this.view.annotate(flowId, info, this.now());
    this.scheduleFlush();
  }

  stats(): RedisMirrorStats {
    return {
      written: this.counters.written,
      dropped: this.counters.dropped + this.view.overflowed,
      resyncs: this.counters.resyncs,
      connected: this.connected,
      pending: this.view.pendingCount(),
      flows: this.view.flowCount,
      names: this.view.nameCount,
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
          const keys = await scanKeys(client, this.keys.allPattern);
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

  // ---- writing ----

  private scheduleFlush(): void {
    if (this.closed || !this.client) return;
    if (this.view.pendingCount() >= this.batchMax) {
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

  /** Drop everything pending (Redis is away); the resync after reconnecting rewrites it. */
  private dropPending(): void {
    this.counters.dropped += this.view.dropPending();
    this.needResync = true;
  }

  private async flush(): Promise<void> {
    const client = this.client;
    if (!client || this.view.pendingCount() === 0) return;
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
    try {
      const b = this.view.takeBatch(this.now());
      if (!this.scripted || !(await this.evalCounted(client, b))) {
        const p = client.pipeline() as Pipe;
        await this.execCounted(p, this.queueBatch(p, b));
      }
    } catch (err) {
      // A defect, not Redis: keep mirroring (the next resync rewrites what this flush lost) and say so.
      this.needResync = true;
      this.redis.logger.warn(`redis mirror: a flush failed (${errorText(err)}); resynchronising`);
    } finally {
      this.flushing = false;
    }
    if (this.view.pendingCount() > 0) this.scheduleFlush();
  }

  /**
   * Queue one batch; returns the command count (batchCommands). Deletes and index updates of
   * the whole batch go in one command each (UNLINK k…, ZREM zset m…, ZADD
   * zset s m…): per flow only its HSET (+ PEXPIRE the first time) is a
   * command of its own.
   */
  private queueBatch(p: Pipe, b: Batch): number {
    const r = this.resp;
    if (b.deleteKeys.length > 0) {
      const first = b.deleteKeys[0] as string;
      r.begin('unlink', first, 1 + b.deleteKeys.length);
      for (const k of b.deleteKeys) r.str(k);
      p.sendCommand(r.end());
      r.begin('zrem', this.keys.flows, 2 + b.deleteMembers.length).str(this.keys.flows);
      for (const m of b.deleteMembers) r.str(m);
      p.sendCommand(r.end());
    }
    for (const w of b.writes) {
      p.sendCommand(hsetFlow(r, w.key, w.row));
      if (w.withTtl) {
        p.sendCommand(r.begin('pexpire', w.key, 3).str(w.key).num(this.ttlMs).end());
      }
    }
    if (b.writes.length > 0) {
      r.begin('zadd', this.keys.flows, 2 + 2 * b.writes.length).str(this.keys.flows);
      for (const w of b.writes) r.num(w.score).str(w.member);
      p.sendCommand(r.end());
    }
    for (const [name, ip] of b.names) {
      if (ip !== undefined) p.hset(this.keys.dnsName, name, ip);
      else p.hdel(this.keys.dnsName, name);
    }
    for (const [ip, name] of b.ips) {
      if (name !== undefined) p.hset(this.keys.dnsIp, ip, name);
      else p.hdel(this.keys.dnsIp, ip);
    }
    if (b.names.length + b.ips.length > 0) {
      p.pexpire(this.keys.dnsName, this.ttlMs);
      p.pexpire(this.keys.dnsIp, this.ttlMs);
    }
    for (const ev of b.events) {
      p.sendCommand(r.begin('publish', this.keys.events, 3).str(this.keys.events).str(ev).end());
    }
    return batchCommands(b);
  }

  /**
   * The batch as EVALs (./batchScript.ts; one unless it is big); false when
   * the server refuses scripts, with nothing of the batch applied: the
   * caller then sends it command by command, as every later flush does until
   * a new connection's probe says scripts run (one log line says so).
   */
  private async evalCounted(client: RedisClient, b: Batch): Promise<boolean> {
    const parts = splitBatch(b);
    for (const [i, part] of parts.entries()) {
      const n = batchCommands(part);
      const cmd = evalBatch(this.resp, this.keys, this.ttlMs, part);
      client.sendCommand(cmd);
      try {
        const failed = await this.unlessClosed(cmd.promise as Promise<unknown>);
        const f = failed === LOST ? n : Math.min(n, Number(failed) || 0);
        this.counters.written += n - f;
        this.counters.dropped += f;
        if (f > 0) this.needResync = true;
      } catch (err) {
        if (i === 0 && refusesScripts(err)) {
          this.refuseScripts(err);
          return false;
        }
        this.counters.dropped += n;
        this.needResync = true;
      }
    }
    return true;
  }

  private refuseScripts(err: unknown): void {
    if (this.scripted)
      this.redis.logger.warn(
        `redis mirror: ${this.redis.redacted} refuses EVAL (${errorText(err)}); writing each change as its own command from now on (allow +eval for the mirror's user to send one command per flush)`,
      );
    this.scripted = false;
  }

  /**
   * On each new connection: may this user run scripts? A refusal (any error
   * reply to a script that only returns 1) turns the one-EVAL flushes off
   * until the next connection's probe.
   */
  private async probeScripts(client: RedisClient): Promise<void> {
    if (!this.batchScript) return;
    try {
      await client.eval('return 1', 0);
      this.scripted = true;
    } catch (err) {
      if (err instanceof Error && err.name === 'ReplyError') this.refuseScripts(err);
    }
  }

  /**
   * `p`, or LOST once the connection closes first: ioredis neither answers
   * nor rejects a command that was in flight when a connection closed and
   * came back (no offline queue, no resend), so nothing waits on it forever.
   */
  private unlessClosed<T>(p: Promise<T>): Promise<T | typeof LOST> {
    return Promise.race([p, this.lost.promise]);
  }

  private async execCounted(p: ChainableCommander, n: number): Promise<boolean> {
    try {
      const r = await this.unlessClosed(p.exec());
      if (r === LOST) throw new Error('connection closed');
      const results = r ?? [];
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
      this.view.poll(this.nat.entries(), now);
      this.nextPollMono = t0 + (performance.now() - t0) * POLL_DUTY_FACTOR;
    }
    this.view.expireAnnotations(now);
    if (!this.connected) {
      this.dropPending();
      return;
    }
    if (this.needResync && !this.resyncing && now - this.lastResyncAttemptMs >= RESYNC_RETRY_MS) {
      void this.resync();
      return;
    }
    void this.refreshTtls(now);
    this.scheduleFlush();
  }

  private queueInfo(p: ChainableCommander, now: number): number {
    p.hset(
      this.keys.info,
      encodeNodeInfo({ node: this.nodeId, pid: process.pid, startedMs: this.startedMs, heartbeatMs: now }),
    );
    p.pexpire(this.keys.info, this.ttlMs);
    return 2;
  }

  private async refreshTtls(now: number): Promise<void> {
    const client = this.client;
    if (!client || this.resyncing) return;
    const p = client.pipeline();
    let n = this.queueInfo(p, now);
    for (const key of [this.keys.flows, this.keys.dnsName, this.keys.dnsIp]) p.pexpire(key, this.ttlMs);
    n += 3;
    // Each flow key's TTL is renewed every ttl/3, spread over the ticks.
    for (const key of this.view.ttlDue(now, this.ttlMs)) {
      p.pexpire(key, this.ttlMs);
      n++;
    }
    await this.execCounted(p, n);
  }

  // ---- connection state ----

  private onReady(): void {
    this.connected = true;
    this.lost = settleOnce();
    if (this.client) void this.probeScripts(this.client);
    if (this.redis.failures.ready()) {
      this.redis.logger.info(`redis mirror: connected to ${this.redis.redacted}; resynchronising`);
    }
    void this.resync();
  }

  private onClose(): void {
    if (this.connected && !this.closed) {
      this.redis.logger.warn(
        `redis mirror: lost connection to ${this.redis.redacted}; proxying continues, mirror writes are dropped until it is back`,
      );
      this.redis.failures.lost();
    }
    this.connected = false;
    this.needResync = true;
    this.lost.settle();
  }

  private onError(err: unknown): void {
    if (this.closed) return;
    const { kind, log } = this.redis.failures.error(err);
    if (!log) return;
    const retry = kind === 'auth' || kind === 'noauth' ? 'retrying every 30 s' : 'retrying in the background';
    this.redis.logger.warn(`redis mirror: ${this.redis.describe(err)}; proxying continues, ${retry}`);
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
      this.view.reconcile(this.nat?.entries(), this.dns?.entries(), this.now());
      const live = this.view.beginResync();
      const liveKeys = new Set(live.map((t) => t.key));
      const liveMembers = new Set(live.map((t) => t.member));

      const staleKeys = (await scanKeys(client, this.keys.flowPattern)).filter((k) => !liveKeys.has(k));
      const staleMembers = (await client.zrange(this.keys.flows, 0, -1)).filter((m) => !liveMembers.has(m));
      let removed = 0;
      for (let i = 0; i < staleKeys.length; i += RESYNC_CHUNK) {
        removed += await client.unlink(...staleKeys.slice(i, i + RESYNC_CHUNK));
        this.counters.written++;
      }
      for (let i = 0; i < staleMembers.length; i += RESYNC_CHUNK) {
        await client.zrem(this.keys.flows, ...staleMembers.slice(i, i + RESYNC_CHUNK));
        this.counters.written++;
      }
      for (let i = 0; i < live.length; i += RESYNC_CHUNK / 4) {
        const p = client.pipeline() as Pipe;
        const writes = live
          .slice(i, i + RESYNC_CHUNK / 4)
          .filter((t) => this.view.isLive(t)) // closed meanwhile: its delete is queued
          .map((t) => this.view.writeOf(t, this.now(), true));
        const n = this.queueBatch(p, { deleteKeys: [], deleteMembers: [], writes, names: [], ips: [], events: [] });
        if (!(await this.execCounted(p, n))) throw new Error('resync write failed');
      }
      // The DNS map is replaced in one transaction so readers never see it empty.
      const { byName, byIp } = this.view.names();
      const m = client.multi();
      m.del(this.keys.dnsName, this.keys.dnsIp);
      if (byName.size > 0) {
        m.hset(this.keys.dnsName, Object.fromEntries(byName));
        m.hset(this.keys.dnsIp, Object.fromEntries(byIp));
      }
      m.pexpire(this.keys.dnsName, this.ttlMs);
      m.pexpire(this.keys.dnsIp, this.ttlMs);
      m.pexpire(this.keys.flows, this.ttlMs);
      this.queueInfo(m, this.now());
      const res = await m.exec();
      if (!res || res.some(([err]) => err)) throw new Error('resync of the DNS map failed');
      this.counters.written += res.length;
      this.counters.resyncs++;
      this.needResync = false;
      if (removed > 0 || this.counters.resyncs > 1) {
        this.redis.logger.info(
          `redis mirror: resynchronised ${live.length} flows and ${byName.size} names (${removed} stale keys removed)`,
        );
      }
    } catch {
      this.needResync = true; // retried on the next 'ready' or tick
    } finally {
      this.resyncing = false;
    }
    if (this.view.pendingCount() > 0) this.scheduleFlush();
  }
}
