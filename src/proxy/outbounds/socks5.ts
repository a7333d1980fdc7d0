/**
 * SOCKS5 CONNECT (RFC 1928) with optional username/password (RFC 1929).
 *
 * Why not the `socks` npm package (read: socks/build/client/socksclient.js):
 * (1) it dials the proxy itself with `net.connect({ host })`, i.e.
 * getaddrinfo for a proxy given by name — and the system resolver is
 * fakeproxy itself (`existing_socket` avoids that, but then we own the dial
 * anyway); (2) it collects replies in a ReceiveBuffer (copies) and hands
 * bytes read past the reply back with `socket.emit('data', excess)` in a
 * setImmediate plus `socket.resume()`, which bypasses stream backpressure and
 * races a relay that attaches later — here `socket.read(n)` takes exactly the
 * reply and leaves the rest in the socket's own buffer; (3) its failures are
 * message strings ("Socks5 proxy rejected connection - ConnectionRefused"),
 * we need a stable `code` per RFC 1928 REP; (4) UDP ASSOCIATE needs the same
 * address codec for every datagram header, so ../socks5-codec.ts is shared;
 * (5) one dependency (plus smart-buffer, ip) less in a daemon running as
 * root. The client is the ~60 lines below plus the codec, tested against
 * real microsocks.
 *
 * The three request/reply rounds are not pipelined: microsocks (and other
 * small servers) read one message per recv() and drop the rest, so sending
 * greeting+auth+request in one segment breaks them.
 */
import type * as net from 'node:net';
import { connectViaProxy, hostPort, knownProxyAddress, nativeProxyFailure, type ResolveName } from '../dial.js';
import { ProxyError } from '../errors.js';
import { readExact } from '../handshake-io.js';
import type {
  ConnectOptions,
  Destination,
  NativeProxyDial,
  Outbound,
  UdpAssociateOptions,
  UdpAssociation,
  UdpNativePlan,
} from '../outbound.js';
import { HS_FAIL, type RelayResult } from '../relay.js';
import {
  type Address,
  addressLengthFromPrefix,
  Cmd,
  greeting,
  Method,
  methodSelection,
  reply,
  replyError,
  request,
  userPassReply,
  userPassRequest,
} from '../socks5-codec.js';
import { type Socks5UdpDeps, socks5UdpAssociate, socks5UdpControl } from './socks5-udp.js';

export interface Socks5OutboundOptions {
  host: string;
  port: number;
  auth?: { username: string; password: string } | undefined;
  /** Resolves the proxy host when it is a name. Destinations are never resolved here: the proxy gets the name. */
  resolve?: ResolveName | undefined;
}

export class Socks5Outbound implements Outbound {
  readonly kind = 'socks5' as const;
  readonly label: string;
  readonly #o: Socks5OutboundOptions;

  readonly udpNative: UdpNativePlan;

  /** The RFC 1929 request, built once for every native dial (null: no auth). */
  readonly #authMsg: Buffer | null;
  readonly #nativeFailure: NativeProxyDial['failure'];

  constructor(opts: Socks5OutboundOptions) {
    this.#o = opts;
    this.label = `socks5://${hostPort(opts.host, opts.port)}`;
    this.udpNative = { kind: 'socks5', control: (o, bindUdp) => socks5UdpControl(this.#udpDeps(), o, bindUdp) };
    this.#authMsg = opts.auth ? userPassRequest.encode(opts.auth) : null;
    this.#nativeFailure = (res, what, timeoutMs) => this.#failure(res, what, timeoutMs);
  }

  /**
   * The same CONNECT, run by the native relay (native/relay.h ProxyPlan)
   * when the proxy's address is known now (knownProxyAddress).
   * undefined → connect().
   */
  nativeDial(dst: Destination): NativeProxyDial | undefined {
    const addr = knownProxyAddress(this.#o.host, this.#o.resolve);
    if (addr === undefined) return undefined;
    let req: Buffer;
    try {
      req = request.encode({ cmd: Cmd.CONNECT, host: dst.host, port: dst.port });
    } catch {
      return undefined; // a name longer than 255 bytes: connect() reports it
    }
    return {
      addr,
      port: this.#o.port,
      plan: { kind: 'socks5', request: req, auth: this.#authMsg },
      failure: this.#nativeFailure,
    };
  }

  /** A native dial's 'connect-failed' end as connect() would have rejected (native/relay.h HsFail). */
  #failure(res: RelayResult, what: string, timeoutMs: number): Error {
    const common = nativeProxyFailure(res, this.#o, what, timeoutMs);
    if (common) return common;
    const h = res.handshake ?? 0;
    const kind = (h >>> 8) & 0xff;
    const detail = h & 0xff;
    switch (kind) {
      case HS_FAIL.noMethod:
        return noMethodError(what, this.#o.auth !== undefined);
      case HS_FAIL.badMethod:
        return badMethodError(what, detail);
      case HS_FAIL.authFailed:
        return authFailedError(what, this.#o.auth?.username ?? '', detail);
      case HS_FAIL.reply:
        return replyError(detail, what);
      case HS_FAIL.atyp:
        return new ProxyError(
          'ESOCKS5_PROTOCOL',
          `${what}: socks5 address type ${detail} is unknown (RFC 1928 defines 1, 3, 4)`,
        );
      default:
        return new ProxyError(
          'ESOCKS5_PROTOCOL',
          `${what}: the proxy answered with version ${detail}, expected ${kind === HS_FAIL.authVersion ? '1' : '5'} (is the upstream a SOCKS5 server, not SOCKS4/HTTP?)`,
        );
    }
  }

  connect(dst: Destination, opts?: ConnectOptions): Promise<net.Socket> {
    return connectViaProxy({ ...this.#o, label: this.label }, dst, opts, (sock, signal, what) =>
      this.#handshake(sock, dst, signal, what),
    );
  }

  /** RFC 1928 §7 UDP ASSOCIATE; see ./socks5-udp.ts. */
  udpAssociate(opts?: UdpAssociateOptions): Promise<UdpAssociation> {
    return socks5UdpAssociate(this.#udpDeps(), opts);
  }

  #udpDeps(): Socks5UdpDeps {
    return {
      host: this.#o.host,
      port: this.#o.port,
      label: this.label,
      resolve: this.#o.resolve,
      handshake: (sock, client, signal, what) => this.#handshake(sock, client, signal, what, Cmd.UDP_ASSOCIATE),
    };
  }

  /** Method negotiation, auth, then `cmd` for `dst`; resolves with BND.ADDR:BND.PORT. */
  async #handshake(
    sock: net.Socket,
    dst: Destination,
    signal: AbortSignal,
    what: string,
    cmd: number = Cmd.CONNECT,
  ): Promise<Address> {
    const auth = this.#o.auth;
    const methods: number[] = auth ? [Method.NO_AUTH, Method.USER_PASS] : [Method.NO_AUTH];
    sock.write(greeting.encode({ methods }));
    const { method } = methodSelection.decode(await readExact(sock, 2, signal, what));
    if (method === Method.NO_ACCEPTABLE) throw noMethodError(what, auth !== undefined);
    if (!methods.includes(method)) throw badMethodError(what, method);
    if (method === Method.USER_PASS && auth) {
      sock.write(this.#authMsg ?? userPassRequest.encode(auth));
      const { status } = userPassReply.decode(await readExact(sock, 2, signal, what));
      if (status !== 0) throw authFailedError(what, auth.username, status);
    }
    sock.write(request.encode({ cmd, host: dst.host, port: dst.port }));
    // VER REP RSV ATYP + first address byte tell the reply's full length.
    const head = await readExact(sock, 5, signal, what);
    const addrLen = addressLengthFromPrefix(head, 3) as number;
    const rest = await readExact(sock, 3 + addrLen - 5, signal, what);
    const r = reply.decode(Buffer.concat([head, rest], 3 + addrLen));
    if (r.rep !== 0) throw replyError(r.rep, what);
    return { host: r.host, port: r.port };
  }
}

// The handshake's failures, worded once for the JavaScript and the native handshake.

function noMethodError(what: string, haveAuth: boolean): ProxyError {
  return new ProxyError(
    'ESOCKS5_NO_METHOD',
    haveAuth
      ? `${what}: the proxy accepts neither no-auth nor username/password (check its auth settings)`
      : `${what}: the proxy requires authentication: put user:pass in the URL (socks5://user:pass@host:port)`,
  );
}

function badMethodError(what: string, method: number): ProxyError {
  return new ProxyError('ESOCKS5_PROTOCOL', `${what}: the proxy chose method ${method}, which we did not offer`);
}

function authFailedError(what: string, user: string, status: number): ProxyError {
  return new ProxyError(
    'ESOCKS5_AUTH_FAILED',
    `${what}: the proxy rejected user "${user}" (RFC 1929 status ${status}): check user:pass in --upstream`,
    { status },
  );
}
