/**
 * The TCP Listener on gateway:--listen-port (DESIGN.md "The data path").
 * Every accepted peer must be a live NAT address (the engine rewrote the
 * app's SYN towards us); anything else is reset at once — it must never be
 * an open relay. The original destination comes from the NAT entry, its name
 * from the fake DNS, the outbound from the Router.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import * as os from 'node:os';
import { getSystemErrorName } from 'node:util';
import { wrapError } from '../errors.js';
import { type Logger, rateLimited, stderrLogger } from '../log.js';
import type { NatLookup, PackedFlow } from '../nat/types.js';
import { ACCEPT_RECORD_FIELDS, type NativeTcpAcceptor, native } from '../native.js';
import { START_OPTIONS as O } from '../options.js';
import { dottedToU32, intToIp, ipToInt } from '../util/cidr.js';
import { resourceAlarm } from '../util/exhaustion.js';
import { QuietGc, type QuietGcStats } from '../util/quietGc.js';
import { ownMark } from '../util/sockmark.js';
import { hostPort, isProxyDown, timeoutError } from './dial.js';
import { LOOP_BURST_BACKOFF_MS, LOOP_BURST_THRESHOLD, LOOP_BURST_WINDOW_MS, LoopBurst } from './loopBurst.js';
import type { NativeProxyDial, Outbound } from './outbound.js';
import { holdOwnTcpNative, isOwnTcp } from './ownTcp.js';
import { Relay, type RelayEnd, type RelayHandle, type RelayResult, SpliceRelay } from './relay.js';
import type { Router } from './router.js';
import { sniffSocket } from './sniff.js';

export interface NameLookup {
  /** Fake address → the name it stands for; undefined when `ip` is not a (live) fake address. */
  reverse(ip: string): string | undefined;
  /** The same for an IPv4 address as an unsigned 32-bit integer (no address text on the accept path). */
  reverseU32?(ip: number): string | undefined;
}

export interface TcpListenerOptions {
  /** The gateway address; the Listener binds to it only. */
  host: string;
  /** @default `--listen-port`'s (src/options.ts) — 0 picks a free port (tests). */
  port?: number;
  nat: NatLookup;
  names: NameLookup;
  router: Router;
  /** One-line operator log. @default stderrLogger (src/log.ts) */
  logger?: Logger;
  /** Relay idle timeout, see RelayOptions. @default 600000 */
  idleTimeoutMs?: number;
  /**
   * Budget for resolve + connect + proxy handshake; past it the app's
   * connection is reset.
   * @default 5000 — sing-box and mihomo both dial with a 5 s TCP timeout;
   * an app's own connect timeout is usually longer, so the app sees our
   * reset rather than its own timeout.
   */
  connectTimeoutMs?: number;
  /**
   * Listen backlog.
   * @default 1024 — bursts of new flows (a browser opening 100 connections)
   * land here at once; the kernel caps it at net.core.somaxconn (4096).
   */
  backlog?: number;
  /**
   * The TUN's name: the Listener's sockets drop, silently, every segment
   * that did not arrive through it (a LAN host spoofing a live flow's NAT
   * address; native/accept_addon.cc says why not SO_BINDTODEVICE). Needs an
   * IPv4 host (the native accept path).
   */
  device?: string;
  /**
   * TCP congestion control of the listening socket, which accepted sockets
   * inherit (the TUN side; why: START_OPTIONS.tunCongestion). Unset: the
   * system's. One warning line when the kernel refuses it; the Listener runs on.
   */
  congestion?: string;
  /**
   * Epoll threads of the native relay (SpliceRelayOptions.threads).
   * @default os.availableParallelism()
   */
  relayThreads?: number;
  /**
   * Sniff connections that have no name (a real destination address): wait
   * up to this long for the app's first bytes and take the name from a TLS
   * SNI or HTTP Host (./sniff.ts). 0: off.
   * @default 0 — the daemon passes `--sniff-timeout` when `--sniff` applies (src/options.ts).
   */
  sniffTimeoutMs?: number;
}

export interface SessionEvent {
  phase: 'open' | 'close';
  flowId: number;
  /** The name behind the fake address, or the sniffed one (`sniffed`). */
  name?: string | undefined;
  /** How `name` was learned from the app's first bytes (a real destination address): TLS SNI or HTTP Host. */
  sniffed?: 'tls' | 'http' | undefined;
  /** Original destination. */
  ip: string;
  port: number;
  /** Outbound label (`socks5://host:port`, `direct`, …). */
  outbound: string;
  /** The routing rule that matched, as written (`DOMAIN-SUFFIX,example.com,Proxy`). */
  rule?: string | undefined;
  /** Rule target → … → proxy name (`Proxy → auto → hk-1`). */
  chain?: string | undefined;
  /** The same names as a list, rule target first (the controller API reverses it, as mihomo's `chains`). */
  chains?: readonly string[] | undefined;
  /** The rule as the controller API shows it (mihomo's type name and payload). */
  ruleType?: string | undefined;
  rulePayload?: string | undefined;
  /** The app's address and port. */
  srcIp?: string | undefined;
  srcPort?: number | undefined;
  /** When the connection was accepted (ms since the epoch). */
  startMs?: number | undefined;
  bytesUp: number;
  bytesDown: number;
  /** On close: how it ended; 'connect-failed' when the upstream never answered. */
  end?: RelayEnd | 'connect-failed' | undefined;
  /** On close after a failure: the stable code (ETIMEDOUT, ESOCKS5_REFUSED, …). */
  errorCode?: string | undefined;
}

/** How often the Listener reports segments its device filter dropped. */
const FOREIGN_LOG_MS = 10_000;

export interface TcpListenerStats {
  accepted: number;
  /** Peers that were not a live NAT address: reset at once. */
  rejectedPeers: number;
  /**
   * Segments to the Listener that did not come through the TUN (a spoofed NAT
   * address), dropped by its device filter; absent when not counted (no eBPF).
   */
  droppedForeignIngress?: number;
  /** Captured flows that were our own outbound connections (global mode lost the mark): reset (src/proxy/ownTcp.ts). */
  loopRefused: number;
  /** Captured flows from this machine's own addresses reset at accept, before any dial, while the loop burst detector sheds (src/proxy/loopBurst.ts). */
  loopShed: number;
  /** Connections without a name whose first bytes named one (TLS SNI, HTTP Host). */
  sniffed: number;
  connectFailed: number;
  /** Upstreams the native relay dialed itself (direct to a known address: no JavaScript socket). */
  nativeDials: number;
  active: number;
  bytesUp: number;
  bytesDown: number;
}

export interface TcpListener {
  on(event: 'session', cb: (e: SessionEvent) => void): this;
  once(event: 'session', cb: (e: SessionEvent) => void): this;
  off(event: 'session', cb: (e: SessionEvent) => void): this;
  emit(event: 'session', e: SessionEvent): boolean;
}

type ResolvedOptions = Required<Omit<TcpListenerOptions, 'relayThreads' | 'device' | 'congestion'>> &
  Pick<TcpListenerOptions, 'relayThreads' | 'device' | 'congestion'>;

/** The warning when the kernel refuses `--tun-congestion` (setsockopt TCP_CONGESTION errno `err`). */
export function congestionRefused(name: string, err: number): string {
  const code = getSystemErrorName(-err);
  const why =
    code === 'ENOENT'
      ? `this kernel has no '${name}' (modprobe tcp_${name}, or pick one of /proc/sys/net/ipv4/tcp_available_congestion_control)`
      : code === 'EPERM'
        ? `'${name}' is not in net.ipv4.tcp_allowed_congestion_control and the daemon lacks CAP_NET_ADMIN (add it there, or --tun-congestion reno)`
        : `the kernel refused it`;
  return `tcp listener: --tun-congestion ${name}: ${code}: ${why}; the Listener's sockets keep the system's congestion control`;
}

/** An accepted connection's NAT flow, copied off the reused accept-path record (sniffing outlives the tick). */
interface FlowFacts {
  flowId: number;
  srcIp: string;
  srcPort: number;
  dstIp: string;
  dstPort: number;
}

/**
 * A session's facts, which are its 'open' event itself (phase 'open', no
 * bytes yet): emitted as they are and never changed afterwards, so opening a
 * session copies nothing and a listener that keeps the open event (the
 * controller's tracker) holds the same object as the session.
 */
type SessionBase = SessionEvent & { readonly phase: 'open' };

/**
 * One accepted connection; `native` once its bytes moved to the SpliceRelay.
 * `app` and `abort` serve only until the relay owns the sockets; then they
 * are dropped, so an idle relayed connection keeps little more than its
 * event fields here (issue 11: 10 000 idle connections < 100 MiB).
 */
interface Session {
  /** The app's JavaScript socket: only while a JavaScript outbound dials it (never for a native dial). */
  app: net.Socket | undefined;
  /** Aborts a JavaScript dial. */
  abort: AbortController | undefined;
  relay?: RelayHandle;
  native?: boolean;
  readonly base: SessionBase;
}

/** The bound local [IPv4 u32, port] of a native dial in global mode (read right after the call). */
const LOCAL = new Float64Array(2);

// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: typed events via interface merge
export class TcpListener extends EventEmitter {
  readonly #o: ResolvedOptions;
  #server: net.Server | undefined;
  readonly #sessions = new Set<Session>();
  /** The same sessions by NAT flow id, so the daemon can end one when its flow leaves the table. */
  readonly #byFlow = new Map<number, Session>();
  /** App sockets whose first bytes are being read (sniffing): reset by close(). */
  readonly #sniffing = new Set<net.Socket>();
  /** Created on the first hand-off, stopped by close(). */
  #splice: SpliceRelay | undefined;
  /** The native accept socket (an IPv4 host); Node's net.Server otherwise. */
  #acceptor: NativeTcpAcceptor | undefined;
  /** Checks the device filter's drop count every FOREIGN_LOG_MS (the kernel drops, nothing calls into JS). */
  #foreignTimer: NodeJS.Timeout | undefined;
  #lastForeign = 0;
  readonly #stats: TcpListenerStats = {
    accepted: 0,
    rejectedPeers: 0,
    loopRefused: 0,
    loopShed: 0,
    sniffed: 0,
    nativeDials: 0,
    connectFailed: 0,
    active: 0,
    bytesUp: 0,
    bytesDown: 0,
  };
  #lastRejectLogMs = 0;
  /** Trips on a burst of loop refusals: the mark is gone for everything (./loopBurst.ts). */
  readonly #loopBurst = new LoopBurst();
  /** This machine's IPv4 addresses, read when the detector trips: the sources it sheds (apps here; not --lan clients). */
  #shedFrom: Set<string> | undefined;
  readonly #failLog: (key: string, line: string) => void;
  #rejectedSinceLog = 0;
  /**
   * After a burst of ≥ 1 000 accepts, 500 ms without one: give the burst's
   * memory back (src/util/quietGc.ts).
   */
  readonly #gc = new QuietGc({ quietMs: 500, minEvents: 1000 });
  /** The accept path's NAT answer, reused: read synchronously right after the lookup. */
  readonly #flow: PackedFlow = { id: 0, srcIp: 0, srcPort: 0, dstIp: 0, dstPort: 0 };

  constructor(opts: TcpListenerOptions) {
    super();
    this.#o = {
      host: opts.host,
      nat: opts.nat,
      names: opts.names,
      router: opts.router,
      port: opts.port ?? O.listenPort.default,
      idleTimeoutMs: opts.idleTimeoutMs ?? 600_000,
      connectTimeoutMs: opts.connectTimeoutMs ?? 5000,
      backlog: opts.backlog ?? 1024,
      logger: opts.logger ?? stderrLogger,
      relayThreads: opts.relayThreads,
      device: opts.device,
      congestion: opts.congestion,
      sniffTimeoutMs: opts.sniffTimeoutMs ?? 0,
    };
    this.#failLog = rateLimited(this.#o.logger, 10_000);
  }

  /** Sniffing's wait for a nameless connection's first bytes; 0: off. Settable live (PATCH /configs `sniffing`). */
  get sniffTimeoutMs(): number {
    return this.#o.sniffTimeoutMs;
  }

  set sniffTimeoutMs(ms: number) {
    this.#o.sniffTimeoutMs = ms;
  }

  /** Listen on host:port only. Rejects with the bind error (EADDRINUSE, EADDRNOTAVAIL: is the TUN configured?). */
  start(): Promise<void> {
    const hostU32 = net.isIPv4(this.#o.host) ? ipToInt(this.#o.host) : -1;
    if (hostU32 >= 0) {
      try {
        const { port, backlog, device, congestion } = this.#o;
        const a = new (native().TcpAcceptor)({
          host: hostU32,
          port,
          backlog,
          ...(device ? { device } : {}),
          ...(congestion ? { congestion } : {}),
        });
        const ccErr = a.congestionErrno();
        if (congestion && ccErr !== 0) this.#o.logger(congestionRefused(congestion, ccErr));
        a.start((recs, n) => this.#acceptBatch(recs, n));
        this.#acceptor = a;
        if (device && a.filterDrops() >= 0) {
          this.#foreignTimer = setInterval(() => this.#logForeignIngress(), FOREIGN_LOG_MS);
          this.#foreignTimer.unref();
        }
        return Promise.resolve();
      } catch (e) {
        return Promise.reject(wrapError(`listen on ${hostPort(this.#o.host, this.#o.port)}${listenHint(e)}`, e));
      }
    }
    if (this.#o.device) {
      return Promise.reject(
        new Error(`listen on ${hostPort(this.#o.host, this.#o.port)}: binding to a device needs an IPv4 host`),
      );
    }
    // pauseOnConnect: nothing is read from the app into JavaScript before the
    // upstream is connected; the relay starts reading at the hand-off.
    const server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (s) =>
      this.#accept(s),
    );
    this.#server = server;
    return new Promise((resolve, reject) => {
      server.once('error', (e) => {
        reject(wrapError(`listen on ${hostPort(this.#o.host, this.#o.port)}${listenHint(e)}`, e));
      });
      server.listen({ host: this.#o.host, port: this.#o.port, backlog: this.#o.backlog }, () => {
        server.removeAllListeners('error');
        // libuv reports accept failures here once its reserve fd is spent (EMFILE/ENFILE).
        server.on('error', (e) => {
          if (!resourceAlarm.check(e, 'tcp accept')) this.#o.logger(`tcp listener: ${e.message}`);
        });
        resolve();
      });
    });
  }

  /** The bound address (port is the real one when 0 was asked). */
  address(): { host: string; port: number } {
    if (this.#acceptor) return { host: this.#o.host, port: this.#acceptor.port() };
    const a = this.#server?.address();
    if (a === null || a === undefined || typeof a === 'string') throw new Error('TcpListener is not started');
    return { host: a.address, port: a.port };
  }

  /** Stop accepting and close every session (FIN to both sides). Resolves once the server is closed. */
  close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    for (const app of this.#sniffing) app.resetAndDestroy();
    this.#sniffing.clear();
    clearInterval(this.#foreignTimer);
    this.#foreignTimer = undefined;
    this.#acceptor?.close();
    this.#acceptor = undefined;
    for (const s of this.#sessions) {
      s.abort?.abort();
      if (s.native) continue;
      if (s.relay) s.relay.close('fin');
      else s.app?.resetAndDestroy();
    }
    this.#gc.stop();
    // Native pairs: closed with FIN, threads joined, their ends delivered now.
    this.#splice?.stop();
    if (!server) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  /**
   * The NAT flow behind a session left the table (idle timeout, eviction):
   * the engine now drops the Listener's segments for it and answers the app
   * with a RST, so the session can never carry data again. Reset both sides
   * instead of waiting for the relay's idle timeout. Returns whether a
   * session was found.
   */
  closeFlow(flowId: number): boolean {
    const s = this.#byFlow.get(flowId);
    if (!s) return false;
    s.abort?.abort();
    if (s.relay) s.relay.close('reset');
    else s.app?.resetAndDestroy();
    return true;
  }

  stats(): TcpListenerStats {
    let up = this.#stats.bytesUp;
    let down = this.#stats.bytesDown;
    for (const s of this.#sessions) {
      if (s.native) continue;
      up += s.relay?.bytesUp ?? 0;
      down += s.relay?.bytesDown ?? 0;
    }
    // Native pairs, live and ended, in one call (not one per session).
    if (this.#splice) {
      const t = this.#splice.totals();
      up += t.bytesUp;
      down += t.bytesDown;
    }
    const foreign = this.#acceptor?.filterDrops() ?? -1;
    return {
      ...this.#stats,
      ...(foreign >= 0 ? { droppedForeignIngress: foreign } : {}),
      active: this.#sessions.size,
      bytesUp: up,
      bytesDown: down,
    };
  }

  /** One line per FOREIGN_LOG_MS while spoofed segments arrive (as the UDP listener's 'foreign-ingress'). */
  #logForeignIngress(): void {
    const n = this.#acceptor?.filterDrops() ?? -1;
    if (n <= this.#lastForeign) return;
    this.#o.logger(
      `tcp listener: dropped ${n - this.#lastForeign} segment(s) in the last ${FOREIGN_LOG_MS / 1000} s (${n} in all) to ${hostPort(this.#o.host, this.address().port)} that did not come through ${this.#o.device}: a host on another interface spoofing NAT addresses — set rp_filter=1 on the LAN interface (README, LAN gateway mode)`,
    );
    this.#lastForeign = n;
  }

  /** The quiet-time collections so far and how long they held the event loop (src/util/quietGc.ts). */
  gcStats(): QuietGcStats {
    return this.#gc.stats();
  }

  /** Give start-up's memory back once the daemon has been quiet for a moment (src/util/quietGc.ts). */
  collectWhenQuiet(): void {
    this.#gc.soon();
  }

  /** Live byte counts of the session behind NAT flow `flowId`, or undefined when there is none. */
  sessionBytes(flowId: number): { bytesUp: number; bytesDown: number } | undefined {
    const s = this.#byFlow.get(flowId);
    if (!s) return undefined;
    return { bytesUp: s.relay?.bytesUp ?? 0, bytesDown: s.relay?.bytesDown ?? 0 };
  }

  /** Node's accept path (a host that is not IPv4): one net.Socket per connection. */
  #accept(app: net.Socket): void {
    this.#stats.accepted++;
    this.#gc.note();
    // Errors before the relay owns the socket (RST from the app while we dial) must not crash us.
    app.on('error', ignoreError);
    const flow = this.#flow;
    if (!this.#lookupPeer(app, flow)) {
      this.#rejectPeer(app, unmapV4(app.remoteAddress), app.remotePort);
      return;
    }
    this.#serve(flow, app);
  }

  /**
   * The native accept path: one call per wake-up with [fd, peerIp, peerPort]
   * × n. No JavaScript socket exists for a connection unless its outbound
   * needs one (not a plain direct dial).
   */
  #acceptBatch(recs: Float64Array, n: number): void {
    const flow = this.#flow;
    const nat = this.#o.nat;
    for (let i = 0; i < n; i++) {
      const fd = recs[i * ACCEPT_RECORD_FIELDS] as number;
      const ip = recs[i * ACCEPT_RECORD_FIELDS + 1] as number;
      const port = recs[i * ACCEPT_RECORD_FIELDS + 2] as number;
      if (fd < 0) {
        const code = errnoName(fd);
        if (!resourceAlarm.check({ code }, 'tcp accept')) {
          this.#failLog(`accept ${code}`, `tcp listener: accept failed: ${code}`);
        }
        continue;
      }
      this.#stats.accepted++;
      this.#gc.note();
      let ok: boolean;
      if (nat.lookupPacked) ok = nat.lookupPacked('tcp', ip, port, flow);
      else {
        const f = nat.lookup('tcp', intToIp(ip), port);
        if (f) copyFlow(f, flow);
        ok = f !== undefined;
      }
      if (!ok) {
        this.#acceptor?.reset(fd);
        this.#rejectPeer(undefined, intToIp(ip), port);
        continue;
      }
      this.#serve(flow, fd);
    }
  }

  /** A socket for an accepted fd whose outbound runs in JavaScript: paused, as pauseOnConnect. */
  #wrap(fd: number): net.Socket {
    const app = new net.Socket({
      fd,
      allowHalfOpen: true,
      readable: true,
      writable: true,
      pauseOnCreate: true,
    } as net.SocketConstructorOpts);
    app.on('error', ignoreError);
    return app;
  }

  /** Route and dial one accepted connection whose NAT flow is `flow` (read before anything else runs). */
  #serve(flow: PackedFlow, accepted: net.Socket | number): void {
    const flowId = flow.id;
    const dstPort = flow.dstPort;
    const srcIp = intToIp(flow.srcIp);
    const srcPort = flow.srcPort;
    const dstIp = intToIp(flow.dstIp);
    if (isOwnTcp(srcIp, srcPort, dstIp, dstPort)) {
      this.#refuseLoop(accepted, `${srcIp}:${srcPort}`, hostPort(dstIp, dstPort));
      return;
    }
    if (this.#shedFrom?.has(srcIp) && this.#loopBurst.shedding(Date.now())) {
      this.#stats.loopShed++;
      this.#reset(accepted);
      return;
    }
    const names = this.#o.names;
    const name = names.reverseU32 ? names.reverseU32(flow.dstIp) : names.reverse(dstIp);
    if (name === undefined && this.#o.sniffTimeoutMs > 0) {
      const facts: FlowFacts = { flowId, srcIp, srcPort, dstIp, dstPort };
      this.#sniff(facts, typeof accepted === 'number' ? this.#wrap(accepted) : accepted);
      return;
    }
    this.#route(flowId, srcIp, srcPort, dstIp, dstPort, accepted, name, undefined);
  }

  /**
   * A connection to a real address: read its first bytes for a name
   * (./sniff.ts), then route it as any other. The bytes stay in the app
   * socket's buffer; the relay sends them first.
   */
  #sniff(facts: FlowFacts, app: net.Socket): void {
    this.#sniffing.add(app);
    sniffSocket(app, this.#o.sniffTimeoutMs).then((r) => {
      if (!this.#sniffing.delete(app)) return; // close() reset it
      if (r === 'ended') {
        // Half-closed mid-hello: its bytes cannot be put back in the stream.
        app.resetAndDestroy();
        return;
      }
      if (app.destroyed) return;
      if (r !== undefined) this.#stats.sniffed++;
      const { flowId, srcIp, srcPort, dstIp, dstPort } = facts;
      this.#route(flowId, srcIp, srcPort, dstIp, dstPort, app, r?.name, r?.proto);
    });
  }

  /**
   * Pick the outbound for one connection and dial it. `sniffed`: `name` came
   * from the app's first bytes (the address is real). The flow's facts come
   * as arguments, not an object: one allocation less per connection.
   */
  #route(
    flowId: number,
    srcIp: string,
    srcPort: number,
    dstIp: string,
    dstPort: number,
    accepted: net.Socket | number,
    name: string | undefined,
    sniffed: 'tls' | 'http' | undefined,
  ): void {
    const route = this.#o.router.decide({
      name,
      realIp: sniffed !== undefined,
      ip: dstIp,
      port: dstPort,
      proto: 'tcp',
      srcIp,
      srcPort,
    });
    const outbound = route.outbound;
    // A proxy is given the name (SOCKS5 ATYP domain, CONNECT host); direct keeps the address the app chose.
    const host = name === undefined || (sniffed !== undefined && outbound.kind === 'direct') ? dstIp : name;
    const base: SessionBase = {
      phase: 'open',
      flowId,
      name,
      sniffed,
      ip: dstIp,
      port: dstPort,
      outbound: outbound.label,
      rule: route.rule,
      chain: route.chain.join(' → '),
      chains: route.chain,
      ruleType: route.ruleType,
      rulePayload: route.rulePayload,
      srcIp,
      srcPort,
      startMs: Date.now(),
      bytesUp: 0,
      bytesDown: 0,
    };
    const session: Session = { app: undefined, abort: undefined, base };
    this.#sessions.add(session);
    this.#byFlow.set(flowId, session);
    if (this.listenerCount('session') > 0) this.emit('session', base);

    const target = outbound.plainTarget?.({ host, port: dstPort });
    if (target !== undefined && this.#dialNative(session, accepted, target, dstPort, undefined)) return;
    const proxied = target === undefined ? outbound.nativeDial?.({ host, port: dstPort }) : undefined;
    if (proxied !== undefined && this.#dialNative(session, accepted, proxied.addr, proxied.port, proxied)) return;

    const app = typeof accepted === 'number' ? this.#wrap(accepted) : accepted;
    const abort = new AbortController();
    session.app = app;
    session.abort = abort;
    // The app gave up (RST/FIN) while we were still dialing: stop dialing.
    const onAppGone = () => abort.abort();
    app.once('close', onAppGone);

    this.#dial(outbound, host, dstPort, abort.signal).then(
      (up) => {
        app.removeListener('close', onAppGone);
        this.#connected(session, outbound, app, up);
      },
      (err: Error & { code?: string }) => {
        app.removeListener('close', onAppGone);
        // Reset, not FIN: a FIN would look like an empty but successful response to the app.
        app.resetAndDestroy();
        this.#connectFailed(session, err, abort.signal.aborted && err.code === 'EABORTED');
      },
    );
  }

  /**
   * The upstream is connected: hand both sockets to a relay. A method of its
   * own so the relay's end callback holds only the session, not the accept
   * path's locals (sockets, route) for the connection's whole life.
   */
  #connected(session: Session, outbound: Outbound, app: net.Socket, up: net.Socket): void {
    if (app.destroyed) {
      up.destroy();
      this.#finish(session, { end: 'app-reset', bytesUp: 0, bytesDown: 0 });
      return;
    }
    app.removeListener('error', ignoreError);
    const r = this.#relay(session, outbound, app, up);
    session.app = undefined;
    session.abort = undefined;
    r.done.then((res) => this.#relayEnded(session, res));
  }

  #relayEnded(session: Session, res: RelayResult): void {
    this.#finish(session, {
      end: res.end,
      bytesUp: res.bytesUp,
      bytesDown: res.bytesDown,
      errorCode: (res.error as NodeJS.ErrnoException | undefined)?.code,
    });
  }

  /**
   * `direct` to an address known now, or a SOCKS5 or HTTP proxy at one (`proxied`):
   * the native relay connects, runs the proxy's handshake and relays
   * (SpliceRelay.dial), so this connection costs JavaScript no upstream
   * socket, promise or timer. False (nothing done) when the app socket
   * cannot be handed off; the caller then dials in JavaScript.
   */
  #dialNative(
    session: Session,
    app: net.Socket | number,
    addr: string,
    port: number,
    proxied: NativeProxyDial | undefined,
  ): boolean {
    let h: RelayHandle | undefined;
    // --fwmark in global mode (src/util/sockmark.ts), as every other socket of the daemon.
    const mark = ownMark();
    // Global mode: the loop guard (./ownTcp.ts) needs this dial's 4-tuple before a captured
    // copy of its SYN can be accepted, so the relay connects here and reports the bound address.
    const local = mark !== 0 ? LOCAL : undefined;
    const relay = this.#spliceRelay();
    if (!relay) return false;
    let release: (() => void) | undefined;
    try {
      h = relay.dial(app, addr, port, {
        mark,
        connectTimeoutMs: this.#o.connectTimeoutMs,
        local,
        proxy: proxied?.plan,
        // Holds the session, the dialed address and the proxy plan only, for the connection's life.
        onEnd: (res) => {
          release?.();
          this.#nativeEnded(session, res, addr, port, proxied);
        },
      });
    } catch (e) {
      // A bare fd was reset by the relay already.
      if (typeof app !== 'number') app.resetAndDestroy();
      this.#connectFailed(session, wrapError(`${dialWhat(session.base)}: connect ${hostPort(addr, port)}`, e), false);
      return true;
    }
    if (!h) return false;
    this.#stats.nativeDials++;
    session.relay = h;
    session.native = true;
    // Read right after the call; the pair cannot end before this returns (ends arrive in a later batch).
    if (local) release = holdOwnTcpNative(local[0] as number, local[1] as number, addr, port);
    return true;
  }

  /** A native dial's pair ended: as #relayEnded, or a connect failure worded as the JS dial's (src/proxy/dial.ts). */
  #nativeEnded(
    session: Session,
    res: RelayResult,
    addr: string,
    port: number,
    proxied: NativeProxyDial | undefined,
  ): void {
    if (res.end !== 'connect-failed') {
      this.#relayEnded(session, res);
      return;
    }
    // The relay already reset the app.
    const what = dialWhat(session.base);
    const timeoutMs = this.#o.connectTimeoutMs;
    const code = (res.error as NodeJS.ErrnoException | undefined)?.code ?? 'ECONNREFUSED';
    const err = proxied
      ? proxied.failure(res, what, timeoutMs)
      : code === 'ETIMEDOUT'
        ? timeoutError(what, timeoutMs)
        : // Node's own wording for a failed connect ("connect ECONNREFUSED 10.0.0.2:80").
          wrapError(`${what}: connect ${hostPort(addr, port)}`, {
            code,
            message: `connect ${code} ${hostPort(addr, port)}`,
          });
    this.#connectFailed(session, err, false);
  }

  /** The dial failed (the app is already reset): count, log one line unless the app itself gave up, end the session. */
  #connectFailed(session: Session, err: Error & { code?: string }, appGone: boolean): void {
    const base = session.base;
    this.#stats.connectFailed++;
    const local = resourceAlarm.check(err, 'tcp dial');
    // Our own exhaustion (EMFILE, …) says nothing about the proxy.
    if (!local && isProxyDown(err)) this.#o.router.reportFailure(base.chains ?? [], err.code ?? err.message);
    if (local) {
      // Counted and logged as what it is (EMFILE, …), not as this destination's failure.
    } else if (!appGone) {
      // One line: name:port, the outbound, the reason (the message already
      // names the fix); repeats of the same failure are summarised, so a
      // dead upstream under load does not flood the log.
      const where = `tcp ${hostPort(base.name ?? base.ip, base.port)} via ${base.outbound}`;
      this.#failLog(
        `${where} ${err.code}`,
        `${where}: ${err.code ?? 'ERROR'}: ${err.message} (rule ${base.rule}; chain ${base.chain})`,
      );
    }
    this.#finish(session, { end: 'connect-failed', bytesUp: 0, bytesDown: 0, errorCode: err.code });
  }

  /**
   * The native relay, started on first use. Undefined when it cannot start
   * (EMFILE for its epoll or eventfd fds while the process is near its fd
   * limit; counted and logged by the exhaustion alarm): this connection keeps
   * the JavaScript dial and relay, the next one tries again.
   */
  #spliceRelay(): SpliceRelay | undefined {
    if (this.#splice) return this.#splice;
    try {
      this.#splice = new SpliceRelay({
        idleTimeoutMs: this.#o.idleTimeoutMs,
        ...(this.#o.relayThreads !== undefined ? { threads: this.#o.relayThreads } : {}),
      });
    } catch (e) {
      if (!resourceAlarm.check(e, 'tcp relay start'))
        this.#failLog('relay start', `tcp listener: ${(e as Error).message}; relaying in JavaScript meanwhile`);
      return undefined;
    }
    return this.#splice;
  }

  /**
   * Fill `out` with the NAT flow behind the app socket's peer address; false
   * when the peer is not a live NAT address. The packed lookup crosses N-API
   * with numbers only; a NAT without it (small test NATs) answers through `lookup`.
   */
  #lookupPeer(app: net.Socket, out: PackedFlow): boolean {
    const peer = app.remoteAddress;
    const port = app.remotePort;
    if (peer === undefined || port === undefined) return false;
    const nat = this.#o.nat;
    if (nat.lookupPacked) {
      const ip = dottedToU32(peer, peer.startsWith('::ffff:') ? 7 : 0);
      return ip >= 0 && nat.lookupPacked('tcp', ip, port, out);
    }
    const f = nat.lookup('tcp', unmapV4(peer) as string, port);
    if (!f) return false;
    copyFlow(f, out);
    return true;
  }

  /**
   * Plain byte streams go to the native relay (bytes never enter JS);
   * outbounds that transform bytes, and sockets that cannot be handed off,
   * keep the JS Relay.
   */
  #relay(session: Session, outbound: Outbound, app: net.Socket, up: net.Socket): RelayHandle {
    if (!outbound.transformsBytes) {
      const h = this.#spliceRelay()?.handOff(app, up);
      if (h) {
        session.relay = h;
        session.native = true;
        return h;
      }
    }
    const r = new Relay(app, up, { idleTimeoutMs: this.#o.idleTimeoutMs });
    session.relay = r;
    // Accepted paused (pauseOnConnect): the relay's listeners are on, start reading now.
    app.resume();
    return r;
  }

  #dial(outbound: Outbound, host: string, port: number, signal: AbortSignal): Promise<net.Socket> {
    return outbound.connect({ host, port }, { timeoutMs: this.#o.connectTimeoutMs, signal });
  }

  #finish(
    session: Session,
    r: { end: SessionEvent['end']; bytesUp: number; bytesDown: number; errorCode?: string | undefined },
  ): void {
    const base = session.base;
    this.#sessions.delete(session);
    if (this.#byFlow.get(base.flowId) === session) this.#byFlow.delete(base.flowId);
    // Native pairs' bytes are in the SpliceRelay's totals already.
    if (!session.native) {
      this.#stats.bytesUp += r.bytesUp;
      this.#stats.bytesDown += r.bytesDown;
    }
    if (this.listenerCount('session') > 0) this.emit('session', closeEvent(base, r));
  }

  #refuseLoop(app: net.Socket | number, src: string, dst: string): void {
    this.#stats.loopRefused++;
    this.#reset(app);
    if (this.#loopBurst.refused(Date.now())) {
      this.#shedFrom = machineAddresses();
      this.#failLog(
        'loop burst',
        `tcp listener: loop burst: ${LOOP_BURST_THRESHOLD} of fakeproxy's own upstream connections came back into the TUN within ${LOOP_BURST_WINDOW_MS} ms; refusing new connections from this machine's own addresses for ${LOOP_BURST_BACKOFF_MS} ms so fds stay far below the limit (global mode: the --fwmark is being cleared or is missing — check nftables rules that set meta mark, and ip rules above fakeproxy's)`,
      );
    }
    this.#failLog(
      'loop',
      `tcp listener: refused ${src} → ${dst}: it is fakeproxy's own upstream connection, routed back into the TUN (global mode: its --fwmark was cleared or is not sent to the main table — check nftables rules that set meta mark, and ip rules above fakeproxy's)`,
    );
  }

  #reset(app: net.Socket | number): void {
    if (typeof app === 'number') this.#acceptor?.reset(app);
    else app.resetAndDestroy();
  }

  #rejectPeer(app: net.Socket | undefined, ip: string | undefined, port: number | undefined): void {
    this.#stats.rejectedPeers++;
    app?.resetAndDestroy();
    // Rate-limited: a scan of the gateway port must not flood the log.
    this.#rejectedSinceLog++;
    const now = Date.now();
    if (now - this.#lastRejectLogMs >= 10_000) {
      this.#o.logger(
        `tcp listener: reset ${this.#rejectedSinceLog} connection(s) from non-NAT peers (last ${ip}:${port}); only flows the engine NATed are served`,
      );
      this.#lastRejectLogMs = now;
      this.#rejectedSinceLog = 0;
    }
  }
}

function ignoreError(): void {}

/** Every IPv4 address of this machine (network namespace): its apps' flows come from one of them (the TUN's included). */
function machineAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(os.networkInterfaces())) {
    for (const a of list ?? []) if (a.family === 'IPv4') out.add(a.address);
  }
  return out;
}

/**
 * The 'close' event: the open event's fields and how it ended, as one object
 * literal (a literal with two spreads was built property by property, in the
 * slow dictionary form, once per connection).
 */
function closeEvent(
  b: SessionBase,
  r: { end: SessionEvent['end']; bytesUp: number; bytesDown: number; errorCode?: string | undefined },
): SessionEvent {
  return {
    phase: 'close',
    flowId: b.flowId,
    name: b.name,
    sniffed: b.sniffed,
    ip: b.ip,
    port: b.port,
    outbound: b.outbound,
    rule: b.rule,
    chain: b.chain,
    chains: b.chains,
    ruleType: b.ruleType,
    rulePayload: b.rulePayload,
    srcIp: b.srcIp,
    srcPort: b.srcPort,
    startMs: b.startMs,
    bytesUp: r.bytesUp,
    bytesDown: r.bytesDown,
    end: r.end,
    errorCode: r.errorCode,
  };
}

/** "connect to name:port via outbound", as the JS dial's errors begin. */
function dialWhat(base: SessionBase): string {
  return `connect to ${hostPort(base.name ?? base.ip, base.port)} via ${base.outbound}`;
}

function listenHint(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  return code === 'EADDRNOTAVAIL'
    ? ' (the gateway address does not exist yet: configure the TUN device first)'
    : code === 'EADDRINUSE'
      ? ' (another process holds the port: pick another --listen-port)'
      : '';
}

function copyFlow(
  f: { id: number; srcIp: string; srcPort: number; dstIp: string; dstPort: number },
  out: PackedFlow,
): void {
  out.id = f.id;
  out.srcIp = ipToInt(f.srcIp);
  out.srcPort = f.srcPort;
  out.dstIp = ipToInt(f.dstIp);
  out.dstPort = f.dstPort;
}

/** -errno (a failed native accept) → its code. */
function errnoName(negErrno: number): string {
  try {
    return getSystemErrorName(negErrno);
  } catch {
    return `errno ${-negErrno}`;
  }
}

/** `::ffff:1.2.3.4` → `1.2.3.4` (a dual-stack socket reports IPv4 peers mapped). */
function unmapV4(ip: string | undefined): string | undefined {
  return ip?.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}
