/**
 * UDP straight to the destination: one real, unconnected dgram socket per
 * association (per app socket), reused for every destination, so the
 * mapping is endpoint-independent (RFC 4787 REQ-1) and any remote may
 * answer on it (full cone). Names are resolved only through the injected
 * resolver (the system resolver is fakeproxy itself, DESIGN.md "Known
 * traps") and cached for the association's life — that is at most the UDP
 * idle timeout, shorter than most TTLs.
 */
import * as dgram from 'node:dgram';
import * as net from 'node:net';
import { markUdpSocket } from '../../util/sockmark.js';
import type { ResolveName } from '../dial.js';
import type { Destination, UdpAssociateOptions } from '../outbound.js';
import { DEFAULT_UPSTREAM_RCVBUF, hpKey, unmapV4 } from '../udp/drops.js';
import { holdOwnPort, releaseOwnPort } from '../udp/ownPorts.js';
import { noSystemLookup, UdpAssociationBase } from './udp-association.js';

export interface DirectUdpOptions extends UdpAssociateOptions {
  /** Name → addresses. Absent → datagrams to names are dropped ('resolve-failed'); IP destinations still work. */
  resolve?: ResolveName | undefined;
  /** @default performance.now */
  clock?: () => number;
}

/**
 * Destinations (name or IP:port) remembered for mapping replies back.
 * @default 1024 — an app socket rarely talks to more peers at once (a DNS
 * client rotating resolvers, a P2P swarm); past it the oldest is forgotten,
 * and its replies then look like an unknown remote's.
 */
const MAX_DESTINATIONS = 1024;
/**
 * How long a failed resolution is remembered, so a burst of datagrams to an
 * unresolvable name costs one query, not one per datagram.
 */
const NEGATIVE_TTL_MS = 1000;

interface NameState {
  addr?: string;
  pending?: Array<{ port: number; payload: Uint8Array }>;
  failedAtMs?: number;
  logged?: boolean;
}

export class DirectUdpAssociation extends UdpAssociationBase {
  readonly #o: DirectUdpOptions;
  readonly #clock: () => number;
  readonly #max: number;
  readonly #maxQueue: number;
  #s4: dgram.Socket | undefined;
  #s6: dgram.Socket | undefined;
  readonly #names = new Map<string, NameState>();
  /** (resolved ip, port) → the destination as given to send(), for names only. */
  readonly #rev = new Map<string, Destination>();
  /** Local ports of our sockets, held in ownPorts.ts while open (loop detection). */
  readonly #ports: number[] = [];

  constructor(opts: DirectUdpOptions = {}) {
    super();
    this.#o = opts;
    this.#clock = opts.clock ?? (() => performance.now());
    this.#max = opts.maxPayloadBytes ?? 65507;
    this.#maxQueue = opts.maxQueue ?? 256;
  }

  send(dst: Destination, payload: Uint8Array): void {
    if (this.closed) {
      this.counters.dropped.closed++;
      return;
    }
    if (payload.length > this.#max) {
      this.counters.dropped.oversized++;
      return;
    }
    if (net.isIP(dst.host) !== 0) {
      this.#sendTo(dst.host, dst.port, payload);
      return;
    }
    let st = this.#names.get(dst.host);
    if (st?.addr !== undefined) {
      this.#remember(st.addr, dst);
      this.#sendTo(st.addr, dst.port, payload);
      return;
    }
    if (st?.pending) {
      if (st.pending.length >= this.#maxQueue) {
        st.pending.shift();
        this.counters.dropped['queue-full']++;
      }
      st.pending.push({ port: dst.port, payload });
      return;
    }
    if (st?.failedAtMs !== undefined && this.#clock() - st.failedAtMs < NEGATIVE_TTL_MS) {
      this.counters.dropped['resolve-failed']++;
      return;
    }
    if (!st) {
      st = {};
      this.#names.set(dst.host, st);
      if (this.#names.size > MAX_DESTINATIONS) this.#names.delete(this.#names.keys().next().value as string);
    }
    this.#resolve(dst.host, st, { port: dst.port, payload });
  }

  protected release(): void {
    for (const p of this.#ports.splice(0)) releaseOwnPort(p);
    for (const s of [this.#s4, this.#s6]) {
      try {
        s?.close();
      } catch {
        // already closed by an error
      }
    }
    for (const st of this.#names.values()) {
      if (st.pending) this.counters.dropped.closed += st.pending.length;
      st.pending = undefined;
    }
  }

  /** Local port of the IPv4 socket (tests, logs), once it exists. */
  localPort4(): number | undefined {
    try {
      return this.#s4?.address().port;
    } catch {
      return undefined;
    }
  }

  #resolve(name: string, st: NameState, first: { port: number; payload: Uint8Array }): void {
    const resolve = this.#o.resolve;
    const fail = (why: string) => {
      st.failedAtMs = this.#clock();
      this.counters.dropped['resolve-failed'] += 1 + (st.pending?.length ?? 0);
      st.pending = undefined;
      if (!st.logged) {
        st.logged = true;
        this.#o.logger?.(`udp direct: ${why}`);
      }
    };
    if (resolve === undefined) {
      st.pending = [];
      fail(
        `cannot resolve ${name}: no resolver configured (pass --dns-upstream; the system resolver is fakeproxy itself)`,
      );
      return;
    }
    st.pending = [first];
    // The first datagram is in `pending` too; `fail` counts it via the +1 below, so take it out of the queue count.
    const failQueued = (why: string) => {
      st.pending?.shift();
      fail(why);
    };
    resolve(name).then(
      (addrs) => {
        // IPv4 first: UDP has no Happy Eyeballs to fall back with, and a
        // host without IPv6 routes would silently black-hole every datagram.
        const addr = addrs.find((a) => net.isIPv4(a)) ?? addrs[0];
        if (addr === undefined) {
          failQueued(`resolve ${name}: no addresses`);
          return;
        }
        const queued = st.pending ?? [];
        st.pending = undefined;
        if (this.closed) {
          this.counters.dropped.closed += queued.length;
          return;
        }
        st.addr = addr;
        st.failedAtMs = undefined;
        for (const q of queued) {
          this.#remember(addr, { host: name, port: q.port });
          this.#sendTo(addr, q.port, q.payload);
        }
      },
      (e: unknown) => failQueued(`resolve ${name}: ${(e as Error)?.message ?? String(e)}`),
    );
  }

  #remember(addr: string, dst: Destination): void {
    const k = hpKey(addr, dst.port);
    const had = this.#rev.get(k);
    if (had !== undefined && had.host === dst.host) return;
    // Two names on one address:port: the most recent sender wins the replies.
    this.#rev.delete(k);
    this.#rev.set(k, dst);
    if (this.#rev.size > MAX_DESTINATIONS) this.#rev.delete(this.#rev.keys().next().value as string);
  }

  #sendTo(ip: string, port: number, payload: Uint8Array): void {
    const s = this.#socket(net.isIPv4(ip) ? 'udp4' : 'udp6');
    s.send(payload, port, ip, this.onSent);
  }

  #socket(type: 'udp4' | 'udp6'): dgram.Socket {
    const have = type === 'udp4' ? this.#s4 : this.#s6;
    if (have) return have;
    const s = dgram.createSocket({
      type,
      lookup: noSystemLookup,
      recvBufferSize: this.#o.recvBufferBytes ?? DEFAULT_UPSTREAM_RCVBUF,
    });
    s.on('message', (msg, rinfo) => {
      const host = unmapV4(rinfo.address);
      if (msg.length > this.#max) {
        this.counters.dropped.oversized++;
        return;
      }
      this.deliver(this.#rev.get(hpKey(host, rinfo.port)) ?? { host, port: rinfo.port }, msg);
    });
    s.on('error', (e) => this.close(e));
    // Bind now (sends queue until it completes): wildcard address, so the
    // kernel picks the route per destination; port 0, kept for the
    // association's life — the stable mapping full cone needs.
    s.bind({ port: 0, address: type === 'udp4' ? '0.0.0.0' : '::' }, () => {
      if (this.closed) return;
      // Global mode: before the queued sends leave (they flush after this callback).
      try {
        markUdpSocket(s);
      } catch (e) {
        this.close(e as Error);
        return;
      }
      const port = s.address().port;
      holdOwnPort(port);
      this.#ports.push(port);
    });
    if (type === 'udp4') this.#s4 = s;
    else this.#s6 = s;
    return s;
  }
}
