/**
 * The fake-IP DNS server the daemon runs: pool + filter + upstream + UDP/TCP
 * listeners + persistence behind one facade (see src/dns/README.md).
 *
 * Events (for the Redis mirror): 'mapped' (name, ip) when a name gets an
 * address (including mappings restored at start), 'unmapped' (name, ip) when
 * a mapping is recycled or dropped.
 */
import { EventEmitter } from 'node:events';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { FakeproxyError } from '../errors.js';
import { type NativeFakeAnswers, native } from '../native.js';
import { START_OPTIONS } from '../options.js';
import { resourceAlarm } from '../util/exhaustion.js';
import { fsyncDirSync } from '../util/stateFile.js';
import { FakeIpFilter } from './filter.js';
import { JOURNAL_PREFIX, journalGens, MapJournal, readJournal } from './journal.js';
import { loadSnapshot, MAP_FILE, saveMap } from './persist.js';
import { FakeIpPool, type FakeIpStore, normalizeName, type PoolListener } from './pool.js';
import { FakeRange, intToIp, ipToInt } from './range.js';
import { DnsServer, type DnsSourcePolicy } from './server.js';
import { Upstream } from './upstream.js';
import {
  buildAResponse,
  buildHeaderOnly,
  buildResponse,
  encodeName,
  encodeRR,
  fitUpstreamResponse,
  parseQuery,
  parseReverseV4,
  QCLASS_IN,
  QType,
  type Query,
  Rcode,
  udpLimit,
} from './wire.js';

export interface FakeDnsOptions {
  /** The fake range, e.g. '198.18.0.0/16'. Its first host is the gateway, never handed out. */
  cidr: string;
  /** Where to answer (UDP and TCP each). The caller computes the default [{gateway, 53}]. */
  listen: { host: string; port: number }[];
  /** The real resolver for filtered names and every other query type (see defaultUpstream()). */
  upstream: { host: string; port: number };
  /** TTL of fake answers in seconds. @default and why: `--fake-ip-ttl` in src/options.ts */
  ttl?: number;
  /** fake-ip-filter patterns (syntax in filter.ts). @default [] */
  filters?: string[];
  /** Directory for the saved map; null = no persistence. @default null (the CLI passes /var/lib/fakeproxy) */
  stateDir?: string | null;
  logger?: (line: string) => void;
  /** Clock in ms; injectable for tests. @default Date.now */
  clock?: () => number;
  /** Per upstream attempt. @default 2000 ms */
  upstreamTimeoutMs?: number;
  /** Questions outstanding to the upstream at most; beyond, SERVFAIL at once. @default 512 */
  maxUpstreamInFlight?: number;
  /** TCP connection closed after this long without a complete query. @default 10000 ms */
  tcpIdleTimeoutMs?: number;
  /** TCP connections at most. @default 256 */
  maxTcpConnections?: number;
  /** Who may ask, and per-client limits (see DnsServer). @default everyone */
  sources?: DnsSourcePolicy;
  /** Save the map this often when it changed. @default 60000 ms */
  persistIntervalMs?: number;
  /** Largest UDP response we send whatever the client's EDNS size. @default 4096 (avoids IP fragmentation beyond common MTUs×3) */
  maxUdpSize?: number;
  /**
   * A pool shared with other daemons (`--redis-shared-pool`): names this
   * daemon has not answered yet are allocated there (atomically, so two
   * gateways never give one address to two names) and then kept in the local
   * store, so known names cost no round trip. @default none (local pool only)
   */
  shared?: SharedFakeIpPool;
  /**
   * Answer A queries for names that already hold an address in native code,
   * on the UDP socket's own wake-up (native/fake_answers.h), from the sources
   * `sources` trusts. @default true — false leaves every query to JavaScript
   * (tests compare the two).
   */
  fastPath?: boolean;
  /** Storage seam: make the pool (e.g. a Redis-backed shared pool). @default in-memory FakeIpPool */
  storeFactory?: (range: FakeRange, clock: () => number, listener: PoolListener) => FakeIpStore;
}

/** What FakeDns needs of a shared pool (src/redis/sharedPool.ts implements it). */
export interface SharedFakeIpPool {
  /** The name's address in the shared pool, allocating it when new. Rejects when the pool cannot be reached. */
  allocate(name: string): Promise<string>;
  touch(ip: string): void;
  on(event: 'recycled', cb: (name: string, ip: string) => void): unknown;
}

const LOG_INTERVAL_MS = 10_000;
/**
 * How often names the fast path answered count as used in the pool's LRU.
 * A second late is harmless: the LRU only picks which unpinned name gives
 * its address up to a new name, and every new name asks for the hits first
 * (see process()).
 */
const HITS_DRAIN_MS = 1000;

export class FakeDns extends EventEmitter {
  readonly range: FakeRange;
  readonly filter: FakeIpFilter;
  private readonly store: FakeIpStore;
  private readonly upstream: Upstream;
  private readonly server: DnsServer;
  private readonly ttl: number;
  private readonly stateDir: string | null;
  private readonly log: (line: string) => void;
  private readonly clock: () => number;
  private readonly maxUdp: number;
  private readonly persistIntervalMs: number;
  private readonly listen: { host: string; port: number }[];
  private readonly shared: SharedFakeIpPool | undefined;
  private persistTimer: NodeJS.Timeout | undefined;
  /** Write-ahead journal of new mappings (with a state dir, once started). */
  private journal: MapJournal | undefined;
  private savedVersion = -1;
  private saving: Promise<void> | undefined;
  private started = false;
  /** The native fast path's copy of the map (names whose mapping is durable), or none. */
  private readonly fast: NativeFakeAnswers | undefined;
  private hitsTimer: NodeJS.Timeout | undefined;
  private readonly lastLog = new Map<string, { at: number; suppressed: number }>();
  private readonly counters = {
    queries: 0,
    dropped: 0,
    formerr: 0,
    notimp: 0,
    badvers: 0,
    fakeA: 0,
    fakeNoData: 0,
    ptr: 0,
    localhost: 0,
    forwarded: 0,
    upstreamFailures: 0,
    poolExhausted: 0,
    truncated: 0,
    journalFailures: 0,
  };

  constructor(opts: FakeDnsOptions) {
    super();
    this.range = new FakeRange(opts.cidr);
    this.filter = new FakeIpFilter(opts.filters ?? []);
    this.ttl = opts.ttl ?? START_OPTIONS.fakeIpTtl.default;
    if (!Number.isInteger(this.ttl) || this.ttl < 0 || this.ttl > 0x7fffffff) {
      throw new FakeproxyError('EUSAGE', `bad fake-IP TTL ${opts.ttl}: give whole seconds, e.g. --fake-ip-ttl 1`);
    }
    this.stateDir = opts.stateDir ?? null;
    this.log = opts.logger ?? ((line) => process.stderr.write(`${line}\n`));
    this.clock = opts.clock ?? Date.now;
    this.maxUdp = opts.maxUdpSize ?? 4096;
    this.persistIntervalMs = opts.persistIntervalMs ?? 60_000;
    this.listen = opts.listen.map((l) => ({ host: l.host, port: l.port }));
    if (opts.fastPath ?? true) this.fast = new (native().FakeAnswers)({ ttl: this.ttl });
    const listener: PoolListener = (ev, name, ip) => {
      if (ev === 'mapped') {
        if (this.journal) void this.journal.append(name, intToIp(ip), this.clock());
        if (this.fast) this.fastAdd(name, ip);
      } else this.fast?.delete(name);
      if (this.listenerCount(ev) > 0) this.emit(ev, name, intToIp(ip));
    };
    this.store = opts.storeFactory
      ? opts.storeFactory(this.range, this.clock, listener)
      : new FakeIpPool(this.range, this.clock, listener);
    this.shared = opts.shared;
    // Another gateway recycled the address: forget our copy so we ask again.
    this.shared?.on('recycled', (name) => {
      this.store.remove(normalizeName(name));
    });
    this.upstream = new Upstream({
      host: opts.upstream.host,
      port: opts.upstream.port,
      timeoutMs: opts.upstreamTimeoutMs,
      maxInFlight: opts.maxUpstreamInFlight,
    });
    this.server = new DnsServer((msg, proto) => this.process(msg, proto, this.maxUdp), {
      idleTimeoutMs: opts.tcpIdleTimeoutMs,
      maxConnections: opts.maxTcpConnections,
      ...(opts.sources ? { sources: opts.sources } : {}),
      ...(this.fast ? { fastAnswers: this.fast } : {}),
      logger: this.log,
    });
  }

  /**
   * The fast path answers a name only once JavaScript would answer it
   * without waiting: when its mapping is on disk (journal) and still the
   * pool's. A journal that fails leaves the name to JavaScript (it answers
   * SERVFAIL for the waiting query and the mapping from then on).
   */
  private fastAdd(name: string, ip: number): void {
    const fast = this.fast as NativeFakeAnswers;
    const durable = this.journal?.durable(name);
    if (!durable) {
      fast.set(name, ip);
      return;
    }
    durable.then(
      () => {
        // Still the pool's, and no newer record of the name waits for its sync
        // (a flush and a re-map while this batch synced: that batch adds it).
        const newer = this.journal?.durable(name);
        if (this.store.lookup(name) === ip && (newer === undefined || newer === durable)) fast.set(name, ip);
      },
      () => {},
    );
  }

  /** Count the fast path's answers as uses (LRU; the shared pool's recency too). */
  private drainHits(): void {
    if (!this.fast) return;
    for (const name of this.fast.takeHits()) {
      const ip = this.store.lookup(name);
      if (ip === undefined) continue;
      this.store.touch(ip);
      this.shared?.touch(intToIp(ip));
    }
  }

  /** Actually bound addresses (port 0 resolved); UDP and TCP share each port. */
  get addresses(): { host: string; port: number }[] {
    return this.server.addresses;
  }

  async start(): Promise<void> {
    if (this.started) throw new FakeproxyError('EALREADY', 'FakeDns already started');
    this.started = true;
    if (this.stateDir) {
      try {
        await mkdir(this.stateDir, { recursive: true, mode: 0o755 });
        const gen = await this.reload(this.stateDir);
        this.journal = new MapJournal(this.stateDir, gen);
      } catch (err) {
        this.log(
          `dns: cannot use ${this.stateDir} for the fake-IP map: ${(err as Error).message}; mappings will not survive a restart (fix --state-dir)`,
        );
      }
    }
    await this.server.listen(this.listen);
    if (this.fast) {
      this.hitsTimer = setInterval(() => this.drainHits(), HITS_DRAIN_MS);
      this.hitsTimer.unref();
    }
    if (this.stateDir && this.persistIntervalMs > 0) {
      this.persistTimer = setInterval(() => void this.persist(), this.persistIntervalMs);
      this.persistTimer.unref();
    }
  }

  async close(): Promise<void> {
    if (this.persistTimer) clearInterval(this.persistTimer);
    this.persistTimer = undefined;
    if (this.hitsTimer) clearInterval(this.hitsTimer);
    this.hitsTimer = undefined;
    this.upstream.close();
    await this.server.close();
    if (this.saving) await this.saving;
    if (this.stateDir && this.started) await this.persist(true);
    const j = this.journal;
    this.journal = undefined;
    if (j) {
      await j.close();
      // A clean stop: the snapshot just written holds everything.
      if (this.savedVersion === this.store.version) await j.dropBefore(Number.POSITIVE_INFINITY);
    }
  }

  reverse(ip: string): string | undefined {
    const n = ipToInt(ip);
    return n === undefined ? undefined : this.store.reverse(n);
  }

  /** `reverse` for an IPv4 address already held as an unsigned 32-bit integer (the Listener's accept path). */
  reverseU32(ip: number): string | undefined {
    return this.store.reverse(ip);
  }

  lookup(name: string): string | undefined {
    const ip = this.store.lookup(normalizeName(name));
    return ip === undefined ? undefined : intToIp(ip);
  }

  isFake(ip: string): boolean {
    const n = ipToInt(ip);
    return n !== undefined && this.range.contains(n);
  }

  acquire(ip: string): void {
    const n = ipToInt(ip);
    if (n !== undefined) this.store.acquire(n);
  }

  release(ip: string): void {
    const n = ipToInt(ip);
    if (n !== undefined) this.store.release(n);
  }

  touch(ip: string): void {
    const n = ipToInt(ip);
    if (n !== undefined) this.store.touch(n);
  }

  /**
   * isFake, acquire, release and touch for an IPv4 address as an unsigned
   * 32-bit integer: the daemon pins addresses from the engine's packed flow
   * events, twice per connection, without address text.
   */
  isFakeU32(ip: number): boolean {
    return this.range.contains(ip);
  }

  acquireU32(ip: number): void {
    this.store.acquire(ip);
  }

  releaseU32(ip: number): void {
    this.store.release(ip);
  }

  touchU32(ip: number): void {
    this.store.touch(ip);
  }

  /**
   * The controller's `POST /cache/fakeip/flush`: drop every mapping no live
   * flow pins, so the next query for those names gets a fresh address; a
   * pinned one stays (re-pointing an address an app holds is what DESIGN.md
   * forbids), and a dropped address is handed out again only as the least
   * recently used (pool.ts). Saved at once, so a restart does not bring the
   * dropped mappings back. Undefined with a shared pool: that map belongs to
   * every gateway.
   */
  flushUnpinned(): { dropped: number; kept: number } | undefined {
    if (this.shared) return undefined;
    this.drainHits();
    const dropped = this.store.flushUnpinned();
    if (dropped > 0) void this.persist();
    return { dropped, kept: this.store.mapped };
  }

  entries(): { name: string; ip: string; lastUsedMs: number; flows: number }[] {
    const out: { name: string; ip: string; lastUsedMs: number; flows: number }[] = [];
    this.drainHits(); // lastUsedMs and the LRU order include the fast path's answers (the saved map too)
    for (const e of this.store.entries())
      out.push({ name: e.name, ip: intToIp(e.ip), lastUsedMs: e.lastUsedMs, flows: e.flows });
    return out;
  }

  stats(): Record<string, number> {
    const fastAnswered = this.fast?.stats().answered ?? 0;
    return {
      ...this.counters,
      // The fast path's answers are fake A answers to queries like any other.
      queries: this.counters.queries + fastAnswered,
      fakeA: this.counters.fakeA + fastAnswered,
      fastAnswered,
      poolCapacity: this.store.capacity,
      poolMapped: this.store.mapped,
      poolPinned: this.store.pinned,
      upstreamInFlight: this.upstream.inFlight,
      tcpOpen: this.server.openConnections,
      ...this.server.stats,
    };
  }

  /**
   * Answer one DNS message. Resolves undefined when nothing should be sent
   * (no readable header, or a response sent to us). Never rejects.
   */
  async handleQuery(msg: Buffer, proto: 'udp' | 'tcp', maxUdpSize?: number): Promise<Buffer | undefined> {
    try {
      return await this.process(msg, proto, maxUdpSize ?? this.maxUdp);
    } catch (err) {
      this.logLimited('handler', `dns: failed to answer a query: ${(err as Error).message}`);
      return undefined;
    }
  }

  /** The core; synchronous for everything answered locally so the hot path allocates no promise. */
  private process(msg: Buffer, proto: 'udp' | 'tcp', maxUdp: number): Buffer | undefined | Promise<Buffer | undefined> {
    this.counters.queries++;
    const p = parseQuery(msg);
    if (p.kind === 'drop') {
      this.counters.dropped++;
      return undefined;
    }
    if (p.kind === 'error') {
      if (p.rcode === Rcode.NOTIMP) this.counters.notimp++;
      else this.counters.formerr++;
      return buildHeaderOnly(msg, p.rcode);
    }
    const q = p.q;
    const limit = proto === 'tcp' ? 65535 : udpLimit(q, maxUdp);
    if (q.edns && q.edns.version !== 0) {
      // RFC 6891 §6.1.3: unknown EDNS version → BADVERS, with our version (0).
      this.counters.badvers++;
      return buildResponse(msg, q, Rcode.BADVERS, undefined, 0, limit);
    }
    if (q.qclass === QCLASS_IN && q.plain) {
      const name = q.name;
      if (name === 'localhost' || name.endsWith('.localhost')) return this.answerLocalhost(msg, q, limit);
      const t = q.qtype;
      if (t === QType.A || t === QType.AAAA || t === QType.HTTPS || t === QType.SVCB) {
        if (this.fakeable(name)) {
          if (t !== QType.A) {
            // No IPv6 fake range yet: NODATA makes clients use A at once; HTTPS/SVCB
            // answers would carry ipv4hint/ECH that bypass the fake address.
            this.counters.fakeNoData++;
            return buildResponse(msg, q, Rcode.NOERROR, undefined, 0, limit);
          }
          // A new name may take the least recently used name's address (a full
          // range, or free addresses all held by flows): count the fast path's uses first.
          if (this.fast && this.store.lookup(name) === undefined) this.drainHits();
          if (this.shared && this.store.lookup(name) === undefined) return this.allocateShared(msg, q, name, limit);
          const ip = this.store.allocate(name);
          if (ip !== undefined) this.shared?.touch(intToIp(ip));
          if (ip === undefined) {
            this.counters.poolExhausted++;
            this.logLimited(
              'full',
              `dns: fake-IP pool ${this.range.cidr} exhausted: all ${this.store.capacity} addresses have live flows; answering SERVFAIL (use a larger --cidr)`,
            );
            return buildResponse(msg, q, Rcode.SERVFAIL, undefined, 0, limit);
          }
          this.counters.fakeA++;
          const durable = this.journal?.durable(name);
          if (durable) return this.afterJournal(durable, msg, q, limit, () => buildAResponse(msg, q, ip, this.ttl));
          return buildAResponse(msg, q, ip, this.ttl);
        }
      } else if (t === QType.PTR) {
        const ip = parseReverseV4(name);
        if (ip !== undefined && this.range.contains(ip)) {
          this.counters.ptr++;
          const target = this.store.reverse(ip);
          if (target === undefined) return buildResponse(msg, q, Rcode.NXDOMAIN, undefined, 0, limit);
          return buildResponse(msg, q, Rcode.NOERROR, encodeRR(QType.PTR, this.ttl, encodeName(target)), 1, limit);
        }
      }
    }
    return this.forward(msg, q, limit);
  }

  /**
   * A name new to this daemon in shared-pool mode: the shared pool decides
   * the address; we adopt it locally (dropping whatever stale local mapping
   * held that address). Pool unreachable → SERVFAIL: consistency over
   * availability (docs/redis.md).
   */
  private async allocateShared(msg: Buffer, q: Query, name: string, limit: number): Promise<Buffer> {
    const shared = this.shared as SharedFakeIpPool;
    let ipText: string;
    try {
      ipText = await shared.allocate(name);
    } catch (err) {
      this.counters.upstreamFailures++;
      this.logLimited(
        'shared',
        `dns: shared fake-IP pool unavailable for ${name}: ${(err as Error).message}; answering SERVFAIL`,
      );
      return buildResponse(msg, q, Rcode.SERVFAIL, undefined, 0, limit);
    }
    const ip = ipToInt(ipText);
    if (ip === undefined || !this.range.contains(ip)) {
      this.logLimited(
        'shared',
        `dns: shared fake-IP pool answered ${ipText} for ${name}, outside ${this.range.cidr}; answering SERVFAIL`,
      );
      return buildResponse(msg, q, Rcode.SERVFAIL, undefined, 0, limit);
    }
    const holder = this.store.reverse(ip);
    if (holder !== undefined && holder !== name) this.store.remove(holder);
    if (this.store.lookup(name) !== ip) {
      this.store.remove(name);
      this.store.restore(name, ip, this.clock());
    }
    this.counters.fakeA++;
    const durable = this.journal?.durable(name);
    if (durable) return this.afterJournal(durable, msg, q, limit, () => buildAResponse(msg, q, ip, this.ttl));
    return buildAResponse(msg, q, ip, this.ttl);
  }

  /**
   * The answer leaves only once its mapping is on disk; a journal that
   * cannot be written means SERVFAIL (an address handed out without a
   * durable mapping could point elsewhere after a crash).
   */
  private afterJournal(
    durable: Promise<void>,
    msg: Buffer,
    q: Query,
    limit: number,
    answer: () => Buffer,
  ): Promise<Buffer> {
    return durable.then(answer, (err: Error) => {
      this.counters.journalFailures++;
      this.logLimited(
        'journal',
        `dns: cannot journal the fake-IP map under ${this.stateDir}: ${err.message}; answering SERVFAIL (free space or fix --state-dir)`,
      );
      return buildResponse(msg, q, Rcode.SERVFAIL, undefined, 0, limit);
    });
  }

  /** Not filtered, not the root, not a reverse-mapping name (the gateway's reverse zone included). */
  private fakeable(name: string): boolean {
    if (name === '' || name === 'arpa' || name.endsWith('.arpa')) return false;
    return !this.filter.matches(name);
  }

  /** RFC 6761 §6.3: localhost names are answered with loopback here, never faked or sent upstream. */
  private answerLocalhost(msg: Buffer, q: Query, limit: number): Buffer {
    this.counters.localhost++;
    if (q.qtype === QType.A)
      return buildResponse(msg, q, Rcode.NOERROR, encodeRR(QType.A, this.ttl, Buffer.from([127, 0, 0, 1])), 1, limit);
    if (q.qtype === QType.AAAA) {
      const v6 = Buffer.alloc(16);
      v6[15] = 1;
      return buildResponse(msg, q, Rcode.NOERROR, encodeRR(QType.AAAA, this.ttl, v6), 1, limit);
    }
    return buildResponse(msg, q, Rcode.NOERROR, undefined, 0, limit);
  }

  private forward(msg: Buffer, q: Query, limit: number): Promise<Buffer | undefined> {
    this.counters.forwarded++;
    return this.upstream.query(msg.subarray(0, q.end), q.questionEnd).then(
      (resp) => {
        const out = fitUpstreamResponse(resp, msg, q, limit);
        if (out.length < resp.length) this.counters.truncated++;
        return out;
      },
      (err: Error) => {
        this.counters.upstreamFailures++;
        if (!resourceAlarm.check(err, 'dns upstream'))
          this.logLimited(
            'upstream',
            `dns: forwarding ${q.name || '.'} type ${q.qtype}: ${err.message}; answering SERVFAIL`,
          );
        return buildResponse(msg, q, Rcode.SERVFAIL, undefined, 0, limit);
      },
    );
  }

  /** One line per `key` per 10 s, with how many were suppressed. */
  private logLimited(key: string, line: string): void {
    const now = this.clock();
    const s = this.lastLog.get(key);
    if (s && now - s.at < LOG_INTERVAL_MS) {
      s.suppressed++;
      return;
    }
    this.log(s?.suppressed ? `${line} (${s.suppressed} more suppressed)` : line);
    this.lastLog.set(key, { at: now, suppressed: 0 });
  }

  /**
   * The snapshot, then the journal generations it does not cover, in order.
   * Returns the generation the journal should append to next.
   */
  private async reload(dir: string): Promise<number> {
    const snap = await loadSnapshot(dir, this.range.cidr, this.log);
    if (snap?.otherCidr) {
      // Discarded (logged): remove it and its journal now, so a crash before
      // the next snapshot cannot mix it with mappings of this range.
      await rm(join(dir, MAP_FILE), { force: true });
      for (const g of journalGens(dir)) await rm(join(dir, `${JOURNAL_PREFIX}${g}`), { force: true });
      fsyncDirSync(dir);
      return 1;
    }
    const saved = snap?.entries ?? [];
    const fromGen = snap?.journalGen ?? 0;
    const nextGen = Math.max(fromGen, ...journalGens(dir)) + 1;
    const journal = readJournal(dir, fromGen);
    if (!snap && journal.records.length === 0) return nextGen;
    let filtered = 0;
    let bad = journal.bad;
    saved.sort((a, b) => a.lastUsedMs - b.lastUsedMs);
    const entries = [
      ...saved.map((e) => ({ ...e, journaled: false })),
      ...journal.records.map((r) => ({ name: r.n, ip: r.i, lastUsedMs: r.t, journaled: true })),
    ];
    for (const e of entries) {
      const name = normalizeName(e.name);
      const ip = ipToInt(e.ip);
      if (!this.fakeable(name) || name === 'localhost' || name.endsWith('.localhost')) {
        filtered++;
        continue;
      }
      if (ip === undefined || !this.range.contains(ip)) {
        bad++;
        continue;
      }
      if (!e.journaled) {
        if (!this.store.restore(name, ip, e.lastUsedMs)) bad++;
        continue;
      }
      // A journal record is newer than everything before it: it wins.
      const had = this.store.lookup(name);
      if (had === ip) continue;
      if (had !== undefined) this.store.remove(name);
      const holder = this.store.reverse(ip);
      if (holder !== undefined) this.store.remove(holder);
      if (!this.store.restore(name, ip, e.lastUsedMs)) bad++;
    }
    this.savedVersion = journal.records.length ? -1 : this.store.version;
    this.log(
      `dns: restored ${this.store.mapped} fake-IP mappings from ${dir}` +
        (journal.records.length ? ` (${journal.records.length} from the journal)` : '') +
        (filtered ? `; dropped ${filtered} now matched by --fake-ip-filter` : '') +
        (bad ? `; skipped ${bad} invalid` : ''),
    );
    return nextGen;
  }

  /** Save when the map changed since the last save (always when `force`). Errors are logged, not thrown. */
  private async persist(force = false): Promise<void> {
    const dir = this.stateDir;
    if (!dir) return;
    if (this.saving) {
      await this.saving;
      if (!force) return;
    }
    const version = this.store.version;
    if (!force && version === this.savedVersion) return;
    // Same turn: the new generation starts exactly where the snapshot ends.
    const journal = this.journal;
    const gen = journal?.rotate();
    const entries = this.entries().map((e) => ({ name: e.name, ip: e.ip, lastUsedMs: e.lastUsedMs }));
    this.saving = saveMap(dir, this.range.cidr, entries, this.clock(), gen)
      .then(async () => {
        this.savedVersion = version;
        if (journal && gen !== undefined) await journal.dropBefore(gen);
      })
      .catch((err: Error) =>
        this.logLimited('persist', `dns: cannot save the fake-IP map under ${dir}: ${err.message} (check --state-dir)`),
      )
      .finally(() => {
        this.saving = undefined;
      });
    await this.saving;
  }
}
