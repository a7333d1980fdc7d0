/**
 * Reading proxy handshake replies off a socket without over-reading: the
 * bytes after the reply belong to the relayed stream (a server-first
 * protocol's banner can arrive in the same segment as the proxy's reply).
 * `socket.read(n)` takes exactly n bytes from Node's buffer and leaves the
 * rest there; `unshift` returns what the HTTP head scan read past its end.
 */
import type * as net from 'node:net';
import { ProxyError } from './errors.js';

type Take<T> = (sock: net.Socket) => T | undefined;

function readWith<T>(sock: net.Socket, take: Take<T>, signal: AbortSignal, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const cleanup = () => {
      sock.removeListener('readable', onReadable);
      sock.removeListener('end', onEnd);
      sock.removeListener('close', onEnd);
      sock.removeListener('error', onError);
      signal.removeEventListener('abort', onAbort);
    };
    const fail = (e: unknown) => {
      cleanup();
      reject(e);
    };
    const onReadable = () => {
      let v: T | undefined;
      try {
        v = take(sock);
      } catch (e) {
        fail(e);
        return;
      }
      if (v !== undefined) {
        cleanup();
        resolve(v);
      }
    };
    const onEnd = () => fail(closedMidHandshake(what));
    const onError = (e: Error) => fail(e);
    const onAbort = () => fail(signal.reason);
    if (signal.aborted) return reject(signal.reason);
    if (sock.readableEnded || sock.destroyed) return onEnd();
    sock.on('readable', onReadable);
    sock.once('end', onEnd);
    sock.once('close', onEnd);
    sock.once('error', onError);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Exactly `n` bytes (n ≤ the socket's highWaterMark is not required; Node grows it). */
/** The proxy hung up before its handshake reply was complete. */
export function closedMidHandshake(what: string): ProxyError {
  return new ProxyError('EUPSTREAM_CLOSED', `${what}: the proxy closed the connection mid-handshake (check its log)`);
}

export function readExact(sock: net.Socket, n: number, signal: AbortSignal, what: string): Promise<Buffer> {
  return readWith(
    sock,
    (s) => {
      const b = s.read(n) as Buffer | null;
      if (b === null) return undefined;
      if (b.length < n) {
        // Stream ended with a partial message; 'end' follows.
        throw closedMidHandshake(what);
      }
      return b;
    },
    signal,
    what,
  );
}

/**
 * Everything up to and including the first empty line (CRLF CRLF, or bare
 * LF LF which RFC 9112 §2.2 lets a recipient accept). At most `maxBytes`;
 * bytes after the head are put back with `unshift`.
 */
export function readHead(sock: net.Socket, maxBytes: number, signal: AbortSignal, what: string): Promise<Buffer> {
  let acc: Buffer = Buffer.alloc(0);
  let scanFrom = 0;
  return readWith(
    sock,
    (s) => {
      for (;;) {
        const chunk = s.read() as Buffer | null;
        if (chunk === null) return undefined;
        acc = acc.length === 0 ? chunk : Buffer.concat([acc, chunk]);
        const end = headEnd(acc, scanFrom);
        if (end >= 0) {
          if (end < acc.length) s.unshift(acc.subarray(end));
          return acc.subarray(0, end);
        }
        if (acc.length > maxBytes) throw headTooLarge(what, maxBytes);
        scanFrom = Math.max(0, acc.length - 3);
      }
    },
    signal,
    what,
  );
}

/** No empty line within the first `maxBytes` of the proxy's response. */
export function headTooLarge(what: string, maxBytes: number): ProxyError {
  return new ProxyError(
    'EHTTP_PROXY_HEADER_TOO_LARGE',
    `${what}: response head exceeds ${maxBytes} bytes without an empty line (is this an HTTP proxy?)`,
  );
}

/** Index just past the blank line ending the head, or -1 (native/relay.cc HeadEnd is the same scan). */
export function headEnd(buf: Buffer, from = 0): number {
  for (let i = buf.indexOf(0x0a, from); i >= 0; i = buf.indexOf(0x0a, i + 1)) {
    let j = i + 1;
    if (buf[j] === 0x0d) j++;
    if (j < buf.length && buf[j] === 0x0a) return j + 1;
  }
  return -1;
}
