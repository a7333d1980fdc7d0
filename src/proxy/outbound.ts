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

/**
 * Placeholder for SOCKS5 UDP ASSOCIATE (RFC 1928 §7), filled in by the UDP
 * work: datagrams to/from any destination over one association, kept alive
 * by the TCP control connection. The codec for its header is already in
 * ../socks5-codec.ts (`udpHeader`).
 */
export interface UdpAssociation {
  send(dst: Destination, payload: Uint8Array): void;
  onMessage(cb: (src: Destination, payload: Buffer) => void): void;
  close(): void;
}

export interface Outbound {
  readonly kind: 'direct' | 'socks5' | 'http' | 'reject';
  /** For logs and session events: `direct`, `socks5://host:port`, `http://host:port` (never the password). */
  readonly label: string;
  /**
   * Resolves with a socket connected to `dst` (through the proxy), created
   * with `allowHalfOpen: true` so the relay can forward a FIN one way only.
   * Bytes the proxy sent after its handshake reply are left in the socket's
   * readable buffer. Rejects with a `ProxyError` (own code) or a wrapped
   * socket error (Node's code); the socket is destroyed on every failure.
   */
  connect(dst: Destination, opts?: ConnectOptions): Promise<net.Socket>;
  /** Optional: outbounds that can carry UDP. Absent → the UDP listener treats the outbound as TCP-only. */
  udpAssociate?(opts?: ConnectOptions): Promise<UdpAssociation>;
}

export interface UpstreamDeps {
  /**
   * Resolver for names: the destination for `direct`, and the proxy host
   * when the URL names it (`socks5://proxy.lan:1080`). Never the system
   * resolver: once the host's DNS points at the daemon, getaddrinfo asks us.
   * Build one with `upstreamResolver(--dns-upstream)` from ./dial.ts.
   */
  resolve?: ResolveName;
}

const SCHEMES = 'direct, reject, socks5://[user:pass@]host:port or http://[user:pass@]host:port';

/** Parse `--upstream`. Bad input → `UsageError` with a one-line message (the CLI exits 2). */
export function parseUpstream(spec: string, deps: UpstreamDeps = {}): Outbound {
  const s = spec.trim();
  if (s === 'direct') return new DirectOutbound({ resolve: deps.resolve });
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
    throw new UsageError(`--upstream ${JSON.stringify(spec)} has no port; write it out, e.g. ${scheme}://${url.hostname}:1080`);
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
      throw new UsageError('--upstream http user must not contain ":" (RFC 7617 Basic auth splits user and password at the first colon)');
    }
    return new HttpOutbound({ host, port, auth, resolve: deps.resolve });
  }
  if (auth !== undefined) {
    // RFC 1929: ULEN and PLEN are one byte each and must be ≥ 1.
    for (const [what, v] of [['user', auth.username], ['password', auth.password]] as const) {
      const n = Buffer.byteLength(v);
      if (n < 1 || n > 255) {
        throw new UsageError(`--upstream socks5 ${what} must be 1–255 bytes (RFC 1929), got ${n}`);
      }
    }
  }
  return new Socks5Outbound({ host, port, auth, resolve: deps.resolve });
}
