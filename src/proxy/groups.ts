/**
 * Clash proxy groups: `select` (the first member, or the one chosen at run
 * time), `fallback` (the first live member), `url-test` (the fastest live
 * member, moving only when another is faster by more than `tolerance`),
 * `load-balance` (live members by a hash of the destination). Liveness comes
 * from health checks that fetch `url` through each member itself, so a proxy
 * that accepts connections but cannot reach anything counts as dead.
 */
import * as tls from 'node:tls';
import type { Outbound } from './outbound.js';

export type GroupType = 'select' | 'fallback' | 'url-test' | 'load-balance';

export interface HealthCheck {
  /** http:// or https:// URL fetched through each member. */
  url: string;
  /** Seconds between checks. */
  intervalSec: number;
  /** Budget of one probe (connect + handshake + first response line), ms. */
  timeoutMs: number;
}

/** After a failed connection marks a member dead, its group re-checks this soon (and no more often). */
export const FAIL_RECHECK_MS = 5000;

/** Clash's defaults (mihomo adapter/outboundgroup/parser.go): interval 300 s, timeout 5000 ms, tolerance 0. */
export const HEALTH_DEFAULTS = { intervalSec: 300, timeoutMs: 5000, tolerance: 0 } as const;

export interface GroupSpec {
  name: string;
  type: GroupType;
  /** Proxy or group names, in order. */
  members: string[];
  health?: HealthCheck | undefined;
  /** url-test: ms a new best must beat the current one by before we switch. */
  tolerance?: number | undefined;
  /** load-balance: consistent-hashing (by destination) or round-robin. */
  strategy?: 'consistent-hashing' | 'round-robin' | undefined;
  line: number;
}

export interface MemberState {
  /** undefined: not checked yet (treated as alive). */
  alive?: boolean;
  delayMs?: number;
  checkedAtMs?: number;
}

/**
 * One probe: connect through `ob` to the URL's host, send a GET, and wait for
 * the status line. Resolves with the delay in ms (any HTTP status counts:
 * the path through the proxy works), or undefined when it failed.
 * `stop` (the group's lifetime) cancels it; whatever way the probe ends,
 * it leaves no listener on `stop`, which outlives thousands of probes.
 */
export async function probe(
  ob: Outbound,
  url: string,
  timeoutMs: number,
  stop?: AbortSignal,
): Promise<number | undefined> {
  const u = new URL(url);
  const https = u.protocol === 'https:';
  const host = u.hostname.startsWith('[') ? u.hostname.slice(1, -1) : u.hostname;
  const port = u.port === '' ? (https ? 443 : 80) : Number(u.port);
  const t0 = performance.now();
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  const onStop = () => ac.abort();
  if (stop?.aborted) return undefined;
  stop?.addEventListener('abort', onStop, { once: true });
  let sock: import('node:net').Socket | tls.TLSSocket | undefined;
  try {
    const raw = await ob.connect({ host, port }, { timeoutMs, signal: ac.signal });
    sock = raw;
    if (https) sock = tls.connect({ socket: raw, servername: host });
    const s = sock;
    s.write(
      `GET ${u.pathname}${u.search} HTTP/1.1\r\nHost: ${u.host}\r\nUser-Agent: fakeproxy\r\nConnection: close\r\n\r\n`,
    );
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      const onAbort = () => fail(new Error('timeout'));
      const onEnd = () => fail(new Error('closed before a response'));
      const done = () => {
        s.removeListener('data', onData);
        s.removeListener('error', fail);
        s.removeListener('end', onEnd);
        ac.signal.removeEventListener('abort', onAbort);
      };
      const fail = (e: Error) => {
        done();
        reject(e);
      };
      const onData = (d: Buffer) => {
        buf += d.toString('latin1');
        if (/^HTTP\/\d(\.\d)? \d{3}/.test(buf)) {
          done();
          resolve();
        } else if (buf.length > 64 || buf.includes('\n')) fail(new Error('not an HTTP response'));
      };
      s.on('data', onData);
      s.once('error', fail);
      s.once('end', onEnd);
      if (ac.signal.aborted) onAbort();
      else ac.signal.addEventListener('abort', onAbort, { once: true });
    });
    return Math.max(1, Math.round(performance.now() - t0));
  } catch {
    return undefined;
  } finally {
    clearTimeout(timer);
    stop?.removeEventListener('abort', onStop);
    sock?.destroy();
  }
}

export interface GroupDeps {
  /** The outbound a member name finally stands for (a proxy, or a nested group's current pick). */
  leaf(member: string): Outbound | undefined;
  probe?: typeof probe;
  log?: (line: string) => void;
  now?: () => number;
}

export class Group {
  readonly name: string;
  readonly type: GroupType;
  readonly members: readonly string[];
  readonly spec: GroupSpec;
  readonly state = new Map<string, MemberState>();
  #selected: string;
  /** url-test's current choice (kept until another beats it by `tolerance`). */
  #fastest: string | undefined;
  #rr = 0;
  #timer: NodeJS.Timeout | undefined;
  #checking: Promise<void> | undefined;
  /** Aborted by stop(): in-flight probes end at once. */
  #life = new AbortController();
  /** When a failed connection last triggered a check (at most one per FAIL_RECHECK_MS). */
  #failCheckAt = Number.NEGATIVE_INFINITY;
  readonly #deps: GroupDeps;

  constructor(spec: GroupSpec, deps: GroupDeps) {
    this.spec = spec;
    this.name = spec.name;
    this.type = spec.type;
    this.members = spec.members;
    this.#selected = spec.members[0] as string;
    this.#deps = deps;
    for (const m of spec.members) this.state.set(m, {});
  }

  get selected(): string {
    return this.#selected;
  }

  /** `select` groups: choose a member at run time. Returns false when it is not a member. */
  select(member: string): boolean {
    if (!this.members.includes(member)) return false;
    this.#selected = member;
    return true;
  }

  #alive(m: string): boolean {
    return this.state.get(m)?.alive !== false;
  }

  /** The member a new connection to `key` (the destination) takes now. */
  pick(key: string): string {
    switch (this.type) {
      case 'select':
        return this.#selected;
      case 'fallback':
        return this.members.find((m) => this.#alive(m)) ?? (this.members[0] as string);
      case 'url-test':
        return this.#fastest !== undefined && this.#alive(this.#fastest)
          ? this.#fastest
          : (this.members.find((m) => this.#alive(m)) ?? (this.members[0] as string));
      case 'load-balance': {
        const live = this.members.filter((m) => this.#alive(m));
        const pool = live.length ? live : this.members;
        if (this.spec.strategy === 'round-robin') return pool[this.#rr++ % pool.length] as string;
        return pool[fnv1a(key) % pool.length] as string;
      }
    }
  }

  /** Runs one round of checks over every member (in parallel); resolves when all answered. */
  check(): Promise<void> {
    const h = this.spec.health;
    if (!h) return Promise.resolve();
    if (this.#checking) return this.#checking;
    const p = this.#deps.probe ?? probe;
    const now = this.#deps.now ?? Date.now;
    this.#checking = Promise.all(
      this.members.map(async (m) => {
        const ob = this.#deps.leaf(m);
        const delay = ob === undefined ? undefined : await p(ob, h.url, h.timeoutMs, this.#life.signal);
        const st = this.state.get(m) as MemberState;
        const was = st.alive;
        st.alive = delay !== undefined;
        st.checkedAtMs = now();
        if (delay !== undefined) st.delayMs = delay;
        else delete st.delayMs;
        if (was !== st.alive && was !== undefined) {
          this.#deps.log?.(`group ${this.name}: ${m} is ${st.alive ? `alive again (${delay} ms)` : 'dead'}`);
        }
      }),
    ).then(() => {
      this.#checking = undefined;
      if (this.type === 'url-test') this.#retest();
    });
    return this.#checking;
  }

  /**
   * Passive health: a connection through `member` could not reach the proxy
   * (refused, unreachable, timed out, closed mid-handshake). Groups that
   * track liveness mark it dead now rather than at the next check (up to
   * `interval` away), and re-check soon, so a transient failure costs seconds.
   * `select` has no liveness: the operator's choice stands.
   */
  reportFailure(member: string, why: string): void {
    const h = this.spec.health;
    const st = this.state.get(member);
    if (!h || this.type === 'select' || !st) return;
    if (st.alive !== false) {
      st.alive = false;
      delete st.delayMs;
      st.checkedAtMs = (this.#deps.now ?? Date.now)();
      this.#deps.log?.(`group ${this.name}: ${member} is dead (a connection through it failed: ${why})`);
      if (this.type === 'url-test' && this.#fastest === member) this.#fastest = undefined;
    }
    const now = (this.#deps.now ?? Date.now)();
    if (this.#timer && now - this.#failCheckAt >= FAIL_RECHECK_MS) {
      this.#failCheckAt = now;
      const t = setTimeout(() => {
        if (this.#timer) void this.check();
      }, FAIL_RECHECK_MS);
      t.unref();
    }
  }

  #retest(): void {
    let best: string | undefined;
    let bestDelay = Number.POSITIVE_INFINITY;
    for (const m of this.members) {
      const st = this.state.get(m) as MemberState;
      if (st.alive && st.delayMs !== undefined && st.delayMs < bestDelay) {
        best = m;
        bestDelay = st.delayMs;
      }
    }
    if (best === undefined) return;
    const cur = this.#fastest === undefined ? undefined : this.state.get(this.#fastest);
    const tol = this.spec.tolerance ?? HEALTH_DEFAULTS.tolerance;
    if (!cur?.alive || cur.delayMs === undefined || cur.delayMs > bestDelay + tol) {
      if (this.#fastest !== best) this.#deps.log?.(`group ${this.name}: now ${best} (${bestDelay} ms)`);
      this.#fastest = best;
    }
  }

  /** First check now, then every interval. */
  start(): void {
    const h = this.spec.health;
    if (!h || this.#timer) return;
    void this.check();
    this.#timer = setInterval(() => void this.check(), h.intervalSec * 1000);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#life.abort();
    this.#life = new AbortController();
  }
}

/** FNV-1a 32-bit: a stable spread of destinations over load-balance members. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
