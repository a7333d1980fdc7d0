/**
 * What the upstream UDP associations (direct-udp.ts, socks5-udp.ts) share:
 * the message and close callbacks, the counters and the send callback that
 * keeps them, close() running once (each frees its own sockets in
 * release()), and the dgram lookup that never asks the system resolver.
 */
import type * as dgram from 'node:dgram';
import * as net from 'node:net';
import type { Destination, UdpAssociation, UdpAssociationStats } from '../outbound.js';
import { dropCounters } from '../udp/drops.js';

// Sends and binds use IP literals only, so dgram never needs a lookup; if it
// ever did, fail loudly instead of asking getaddrinfo (= ourselves).
export const noSystemLookup = ((host: string, _o: unknown, cb: (e: Error | null, a?: string, f?: number) => void) => {
  const f = net.isIP(host);
  if (f !== 0) cb(null, host, f);
  else cb(new Error('fakeproxy never uses the system resolver'));
}) as unknown as dgram.SocketOptions['lookup'];

export abstract class UdpAssociationBase implements UdpAssociation {
  protected readonly counters: UdpAssociationStats = { sent: 0, received: 0, dropped: dropCounters() };
  protected closed = false;
  readonly #msg: Array<(src: Destination, payload: Buffer) => void> = [];
  readonly #closeCbs: Array<(err?: Error) => void> = [];
  /** One callback for every send (no closure per datagram). */
  protected readonly onSent = (err: Error | null) => {
    if (err) this.counters.dropped['send-error']++;
    else this.counters.sent++;
  };

  abstract send(dst: Destination, payload: Uint8Array): void;

  /** Frees the association's sockets; called once, by close(). */
  protected abstract release(): void;

  onMessage(cb: (src: Destination, payload: Buffer) => void): void {
    this.#msg.push(cb);
  }

  onClose(cb: (err?: Error) => void): void {
    this.#closeCbs.push(cb);
  }

  close(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.release();
    for (const cb of this.#closeCbs.splice(0)) cb(err);
  }

  stats(): UdpAssociationStats {
    return { ...this.counters, dropped: { ...this.counters.dropped } };
  }

  /** A reply from `src`: counted and handed to every onMessage callback. */
  protected deliver(src: Destination, payload: Buffer): void {
    this.counters.received++;
    for (const cb of this.#msg) cb(src, payload);
  }
}
