/**
 * Client for the real resolver (`--dns-upstream`).
 *
 * - UDP first, on a fresh connected socket per attempt: the kernel picks a
 *   random source port and the connected socket only accepts datagrams from
 *   the upstream (and surfaces ICMP port-unreachable as an error at once).
 * - A random 16-bit id per attempt (crypto-random); a response is accepted
 *   only when its id, QR bit and question (case-insensitively, RFC 4343)
 *   match what we sent — anything else on the socket is ignored (RFC 5452).
 * - Truncated (TC) UDP answer → the same question over TCP (RFC 7766 §5).
 * - `timeoutMs` per attempt and one retry (`retries`), then the caller
 *   answers SERVFAIL.
 * - At most `maxInFlight` questions outstanding: beyond that the query is
 *   refused at once, which bounds sockets and memory under a flood.
 */
import { randomFillSync } from 'node:crypto';
import dgram from 'node:dgram';
import net from 'node:net';
import { FakeproxyError } from '../errors.js';
import { markUdpSocket, newTcpSocket } from '../util/sockmark.js';
import { FLAG_QR, FLAG_TC, HEADER_LEN } from './wire.js';

export interface UpstreamOptions {
  host: string;
  port: number;
  /** Per attempt. @default 2000 ms — glibc's resolver waits 5 s per try; we answer faster so the app's own retry comes sooner. */
  timeoutMs?: number;
  /** Extra attempts after the first times out or fails. @default 1 */
  retries?: number;
  /** Outstanding questions at most. @default 512 */
  maxInFlight?: number;
}

export class UpstreamError extends FakeproxyError {}

const ids = new Uint16Array(1024);
let idPos = ids.length;
function randomId(): number {
  if (idPos === ids.length) {
    randomFillSync(ids);
    idPos = 0;
  }
  return ids[idPos++] as number;
}

export class Upstream {
  readonly host: string;
  readonly port: number;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly maxInFlight: number;
  private readonly family: 'udp4' | 'udp6';
  private inFlightCount = 0;
  private readonly open = new Set<{ close(): void }>();
  private closed = false;

  constructor(opts: UpstreamOptions) {
    this.host = opts.host;
    this.port = opts.port;
    this.timeoutMs = opts.timeoutMs ?? 2000;
    this.retries = opts.retries ?? 1;
    this.maxInFlight = opts.maxInFlight ?? 512;
    this.family = net.isIPv6(opts.host) ? 'udp6' : 'udp4';
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  /**
   * Ask the upstream. `query` is a complete, already validated DNS query
   * (its id is replaced); `questionEnd` is the offset just past its question
   * section. Resolves with the raw response (upstream id, not the client's).
   */
  async query(query: Buffer, questionEnd: number): Promise<Buffer> {
    if (this.closed) throw new UpstreamError('ECLOSED', 'upstream client closed');
    if (this.inFlightCount >= this.maxInFlight) {
      throw new UpstreamError(
        'EUPSTREAMBUSY',
        `more than ${this.maxInFlight} questions outstanding to ${this.host}:${this.port}`,
      );
    }
    this.inFlightCount++;
    try {
      let lastErr: unknown;
      for (let attempt = 0; attempt <= this.retries; attempt++) {
        if (this.closed) break;
        const msg = Buffer.from(query);
        msg.writeUInt16BE(randomId(), 0);
        try {
          const resp = await this.udp(msg, questionEnd);
          if (resp.readUInt16BE(2) & FLAG_TC) {
            msg.writeUInt16BE(randomId(), 0);
            return await this.tcp(msg, questionEnd);
          }
          return resp;
        } catch (err) {
          lastErr = err;
        }
      }
      throw new UpstreamError(
        'EUPSTREAM',
        `upstream ${this.host}:${this.port} did not answer: ${(lastErr as Error)?.message ?? 'closed'}`,
        {
          cause: lastErr,
        },
      );
    } finally {
      this.inFlightCount--;
    }
  }

  /** Abort everything outstanding. */
  close(): void {
    this.closed = true;
    for (const s of this.open) s.close();
    this.open.clear();
  }

  private udp(msg: Buffer, questionEnd: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const sock = dgram.createSocket(this.family);
      let done = false;
      const handle = {
        close: () => finish(new UpstreamError('ECLOSED', 'upstream client closed')),
      };
      const finish = (err: Error | undefined, resp?: Buffer) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.open.delete(handle);
        try {
          sock.close();
        } catch {
          // already closed
        }
        if (err) reject(err);
        else resolve(resp as Buffer);
      };
      const timer = setTimeout(
        () => finish(new UpstreamError('ETIMEDOUT', `no answer within ${this.timeoutMs} ms`)),
        this.timeoutMs,
      );
      this.open.add(handle);
      sock.on('error', (err) => finish(err));
      sock.on('message', (resp) => {
        if (matches(resp, msg, questionEnd)) finish(undefined, resp);
      });
      sock.connect(this.port, this.host, () => {
        if (done) return;
        try {
          markUdpSocket(sock); // global mode: the query must not re-enter the TUN (and meet our own DNS hijack)
          sock.send(msg, (err) => {
            if (err) finish(err);
          });
        } catch (err) {
          finish(err as Error);
        }
      });
    });
  }

  private tcp(msg: Buffer, questionEnd: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const sock = newTcpSocket(net.isIPv6(this.host) ? 6 : 4);
      sock.connect({ host: this.host, port: this.port });
      let done = false;
      let buf: Buffer = Buffer.alloc(0);
      const handle = { close: () => finish(new UpstreamError('ECLOSED', 'upstream client closed')) };
      const finish = (err: Error | undefined, resp?: Buffer) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.open.delete(handle);
        sock.destroy();
        if (err) reject(err);
        else resolve(resp as Buffer);
      };
      const timer = setTimeout(
        () => finish(new UpstreamError('ETIMEDOUT', `no TCP answer within ${this.timeoutMs} ms`)),
        this.timeoutMs,
      );
      this.open.add(handle);
      sock.on('error', (err) => finish(err));
      sock.on('close', () =>
        finish(new UpstreamError('ECONNRESET', 'upstream closed the TCP connection before answering')),
      );
      sock.on('connect', () => {
        const framed = Buffer.allocUnsafe(msg.length + 2);
        framed.writeUInt16BE(msg.length, 0);
        msg.copy(framed, 2);
        sock.write(framed);
      });
      sock.on('data', (chunk: Buffer) => {
        buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
        while (buf.length >= 2) {
          const len = buf.readUInt16BE(0);
          if (buf.length < 2 + len) break;
          const resp = buf.subarray(2, 2 + len);
          buf = buf.subarray(2 + len);
          if (matches(resp, msg, questionEnd)) {
            finish(undefined, Buffer.from(resp));
            return;
          }
        }
      });
    });
  }
}

/** Response id, QR and question match the query (question compared ASCII case-insensitively). */
export function matches(resp: Buffer, query: Buffer, questionEnd: number): boolean {
  if (resp.length < HEADER_LEN) return false;
  if (resp.readUInt16BE(0) !== query.readUInt16BE(0)) return false;
  const flags = resp.readUInt16BE(2);
  if (!(flags & FLAG_QR)) return false;
  const qd = resp.readUInt16BE(4);
  // Some servers answer FORMERR/NOTIMP/REFUSED without the question.
  if (qd === 0) return (flags & 0xf) !== 0;
  if (qd !== 1 || resp.length < questionEnd) return false;
  const nameEnd = questionEnd - 4;
  for (let i = HEADER_LEN; i < nameEnd; i++) {
    let a = resp[i] as number;
    let b = query[i] as number;
    if (a >= 0x41 && a <= 0x5a) a |= 0x20;
    if (b >= 0x41 && b <= 0x5a) b |= 0x20;
    if (a !== b) return false;
  }
  return resp.readUInt32BE(nameEnd) === query.readUInt32BE(nameEnd);
}
