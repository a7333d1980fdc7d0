/**
 * HTTP CONNECT (RFC 9110 §9.3.6) with optional Basic auth (RFC 7617).
 * The response head is read with a size bound; bytes after it (a
 * server-first protocol's banner, in the same segment) stay in the socket.
 * No `udpAssociate`: CONNECT carries a byte stream only, so the UDP
 * listener drops datagrams routed here (counted, one log line per flow).
 */
import type * as net from 'node:net';
import { connectViaProxy, hostPort, type ResolveName } from '../dial.js';
import { ProxyError } from '../errors.js';
import { readHead } from '../handshake-io.js';
import { connectRequest, responseHead } from '../http-codec.js';
import type { ConnectOptions, Destination, Outbound } from '../outbound.js';

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

export class HttpOutbound implements Outbound {
  readonly kind = 'http' as const;
  readonly label: string;
  readonly #o: HttpOutboundOptions;

  constructor(opts: HttpOutboundOptions) {
    this.#o = opts;
    this.label = `http://${hostPort(opts.host, opts.port)}`;
  }

  connect(dst: Destination, opts?: ConnectOptions): Promise<net.Socket> {
    const o = this.#o;
    return connectViaProxy({ ...o, label: this.label }, dst, opts, async (sock, signal, what) => {
      sock.write(connectRequest.encode({ host: dst.host, port: dst.port, auth: o.auth }));
      const head = responseHead.decode(await readHead(sock, o.maxHeadBytes ?? 16384, signal, what));
      // 407 is the proxy's auth status (RFC 9110 §15.5.8); some proxies (tinyproxy 1.11) answer 401 to bad credentials.
      if (head.status === 407 || head.status === 401) {
        throw new ProxyError(
          'EHTTP_PROXY_AUTH',
          o.auth
            ? `${what}: ${head.status} ${head.reason}: the proxy rejected user "${o.auth.username}" (check user:pass in --upstream)`
            : `${what}: ${head.status} ${head.reason}: the proxy requires authentication: put user:pass in the URL (http://user:pass@host:port)`,
          { status: head.status },
        );
      }
      if (head.status < 200 || head.status > 299) {
        throw new ProxyError(
          'EHTTP_PROXY_STATUS',
          `${what}: the proxy answered ${head.status} ${head.reason} (${statusHint(head.status)})`,
          { status: head.status },
        );
      }
    });
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
