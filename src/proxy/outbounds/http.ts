/**
 * HTTP CONNECT (RFC 9110 §9.3.6) with optional Basic auth (RFC 7617).
 * The response head is read with a size bound; bytes after it (a
 * server-first protocol's banner, in the same segment) stay in the socket.
 * No `udpAssociate`: CONNECT carries a byte stream only, so the UDP
 * listener drops datagrams routed here (counted, one log line per flow).
 */
import type * as net from 'node:net';
import { connectViaProxy, hostPort, knownProxyAddress, nativeProxyFailure, type ResolveName } from '../dial.js';
import { ProxyError } from '../errors.js';
import { headTooLarge, readHead } from '../handshake-io.js';
import { connectRequest, responseHead } from '../http-codec.js';
import type { ConnectOptions, Destination, NativeProxyDial, Outbound } from '../outbound.js';
import { HS_FAIL, type RelayResult } from '../relay.js';

export interface HttpOutboundOptions {
  host: string;
  port: number;
  auth?: { username: string; password: string } | undefined;
  /** Resolves the proxy host when it is a name. */
  resolve?: ResolveName | undefined;
  /**
   * Largest response head accepted.
   * @default 16384 — a CONNECT reply is a status line and a few fields; 16 KiB matches common proxy/server limits (nginx large_client_header_buffers is 8 KiB per line).
   */
  maxHeadBytes?: number;
}

/** The head bounds the native relay takes (native/relay_addon.cc); outside them connect() runs in JavaScript. */
const NATIVE_MAX_HEAD = { min: 64, max: 1 << 20 };

export class HttpOutbound implements Outbound {
  readonly kind = 'http' as const;
  readonly label: string;
  readonly #o: HttpOutboundOptions;
  readonly #maxHead: number;
  readonly #nativeFailure: NativeProxyDial['failure'];

  constructor(opts: HttpOutboundOptions) {
    this.#o = opts;
    this.#maxHead = opts.maxHeadBytes ?? 16384;
    this.label = `http://${hostPort(opts.host, opts.port)}`;
    this.#nativeFailure = (res, what, timeoutMs) => this.#failure(res, what, timeoutMs);
  }

  /**
   * The same CONNECT, run by the native relay (native/relay.h ProxyPlan)
   * when the proxy's address is known now (knownProxyAddress): it sends the
   * request, reads the response head and not a byte past it, and relays on
   * a 2xx. undefined → connect().
   */
  nativeDial(dst: Destination): NativeProxyDial | undefined {
    const addr = knownProxyAddress(this.#o.host, this.#o.resolve);
    if (addr === undefined || this.#maxHead < NATIVE_MAX_HEAD.min || this.#maxHead > NATIVE_MAX_HEAD.max) {
      return undefined;
    }
    let req: Buffer;
    try {
      req = connectRequest.encode({ host: dst.host, port: dst.port, auth: this.#o.auth });
    } catch {
      return undefined; // a host CONNECT cannot carry: connect() reports it
    }
    return {
      addr,
      port: this.#o.port,
      plan: { kind: 'http', request: req, maxHeadBytes: this.#maxHead },
      failure: this.#nativeFailure,
    };
  }

  connect(dst: Destination, opts?: ConnectOptions): Promise<net.Socket> {
    const o = this.#o;
    return connectViaProxy({ ...o, label: this.label }, dst, opts, async (sock, signal, what) => {
      sock.write(connectRequest.encode({ host: dst.host, port: dst.port, auth: o.auth }));
      const err = this.#headError(await readHead(sock, this.#maxHead, signal, what), what);
      if (err) throw err;
    });
  }

  /** A native dial's 'connect-failed' end as connect() would have rejected (native/relay.h HsFail). */
  #failure(res: RelayResult, what: string, timeoutMs: number): Error {
    const common = nativeProxyFailure(res, this.#o, what, timeoutMs);
    if (common) return common;
    const kind = ((res.handshake ?? 0) >>> 8) & 0xff;
    if (kind === HS_FAIL.httpTooLarge) return headTooLarge(what, this.#maxHead);
    try {
      // HS_FAIL.httpHead: the relay found the head no tunnel; the same decode and wording as connect().
      const e = res.head ? this.#headError(res.head, what) : undefined;
      if (e) return e;
    } catch (e) {
      return e as Error;
    }
    // Only if the two readings of a head ever disagreed (or the head was lost at shutdown).
    return new ProxyError('EHTTP_PROXY_PROTOCOL', `${what}: the proxy's CONNECT response was not accepted`);
  }

  /**
   * The proxy's whole response head → why it opens no tunnel, or undefined
   * for a 2xx. A malformed head throws EHTTP_PROXY_PROTOCOL (responseHead).
   * The one place these failures are worded, for connect() and the native
   * relay (whose C++ check, native/relay.cc HttpTunnelHead, accepts exactly
   * the heads this returns undefined for).
   */
  #headError(raw: Buffer, what: string): ProxyError | undefined {
    const head = responseHead.decode(raw);
    const o = this.#o;
    // 407 is the proxy's auth status (RFC 9110 §15.5.8); some proxies (tinyproxy 1.11) answer 401 to bad credentials.
    if (head.status === 407 || head.status === 401) {
      return new ProxyError(
        'EHTTP_PROXY_AUTH',
        o.auth
          ? `${what}: ${head.status} ${head.reason}: the proxy rejected user "${o.auth.username}" (check user:pass in --upstream)`
          : `${what}: ${head.status} ${head.reason}: the proxy requires authentication: put user:pass in the URL (http://user:pass@host:port)`,
        { status: head.status },
      );
    }
    if (head.status < 200 || head.status > 299) {
      return new ProxyError(
        'EHTTP_PROXY_STATUS',
        `${what}: the proxy answered ${head.status} ${head.reason} (${statusHint(head.status)})`,
        { status: head.status },
      );
    }
    return undefined;
  }
}

function statusHint(status: number): string {
  if (status === 403) return 'the proxy forbids this destination or port; check its ACL / ConnectPort';
  if (status === 405 || status === 501) return 'the proxy does not support CONNECT';
  if (status === 502 || status === 500) return 'the proxy could not reach the destination';
  if (status === 503) return 'the proxy is overloaded or cannot resolve the name';
  if (status === 504) return 'the destination did not answer the proxy in time';
  return 'see the proxy log';
}
