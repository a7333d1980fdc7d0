/**
 * SO_MARK on the daemon's own sockets (global mode, `--fwmark`): an ip rule
 * sends marked packets to the main table, so the daemon's upstream traffic
 * never re-enters the TUN. Process-wide, set once at start-up (0 = no mark,
 * fake-IP mode); every place that opens a socket asks here.
 */
import type * as dgram from 'node:dgram';
import * as net from 'node:net';
import { native } from '../native.js';

let mark = 0;

/** Set at start-up from --fwmark (global mode); 0 turns marking off. */
export function setOwnMark(m: number): void {
  mark = m >>> 0;
}

export function ownMark(): number {
  return mark;
}

/**
 * A TCP socket, not yet connected, that carries the mark when one is set —
 * connect it with `.connect()`. The route of a TCP connection is chosen at
 * connect(), so the mark has to be on the fd before: Node cannot set socket
 * options before connecting, so the fd is made natively and handed to Node
 * (`manualStart`: no read on an unconnected socket; reading starts at
 * 'connect' as for net.connect).
 */
export function newTcpSocket(family: 4 | 6, opts: { allowHalfOpen?: boolean; noDelay?: boolean } = {}): net.Socket {
  if (mark === 0) return new net.Socket(opts);
  const fd = native().markedTcpSocket(family, mark);
  try {
    return new net.Socket({ ...opts, fd, manualStart: true } as net.SocketConstructorOpts);
  } catch (e) {
    native().tunClose([fd]);
    throw e;
  }
}

/** Mark a bound UDP socket (routed per datagram, so marking after bind is enough). No-op without a mark. */
export function markUdpSocket(sock: dgram.Socket): void {
  if (mark === 0) return;
  native().setSocketMark(udpFd(sock), mark);
}

/** The fd under a bound dgram socket (Node keeps it on an internal handle). */
export function udpFd(sock: dgram.Socket): number {
  for (const sym of Object.getOwnPropertySymbols(sock)) {
    const state = (sock as unknown as Record<symbol, { handle?: { fd?: number } }>)[sym];
    const fd = state?.handle?.fd;
    if (typeof fd === 'number' && fd >= 0) return fd;
  }
  throw new Error('udp socket has no fd (not bound yet)');
}

/** The fd under a connected/connecting net.Socket (tests, loop guard). */
export function tcpFd(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new Error('tcp socket has no fd');
  return fd;
}
