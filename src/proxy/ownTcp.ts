/**
 * The daemon's own outbound TCP connections, by their exact 4-tuple
 * (local ip:port → remote ip:port). Global mode relies on --fwmark to keep
 * them out of the TUN; when the mark is lost (a user's nftables rule clears
 * it, an ip rule above ours), a connection of ours is captured and arrives
 * at our own Listener with that very 4-tuple as its original flow. Serving
 * it would dial again, be captured again, and so on until the fd limit: the
 * Listener refuses it instead (TcpListenerStats.loopRefused).
 *
 * Recorded right after connect() is issued (the kernel has chosen the local
 * address and port by then), which is before the Listener can accept the
 * captured SYN: that accept needs a later turn of the event loop.
 */
import type * as net from 'node:net';
import { intToIp } from '../util/cidr.js';

const live = new Set<string>();

const key = (srcIp: string, srcPort: number, dstIp: string, dstPort: number) =>
  `${srcIp}:${srcPort}>${dstIp}:${dstPort}`;

/** Call in the same tick as `sock.connect(...)`; forgets the socket when it closes. */
export function holdOwnTcp(sock: net.Socket, remoteIp: string, remotePort: number): void {
  process.nextTick(() => {
    const port = sock.localPort;
    const ip = sock.localAddress;
    if (port === undefined || ip === undefined || sock.destroyed) return;
    const k = key(ip.replace(/^::ffff:/, ''), port, remoteIp, remotePort);
    live.add(k);
    sock.once('close', () => live.delete(k));
  });
}

/**
 * A native dial's own connection (SpliceRelay.dial with `local`, which
 * connects before it returns): local IPv4 (u32) and port as the relay bound
 * them. Returns the release to call when the pair ends; a no-op for port 0
 * (not IPv4, or the connect failed at once: nothing can come back).
 */
export function holdOwnTcpNative(localIp: number, localPort: number, remoteIp: string, remotePort: number): () => void {
  if (localPort === 0) return noop;
  const k = key(intToIp(localIp), localPort, remoteIp, remotePort);
  live.add(k);
  return () => live.delete(k);
}

const noop = () => {};

/** Whether an app flow src → dst is one of our own outbound connections come back. */
export function isOwnTcp(srcIp: string, srcPort: number, dstIp: string, dstPort: number): boolean {
  return live.size !== 0 && live.has(key(srcIp, srcPort, dstIp, dstPort));
}
