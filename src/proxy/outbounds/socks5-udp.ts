/**
 * SOCKS5 UDP ASSOCIATE (RFC 1928 §7).
 *
 * - The TCP control connection lives exactly as long as the association:
 *   "A UDP association terminates when the TCP connection that the UDP
 *   ASSOCIATE request arrived on terminates" — and we close it when we are
 *   done, so closing either ends both.
 * - The request carries the address and port we will send from (our UDP
 *   socket is bound before the request, on the local address of the control
 *   connection, i.e. the interface that reaches the proxy), so the relay can
 *   filter on it (dante does).
 * - Datagrams carry the destination *name* (ATYP 3): the relay resolves it,
 *   which is the point of fake-IP.
 * - Replies are parsed with the shared codec; FRAG ≠ 0 (we do not
 *   reassemble: §7 makes fragmentation optional), a truncated header, an
 *   unknown ATYP, an oversized payload and datagrams from anyone but the
 *   relay ("MUST drop") are dropped and counted, never thrown.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { markUdpSocket } from '../../util/sockmark.js';
import { hostPort, type ResolveName, raceSignal, withProxySocket } from '../dial.js';
import { ProxyError } from '../errors.js';
import type { Destination, UdpAssociateOptions, UdpDropReason } from '../outbound.js';
import { type Address, Atyp, udpHeader } from '../socks5-codec.js';
import { DEFAULT_UPSTREAM_RCVBUF, hpKey, unmapV4 } from '../udp/drops.js';
import { holdOwnPort, releaseOwnPort } from '../udp/ownPorts.js';
import { noSystemLookup, UdpAssociationBase } from './udp-association.js';

export interface Socks5UdpDeps {
  host: string;
  port: number;
  /** `socks5://host:port`, for messages. */
  label: string;
  resolve?: ResolveName | undefined;
  /**
   * Greeting, auth and the UDP ASSOCIATE request for `client` (our UDP
   * socket's address) on the connected control socket; resolves with
   * BND.ADDR:BND.PORT (where to send datagrams) or rejects with a ProxyError.
   */
  handshake(sock: net.Socket, client: Destination, signal: AbortSignal, what: string): Promise<Address>;
}

/** RSV(2) FRAG(1) ATYP(1): the least a reply can be before its address. */
const MIN_HEADER = 4;
/** The largest UDP payload over IPv4; our encapsulated datagram must fit in it. */
const MAX_UDP_PAYLOAD = 65507;
/** See direct-udp.ts MAX_DESTINATIONS. */
const MAX_DESTINATIONS = 1024;

function isUnspecified(ip: string): boolean {
  return ip === '0.0.0.0' || ip === '::' || /^[0:]+$/.test(ip);
}

/**
 * Dial the proxy, bind our UDP socket through `bindUdp` (on the control
 * connection's local address; it returns the port), run the handshake:
 * the control connection and where datagrams go. On failure the control
 * connection is destroyed; the caller closes its UDP socket.
 */
export async function socks5UdpControl(
  deps: Socks5UdpDeps,
  opts: UdpAssociateOptions,
  bindUdp: (local: string, signal: AbortSignal) => Promise<number>,
): Promise<{ ctrl: net.Socket; relay: Address; local: string }> {
  const what = `udp associate via ${deps.label}`;
  return withProxySocket(deps, what, opts, async (ctrl, signal) => {
    const local = unmapV4(ctrl.localAddress ?? '');
    const proxyIp = unmapV4(ctrl.remoteAddress ?? '');
    const port = await bindUdp(local, signal);
    const bnd = await deps.handshake(ctrl, { host: local, port }, signal, what);
    // BND.ADDR 0.0.0.0 means "the address you reached me on" (common in
    // servers bound to a wildcard); a name we would have to resolve — use
    // the control connection's peer as well.
    const relayIp = net.isIP(bnd.host) === 0 || isUnspecified(bnd.host) ? proxyIp : unmapV4(bnd.host);
    if (net.isIPv6(relayIp) !== net.isIPv6(local)) {
      throw new ProxyError(
        'ESOCKS5_PROTOCOL',
        `${what}: the proxy's UDP relay ${hostPort(relayIp, bnd.port)} is not in the address family we reach it on (${local})`,
      );
    }
    if (bnd.port === 0)
      throw new ProxyError('ESOCKS5_PROTOCOL', `${what}: the proxy answered UDP ASSOCIATE with relay port 0`);
    return { ctrl, relay: { host: relayIp, port: bnd.port }, local };
  });
}

/** Dial the proxy, bind our UDP socket, run the handshake: the association, or a ProxyError/socket error (nothing left open). */
export async function socks5UdpAssociate(
  deps: Socks5UdpDeps,
  opts: UdpAssociateOptions = {},
): Promise<Socks5UdpAssociation> {
  let udp: dgram.Socket | undefined;
  try {
    const { ctrl, relay } = await socks5UdpControl(deps, opts, async (local, signal) => {
      const sock = dgram.createSocket({
        type: net.isIPv6(local) ? 'udp6' : 'udp4',
        lookup: noSystemLookup,
        recvBufferSize: opts.recvBufferBytes ?? DEFAULT_UPSTREAM_RCVBUF,
      });
      udp = sock;
      await raceSignal(
        new Promise<void>((resolve, reject) => {
          sock.once('error', reject);
          sock.bind({ port: 0, address: local }, () => {
            sock.removeListener('error', reject);
            try {
              markUdpSocket(sock); // global mode: datagrams to the proxy keep the main table
            } catch (e) {
              reject(e);
              return;
            }
            resolve();
          });
        }),
        signal,
      );
      return sock.address().port;
    });
    return new Socks5UdpAssociation(ctrl, udp as unknown as dgram.Socket, relay, deps.label, opts);
  } catch (e) {
    try {
      udp?.close();
    } catch {
      // not bound yet
    }
    throw e;
  }
}

interface SentTo {
  dst: Destination;
  /** RSV FRAG ATYP DST.ADDR DST.PORT for this destination, built once. */
  header: Buffer;
  /** A name whose relay-side IP we have learned (see #learn). */
  bound: boolean;
}

export class Socks5UdpAssociation extends UdpAssociationBase {
  readonly #ctrl: net.Socket;
  readonly #udp: dgram.Socket;
  readonly #relay: Address;
  readonly #label: string;
  readonly #max: number;
  readonly #log: ((line: string) => void) | undefined;
  readonly #sent = new Map<string, SentTo>();
  /** Names sent to, not yet bound to an IP, by port. */
  readonly #unbound = new Map<number, Set<string>>();
  /** (ip, port) the relay reported → the name destination it answers for. */
  readonly #learned = new Map<string, Destination>();
  readonly #loggedReasons = new Set<UdpDropReason>();
  /** Our UDP socket's port, held in ownPorts.ts while open (loop detection). */
  readonly #port: number;

  constructor(ctrl: net.Socket, udp: dgram.Socket, relay: Address, label: string, opts: UdpAssociateOptions = {}) {
    super();
    this.#ctrl = ctrl;
    this.#udp = udp;
    this.#relay = relay;
    this.#label = label;
    this.#max = opts.maxPayloadBytes ?? MAX_UDP_PAYLOAD;
    this.#log = opts.logger;
    this.#port = udp.address().port;
    holdOwnPort(this.#port);
    const lost = (why: string) => () =>
      this.close(
        new ProxyError(
          'EUPSTREAM_CLOSED',
          `udp associate via ${label}: the proxy ${why} the control connection (check its log)`,
        ),
      );
    // Nothing is expected on the control connection after the reply; read and discard so it cannot stall.
    ctrl.on('data', () => {});
    ctrl.on('end', lost('closed'));
    ctrl.on('close', lost('closed'));
    ctrl.on('error', (e) =>
      this.close(
        new ProxyError('EUPSTREAM_CLOSED', `udp associate via ${label}: control connection: ${e.message}`, {
          cause: e,
        }),
      ),
    );
    // A proxy that vanished without FIN/RST must not keep the association
    // (and the app's flows) alive forever: TCP keepalive finds it.
    ctrl.setKeepAlive(true, 30_000);
    udp.on('message', (msg, rinfo) => this.#onDatagram(msg, unmapV4(rinfo.address)));
    udp.on('error', (e) => this.close(e));
  }

  /** Where datagrams go (tests, logs). */
  get relay(): Address {
    return { ...this.#relay };
  }

  send(dst: Destination, payload: Uint8Array): void {
    if (this.closed) {
      this.counters.dropped.closed++;
      return;
    }
    const k = hpKey(dst.host, dst.port);
    let s = this.#sent.get(k);
    if (s === undefined) {
      let header: Buffer;
      try {
        header = udpHeader.encode({ frag: 0, host: dst.host, port: dst.port });
      } catch {
        // A name longer than 255 bytes cannot be carried (ATYP 3 length is one byte).
        this.counters.dropped.oversized++;
        return;
      }
      s = { dst, header, bound: false };
      this.#sent.set(k, s);
      if (net.isIP(dst.host) === 0) {
        let set = this.#unbound.get(dst.port);
        if (!set) {
          set = new Set();
          this.#unbound.set(dst.port, set);
        }
        set.add(dst.host);
      }
      if (this.#sent.size > MAX_DESTINATIONS) this.#forgetOldest();
    }
    if (payload.length > this.#max || s.header.length + payload.length > MAX_UDP_PAYLOAD) {
      this.counters.dropped.oversized++;
      return;
    }
    this.#udp.send([s.header, payload], this.#relay.port, this.#relay.host, this.onSent);
  }

  protected release(): void {
    releaseOwnPort(this.#port);
    this.#ctrl.destroy();
    try {
      this.#udp.close();
    } catch {
      // already closed
    }
  }

  #drop(reason: UdpDropReason, detail: string): void {
    this.counters.dropped[reason]++;
    // One line per reason per association: a broken relay must not flood the log.
    if (this.#log && !this.#loggedReasons.has(reason)) {
      this.#loggedReasons.add(reason);
      this.#log(`udp via ${this.#label}: dropped a reply: ${detail} (further ones are only counted)`);
    }
  }

  #onDatagram(msg: Buffer, from: string): void {
    if (this.closed) return;
    // RFC 1928 §7: "MUST drop any datagrams arriving from any source IP
    // address other than the one recorded for the particular association."
    // The port is not checked: some relays answer from another socket.
    if (from !== this.#relay.host) {
      this.#drop('foreign-source', `from ${from}, not the relay ${this.#relay.host}`);
      return;
    }
    if (msg.length < MIN_HEADER) {
      this.#drop('truncated', `${msg.length} bytes, shorter than a header`);
      return;
    }
    if (msg[2] !== 0) {
      this.#drop('fragment', `FRAG ${msg[2]} (fragments are not reassembled)`);
      return;
    }
    const atyp = msg[3];
    if (atyp !== Atyp.IPV4 && atyp !== Atyp.DOMAIN && atyp !== Atyp.IPV6) {
      this.#drop('bad-atyp', `ATYP ${atyp} is unknown (RFC 1928 defines 1, 3, 4)`);
      return;
    }
    let h: { host: string; port: number };
    try {
      h = udpHeader.decode(msg);
    } catch {
      this.#drop('truncated', `${msg.length} bytes, the address is cut off`);
      return;
    }
    const hdrLen = 3 + (atyp === Atyp.IPV4 ? 7 : atyp === Atyp.IPV6 ? 19 : 4 + (msg[4] as number));
    const payload = msg.subarray(hdrLen);
    if (payload.length > this.#max) {
      this.#drop('oversized', `${payload.length}-byte payload, larger than ${this.#max}`);
      return;
    }
    this.deliver(this.#source(h.host, h.port), payload);
  }

  /**
   * The destination a reply answers. The relay resolves names itself and
   * reports the IP it heard from (dante: ATYP 1), so a reply to "echo.test"
   * arrives from 10.0.0.7. We learn the binding: the first reply from an
   * unseen (ip, port) when this association has sent to exactly one
   * not-yet-bound name on that port is that name's answer. With two or more
   * candidates we cannot tell and report the IP (the caller treats it as an
   * unknown remote). An exact match (IP destinations, or relays that echo
   * the name) needs no learning.
   */
  #source(host: string, port: number): Destination {
    const k = hpKey(host, port);
    const s = this.#sent.get(k);
    if (s) return s.dst;
    const l = this.#learned.get(k);
    if (l) return l;
    if (net.isIP(host) !== 0) {
      const names = this.#unbound.get(port);
      if (names?.size === 1) {
        const name = names.values().next().value as string;
        const e = this.#sent.get(hpKey(name, port));
        if (e) {
          e.bound = true;
          names.clear();
          this.#unbound.delete(port);
          this.#learned.set(k, e.dst);
          if (this.#learned.size > MAX_DESTINATIONS) this.#learned.delete(this.#learned.keys().next().value as string);
          return e.dst;
        }
      }
    }
    return { host, port };
  }

  #forgetOldest(): void {
    const [k, e] = this.#sent.entries().next().value as [string, SentTo];
    this.#sent.delete(k);
    const set = this.#unbound.get(e.dst.port);
    set?.delete(e.dst.host);
    if (set?.size === 0) this.#unbound.delete(e.dst.port);
  }
}
