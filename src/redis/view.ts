/**
 * MirrorView: the in-memory side of the Redis mirror, pure (no Redis, no
 * timers). It holds this node's live flows and fake-IP map as the mirror
 * should show them, and the changes not yet written; the writer
 * (src/redis/mirror.ts) takes them as one batch of rows and key names and
 * turns them into Redis commands.
 *
 * Everything here is synchronous and allocation-light: NatManager's event
 * batches and the Listener's annotations arrive on the event loop that also
 * serves connections. Every queue is bounded: pending changes are at most
 * one per live flow and name, plus MAX_PENDING_EVENTS events.
 */
import type { CloseReason, FlowEntry, FlowEvent } from '../nat/types.js';
import {
  encodeEvent,
  type FlowAnnotation,
  type FlowEventMessage,
  flowKeyOf,
  flowMember,
  flowRow,
  type MirroredFlow,
  type NodeKeys,
} from './schema.js';

const MAX_PENDING_EVENTS = 10_000;
const MAX_PENDING_ANNOTATIONS = 10_000;
const ANNOTATION_MAX_AGE_MS = 10_000;

export interface Tracked {
  entry: FlowEntry;
  key: string;
  member: string;
  name: string;
  outbound: string;
  rule: string;
  chain: string;
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

/** One flow hash to write: HSET key …row's fields, its index entry, and a TTL the first time. */
export interface FlowWrite {
  key: string;
  row: MirroredFlow;
  member: string;
  score: number;
  withTtl: boolean;
}

/** Everything that changed since the last batch. */
export interface Batch {
  /** Flow hashes to delete and their index members (closed flows). */
  deleteKeys: string[];
  deleteMembers: string[];
  writes: FlowWrite[];
  /** name → ip to set, or undefined to delete. */
  names: [string, string | undefined][];
  /** ip → name to set, or undefined to delete. */
  ips: [string, string | undefined][];
  /** Encoded event messages, in order. */
  events: string[];
}

export class MirrorView {
  private readonly flows = new Map<number, Tracked>();
  private readonly annotations = new Map<number, Partial<FlowAnnotation> & { atMs: number }>();
  private readonly byName = new Map<string, string>();
  private readonly byIp = new Map<string, string>();

  private readonly dirty = new Set<number>();
  private readonly deleted = new Map<string, string>();
  private events: PendingEvent[] = [];
  private readonly dirtyNames = new Set<string>();
  private readonly dirtyIps = new Set<string>();
  /** Events dropped because the queue was full. */
  overflowed = 0;

  constructor(
    readonly nodeId: string,
    private readonly keys: NodeKeys,
  ) {}

  get flowCount(): number {
    return this.flows.size;
  }

  get nameCount(): number {
    return this.byName.size;
  }

  /** Operations waiting for the next batch. */
  pendingCount(): number {
    return this.dirty.size + this.deleted.size + this.events.length + this.dirtyNames.size + this.dirtyIps.size;
  }

  // ---- intake ----

  /** Flows already in the table when the NAT source is attached (no event will announce them). */
  addEntries(entries: FlowEntry[], ts: number): void {
    for (const e of entries) if (!this.flows.has(e.id)) this.track(e, ts);
  }

  onFlowEvents(evs: FlowEvent[], ts: number): void {
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
  }

  /** The Listener tells which name, outbound, rule and chain a flow serves. */
  annotate(flowId: number, info: Partial<FlowAnnotation>, ts: number): void {
    const t = this.flows.get(flowId);
    if (t) {
      if (info.name !== undefined) t.name = info.name;
      if (info.outbound !== undefined) t.outbound = info.outbound;
      if (info.rule !== undefined) t.rule = info.rule;
      if (info.chain !== undefined) t.chain = info.chain;
      this.dirty.add(flowId);
      return;
    }
    // The Listener usually accepts before the engine's batched open event arrives.
    if (this.annotations.size >= MAX_PENDING_ANNOTATIONS) {
      const oldest = this.annotations.keys().next().value;
      if (oldest !== undefined) this.annotations.delete(oldest);
    }
    this.annotations.set(flowId, { ...info, atMs: ts });
  }

  onMapped(name: string, ip: string): void {
    const oldIp = this.byName.get(name);
    if (oldIp !== undefined && oldIp !== ip) {
      this.byIp.delete(oldIp);
      this.dirtyIps.add(oldIp);
    }
    const oldName = this.byIp.get(ip);
    if (oldName !== undefined && oldName !== name) {
      this.byName.delete(oldName);
      this.dirtyNames.add(oldName);
    }
    this.byName.set(name, ip);
    this.byIp.set(ip, name);
    this.dirtyNames.add(name);
    this.dirtyIps.add(ip);
  }

  onUnmapped(name: string, ip: string): void {
    if (this.byName.get(name) === ip) {
      this.byName.delete(name);
      this.dirtyNames.add(name);
    }
    if (this.byIp.get(ip) === name) {
      this.byIp.delete(ip);
      this.dirtyIps.add(ip);
    }
  }

  /**
   * A poll of the engine's table: copies counters into the flows held, marks
   * the changed ones for writing, and treats a flow missing from two polls in
   * a row as closed (its close event was lost).
   */
  poll(entries: FlowEntry[], now: number): void {
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
    for (const [id, t] of this.flows) {
      if (seen.has(id)) continue;
      if (++t.missing >= 2) {
        this.flows.delete(id);
        this.dirty.delete(id);
        if (t.inRedis) this.deleted.set(t.key, t.member);
      }
    }
  }

  /** Forget annotations whose flow never showed up. */
  expireAnnotations(now: number): void {
    for (const [id, a] of this.annotations) {
      if (now - a.atMs <= ANNOTATION_MAX_AGE_MS) break; // insertion order = age order
      this.annotations.delete(id);
    }
  }

  /**
   * Bring the view in line with the sources' full state (missed events,
   * flows and names from before attaching): flows not in `entries` go,
   * flows and names not held yet are added.
   */
  reconcile(entries: FlowEntry[] | undefined, names: { name: string; ip: string }[] | undefined, now: number): void {
    if (entries) {
      const seen = new Set<number>();
      for (const e of entries) {
        seen.add(e.id);
        const t = this.flows.get(e.id);
        if (t) t.entry = e;
        else this.track(e, now);
      }
      for (const [id] of this.flows) if (!seen.has(id)) this.flows.delete(id);
    }
    if (names) for (const { name, ip } of names) if (this.byName.get(name) !== ip) this.onMapped(name, ip);
  }

  // ---- output ----

  /**
   * Drop every pending change (Redis is away); returns how many commands
   * they would have been. The next resync rewrites the whole view.
   */
  dropPending(): number {
    // A flow write is HSET+ZADD, a delete DEL+ZREM.
    const n =
      2 * this.dirty.size + 2 * this.deleted.size + this.events.length + this.dirtyNames.size + this.dirtyIps.size;
    this.clearPending();
    return n;
  }

  /** Take what changed since the last batch; the flows written are marked as in Redis. */
  takeBatch(now: number): Batch {
    const batch: Batch = {
      deleteKeys: [...this.deleted.keys()],
      deleteMembers: [...this.deleted.values()],
      writes: [],
      names: [],
      ips: [],
      events: [],
    };
    this.deleted.clear();
    for (const id of this.dirty) {
      const t = this.flows.get(id);
      if (t) batch.writes.push(this.writeOf(t, now, !t.inRedis));
    }
    this.dirty.clear();
    for (const name of this.dirtyNames) batch.names.push([name, this.byName.get(name)]);
    for (const ip of this.dirtyIps) batch.ips.push([ip, this.byIp.get(ip)]);
    this.dirtyNames.clear();
    this.dirtyIps.clear();
    for (const ev of this.events) batch.events.push(encodeEvent(this.eventMessage(ev)));
    this.events = [];
    return batch;
  }

  /**
   * Start of a full resync: pending changes are subsumed by the rewrite
   * (later ones queue as usual). Returns the live flows; each is marked as in
   * Redis, so one that closes while the resync runs gets its delete queued.
   */
  beginResync(): Tracked[] {
    this.dirty.clear();
    this.deleted.clear();
    this.dirtyNames.clear();
    this.dirtyIps.clear();
    const live = [...this.flows.values()];
    for (const t of live) t.inRedis = true;
    return live;
  }

  /** Still live (not closed since beginResync)? */
  isLive(t: Tracked): boolean {
    return this.flows.get(t.entry.id) === t;
  }

  /** The write of one flow's row; marks it written as of now. */
  writeOf(t: Tracked, now: number, withTtl: boolean): FlowWrite {
    const row = flowRow(t.entry, t);
    if (withTtl) t.lastExpireMs = now;
    t.inRedis = true;
    t.written = { bytesIn: row.bytesIn, bytesOut: row.bytesOut, state: row.state, lastSeenMs: row.lastSeenMs };
    return { key: t.key, row, member: t.member, score: row.lastSeenMs, withTtl };
  }

  /** Flow keys whose TTL is due for renewal (every ttl/3); marks them renewed as of now. */
  ttlDue(now: number, ttlMs: number): string[] {
    const keys: string[] = [];
    for (const t of this.flows.values()) {
      if (t.inRedis && now - t.lastExpireMs >= ttlMs / 3) {
        keys.push(t.key);
        t.lastExpireMs = now;
      }
    }
    return keys;
  }

  /** The whole fake-IP map (resync). */
  names(): { byName: ReadonlyMap<string, string>; byIp: ReadonlyMap<string, string> } {
    return { byName: this.byName, byIp: this.byIp };
  }

  // ---- internals ----

  private clearPending(): void {
    this.dirty.clear();
    this.deleted.clear();
    this.events = [];
    this.dirtyNames.clear();
    this.dirtyIps.clear();
  }

  private newTracked(entry: FlowEntry, ts: number): Tracked {
    const ann = this.annotations.get(entry.id);
    if (ann) this.annotations.delete(entry.id);
    const member = flowMember(entry.proto, entry.id);
    return {
      entry,
      key: flowKeyOf(this.keys, member),
      member,
      // The name the app asked for is the one mapped to the destination *now*;
      // captured at open so a later recycling of the address does not rename it.
      name: ann?.name ?? this.byIp.get(entry.dstIp) ?? '',
      outbound: ann?.outbound ?? '',
      rule: ann?.rule ?? '',
      chain: ann?.chain ?? '',
      inRedis: false,
      lastExpireMs: ts,
      missing: 0,
      announced: false,
    };
  }

  /** Add a flow; its open event is queued when the engine's event arrives. */
  private track(entry: FlowEntry, ts: number): Tracked {
    const t = this.newTracked(entry, ts);
    this.flows.set(entry.id, t);
    this.dirty.add(entry.id);
    return t;
  }

  private pushEvent(ev: PendingEvent): void {
    if (this.events.length >= MAX_PENDING_EVENTS) {
      this.overflowed++;
      return;
    }
    this.events.push(ev);
  }

  private eventMessage(ev: PendingEvent): FlowEventMessage {
    const msg: FlowEventMessage = {
      v: 1,
      type: ev.type,
      node: this.nodeId,
      ts: ev.ts,
      flow: flowRow(ev.t.entry, ev.t),
    };
    if (ev.type === 'close') msg.reason = ev.reason;
    return msg;
  }
}
