/**
 * A UDP socket that costs the JavaScript thread one call per BATCH of
 * datagrams each way instead of one callback and one syscall per datagram
 * (node:dgram): the native side (native/dgram_batch*.cc) drains the socket
 * with recvmmsg on each event-loop wake-up and hands JS (bytes, meta, count);
 * replies queued here leave with one sendmmsg — at the end of the batch that
 * produced them, or on the next setImmediate for replies made later (async).
 *
 * Bounded: the outgoing batch holds at most OUT_MAX_DATAGRAMS datagrams /
 * OUT_MAX_BYTES bytes and is flushed when full; a send buffer that is full
 * makes the kernel refuse the rest, which is dropped and counted (stats()).
 */
import {
  type DgramSocketOptions,
  type DgramSocketStats,
  DGRAM_META_WORDS as META_WORDS,
  type NativeDgramSocket,
  type NativeFakeAnswers,
  native,
} from '../native.js';

export { META_WORDS };
export const M_OFF = 0;
export const M_LEN = 1;
export const M_FAMILY = 2;
export const M_PORT = 3;
export const M_ADDR = 4;

/** Outgoing batch bounds: one sendmmsg carries at most this much. */
const OUT_MAX_DATAGRAMS = 1024;
const OUT_MAX_BYTES = 1 << 20;

export type BatchHandler = (bytes: Buffer, meta: Uint32Array, count: number) => void;

export class DgramBatchSocket {
  readonly #s: NativeDgramSocket;
  #out = Buffer.allocUnsafe(64 * 1024);
  readonly #outMeta = new Uint32Array(OUT_MAX_DATAGRAMS * META_WORDS);
  #outN = 0;
  #outBytes = 0;
  #inBatch = false;
  #flushScheduled = false;
  #closed = false;
  readonly #flushSoon = () => {
    this.#flushScheduled = false;
    this.flush();
  };

  /** Binds now; throws the bind error (code EADDRINUSE, EADDRNOTAVAIL, EACCES, …). */
  constructor(opts: DgramSocketOptions) {
    this.#s = new (native().DgramSocket)(opts);
  }

  /** Start receiving: `onBatch` gets every batch; replies queued during it leave in one sendmmsg right after. */
  start(onBatch: BatchHandler): void {
    this.#s.start((bytes, meta, count) => {
      this.#inBatch = true;
      try {
        onBatch(bytes, meta, count);
      } finally {
        this.#inBatch = false;
        this.flush();
      }
    });
  }

  /** Queue `payload` to the peer of datagram `i` of an incoming batch's `meta`. */
  reply(payload: Uint8Array, meta: Uint32Array, i: number): void {
    const b = i * META_WORDS;
    this.sendTo(payload, meta[b + M_FAMILY] as number, meta[b + M_PORT] as number, meta, b + M_ADDR);
  }

  /**
   * Queue `payload` to family/port and the address words addr[at … at+3]
   * (IPv4: addr[at] host-order). Sent at the end of the current batch, or on
   * the next setImmediate when called outside one.
   */
  sendTo(payload: Uint8Array, family: number, port: number, addr: Uint32Array, at: number): void {
    if (this.#closed) return;
    if (this.#outN >= OUT_MAX_DATAGRAMS || this.#outBytes + payload.length > OUT_MAX_BYTES) this.flush();
    if (this.#outBytes + payload.length > this.#out.length) {
      // Grow (only between flushes; the buffer is not shared with native after send returns).
      let size = this.#out.length * 2;
      while (size < this.#outBytes + payload.length) size *= 2;
      const bigger = Buffer.allocUnsafe(Math.min(size, OUT_MAX_BYTES + 65536));
      this.#out.copy(bigger, 0, 0, this.#outBytes);
      this.#out = bigger;
    }
    const m = this.#outMeta;
    const b = this.#outN * META_WORDS;
    this.#out.set(payload, this.#outBytes);
    m[b + M_OFF] = this.#outBytes;
    m[b + M_LEN] = payload.length;
    m[b + M_FAMILY] = family;
    m[b + M_PORT] = port;
    m[b + M_ADDR] = addr[at] as number;
    m[b + M_ADDR + 1] = family === 6 ? (addr[at + 1] as number) : 0;
    m[b + M_ADDR + 2] = family === 6 ? (addr[at + 2] as number) : 0;
    m[b + M_ADDR + 3] = family === 6 ? (addr[at + 3] as number) : 0;
    this.#outN++;
    this.#outBytes += payload.length;
    if (!this.#inBatch && !this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(this.#flushSoon);
    }
  }

  /** Send what is queued now (one sendmmsg); returns how many the kernel took. */
  flush(): number {
    const n = this.#outN;
    if (n === 0) return 0;
    this.#outN = 0;
    this.#outBytes = 0;
    return this.#s.send(this.#out, this.#outMeta, n);
  }

  address(): { address: string; port: number; family: 'IPv4' | 'IPv6' } {
    return this.#s.address();
  }

  stats(): DgramSocketStats {
    return this.#s.stats();
  }

  /** Let `answers` answer what it can natively, before JS sees the batch (src/dns/server.ts); null detaches. */
  setFastPath(answers: NativeFakeAnswers | null): void {
    this.#s.setFastPath(answers);
  }

  close(): void {
    if (this.#closed) return;
    this.flush();
    this.#closed = true;
    this.#s.close();
  }
}

/** The peer address of datagram `i` of a batch, as text (`1.2.3.4`, `2001:db8::1`). */
export function peerAddress(meta: Uint32Array, i: number): string {
  const b = i * META_WORDS;
  return wordsToIp(meta[b + M_FAMILY] as number, meta, b + M_ADDR);
}

export function wordsToIp(family: number, w: Uint32Array, at: number): string {
  const a = w[at] as number;
  if (family === 4) return `${a >>> 24}.${(a >>> 16) & 255}.${(a >>> 8) & 255}.${a & 255}`;
  const parts: string[] = [];
  for (let i = 0; i < 4; i++) {
    const x = w[at + i] as number;
    parts.push(((x >>> 16) & 0xffff).toString(16), (x & 0xffff).toString(16));
  }
  // Compress the longest run of zero groups (RFC 5952).
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (parts[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && parts[j] === '0') j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return parts.join(':');
  return `${parts.slice(0, best).join(':')}::${parts.slice(best + bestLen).join(':')}`;
}
