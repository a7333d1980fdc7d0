/**
 * The UDP Listener on gateway:--listen-port (same port number as the TCP
 * one). The engine rewrites every datagram an app sends to a fake address
 * (app ip:port → fake:port) into NATip:NATport → gateway:port; here the
 * datagram's source is looked up in the NAT (only live NAT addresses are
 * served — never an open relay), the destination's name comes from the fake
 * DNS, the outbound from the Router.
 *
 * Full cone where the outbound allows: ONE upstream association per app
 * socket (app ip:port, per outbound), reused for every destination that
 * socket talks to, and replies from any remote are delivered back — to the
 * flow's NAT address, so the engine restores the fake source the app sent
 * to; a reply from a remote the app never sent to: see association.ts
 * (#fromRemote) for what we do and why.
 *
 * Bounded: associations (LRU by last activity), per-association setup queue
 * (drop oldest), remotes per association; every drop is counted by reason.
 */
import * as dgram from 'node:dgram';
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { wrapError } from '../../errors.js';
import { type Logger, rateLimited, stderrLogger } from '../../log.js';
import type { FlowEntry } from '../../nat/types.js';
import {
  UDP_RELAY_DGRAM_FIELDS as DF,
  UDP_RELAY_END_FIELDS as EF,
  type NativeUdpRelay,
  type NativeUdpRelayTotals,
  native,
  UDP_RELAY_DROPS,
  UDP_RELAY_ENDS,
} from '../../native.js';
import { START_OPTIONS as O } from '../../options.js';
import { intToIp, ipToInt } from '../../util/cidr.js';
import { resourceAlarm } from '../../util/exhaustion.js';
import { hostPort } from '../dial.js';
import type { NameLookup } from '../listener.js';
import type { Outbound, UdpDropReason } from '../outbound.js';
import type { Router } from '../router.js';
import {
  AppAssociation,
  type AssociationHost,
  type UdpListenerDropReason,
  type UdpNat,
  type UdpSessionEnd,
} from './association.js';
import { dropCounters, UDP_DROP_REASONS, unmapV4 } from './drops.js';
import { NativeAssociation, type NativeHost } from './nativeAssociation.js';
import { isOwnPort } from './ownPorts.js';

export type { UdpListenerDropReason, UdpNat, UdpSessionEnd } from './association.js';

export interface UdpListenerOptions {
  /** The gateway address; the listener binds to it only. */
  host: string;
  /** @default `--listen-port`'s (src/options.ts) — 0 picks a free port (tests). */
  port?: number;
  nat: UdpNat;
  names: NameLookup;
  router: Router;
  /** One-line operator log. @default stderrLogger (src/log.ts) */
  logger?: Logger;
  /**
   * Close an association after this long without a datagram either way.
   * @default 60000 — 60 s: long enough for apps that keep a UDP path alive
   * (QUIC's PING well inside its 30 s idle default, WebRTC consent checks
   * every 5 s, games' heartbeats), short enough that abandoned sockets free
   * their upstream socket (and, for socks5, a TCP connection on the proxy).
   * Shorter than RFC 4787 REQ-5's 2 min for NAT mappings: an app that goes
   * quiet longer gets a new association (a new upstream port); raise it for
   * such apps. Linux conntrack keeps an answered UDP flow 120 s.
   */
  idleTimeoutMs?: number;
  /**
   * Idle timeout for associations that only ever talked to port 53.
   * @default 10000 — a DNS exchange is one round trip and stub resolvers
   * give up after ≤ 5 s (glibc `timeout:5`); RFC 4787 REQ-5a allows shorter
   * timers for well-known ports. Frees the thousands of one-shot sockets a
   * busy resolver client creates.
   */
  dnsIdleTimeoutMs?: number;
  /**
   * Live associations; past it the least recently active one is closed.
   * @default 4096 — each holds a UDP socket (socks5: plus a TCP connection),
   * i.e. file descriptors: the daemon must run with RLIMIT_NOFILE above it
   * (systemd's default soft limit is 1024).
   */
  maxAssociations?: number;
  /**
   * Datagrams held per association while its upstream is being set up
   * (SOCKS5 handshake); the oldest is dropped past it.
   * @default 256 — a QUIC client's first flight is a handful of datagrams;
   * 256 MTU-sized ones are ~380 KiB, bounded however many apps burst.
   */
  maxQueue?: number;
  /**
   * Budget for setting up an upstream association (dial + SOCKS5 handshake).
   * @default 5000 — same as the TCP listener's connect timeout.
   */
  connectTimeoutMs?: number;
  /**
   * After a failed setup, datagrams from that app socket (to that outbound)
   * are dropped for this long before the next attempt.
   * @default 1000 — a dead proxy costs one dial per app socket per second,
   * not one per datagram.
   */
  retryAfterFailureMs?: number;
  /**
   * Deliver replies from remotes the app never sent to (see association.ts).
   * @default true
   */
  fullCone?: boolean;
  /**
   * Largest payload relayed either way; bigger ones are dropped, counted.
   * @default 65507 — the UDP maximum over IPv4. Lower it to the TUN MTU − 28
   * to keep replies from being IP-fragmented on the way to the app.
   */
  maxPayloadBytes?: number;
  /**
   * SO_RCVBUF for the listener socket.
   * @default 4194304 — one JS thread drains the socket between other work; a
   * burst (1000 MTU-sized datagrams ≈ 1.5 MB) must fit meanwhile. The kernel
   * caps it at net.core.rmem_max (often 208 KiB): raise that for heavy UDP.
   */
  recvBufferBytes?: number;
  /** Monotonic clock (ms) for idle accounting. @default performance.now */
  clock?: () => number;
  /**
   * Move datagrams in the native relay (native/udp_relay.h: recvmmsg/sendmmsg
   * on its own thread) for outbounds that allow it (Outbound.udpNative);
   * JavaScript then sees a flow when it opens and an association when it
   * ends, not each datagram. Needs an IPv4 host and a NAT that reports
   * closes (UdpNat.on). @default false
   */
  native?: boolean;
  /** SO_MARK of the sockets the native relay creates; 0 = none. @default 0 */
  mark?: number;
  /**
   * The TUN's name: datagrams to the listener that did not arrive through it
   * (a LAN host spoofing a live flow's NAT address) are dropped silently and
   * counted ('foreign-ingress'). Needs the native relay.
   */
  device?: string;
  /**
   * Packets the kernel dropped at the TUN's transmit queue so far
   * (TunDevice.kernelTxDropped): named on the overload line when it grows.
   */
  tunKernelDrops?: () => number;
}

export interface UdpSessionEvent {
  phase: 'open' | 'close';
  proto: 'udp';
  /** The association, unique for the listener's life (sessionBytes, closeSession). */
  id: number;
  /** The NAT flow that opened the association. */
  flowId: number;
  /** When the association opened (ms since the epoch). */
  startMs: number;
  /** The app socket, `ip:port`. */
  app: string;
  /** The first destination: its name (when it was a fake address), IP and port. */
  name?: string | undefined;
  ip: string;
  port: number;
  /** Outbound label (`socks5://host:port`, `direct`, …). */
  outbound: string;
  /** The routing rule that matched the first destination, as written (`DOMAIN-SUFFIX,example.com,Proxy`). */
  rule: string;
  /** Rule target → … → proxy name (`Proxy → auto → hk-1`). */
  chain: string;
  /** The same names as a list, rule target first (the controller API reverses it, as mihomo's `chains`). */
  chains: readonly string[];
  /** The rule as the controller API shows it (mihomo's type name and payload). */
  ruleType: string;
  rulePayload: string;
  datagramsUp: number;
  datagramsDown: number;
  bytesUp: number;
  bytesDown: number;
  end?: UdpSessionEnd | undefined;
  /** On close after a failure: the stable code (ETIMEDOUT, ESOCKS5_CMD_UNSUPPORTED, EUPSTREAM_CLOSED, …). */
  errorCode?: string | undefined;
}

export type UdpListenerDrops = Record<UdpListenerDropReason | UdpDropReason | 'rcvbuf' | 'foreign-ingress', number>;

export interface UdpListenerStats {
  /** Datagrams (and payload bytes) from live NAT flows / delivered back to apps. */
  datagramsUp: number;
  bytesUp: number;
  datagramsDown: number;
  bytesDown: number;
  /** Datagrams whose source was not a live NAT address. */
  rejectedPeers: number;
  /** Live associations. */
  associations: number;
  opened: number;
  expired: number;
  evicted: number;
  setupFailed: number;
  /** Sends to apps the kernel refused. */
  sendErrors: number;
  /** The native relay's share (UdpListenerOptions.native): datagrams that reached JavaScript (first of a flow, unknown remotes). */
  nativeMisses: number;
  nativeUnknownRemotes: number;
  /** Every dropped datagram by reason: the listener's own plus its associations' (live and closed). */
  dropped: UdpListenerDrops;
  /** UDP GSO use by the native relay (all zero without it): see NativeUdpRelayTotals.gso. */
  gso: NativeUdpRelayTotals['gso'];
  /** Coalesced receives on the native relay's listener (UDP_GRO) and the datagrams in them. */
  gro: NativeUdpRelayTotals['gro'];
}

export interface UdpListener {
  on(event: 'session', cb: (e: UdpSessionEvent) => void): this;
  once(event: 'session', cb: (e: UdpSessionEvent) => void): this;
  off(event: 'session', cb: (e: UdpSessionEvent) => void): this;
  emit(event: 'session', e: UdpSessionEvent): boolean;
}

type Resolved = Required<Omit<UdpListenerOptions, 'device'>> & Pick<UdpListenerOptions, 'device'>;
type Assoc = AppAssociation | NativeAssociation;

/** Associations are per (app socket, outbound): two outbound objects may share a label, so key by identity. */
const outboundIds = new WeakMap<Outbound, number>();
let nextOutboundId = 0;
function outboundId(o: Outbound): number {
  let id = outboundIds.get(o);
  if (id === undefined) {
    id = ++nextOutboundId;
    outboundIds.set(o, id);
  }
  return id;
}

/**
 * The listener sends only to NAT addresses (IP literals): answer dgram's
 * per-send lookup synchronously instead of through dns.lookup's
 * process.nextTick, and never ask the system resolver (it is us).
 */
const literalLookup = ((host: string, _o: unknown, cb: (e: Error | null, a?: string, f?: number) => void) => {
  const f = net.isIP(host);
  if (f !== 0) cb(null, host, f);
  else cb(new Error('fakeproxy never uses the system resolver'));
}) as unknown as dgram.SocketOptions['lookup'];

/** What a datagram's NAT source resolved to, kept per live flow (only with a NAT that reports closes). */
interface FlowCtx {
  flow: FlowEntry;
  name: string | undefined;
  outbound: Outbound;
  /** Rule and chain of the routing decision (SessionEvent's). */
  route: Pick<UdpSessionEvent, 'rule' | 'chain' | 'chains' | 'ruleType' | 'rulePayload'>;
  key: string;
}

/**
 * Flows remembered for the per-datagram fast path. Entries leave on the
 * flow's close event; this only bounds the damage of lost events (past it
 * the cache is emptied and refilled by lookups). @default 65536
 */
const MAX_CACHED_FLOWS = 65_536;
/** At most one overload line this often (and one per period while drops go on). */
const OVERLOAD_LOG_MS = 10_000;

/** What each native drop reason means on the overload line, with its fix. */
const OVERLOAD_CAUSE: Partial<Record<(typeof UDP_RELAY_DROPS)[number], string>> = {
  rcvbuf:
    "at the relay's full receive buffer (rcvbuf: the relay thread fell behind — lower the load; a burst needs a larger net.core.rmem_max)",
  'send-error':
    'sends the kernel refused (send-error: an upstream or app socket buffer was full — the path beyond is slower than what is offered; lower the load)',
  'queue-full':
    'datagrams of flows not bound yet, past the queue towards JavaScript (queue-full: a burst before its association was set up, or too many new flows at once)',
};

/** Spoofing, not overload: logged on its own line (UdpListenerOptions.device). */
const FOREIGN_INGRESS = UDP_RELAY_DROPS.indexOf('foreign-ingress');

function emptyDrops(): UdpListenerDrops {
  return {
    ...dropCounters(),
    'no-udp': 0,
    'setup-failed': 0,
    'unknown-remote': 0,
    'no-flow': 0,
    loop: 0,
    rcvbuf: 0,
    'foreign-ingress': 0,
  };
}

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: typed events via interface merge
export class UdpListener extends EventEmitter {
  readonly #o: Resolved;
  #sock: dgram.Socket | undefined;
  readonly #assocs = new Map<string, Assoc>();
  #relay: NativeUdpRelay | undefined;
  #nativeHost: NativeHost | undefined;
  /** Native associations by relay id, until their ended record arrives. */
  readonly #byId = new Map<number, NativeAssociation>();
  #nextId = 0;
  /** Native drop totals by reason (UDP_RELAY_DROPS) at the last overload check. */
  #lastDrops: number[] = [];
  /** TUN kernel drops at the last overload log line. */
  #lastTunDrops = 0;
  #lastForeignIngress = 0;
  /** Checks the native drop totals every OVERLOAD_LOG_MS (a flood of a bound association never calls into JS). */
  #overloadTimer: NodeJS.Timeout | undefined;
  /** Association key → until when (clock ms) setup is not retried. */
  readonly #failedUntil = new Map<string, number>();
  readonly #drops: UdpListenerDrops = emptyDrops();
  readonly #stats = {
    datagramsUp: 0,
    bytesUp: 0,
    datagramsDown: 0,
    bytesDown: 0,
    rejectedPeers: 0,
    opened: 0,
    expired: 0,
    evicted: 0,
    setupFailed: 0,
    sendErrors: 0,
  };
  readonly #rl: (key: string, line: string) => void;
  readonly #host: AssociationHost;
  /** `natIp:natPort` → the live flow behind it, its name, outbound and association key. */
  readonly #ctx = new Map<string, FlowCtx>();
  /** Each association's routing decision (kept beside it: the associations move datagrams only). */
  readonly #routes = new WeakMap<object, FlowCtx['route']>();
  /** Live associations by session id (UdpSessionEvent.id), and each one's id and start. */
  readonly #sessions = new Map<number, Assoc>();
  readonly #sessionOf = new WeakMap<Assoc, { id: number; startMs: number }>();
  #nextSession = 0;
  readonly #counts = new Float64Array(4);
  /** Flow ids confirmed live whose close has not been reported yet. */
  readonly #live = new Set<number>();
  /** Set when the NAT reports closes (UdpNat.on): the caches above are used only then. */
  readonly #onFlowClose: ((flow: FlowEntry) => void) | undefined;
  readonly #onSent = (err: Error | null) => {
    if (err) {
      this.#stats.sendErrors++;
      this.#rl('send', `udp listener: send to an app failed: ${err.message}`);
    }
  };

  constructor(opts: UdpListenerOptions) {
    super();
    this.#o = {
      host: opts.host,
      port: opts.port ?? O.listenPort.default,
      nat: opts.nat,
      names: opts.names,
      router: opts.router,
      logger: opts.logger ?? stderrLogger,
      idleTimeoutMs: opts.idleTimeoutMs ?? 60_000,
      dnsIdleTimeoutMs: opts.dnsIdleTimeoutMs ?? 10_000,
      maxAssociations: opts.maxAssociations ?? 4096,
      maxQueue: opts.maxQueue ?? 256,
      connectTimeoutMs: opts.connectTimeoutMs ?? 5000,
      retryAfterFailureMs: opts.retryAfterFailureMs ?? 1000,
      fullCone: opts.fullCone ?? true,
      maxPayloadBytes: opts.maxPayloadBytes ?? 65507,
      recvBufferBytes: opts.recvBufferBytes ?? 4 * 1024 * 1024,
      clock: opts.clock ?? (() => performance.now()),
      native: opts.native ?? true,
      mark: opts.mark ?? 0,
      device: opts.device,
      tunKernelDrops: opts.tunKernelDrops ?? (() => 0),
    };
    if (this.#o.maxAssociations < 1) throw new RangeError('maxAssociations must be ≥ 1');
    this.#rl = rateLimited(this.#o.logger, 10_000);
    const self = this;
    const cache = typeof this.#o.nat.on === 'function';
    this.#onFlowClose = cache
      ? (flow) => {
          if (flow.proto !== 'udp') return;
          this.#live.delete(flow.id);
          const k = `${flow.natIp}:${flow.natPort}`;
          const c = this.#ctx.get(k);
          if (c?.flow.id === flow.id) this.#ctx.delete(k);
          if (this.#relay && net.isIPv4(flow.natIp)) {
            this.#relay.unbind(ipToInt(flow.natIp), flow.natPort);
            const a = c ? this.#assocs.get(c.key) : undefined;
            if (a instanceof NativeAssociation) a.forgetFlow(flow.id);
          }
        }
      : undefined;
    const live = this.#live;
    this.#host = {
      nat: this.#o.nat,
      isLive: cache ? (id) => live.has(id) : () => false,
      markLive: cache
        ? (flow) => {
            if (live.size >= MAX_CACHED_FLOWS) live.clear();
            live.add(flow.id);
          }
        : () => {},
      fullCone: this.#o.fullCone,
      maxQueue: this.#o.maxQueue,
      clock: this.#o.clock,
      log: (line) => this.#o.logger(line),
      drop: (reason, n = 1) => {
        this.#drops[reason] += n;
      },
      sendToApp(payload, natIp, natPort) {
        const r = self.#relay;
        if (r) {
          // Counted by the relay.
          r.sendDown(ipToInt(natIp), natPort, payload);
          return;
        }
        const s = self.#sock;
        if (!s) return;
        self.#stats.datagramsDown++;
        self.#stats.bytesDown += payload.length;
        // To the NAT address: the engine rewrites our source back to the
        // address the app sent to (or, for an ensureFlow entry, the remote).
        s.send(payload, natPort, natIp, self.#onSent);
      },
    };
  }

  /** Bind host:port. Rejects with the bind error (EADDRNOTAVAIL: is the TUN configured?). */
  start(): Promise<void> {
    if (this.#o.native && net.isIPv4(this.#o.host) && this.#onFlowClose) return this.#startNative();
    if (this.#o.device) {
      return Promise.reject(
        new Error(`udp listen on ${hostPort(this.#o.host, this.#o.port)}: binding to a device needs the native relay`),
      );
    }
    const type = net.isIPv6(this.#o.host) ? 'udp6' : 'udp4';
    const sock = dgram.createSocket({ type, recvBufferSize: this.#o.recvBufferBytes, lookup: literalLookup });
    this.#sock = sock;
    return new Promise((resolve, reject) => {
      sock.once('error', (e) => {
        this.#sock = undefined;
        const code = (e as NodeJS.ErrnoException).code;
        const hint =
          code === 'EADDRNOTAVAIL'
            ? ' (the gateway address does not exist yet: configure the TUN device first)'
            : code === 'EADDRINUSE'
              ? ' (another process holds the port: pick another --listen-port)'
              : '';
        reject(wrapError(`udp listen on ${hostPort(this.#o.host, this.#o.port)}${hint}`, e));
      });
      sock.bind({ address: this.#o.host, port: this.#o.port, exclusive: true }, () => {
        if (this.#onFlowClose) this.#o.nat.on?.('udpClose', this.#onFlowClose);
        sock.removeAllListeners('error');
        sock.on('error', (e) => this.#rl('sock', `udp listener: ${e.message}`));
        sock.on('message', (msg, rinfo) => this.#onMessage(msg, rinfo.address, rinfo.port));
        resolve();
      });
    });
  }

  #startNative(): Promise<void> {
    try {
      this.#relay = new (native().UdpRelay)(
        {
          ip: ipToInt(this.#o.host),
          port: this.#o.port,
          recvBufferBytes: this.#o.recvBufferBytes,
          mark: this.#o.mark,
          maxPayloadBytes: Math.min(this.#o.maxPayloadBytes, 65507),
          batch: 64,
          ...(this.#o.device ? { device: this.#o.device } : {}),
        },
        (dgrams, bytes, ended) => this.#onNative(dgrams, bytes, ended),
      );
    } catch (e) {
      return Promise.reject(wrapError(`udp listen on ${hostPort(this.#o.host, this.#o.port)}`, e as Error));
    }
    const o = this.#o;
    this.#nativeHost = {
      ...this.#host,
      relay: this.#relay,
      mark: o.mark,
      recvBufferBytes: 1 << 20,
      idleTimeoutMs: o.idleTimeoutMs,
      dnsIdleTimeoutMs: o.dnsIdleTimeoutMs,
      dropUp: (reason, n = 1) => {
        this.#drops[reason] += n;
      },
      connectTimeoutMs: o.connectTimeoutMs,
      setupFailed: (a, err) => {
        this.#stats.setupFailed++;
        const f = a.first;
        this.#o.logger(
          `udp ${hostPort(a.appIp, a.appPort)} → ${hostPort(f.name ?? f.ip, f.port)} via ${a.outbound.label}: ${err.code ?? 'ERROR'}: ${err.message}`,
        );
        this.#holdRetry(a.key);
        this.#end(a, 'connect-failed', err.code, 'setup-failed');
      },
      upstreamClosed: (a, err) => this.#end(a, 'upstream-closed', err.code),
    };
    if (this.#onFlowClose) this.#o.nat.on?.('udpClose', this.#onFlowClose);
    this.#overloadTimer = setInterval(() => this.#logOverload(), OVERLOAD_LOG_MS);
    this.#overloadTimer.unref();
    return Promise.resolve();
  }

  /** One batch from the native relay: datagrams JS must see, and ended associations. */
  #onNative(d: Float64Array, bytes: Buffer, ended: Float64Array): void {
    for (let i = 0; i < d.length; i += DF) {
      const id = d[i] as number;
      const off = d[i + 3] as number;
      const payload = bytes.subarray(off, off + (d[i + 4] as number));
      if (id === 0) {
        this.#onMessage(payload, intToIp(d[i + 1] as number), d[i + 2] as number);
      } else {
        const k = d[i + 5] as number;
        this.#byId.get(id)?.fromUnknownRemote(bytes.subarray(k, k + (d[i + 6] as number)), payload);
      }
    }
    this.#onNativeEnded(ended);
    this.#logForeignIngress();
  }

  #onNativeEnded(ended: Float64Array): void {
    for (let i = 0; i < ended.length; i += EF) {
      const a = this.#byId.get(ended[i] as number);
      if (a === undefined) continue;
      const how = UDP_RELAY_ENDS[ended[i + 1] as number] ?? 'closed';
      if (how === 'idle' && (a.state === 'open' || a.state === 'connecting')) this.#stats.expired++;
      this.#byId.delete(a.id);
      const counts = {
        datagramsUp: ended[i + 2] as number,
        bytesUp: ended[i + 3] as number,
        datagramsDown: ended[i + 4] as number,
        bytesDown: ended[i + 5] as number,
      };
      const live = a.state === 'open' || a.state === 'connecting';
      const p = this.#pendingEnd.get(a.id);
      this.#pendingEnd.delete(a.id);
      a.ended();
      if (this.#assocs.get(a.key) === a) this.#assocs.delete(a.key);
      const end = live ? how : (p?.end ?? 'closed');
      this.#sessionClosed(a);
      this.emit('session', {
        ...this.#base(a),
        ...counts,
        phase: 'close',
        end,
        errorCode: live ? undefined : p?.errorCode,
      });
    }
  }

  /**
   * One line per OVERLOAD_LOG_MS while the relay drops (overload), naming
   * where: run by a timer, since datagrams of bound associations never reach
   * JS. It logs the window's drops and the totals.
   */
  #logOverload(): void {
    const r = this.#relay;
    if (!r) return;
    const t = r.totals();
    const foreign = t.drops[FOREIGN_INGRESS] as number;
    this.#logForeignIngress(foreign);
    this.#logGsoDisabled(t.gso);
    const tun = this.#o.tunKernelDrops();
    const tunNew = tun - this.#lastTunDrops;
    let relayNew = 0;
    const causes: string[] = [];
    if (tunNew > 0)
      causes.push(
        `the kernel dropped ${tunNew} packets at ${this.#o.device ?? 'the TUN'}'s full transmit queue before the engine read them (raise --tun-txqueuelen or lower the load)`,
      );
    UDP_RELAY_DROPS.forEach((why, i) => {
      const n = (t.drops[i] as number) - (this.#lastDrops[i] ?? 0);
      if (n <= 0 || i === FOREIGN_INGRESS) return;
      relayNew += n;
      causes.push(`${n} ${OVERLOAD_CAUSE[why] ?? why}`);
    });
    this.#lastTunDrops = tun;
    this.#lastDrops = [...t.drops];
    if (causes.length === 0) return;
    // The TUN queue holds every protocol's packets (a TCP SYN flood fills it too): with no drop in
    // the relay, the line is the TUN's, not the relay's.
    if (relayNew === 0) {
      this.#o.logger(`tun: in the last ${OVERLOAD_LOG_MS / 1000} s ${causes[0]} (total ${tun}; TCP and UDP alike)`);
      return;
    }
    this.#o.logger(
      `udp relay: dropped ${relayNew} datagrams in the last ${OVERLOAD_LOG_MS / 1000} s: ${causes.join('; ')} (totals: ${tun} at the TUN queue, ${UDP_RELAY_DROPS.flatMap((why, i) => ((t.drops[i] as number) > 0 && i !== FOREIGN_INGRESS ? [`${why} ${t.drops[i]}`] : [])).join(', ') || 'none in the relay'})`,
    );
  }

  /** Sockets with GSO turned off at the last line, up and down. */
  #lastGsoDisabled = [0, 0];

  /** Once per socket the kernel refused UDP GSO on (EIO, ENOPROTOOPT): not an error, but each datagram then costs a send. */
  #logGsoDisabled(g: NativeUdpRelayTotals['gso']): void {
    const now = [g.up.disabled, g.down.disabled];
    if (now[0] === this.#lastGsoDisabled[0] && now[1] === this.#lastGsoDisabled[1]) return;
    const where =
      now[1] > (this.#lastGsoDisabled[1] as number)
        ? `towards apps (through ${this.#o.device ?? 'the TUN'}): a kernel before 6.11 needs the TUN's checksum offload for it — drop --no-tun-offload (tunOffload: false)`
        : `towards upstreams (${now[0]} socket(s) so far): the route there goes through IPsec (xfrm), or the kernel has no UDP_SEGMENT (< 4.18)`;
    this.#lastGsoDisabled = now;
    this.#rl(
      'gso',
      `udp relay: the kernel refused UDP GSO ${where}; those sockets now send one datagram per system call (status: udp.gso.*.disabled)`,
    );
  }

  /** Spoofed datagrams (not overload): their own rate-limited line, at once from the relay's callback and from the timer. */
  #logForeignIngress(foreign = this.#relay?.totals().drops[FOREIGN_INGRESS] ?? 0): void {
    if (foreign <= this.#lastForeignIngress) return;
    this.#lastForeignIngress = foreign;
    this.#rl(
      'foreign-ingress',
      `udp listener: dropped ${foreign} datagram(s) in all to ${hostPort(this.#o.host, this.address().port)} that did not come through ${this.#o.device}: a host on another interface spoofing NAT addresses — set rp_filter=1 on the LAN interface (README, LAN gateway mode)`,
    );
  }

  /** Why a native association JS closed ended, until its ended record arrives. */
  readonly #pendingEnd = new Map<number, { end: UdpSessionEnd; errorCode: string | undefined }>();

  /** The bound address (port is the real one when 0 was asked). */
  address(): { host: string; port: number } {
    if (this.#relay) return { host: this.#o.host, port: this.#relay.port() };
    const s = this.#sock;
    if (!s) throw new Error('UdpListener is not started');
    const a = s.address();
    return { host: a.address, port: a.port };
  }

  /** Close every association (their upstream sockets and control connections) and the socket. */
  close(): Promise<void> {
    for (const a of [...this.#assocs.values()]) this.#end(a, 'closed');
    this.#failedUntil.clear();
    if (this.#onFlowClose) this.#o.nat.off?.('udpClose', this.#onFlowClose);
    this.#ctx.clear();
    this.#live.clear();
    clearInterval(this.#overloadTimer);
    const r = this.#relay;
    if (r) {
      this.#relay = undefined;
      this.#onNativeEnded(r.stop());
      return Promise.resolve();
    }
    const s = this.#sock;
    this.#sock = undefined;
    if (!s) return Promise.resolve();
    return new Promise((resolve) => s.close(() => resolve()));
  }

  stats(): UdpListenerStats {
    const dropped = { ...this.#drops };
    for (const a of this.#assocs.values()) if (a instanceof AppAssociation) addUpstreamDrops(dropped, a);
    const t = this.#relay?.totals();
    const noGso = { sends: 0, segments: 0, disabled: 0, limited: 0 };
    const st = {
      ...this.#stats,
      nativeMisses: 0,
      nativeUnknownRemotes: 0,
      gso: t?.gso ?? { up: { ...noGso }, down: { ...noGso } },
      gro: t?.gro ?? { receives: 0, segments: 0 },
    };
    if (t) {
      st.datagramsUp += t.datagramsUp;
      st.bytesUp += t.bytesUp;
      st.datagramsDown += t.datagramsDown;
      st.bytesDown += t.bytesDown;
      st.nativeMisses = t.misses;
      st.nativeUnknownRemotes = t.unknownRemotes;
      UDP_RELAY_DROPS.forEach((why, i) => {
        dropped[why] += t.drops[i] as number;
      });
    }
    return { ...st, associations: this.#assocs.size, dropped };
  }

  #onMessage(msg: Buffer, natIpIn: string, natPort: number): void {
    // Per datagram, a live flow already seen costs one Map get: its entry,
    // name, outbound and association key were worked out by its first
    // datagram and stay valid until its close event (see UdpNat.on). A flow
    // pins its fake address, so the name cannot change under it.
    const natIp = unmapV4(natIpIn);
    const natKey = `${natIp}:${natPort}`;
    let c = this.#ctx.get(natKey);
    if (c === undefined) {
      const flow = this.#o.nat.lookup('udp', natIp, natPort);
      if (flow === undefined || flow.proto !== 'udp') {
        this.#stats.rejectedPeers++;
        // Rate-limited: a scan of the gateway port must not flood the log.
        this.#rl(
          'reject',
          `udp listener: dropped datagrams from non-NAT peers (last ${hostPort(natIp, natPort)}); only flows the engine NATed are served`,
        );
        return;
      }
      const name = this.#o.names.reverse(flow.dstIp);
      const decision = this.#o.router.decide({
        name,
        ip: flow.dstIp,
        port: flow.dstPort,
        proto: 'udp',
        srcIp: flow.srcIp,
        srcPort: flow.srcPort,
      });
      const outbound = decision.outbound;
      const route = {
        rule: decision.rule,
        chain: decision.chain.join(' → '),
        chains: decision.chain,
        ruleType: decision.ruleType,
        rulePayload: decision.rulePayload,
      };
      c = { flow, name, outbound, route, key: `${flow.srcIp}|${flow.srcPort}|${outboundId(outbound)}` };
      if (this.#onFlowClose) {
        if (this.#ctx.size >= MAX_CACHED_FLOWS) this.#ctx.clear();
        this.#ctx.set(natKey, c);
        this.#host.markLive(flow);
      }
    }
    if (msg.length > this.#o.maxPayloadBytes) {
      this.#drops.oversized++;
      return;
    }
    const { flow, name, outbound, route, key } = c;
    let a = this.#assocs.get(key);
    if (a === undefined) {
      // Only a new app socket can be one of ours: checked once per association, not per datagram.
      if (flow.srcIp === this.#o.host && isOwnPort(flow.srcPort)) {
        this.#countUp(msg);
        this.#drops.loop++;
        this.#rl(
          'loop',
          `udp listener: dropped datagrams the daemon itself sent to ${hostPort(flow.dstIp, flow.dstPort)} that came back through the TUN: a route sends that address into the device; route it elsewhere (or keep --dns-hijack on for port 53)`,
        );
        return;
      }
      const until = this.#failedUntil.get(key);
      if (until !== undefined) {
        if (this.#o.clock() < until) {
          this.#countUp(msg);
          this.#drops['setup-failed']++;
          return;
        }
        this.#failedUntil.delete(key);
      }
      const n = this.#openNative(key, flow, name, outbound, route);
      if (n === null) {
        this.#countUp(msg);
        this.#drops['setup-failed']++;
        return;
      }
      a = n ?? this.#open(key, flow, name, outbound, route);
    }
    // A native association's datagrams are counted by the relay.
    if (a instanceof AppAssociation) this.#countUp(msg);
    a.fromApp(flow, name, msg);
  }

  /** After a failed setup, datagrams of that association key are dropped for retryAfterFailureMs. */
  #holdRetry(key: string): void {
    this.#failedUntil.set(key, this.#o.clock() + this.#o.retryAfterFailureMs);
    if (this.#failedUntil.size > this.#o.maxAssociations) {
      this.#failedUntil.delete(this.#failedUntil.keys().next().value as string);
    }
  }

  #countUp(msg: Buffer): void {
    this.#stats.datagramsUp++;
    this.#stats.bytesUp += msg.length;
  }

  /** A native association when the relay runs and the outbound allows it (IPv4 app); undefined otherwise; null when its socket could not be made. */
  #openNative(
    key: string,
    flow: FlowEntry,
    name: string | undefined,
    outbound: Outbound,
    route: FlowCtx['route'],
  ): NativeAssociation | undefined | null {
    const host = this.#nativeHost;
    const plan = outbound.udpNative;
    if (host === undefined || plan === undefined || !net.isIPv4(flow.srcIp) || !net.isIPv4(flow.natIp))
      return undefined;
    if (this.#assocs.size >= this.#o.maxAssociations) this.#evictOne();
    let a: NativeAssociation;
    try {
      a = new NativeAssociation(host, ++this.#nextId, key, flow, name, outbound, plan);
    } catch (e) {
      // No socket (EMFILE, ENOBUFS): counted like a failed setup, retried after the hold.
      this.#stats.setupFailed++;
      if (!resourceAlarm.check(e, 'udp upstream socket'))
        this.#rl(
          'native-open',
          `udp ${hostPort(flow.srcIp, flow.srcPort)} via ${outbound.label}: ${(e as Error).message}`,
        );
      this.#holdRetry(key);
      return null;
    }
    this.#byId.set(a.id, a);
    this.#routes.set(a, route);
    this.#assocs.set(key, a);
    this.#stats.opened++;
    this.#sessionOpened(a);
    this.emit('session', { ...this.#base(a), phase: 'open' });
    return a;
  }

  #open(
    key: string,
    flow: FlowEntry,
    name: string | undefined,
    outbound: Outbound,
    route: FlowCtx['route'],
  ): AppAssociation {
    if (this.#assocs.size >= this.#o.maxAssociations) this.#evictOne();
    const a = new AppAssociation(this.#host, key, flow, name, outbound);
    this.#routes.set(a, route);
    this.#assocs.set(key, a);
    this.#stats.opened++;
    this.#sessionOpened(a);
    this.emit('session', { ...this.#base(a), phase: 'open' });
    this.#arm(a);
    if (outbound.udpAssociate) {
      outbound
        .udpAssociate({
          timeoutMs: this.#o.connectTimeoutMs,
          signal: a.abort.signal,
          maxPayloadBytes: this.#o.maxPayloadBytes,
          maxQueue: this.#o.maxQueue,
          logger: (line) => this.#rl(`assoc:${outbound.label}`, line),
        })
        .then(
          (up) => {
            if (a.state === 'closed') {
              up.close();
              return;
            }
            up.onClose((err) => {
              if (a.state !== 'closed') this.#end(a, 'upstream-closed', (err as { code?: string } | undefined)?.code);
            });
            a.attach(up);
          },
          (err: Error & { code?: string }) => {
            if (a.state === 'closed') return;
            this.#stats.setupFailed++;
            this.#o.logger(
              `udp ${hostPort(a.appIp, a.appPort)} → ${hostPort(name ?? flow.dstIp, flow.dstPort)} via ${outbound.label}: ${err.code ?? 'ERROR'}: ${err.message}`,
            );
            this.#holdRetry(key);
            this.#end(a, 'connect-failed', err.code, 'setup-failed');
          },
        );
    }
    return a;
  }

  /** Idle check: one timer per association, re-armed for the remainder instead of on every datagram. */
  #arm(a: AppAssociation): void {
    const timeout = () => (a.dnsOnly ? this.#o.dnsIdleTimeoutMs : this.#o.idleTimeoutMs);
    const check = () => {
      if (a.state === 'closed') return;
      const idle = this.#o.clock() - a.lastActiveMs;
      const t = timeout();
      if (idle >= t) {
        this.#stats.expired++;
        this.#end(a, 'idle');
      } else {
        a.timer = setTimeout(check, Math.max(1, Math.ceil(t - idle)));
        a.timer.unref();
      }
    };
    a.timer = setTimeout(check, timeout());
    a.timer.unref();
  }

  /** Close the least recently active association (O(n), only when full). */
  #evictOne(): void {
    let victim: Assoc | undefined;
    for (const a of this.#assocs.values()) {
      if (victim === undefined || a.lastActiveMs < victim.lastActiveMs) victim = a;
    }
    if (victim) {
      this.#stats.evicted++;
      this.#rl(
        'evict',
        `udp listener: ${this.#o.maxAssociations} associations live: closed the least recently active (raise maxAssociations)`,
      );
      this.#end(victim, 'evicted');
    }
  }

  #end(a: Assoc, end: UdpSessionEnd, errorCode?: string, queuedAs: 'closed' | 'setup-failed' = 'closed'): void {
    if (a instanceof NativeAssociation) {
      // The session's close event waits for the relay's ended record (it carries the counts).
      if (a.state !== 'open' && a.state !== 'connecting') return;
      if (this.#assocs.get(a.key) === a) this.#assocs.delete(a.key);
      const opened = a.opened;
      const queued = a.shutdown();
      if (queued > 0) this.#drops[queuedAs] += queued;
      if (opened) {
        this.#pendingEnd.set(a.id, { end, errorCode });
        return;
      }
      // The relay never held it (SOCKS5 setup failed before our socket existed): no record will come.
      this.#byId.delete(a.id);
      a.ended();
      this.#sessionClosed(a);
      this.emit('session', { ...this.#base(a), phase: 'close', end, errorCode });
      return;
    }
    if (a.state === 'closed') return;
    const queued = a.shutdown();
    if (queued > 0) this.#drops[queuedAs] += queued;
    addUpstreamDrops(this.#drops, a);
    if (this.#assocs.get(a.key) === a) this.#assocs.delete(a.key);
    this.#sessionClosed(a);
    this.emit('session', { ...this.#base(a), phase: 'close', end, errorCode });
  }

  #sessionOpened(a: Assoc): void {
    const id = ++this.#nextSession;
    this.#sessionOf.set(a, { id, startMs: Date.now() });
    this.#sessions.set(id, a);
  }

  #sessionClosed(a: Assoc): void {
    const s = this.#sessionOf.get(a);
    if (s !== undefined && this.#sessions.get(s.id) === a) this.#sessions.delete(s.id);
  }

  /**
   * Bytes of live session `id` so far: the native relay's counts for a
   * native association, the JS relay's otherwise; undefined once it ended.
   */
  sessionBytes(id: number): { bytesUp: number; bytesDown: number } | undefined {
    const a = this.#sessions.get(id);
    if (a === undefined) return undefined;
    if (a instanceof AppAssociation) return { bytesUp: a.bytesUp, bytesDown: a.bytesDown };
    const c = this.#counts;
    if (!this.#relay?.counts(a.id, c)) return { bytesUp: 0, bytesDown: 0 };
    return { bytesUp: c[1] as number, bytesDown: c[3] as number };
  }

  /** End live session `id` (its upstream socket and relay state); its close event follows. false when not live. */
  closeSession(id: number): boolean {
    const a = this.#sessions.get(id);
    if (a === undefined || a.state === 'closed' || a.state === 'closing') return false;
    this.#end(a, 'closed');
    return true;
  }

  #base(a: Assoc): Omit<UdpSessionEvent, 'phase'> {
    const sess = this.#sessionOf.get(a) ?? { id: 0, startMs: Date.now() };
    return {
      proto: 'udp',
      id: sess.id,
      startMs: sess.startMs,
      flowId: a.first.flowId,
      app: hostPort(a.appIp, a.appPort),
      name: a.first.name,
      ip: a.first.ip,
      port: a.first.port,
      outbound: a.outbound.label,
      ...(this.#routes.get(a) ?? { rule: '', chain: '', chains: [], ruleType: '', rulePayload: '' }),
      datagramsUp: a instanceof AppAssociation ? a.datagramsUp : 0,
      datagramsDown: a instanceof AppAssociation ? a.datagramsDown : 0,
      bytesUp: a instanceof AppAssociation ? a.bytesUp : 0,
      bytesDown: a instanceof AppAssociation ? a.bytesDown : 0,
    };
  }
}

function addUpstreamDrops(into: UdpListenerDrops, a: AppAssociation): void {
  const s = a.up?.stats();
  if (!s) return;
  for (const k of UDP_DROP_REASONS) into[k] += s.dropped[k];
}
