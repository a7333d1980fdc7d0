/**
 * Straight to the destination. A name is resolved only through the injected
 * resolver (built from --dns-upstream): the system resolver is fakeproxy
 * itself once the host's DNS points at the daemon (DESIGN.md "Known traps").
 */
import * as net from 'node:net';
import { connectDeadline, dialTcp, hostPort, type ResolveName } from '../dial.js';
import type {
  ConnectOptions,
  Destination,
  Outbound,
  UdpAssociateOptions,
  UdpAssociation,
  UdpNativePlan,
} from '../outbound.js';
import { DirectUdpAssociation } from './direct-udp.js';

export interface DirectOutboundOptions {
  /** Name → addresses. Absent → names fail with ENORESOLVER (IP destinations still work). */
  resolve?: ResolveName | undefined;
  /**
   * Happy-Eyeballs delay before the next address is tried in parallel.
   * @default 250 — RFC 8305 §5.
   */
  attemptDelayMs?: number;
  /**
   * Says why connecting to this IP would loop back into fakeproxy (it is
   * routed into the TUN), or undefined. Such addresses are skipped; when all
   * are, the connect fails with ELOOP. @default none
   */
  loopGuard?: ((ip: string) => string | undefined) | undefined;
}

export class DirectOutbound implements Outbound {
  readonly kind = 'direct' as const;
  readonly label = 'direct';
  readonly #o: DirectOutboundOptions;
  readonly udpNative: UdpNativePlan;

  constructor(opts: DirectOutboundOptions = {}) {
    this.#o = opts;
    this.udpNative = { kind: 'direct', resolve: opts.resolve };
  }

  async connect(dst: Destination, opts?: ConnectOptions): Promise<net.Socket> {
    const what = `connect to ${hostPort(dst.host, dst.port)} via direct`;
    const d = connectDeadline(what, opts);
    try {
      return await dialTcp(dst.host, dst.port, {
        resolve: this.#o.resolve,
        signal: d.signal,
        what,
        loopGuard: this.#o.loopGuard,
        ...(this.#o.attemptDelayMs !== undefined ? { attemptDelayMs: this.#o.attemptDelayMs } : {}),
      });
    } finally {
      d.dispose();
    }
  }

  /**
   * Synchronous when the address is known now; several addresses keep the
   * Happy-Eyeballs race of connect(), a guarded (looping) one its ELOOP error.
   */
  plainTarget(dst: Destination): string | undefined {
    // Once per connection, mostly with a name: isIPv6's long regex only for text that has a colon.
    const h = dst.host;
    const addrs = net.isIPv4(h) || (h.includes(':') && net.isIPv6(h)) ? [h] : this.#o.resolve?.peek?.(h);
    if (addrs?.length !== 1) return undefined;
    const addr = addrs[0] as string;
    return this.#o.loopGuard?.(addr) === undefined ? addr : undefined;
  }

  /** A real UDP socket per association; names through the same injected resolver (./direct-udp.ts). */
  udpAssociate(opts?: UdpAssociateOptions): Promise<UdpAssociation> {
    return Promise.resolve(new DirectUdpAssociation({ ...opts, resolve: this.#o.resolve }));
  }
}
