/**
 * The outbound seam: the Listener asks the Router for an `Outbound` per
 * connection and gets back a connected socket that already speaks to the
 * destination (any proxy handshake done). One interface, one implementation
 * per file under ./outbounds (STYLE.md; ioredis AbstractConnector shape).
 */
import type * as net from 'node:net';
import { UsageError } from '../errors.js';
import type { ResolveName } from './dial.js';
import { DirectOutbound } from './outbounds/direct.js';
import { HttpOutbound } from './outbounds/http.js';
import { RejectOutbound } from './outbounds/reject.js';
import { Socks5Outbound } from './outbounds/socks5.js';
import type { ProxyDialPlan, RelayResult } from './relay.js';

/** Where the app wanted to go: a name (preferred, so the upstream resolves it) or an IP literal. */
export interface Destination {
  host: string;
  port: number;
}

export interface ConnectOptions {
  /** Whole connect budget: DNS + TCP connect + proxy handshake. No default here; the Listener passes its own. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Why an association dropped a datagram (counted, never thrown: UDP has no error path back to the app). */
export type UdpDropReason =
  /** The destination name did not resolve (direct) — or no resolver is configured. */
  | 'resolve-failed'
  /** A per-name queue waiting for resolution overflowed (oldest dropped). */
  | 'queue-full'
  /** The kernel refused the send (EMSGSIZE, ENETUNREACH, …). */
  | 'send-error'
  /** Payload (plus encapsulation) larger than `maxPayloadBytes`. */
  | 'oversized'
  /** SOCKS5 reply shorter than its header (RFC 1928 §7). */
  | 'truncated'
  /** SOCKS5 reply with FRAG ≠ 0: we do not reassemble (RFC 1928 §7 makes it optional). */
  | 'fragment'
  /** SOCKS5 reply with an ATYP other than 1, 3, 4. */
  | 'bad-atyp'
  /** A datagram on the association's socket from someone other than the relay (RFC 1928 §7: MUST drop). */
  | 'foreign-source'
  /** send() after the association closed. */
  | 'closed';

export interface UdpAssociationStats {
  /** Datagrams handed to the kernel / received and delivered to onMessage. */
  sent: number;
  received: number;
  dropped: Record<UdpDropReason, number>;
}

export interface UdpAssociateOptions extends ConnectOptions {
  /**
   * Largest payload carried either way; bigger ones are dropped and counted.
   * @default 65507 — the largest UDP payload over IPv4 (65535 − 20 − 8).
   */
  maxPayloadBytes?: number;
  /**
   * Datagrams held per destination name while it resolves (direct); the
   * oldest is dropped past it.
   * @default 256 — same bound as the UDP listener's setup queue.
   */
  maxQueue?: number;
  /**
   * SO_RCVBUF of the association's upstream UDP socket.
   * @default 1048576 — replies queue there while the one JS thread relays
   * other traffic; the kernel default (208 KiB) holds only ~15 MTU-sized
   * (9000) datagrams, so a burst of large replies was dropped in the kernel
   * (RcvbufErrors) before we could count it. The kernel caps it at
   * net.core.rmem_max; the total is bounded by net.ipv4.udp_mem.
   */
  recvBufferBytes?: number;
  /** One-line operator log for per-association problems (never per datagram). @default no log */
  logger?: ((line: string) => void) | undefined;
}

/**
 * One upstream UDP "socket" that can talk to any destination (full cone:
 * endpoint-independent mapping, RFC 4787 REQ-1) — a real unconnected socket
 * for direct, a SOCKS5 UDP ASSOCIATE (RFC 1928 §7) kept alive by its TCP
 * control connection for socks5. Send and receive never throw: drops are
 * counted in stats().
 */
export interface UdpAssociation {
  /** Send one datagram to `dst` (a name is resolved by the outbound or the proxy, never by getaddrinfo). */
  send(dst: Destination, payload: Uint8Array): void;
  /**
   * Every datagram received, with the remote it came from. When the
   * association can tell that the remote is a destination given to send()
   * (direct: the address it resolved that name to; socks5: learned, see
   * socks5-udp.ts), `src` is that destination exactly as given (the name,
   * not the IP), so the caller can match replies to what the app sent to.
   * Otherwise `src` is the remote's address: an IP literal (or a name, if a
   * SOCKS5 relay reports one).
   */
  onMessage(cb: (src: Destination, payload: Buffer) => void): void;
  /** Called once when the association ends, by close() (no error) or on its own (control connection lost, socket error). */
  onClose(cb: (err?: Error) => void): void;
  close(): void;
  stats(): UdpAssociationStats;
}

export interface Outbound {
  readonly kind: 'direct' | 'socks5' | 'http' | 'reject';
  /** For logs and session events: `direct`, `socks5://host:port`, `http://host:port` (never the password). */
  readonly label: string;
  /**
   * True when the bytes on the wire to the upstream differ from the app's
   * (an encrypting or framing protocol): the Listener then relays in
   * JavaScript instead of handing both sockets to the native splice relay.
   * @default false (absent)
   */
  readonly transformsBytes?: boolean;
  /**
   * Optional: the one address connect() would dial for `dst` when it is
   * known now (an IP literal, or a name whose cached answer has exactly one
   * usable address) and nothing but a TCP connect follows. The Listener then
   * connects natively and relays at once — no JavaScript socket, promise or
   * timer per connection (SpliceRelay.dial). undefined → connect().
   */
  plainTarget?(dst: Destination): string | undefined;
  /**
   * Optional: the same for a proxy whose handshake the native relay can run
   * itself (SOCKS5 or HTTP CONNECT to a proxy address known now): the Listener
   * connects to the proxy natively, the relay thread runs the handshake and
   * relays; JavaScript holds no socket or promise per connection and reads
   * no handshake byte. undefined → connect().
   */
  nativeDial?(dst: Destination): NativeProxyDial | undefined;
  /**
   * Resolves with a socket connected to `dst` (through the proxy), created
   * with `allowHalfOpen: true` so the relay can forward a FIN one way only.
   * Bytes the proxy sent after its handshake reply are left in the socket's
   * readable buffer. Rejects with a `ProxyError` (own code) or a wrapped
   * socket error (Node's code); the socket is destroyed on every failure.
   */
  connect(dst: Destination, opts?: ConnectOptions): Promise<net.Socket>;
  /**
   * Optional: outbounds that can carry UDP. Absent → the UDP listener treats
   * the outbound as TCP-only (datagrams dropped and counted, one log line
   * per flow). Rejects like connect() when the association cannot be set up.
   */
  udpAssociate?(opts?: UdpAssociateOptions): Promise<UdpAssociation>;
  /**
   * Optional: what the native UDP relay needs to carry this outbound's
   * datagrams itself (src/proxy/udp/nativeAssociation.ts). Absent → the
   * listener relays through udpAssociate() in JavaScript.
   */
  readonly udpNative?: UdpNativePlan;
}

/** A proxied connect the native relay runs (Outbound.nativeDial). */
export interface NativeProxyDial {
  /** The proxy's address (an IP literal) and port. */
  addr: string;
  port: number;
  plan: ProxyDialPlan;
  /**
   * A 'connect-failed' end of this dial as connect() would have rejected:
   * same code and wording, marked proxyDown (./dial.ts) when the proxy
   * itself failed. `what` is "connect to host:port via label".
   */
  failure(res: RelayResult, what: string, timeoutMs: number): Error;
}

/** How the native UDP relay carries an outbound's datagrams. */
export type UdpNativePlan =
  | {
      kind: 'direct';
      /** Name → addresses; absent → datagrams to names are dropped ('resolve-failed'). */
      resolve: ResolveName | undefined;
    }
  | {
      kind: 'socks5';
      /**
       * Dial the proxy, have `bindUdp` make our UDP socket on the control
       * connection's local address (it returns the port), run UDP ASSOCIATE:
       * the control connection (the association lives as long as it does,
       * RFC 1928 §7) and the relay's address. Rejects like udpAssociate().
       */
      control(
        opts: UdpAssociateOptions,
        bindUdp: (local: string, signal: AbortSignal) => Promise<number>,
      ): Promise<{ ctrl: net.Socket; relay: Destination; local: string }>;
    };

export interface UpstreamDeps {
  /**
   * Resolver for names: the destination for `direct`, and the proxy host
   * when the URL names it (`socks5://proxy.lan:1080`). Never the system
   * resolver: once the host's DNS points at the daemon, getaddrinfo asks us.
   * Build one with `upstreamResolver(--dns-upstream)` from ./dial.ts.
   */
  resolve?: ResolveName;
  /** For `direct`: why an IP would loop back into fakeproxy (routed into the TUN), or undefined. */
  loopGuard?: (ip: string) => string | undefined;
}

const SCHEMES = 'direct, reject, socks5://[user:pass@]host:port or http://[user:pass@]host:port';

/** Parse `--upstream`. Bad input → `UsageError` with a one-line message (the CLI exits 2). */
export function parseUpstream(spec: string, deps: UpstreamDeps = {}): Outbound {
  const s = spec.trim();
  if (s === 'direct') return new DirectOutbound({ resolve: deps.resolve, loopGuard: deps.loopGuard });
  if (s === 'reject') return new RejectOutbound();
  let url: URL;
  try {
    url = new URL(s);
  } catch (cause) {
    throw new UsageError(`--upstream ${JSON.stringify(spec)} is not a URL; expected ${SCHEMES}`, { cause });
  }
  const scheme = url.protocol.slice(0, -1);
  if (scheme !== 'socks5' && scheme !== 'socks5h' && scheme !== 'http') {
    throw new UsageError(`--upstream scheme "${scheme}" is not supported; expected ${SCHEMES}`);
  }
  if (url.hostname === '') throw new UsageError(`--upstream ${JSON.stringify(spec)} has no host; expected ${SCHEMES}`);
  if (url.port === '') {
    throw new UsageError(
      `--upstream ${JSON.stringify(spec)} has no port; write it out, e.g. ${scheme}://${url.hostname}:1080`,
    );
  }
  if ((url.pathname !== '' && url.pathname !== '/') || url.search !== '' || url.hash !== '') {
    throw new UsageError(`--upstream ${JSON.stringify(spec)} must not have a path, query or fragment`);
  }
  // WHATWG URL strips the brackets of IPv6 literals only in `host`, not `hostname`.
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  const port = Number(url.port);
  const auth =
    url.username !== '' || url.password !== ''
      ? { username: decodeURIComponent(url.username), password: decodeURIComponent(url.password) }
      : undefined;
  if (scheme === 'http') {
    if (auth?.username.includes(':')) {
      throw new UsageError(
        '--upstream http user must not contain ":" (RFC 7617 Basic auth splits user and password at the first colon)',
      );
    }
    return new HttpOutbound({ host, port, auth, resolve: deps.resolve });
  }
  if (auth !== undefined) {
    // RFC 1929: ULEN and PLEN are one byte each and must be ≥ 1.
    for (const [what, v] of [
      ['user', auth.username],
      ['password', auth.password],
    ] as const) {
      const n = Buffer.byteLength(v);
      if (n < 1 || n > 255) {
        throw new UsageError(`--upstream socks5 ${what} must be 1–255 bytes (RFC 1929), got ${n}`);
      }
    }
  }
  return new Socks5Outbound({ host, port, auth, resolve: deps.resolve });
}
