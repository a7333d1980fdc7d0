/**
 * NatManager: the TypeScript face of the native packet engine and its NAT
 * table (native/engine*.cc, DESIGN.md "NAT table"). Per packet → native; per
 * flow → here: the Listener's synchronous lookup, snapshots, stats, and
 * batched open/close events. It must not import src/dns: the daemon wires
 * open events to the fake-IP pool.
 *
 * Events: `'packed'` (the batch as numbers), `'events'` (FlowEvent[], one
 * call per native batch, at most every ~20 ms), then `'open'` / `'close'`
 * (FlowEntry[, reason]) per flow; the objects only while someone listens.
 */
import { EventEmitter } from 'node:events';
import { networkInterfaces } from 'node:os';
import { FakeproxyError } from '../errors.js';
import {
  CLOSE_REASONS,
  FLOW_EVENT as E,
  type EngineOptions,
  type EngineStats,
  FLOW_EVENT_FIELDS,
  type NativeEngine,
  type NativeFlow,
  native,
  PACKED_FLOW as P,
  PACKED_FLOW_LEN,
  PACKED_STATES,
} from '../native.js';
import { DEFAULT_NAT_TIMEOUTS, type NatTimeoutKey, START_OPTIONS as O } from '../options.js';
import { CidrSet, type Ipv4Range, intToIp, ipToInt, isIpv4, parseCidr } from '../util/cidr.js';
import { exhaustionCode, probeFd, resourceAlarm } from '../util/exhaustion.js';
import type { CloseReason, FlowCloseEvent, FlowEntry, FlowEvent, NatLookup, PackedFlow, Proto } from './types.js';

/**
 * Idle timeouts of the NAT table by TCP state / UDP, in ms. Defaults and the
 * why of each: NAT_TIMEOUTS in src/options.ts (`--nat-timeout`).
 */
export type NatTimeouts = Record<NatTimeoutKey, number>;

export const DEFAULT_TIMEOUTS: Readonly<NatTimeouts> = DEFAULT_NAT_TIMEOUTS;

/** The parts of an Ipv4Range (src/util/cidr) the engine needs. */
export type RangeLike = Pick<Ipv4Range, 'networkIp' | 'prefixLen' | 'gatewayIp'>;

export interface NatManagerOptions {
  /** Fake range (CIDR text or a parsed range). @default `--cidr`'s (src/options.ts) */
  range?: string | RangeLike;
  /** Gateway (TUN address). @default the first host of the range */
  gateway?: string;
  /** Listener port on the gateway. @default `--listen-port`'s (src/options.ts) */
  listenPort?: number;
  /** DNS server port on the gateway (target of the port-53 hijack). @default 53 */
  dnsPort?: number;
  /** NAT every TCP/UDP packet to port 53 onto the DNS server. @default true (`--no-dns-hijack`) */
  dnsHijack?: boolean;
  /** Most flows held at once. @default and why: `--max-flows` in src/options.ts */
  maxFlows?: number;
  timeouts?: Partial<NatTimeouts>;
  /**
   * A freed NAT pair is not handed out again for this long. @default 60_000
   * — Linux TIME_WAIT (TCP_TIMEWAIT_LEN, 60 s) on the Listener side keeps
   * (gateway:listenPort, NATip:NATport) alive that long; reusing the pair
   * sooner would hit that socket (DESIGN.md "Known traps").
   */
  reuseDelayMs?: number;
  /** One-line log. @default console.error */
  logger?: (msg: string) => void;
  /** Minimum interval between two "table full" log lines. @default 10_000 */
  fullLogIntervalMs?: number;
  /** Clock for ensureFlow timestamps and log rate limiting. @default Date.now */
  clock?: () => number;
  /** Test seam. @default the native Engine */
  engineFactory?: (opts: EngineOptions) => NativeEngine;
  /**
   * Who may use the engine (DESIGN.md "Who may use it"): besides this
   * machine, these LAN networks (`--lan`, CIDRs). Packets entering the TUN
   * from any other source are dropped and counted (dropForeignSource).
   * @default [] — this machine only
   */
  lan?: readonly string[];
  /**
   * This machine's addresses (IPv4), read at start and re-read every second
   * so a new address is served within a second of appearing.
   * @default every IPv4 address of os.networkInterfaces()
   */
  localAddresses?: () => string[];
  /** Serve every source (no filter): engines driven by tests and benches only. @default false */
  anySource?: boolean;
  /**
   * Most half-open TCP flows one source may hold (0 = no cap).
   * @default 0 — the machine itself is trusted, and a spoofed random-source
   * flood is handled by early drop, which every table gets.
   */
  maxHalfOpenPerSource?: number;
}

/** This machine's IPv4 addresses (loopback included). */
export function hostAddresses(): string[] {
  const out: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4') out.push(a.address);
  }
  return out;
}

export interface NatManagerEvents {
  /**
   * The batch as the engine packed it, before 'events': FLOW_EVENT_FIELDS
   * numbers per event (layout FLOW_EVENT, src/native.ts; kind 0 = open,
   * 1 + an index into CLOSE_REASONS = close). For per-connection consumers
   * that need a field or two: FlowEvent objects are built only while
   * someone listens to 'events', 'open' or 'close'.
   */
  packed: [Float64Array];
  events: [FlowEvent[]];
  open: [FlowEntry];
  close: [FlowEntry, CloseReason];
  /** 'close' for UDP flows only (the UdpListener's): built only for them. */
  udpClose: [FlowEntry, CloseReason];
  /** An engine thread ended on an error (errno, queue index): nothing reads that TUN queue any more. */
  threadExit: [number, number];
}

function toEntry(f: NativeFlow): FlowEntry {
  return { ...f, proto: f.proto === 6 ? 'tcp' : 'udp' };
}
/**
 * The engine's packed events (FLOW_EVENT_FIELDS numbers each, layout
 * FLOW_EVENT) as FlowEvents: object literals of one shape, built here rather
 * than property by property through N-API (native/engine_addon.cc
 * EventsToPacked says what that cost).
 */
function fromPacked(r: Float64Array): FlowEvent[] {
  const out: FlowEvent[] = [];
  for (let i = 0; i + FLOW_EVENT_FIELDS <= r.length; i += FLOW_EVENT_FIELDS) {
    const flow: FlowEntry = {
      id: r[i + E.id] as number,
      proto: r[i + E.proto] === 6 ? 'tcp' : 'udp',
      srcIp: intToIp(r[i + E.srcIp] as number),
      srcPort: r[i + E.srcPort] as number,
      dstIp: intToIp(r[i + E.dstIp] as number),
      dstPort: r[i + E.dstPort] as number,
      natIp: intToIp(r[i + E.natIp] as number),
      natPort: r[i + E.natPort] as number,
      state: PACKED_STATES[r[i + E.state] as number] ?? 'closed',
      createdMs: r[i + E.createdMs] as number,
      lastSeenMs: r[i + E.lastSeenMs] as number,
      pktsOut: r[i + E.pktsOut] as number,
      bytesOut: r[i + E.bytesOut] as number,
      pktsIn: r[i + E.pktsIn] as number,
      bytesIn: r[i + E.bytesIn] as number,
    };
    const kind = r[i + E.kind] as number;
    out.push(
      kind === 0 ? { type: 'open', flow } : { type: 'close', flow, reason: CLOSE_REASONS[kind - 1] ?? 'timeout' },
    );
  }
  return out;
}
const PROTO = { tcp: 6, udp: 17 } as const;

export class NatManager extends EventEmitter<NatManagerEvents> implements NatLookup {
  /** The options handed to the native engine (defaults applied). */
  readonly engineOptions: Readonly<EngineOptions>;
  /** The native engine (tests and benches drive it with processPacket/expire). */
  readonly engine: NativeEngine;
  readonly #log: (msg: string) => void;
  readonly #clock: () => number;
  readonly #fullLogIntervalMs: number;
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #lastRefused = 0;
  #lastExhausted = 0;
  #lastLogAt = Number.NEGATIVE_INFINITY;
  #suppressed = 0;
  /** lookupPacked's scratch: the engine writes into it, the caller's PackedFlow gets the fields. */
  readonly #packed = new Float64Array(PACKED_FLOW_LEN);
  readonly #lan: string[];
  readonly #lanSet: CidrSet;
  readonly #anySource: boolean;
  readonly #gateway: number;
  readonly #network: number;
  readonly #mask: number;
  #local = new Set<number>();
  #trusted: readonly number[];
  readonly #localAddresses: () => string[];
  #sourcesKey: string | undefined;
  #lastForeign = 0;
  #lastEarly = { early: 0, first: 0, capped: 0 };
  #lastEarlyLogAt = Number.NEGATIVE_INFINITY;
  #lastForeignLogAt = Number.NEGATIVE_INFINITY;

  constructor(opts: NatManagerOptions = {}) {
    super();
    const range: RangeLike =
      typeof opts.range === 'object' ? opts.range : parseCidr(opts.range ?? O.cidr.default, 'range');
    this.engineOptions = Object.freeze({
      network: range.networkIp,
      prefixLen: range.prefixLen,
      gateway: opts.gateway ?? range.gatewayIp,
      listenPort: opts.listenPort ?? O.listenPort.default,
      dnsPort: opts.dnsPort ?? 53,
      dnsHijack: opts.dnsHijack ?? O.dnsHijack.default,
      maxFlows: opts.maxFlows ?? O.maxFlows.default,
      timeouts: { ...DEFAULT_TIMEOUTS, ...opts.timeouts },
      reuseDelayMs: opts.reuseDelayMs ?? 60_000,
      ...(opts.maxHalfOpenPerSource ? { maxHalfOpenPerSource: opts.maxHalfOpenPerSource } : {}),
    });
    this.#lan = [...(opts.lan ?? [])];
    this.#lanSet = new CidrSet(this.#lan);
    this.#anySource = opts.anySource ?? false;
    this.#gateway = ipToInt(this.engineOptions.gateway);
    this.#trusted = [this.#gateway];
    this.#network = ipToInt(range.networkIp);
    this.#mask = (0xffffffff << (32 - range.prefixLen)) >>> 0;
    this.#localAddresses = opts.localAddresses ?? hostAddresses;
    this.#log = opts.logger ?? ((msg) => console.error(msg));
    this.#clock = opts.clock ?? Date.now;
    this.#fullLogIntervalMs = opts.fullLogIntervalMs ?? 10_000;
    const factory = opts.engineFactory ?? ((o: EngineOptions) => new (native().Engine)(o));
    this.engine = factory(this.engineOptions);
    if (!opts.anySource) this.refreshSources();
  }

  /**
   * Re-read this machine's addresses and hand the engine the sources it may
   * serve (them and the LAN networks) when they changed. Runs every second
   * while started.
   */
  refreshSources(): void {
    let local: string[];
    try {
      local = this.#localAddresses();
    } catch (e) {
      // Out of fds, libuv cannot list the interfaces (uv_interface_addresses
      // fails with errno 24): keep the sources we have and report the
      // exhaustion as what it is; the next tick tries again.
      const code = exhaustionCode(e) ?? probeFd();
      if (code === undefined) throw e;
      resourceAlarm.note(code, 'host address refresh');
      return;
    }
    const list = [...local, ...this.#lan].sort();
    const key = list.join(',');
    if (key === this.#sourcesKey) return;
    this.#sourcesKey = key;
    this.#local = new Set(local.filter(isIpv4).map(ipToInt));
    this.#trusted = [this.#gateway, ...this.#local];
    this.engine.setSources(list);
  }

  /**
   * isLocal's addresses beyond loopback (the gateway and this machine's
   * IPv4 addresses), as one array that stays the same object until they
   * change: the DNS fast path answers these sources (DnsSourcePolicy).
   */
  trustedSources(): readonly number[] {
    return this.#trusted;
  }

  /** This machine: the gateway, one of its addresses, or loopback. */
  isLocal(addr: number): boolean {
    return addr === this.#gateway || addr >>> 24 === 127 || this.#local.has(addr);
  }

  /**
   * The DNS server's side of "who may use it": the client behind a query's
   * source (host-order IPv4), or -1 when the daemon does not serve it. A
   * source in the fake range came through the engine (DNS hijack), which
   * already filtered it: the client is the app behind the live NAT flow; a
   * fake-range source without one is spoofed. Otherwise this machine and the
   * --lan networks are served.
   */
  dnsClient(addr: number, port: number, proto: Proto): number {
    if (this.#anySource) return addr;
    if (addr !== this.#gateway && (addr & this.#mask) >>> 0 === this.#network) {
      const p = this.#packed;
      return this.engine.lookupPacked(PROTO[proto], addr, port, p) ? (p[P.srcIp] as number) : -1;
    }
    return this.isLocal(addr) || this.#lanSet.has(intToIp(addr)) ? addr : -1;
  }

  /** Start one engine thread per (non-blocking) TUN fd. */
  start(fds: readonly number[]): void {
    if (this.#running) throw new FakeproxyError('EBUSY', 'NAT engine already started: call stop() first');
    this.engine.start(
      [...fds],
      // No checkCounters() per batch (engine.stats() builds ~60 properties, ~25 µs): the 1 s timer below runs it.
      (evs) => this.#deliver(evs),
      undefined,
      (errno, queue) => this.emit('threadExit', errno, queue),
    );
    this.#running = true;
    this.#timer = setInterval(() => {
      if (this.#sourcesKey !== undefined) this.refreshSources();
      this.checkCounters();
    }, 1000);
    this.#timer.unref();
  }

  /**
   * Resolves once the engine has had nothing to move for `quietMs` (its
   * packet counters stopped changing), or after `maxMs`. Daemon shutdown
   * calls it after closing the Listener's connections, so their FIN/RST
   * segments cross the TUN to the apps before the engine stops.
   */
  async settle(quietMs = 30, maxMs = 1000): Promise<void> {
    if (!this.#running) return;
    const moved = () => {
      const s = this.engine.stats();
      return (s.pktsIn ?? 0) + (s.pktsOut ?? 0);
    };
    const deadline = Date.now() + maxMs;
    let last = moved();
    let quietSince = Date.now();
    while (Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
      const now = moved();
      if (now !== last) {
        last = now;
        quietSince = Date.now();
      } else if (Date.now() - quietSince >= quietMs) return;
    }
  }

  /**
   * Stop and join the engine threads, deliver what they queued, then close
   * every flow (reason 'shutdown') so listeners (DNS pool, Redis mirror) see
   * the table empty. Idempotent.
   */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#running) this.engine.stop();
    this.#running = false;
    this.engine.clear(this.#clock());
    this.flushEvents();
  }

  lookup(proto: Proto, natIp: string, natPort: number): FlowEntry | undefined {
    const f = this.engine.lookup(PROTO[proto], natIp, natPort);
    return f === undefined ? undefined : toEntry(f);
  }

  /**
   * The Listener's per-connection lookup (NatLookup.lookupPacked): numbers
   * across N-API, no FlowEntry and no address strings. False when `natIp`:
   * `natPort` is not a live NAT address.
   */
  lookupPacked(proto: Proto, natIp: number, natPort: number, out: PackedFlow): boolean {
    const p = this.#packed;
    if (!this.engine.lookupPacked(PROTO[proto], natIp, natPort, p)) return false;
    out.id = p[P.id] as number;
    out.srcIp = p[P.srcIp] as number;
    out.srcPort = p[P.srcPort] as number;
    out.dstIp = p[P.dstIp] as number;
    out.dstPort = p[P.dstPort] as number;
    return true;
  }

  /** Snapshot of every flow. */
  entries(): FlowEntry[] {
    return this.engine.entries().map(toEntry);
  }

  stats(): EngineStats {
    return this.engine.stats();
  }

  /**
   * Find or create the flow (srcIp:srcPort → dstIp:dstPort) from the Listener
   * side: a UDP reply from a remote the app never sent to gets its own NAT
   * pair, and the Listener sends from it. Throws ENOSPC when the table is full.
   */
  ensureFlow(proto: Proto, srcIp: string, srcPort: number, dstIp: string, dstPort: number): FlowEntry {
    try {
      return toEntry(this.engine.ensureFlow(PROTO[proto], srcIp, srcPort, dstIp, dstPort, this.#clock()));
    } catch (err) {
      this.checkCounters();
      throw err;
    } finally {
      if (!this.#running) this.flushEvents();
    }
  }

  /** Emit the events queued natively now (engines driven without threads, tests). */
  flushEvents(): void {
    const evs = this.engine.drainEventsPacked();
    if (evs.length === 0) return;
    this.#deliver(evs);
    this.checkCounters();
  }

  /**
   * Log (rate-limited) when new flows were refused since the last check.
   * Runs every second while started, and after the events of an engine driven without threads (flushEvents).
   */
  checkCounters(): void {
    const s = this.engine.stats();
    this.#checkForeign(s);
    this.#checkEarlyDrop(s);
    const refused = s.flowsRefused ?? 0;
    const exhausted = s.natExhausted ?? 0;
    const newRefused = refused - this.#lastRefused;
    if (newRefused <= 0) return;
    const newExhausted = exhausted - this.#lastExhausted;
    this.#lastRefused = refused;
    this.#lastExhausted = exhausted;
    const now = this.#clock();
    if (now - this.#lastLogAt < this.#fullLogIntervalMs) {
      this.#suppressed += newRefused;
      return;
    }
    const total = newRefused + this.#suppressed;
    this.#suppressed = 0;
    this.#lastLogAt = now;
    const why =
      newExhausted > 0
        ? `NAT address space exhausted (${this.engineOptions.network}/${this.engineOptions.prefixLen}): use a larger --cidr`
        : `NAT table full (${s.flowsActive}/${this.engineOptions.maxFlows} flows): raise --max-flows or shorten the timeouts`;
    this.#log(`${why}; refused ${total} new flow${total === 1 ? '' : 's'} (TCP reset, UDP port unreachable)`);
  }

  /** One line per 10 s while half-open flows are early-dropped or capped (a SYN flood). */
  #checkEarlyDrop(s: EngineStats): void {
    const now = this.#clock();
    const at = { early: s.flowsEarlyDropped ?? 0, first: s.firstSynDropped ?? 0, capped: s.halfOpenCapped ?? 0 };
    const last = this.#lastEarly;
    if (
      (at.early === last.early && at.first === last.first && at.capped === last.capped) ||
      now - this.#lastEarlyLogAt < this.#fullLogIntervalMs
    )
      return;
    const early = at.early - last.early;
    const first = at.first - last.first;
    const capped = at.capped - last.capped;
    this.#lastEarly = at;
    this.#lastEarlyLogAt = now;
    const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;
    this.#log(
      `engine: NAT table under SYN pressure (${s.halfOpenFlows}/${s.flowsActive} flows half-open): evicted ${plural(early, 'closed or half-open flow')} to admit new ones, dropped ${plural(first, 'first SYN')} until retransmitted (spoofed floods never retransmit), refused ${capped} over the per-source half-open cap; established flows untouched`,
    );
  }

  /** One line per 10 s while packets from sources nobody admitted arrive. */
  #checkForeign(s: EngineStats): void {
    const foreign = (s.dropForeignSource ?? 0) + (s.dropNatSource ?? 0);
    const now = this.#clock();
    if (foreign === this.#lastForeign || now - this.#lastForeignLogAt < this.#fullLogIntervalMs) return;
    const n = foreign - this.#lastForeign;
    this.#lastForeign = foreign;
    this.#lastForeignLogAt = now;
    this.#log(
      `engine: dropped ${n} packet${n === 1 ? '' : 's'} from sources this daemon does not serve (only this machine${this.#lan.length ? ` and ${this.#lan.join(', ')}` : ''}; admit a LAN with --lan CIDR)`,
    );
  }

  #deliver(recs: Float64Array): void {
    this.emit('packed', recs);
    if (this.listenerCount('events') + this.listenerCount('open') + this.listenerCount('close') > 0) {
      const batch = fromPacked(recs);
      this.#emitBatch(batch);
      if (this.listenerCount('udpClose') > 0)
        for (const ev of batch)
          if (ev.type === 'close' && ev.flow.proto === 'udp') this.emit('udpClose', ev.flow, ev.reason);
    } else if (this.listenerCount('udpClose') > 0) {
      for (let i = 0; i + FLOW_EVENT_FIELDS <= recs.length; i += FLOW_EVENT_FIELDS) {
        if (recs[i + E.kind] === 0 || recs[i + E.proto] !== 17) continue;
        const ev = fromPacked(recs.subarray(i, i + FLOW_EVENT_FIELDS))[0] as FlowCloseEvent;
        this.emit('udpClose', ev.flow, ev.reason);
      }
    }
  }

  #emitBatch(batch: FlowEvent[]): void {
    this.emit('events', batch);
    for (const ev of batch) {
      if (ev.type === 'open') this.emit('open', ev.flow);
      else this.emit('close', ev.flow, ev.reason);
    }
  }
}

/** errno values an engine thread can end with, by name (Linux numbers; not all are in os.constants.errno). */
const THREAD_ERRNO: Record<number, { name: string; why: string }> = {
  5: { name: 'EIO', why: 'the TUN device failed (I/O error)' },
  9: { name: 'EBADF', why: 'the TUN file descriptor was closed under the engine' },
  12: { name: 'ENOMEM', why: 'the kernel is out of memory' },
  14: { name: 'EFAULT', why: 'a bad buffer was passed to the kernel (a bug: please report it)' },
  19: { name: 'ENODEV', why: 'the TUN device is gone' },
  22: { name: 'EINVAL', why: 'the kernel refused the read (a bug: please report it)' },
  77: { name: 'EBADFD', why: 'the TUN device was deleted or detached under the daemon (ip link del?)' },
};

/**
 * One operator line for an engine thread that died: what failed, errno, why,
 * and the fix. The daemon exits 1 after it, so a supervisor restarts it.
 */
export function describeThreadExit(errno: number, queue: number, tun: string): string {
  const known = THREAD_ERRNO[errno];
  const name = known?.name ?? `errno ${errno}`;
  const why = known?.why ?? 'unexpected error';
  return `engine thread fp-engine-${queue} stopped: reading TUN device ${tun} failed with ${name} (errno ${errno}): ${why}; fakeproxy exits 1 — restart it (the systemd unit does, Restart=on-failure), and do not delete or move ${tun} while it runs`;
}
