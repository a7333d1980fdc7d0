/**
 * The fake-IP pool: name ⇄ address, least-recently-used recycling, and
 * reference counts from live NAT flows.
 *
 * Storage seam: FakeDns talks only to the `FakeIpStore` interface. The
 * in-memory `FakeIpPool` below is the default; a Redis-backed shared pool
 * (several gateways handing out from one range) implements the same
 * interface. The interface is synchronous on purpose: a DNS answer and the
 * Listener's reverse lookup must never wait on the network (DESIGN.md "Redis
 * view"), so a Redis store keeps this pool as its local cache and reconciles
 * with Redis in the background (the 'mapped'/'unmapped' listener is the hook).
 */
import type { FakeRange } from './range.js';

export interface FakeIpEntry {
  /** Normalised name: lower case, no trailing dot. */
  name: string;
  ip: number;
  /** Clock time of the last DNS answer or connection for it. */
  lastUsedMs: number;
  /** Live NAT flows to this address. */
  flows: number;
}

export type PoolEvent = 'mapped' | 'unmapped';
export type PoolListener = (event: PoolEvent, name: string, ip: number) => void;

export interface FakeIpStore {
  readonly range: FakeRange;
  /** Addresses the pool can hand out. */
  readonly capacity: number;
  /** Names currently mapped. */
  readonly mapped: number;
  /** Mapped addresses with live flows (never recycled). */
  readonly pinned: number;
  /** Bumped on every change to the map (for persistence: save when it moved). */
  readonly version: number;
  /** name → address without allocating or counting as use. */
  lookup(name: string): number | undefined;
  /** address → name. */
  reverse(ip: number): string | undefined;
  /**
   * The name's address, mapping it when new (counts as use). Undefined when
   * every address is pinned by live flows (the caller answers SERVFAIL).
   */
  allocate(name: string): number | undefined;
  /** Put back a saved mapping (at start); false when the address or name is taken or outside the pool. */
  restore(name: string, ip: number, lastUsedMs: number): boolean;
  /** Drop a mapping; true when there was one. */
  remove(name: string): boolean;
  /** A NAT flow to `ip` opened / closed. */
  acquire(ip: number): void;
  release(ip: number): void;
  /** A connection to `ip` counts as use for LRU. */
  touch(ip: number): void;
  /**
   * Drop every mapping no live flow pins (the controller's fake-IP flush);
   * returns how many. Pinned mappings stay. A dropped address may still sit
   * in an app's DNS cache, so it is handed to another name only as the least
   * recently used would be: after every never-used address.
   */
  flushUnpinned(): number;
  /** Every mapping, least recently used first among the unpinned, then the pinned. */
  entries(): IterableIterator<FakeIpEntry>;
}

interface Node extends FakeIpEntry {
  prev: Node | undefined;
  next: Node | undefined;
  /** In the LRU list (false while pinned by flows). */
  linked: boolean;
}

/**
 * In-memory pool. Allocation order: addresses never handed out (a cursor
 * over the range, so every address is used before any is recycled), then
 * addresses freed by `remove`, then the head of the LRU list. Pinned
 * entries (flows > 0) leave the LRU list, so recycling is O(1): the head is
 * always recyclable, and an empty list means every mapped address is pinned.
 */
export class FakeIpPool implements FakeIpStore {
  readonly range: FakeRange;
  private readonly byName = new Map<string, Node>();
  private readonly byIp = new Map<number, Node>();
  /** LRU list of unpinned entries: head = least recently used. */
  private head: Node | undefined;
  private tail: Node | undefined;
  /** Next never-handed-out address. */
  private cursor: number;
  /** Unmapped addresses behind the cursor, free to hand out again. */
  private readonly free: number[] = [];
  /**
   * Addresses dropped by `flushUnpinned`, least recently used first. Every
   * mapping made or unpinned after a flush was used after it, so these are
   * older than anything in the LRU list: taken after the cursor and the free
   * list, before recycling; never by the cursor.
   */
  private readonly flushed = new Set<number>();
  /** Flows to in-range addresses that have no mapping (e.g. a stale address after a restart). */
  private readonly orphanFlows = new Map<number, number>();
  private pinnedCount = 0;
  private ver = 0;

  constructor(
    range: FakeRange,
    private readonly clock: () => number = Date.now,
    private readonly listener?: PoolListener,
  ) {
    this.range = range;
    this.cursor = range.first;
  }

  get capacity(): number {
    return this.range.size;
  }
  get mapped(): number {
    return this.byName.size;
  }
  get pinned(): number {
    return this.pinnedCount;
  }
  get version(): number {
    return this.ver;
  }

  lookup(name: string): number | undefined {
    return this.byName.get(name)?.ip;
  }

  reverse(ip: number): string | undefined {
    return this.byIp.get(ip)?.name;
  }

  allocate(name: string): number | undefined {
    const now = this.clock();
    const hit = this.byName.get(name);
    if (hit) {
      this.use(hit, now);
      return hit.ip;
    }
    const ip = this.takeFree() ?? this.recycle();
    if (ip === undefined) return undefined;
    this.insert(name, ip, now);
    return ip;
  }

  restore(name: string, ip: number, lastUsedMs: number): boolean {
    if (!this.range.contains(ip) || this.byIp.has(ip) || this.byName.has(name)) return false;
    this.insert(name, ip, lastUsedMs);
    return true;
  }

  remove(name: string): boolean {
    const n = this.byName.get(name);
    if (!n) return false;
    this.drop(n);
    if (n.flows > 0) this.orphanFlows.set(n.ip, n.flows);
    else if (n.ip < this.cursor) this.free.push(n.ip);
    return true;
  }

  acquire(ip: number): void {
    const n = this.byIp.get(ip);
    if (n) {
      if (n.flows++ === 0) {
        this.unlink(n);
        this.pinnedCount++;
      }
      return;
    }
    if (this.range.contains(ip)) this.orphanFlows.set(ip, (this.orphanFlows.get(ip) ?? 0) + 1);
  }

  release(ip: number): void {
    const n = this.byIp.get(ip);
    if (n) {
      if (n.flows === 0) return; // unbalanced release: ignore rather than go negative
      if (--n.flows === 0) {
        this.pinnedCount--;
        // The flow just ended, so the address was in use until now.
        n.lastUsedMs = this.clock();
        this.linkTail(n);
      }
      return;
    }
    const c = this.orphanFlows.get(ip);
    if (c === undefined) return;
    if (c > 1) this.orphanFlows.set(ip, c - 1);
    else {
      this.orphanFlows.delete(ip);
      if (ip < this.cursor && !this.flushed.has(ip)) this.free.push(ip);
    }
  }

  flushUnpinned(): number {
    let n = 0;
    // The LRU list holds exactly the unpinned mappings, oldest first.
    for (let node = this.head; node; node = this.head) {
      this.drop(node);
      this.flushed.add(node.ip);
      n++;
    }
    return n;
  }

  touch(ip: number): void {
    const n = this.byIp.get(ip);
    if (n) this.use(n, this.clock());
  }

  *entries(): IterableIterator<FakeIpEntry> {
    for (let n = this.head; n; n = n.next) yield { name: n.name, ip: n.ip, lastUsedMs: n.lastUsedMs, flows: n.flows };
    for (const n of this.byName.values()) {
      if (!n.linked) yield { name: n.name, ip: n.ip, lastUsedMs: n.lastUsedMs, flows: n.flows };
    }
  }

  private use(n: Node, now: number): void {
    n.lastUsedMs = now;
    if (n.linked && n !== this.tail) {
      this.unlink(n);
      this.linkTail(n);
    }
  }

  private takeFree(): number | undefined {
    while (this.cursor <= this.range.last) {
      const ip = this.cursor++;
      // Restored mappings may sit ahead of the cursor; orphaned flows keep theirs until released.
      if (!this.byIp.has(ip) && !this.orphanFlows.has(ip) && !this.flushed.has(ip)) return ip;
    }
    while (this.free.length > 0) {
      const ip = this.free.pop() as number;
      if (!this.byIp.has(ip) && !this.orphanFlows.has(ip) && !this.flushed.has(ip)) return ip;
    }
    for (const ip of this.flushed) {
      this.flushed.delete(ip);
      if (!this.byIp.has(ip) && !this.orphanFlows.has(ip)) return ip;
    }
    return undefined;
  }

  private recycle(): number | undefined {
    const n = this.head;
    if (!n) return undefined;
    this.drop(n);
    return n.ip;
  }

  private insert(name: string, ip: number, lastUsedMs: number): void {
    const flows = this.orphanFlows.get(ip) ?? 0;
    this.orphanFlows.delete(ip);
    this.flushed.delete(ip);
    const n: Node = { name, ip, lastUsedMs, flows, prev: undefined, next: undefined, linked: false };
    this.byName.set(name, n);
    this.byIp.set(ip, n);
    if (flows > 0) this.pinnedCount++;
    else this.linkTail(n);
    this.ver++;
    this.listener?.('mapped', name, ip);
  }

  private drop(n: Node): void {
    this.unlink(n);
    if (n.flows > 0) this.pinnedCount--;
    this.byName.delete(n.name);
    this.byIp.delete(n.ip);
    this.ver++;
    this.listener?.('unmapped', n.name, n.ip);
  }

  private linkTail(n: Node): void {
    n.prev = this.tail;
    n.next = undefined;
    if (this.tail) this.tail.next = n;
    else this.head = n;
    this.tail = n;
    n.linked = true;
  }

  private unlink(n: Node): void {
    if (!n.linked) return;
    if (n.prev) n.prev.next = n.next;
    else this.head = n.next;
    if (n.next) n.next.prev = n.prev;
    else this.tail = n.prev;
    n.prev = n.next = undefined;
    n.linked = false;
  }
}

/** Lower case, trailing dot removed: the pool's key for a name. */
export function normalizeName(name: string): string {
  const s = name.endsWith('.') ? name.slice(0, -1) : name;
  return s.toLowerCase();
}
