/**
 * Relay bytes between the app's socket and the upstream socket, both ways.
 *
 * - Backpressure: `write()` returning false pauses the source until the
 *   sink drains, so at most ~one highWaterMark plus one read chunk (64 KiB)
 *   sits in user space per direction, however slow the reader.
 * - Half-close: both sockets are `allowHalfOpen`; 'end' on one side becomes
 *   `end()` (a FIN after the queued bytes) on the other, and the reverse
 *   direction keeps flowing until it ends too. Node then auto-destroys each
 *   socket once it has both read EOF and finished writing.
 * - RST: an error on one side (ECONNRESET = the peer sent RST, EPIPE, …)
 *   resets the other (`resetAndDestroy`, SO_LINGER 0), so the far end sees
 *   a reset instead of a clean FIN that would pass a truncated stream off as
 *   complete.
 * - Idle: `setTimeout` on both sockets; any relayed byte is activity on both
 *   (read on one, write on the other), so a 'timeout' on either means the
 *   flow was idle both ways (or the sink stalled for that long).
 *
 * Why a hand loop ('data' + write/pause/drain) and not `stream.pipeline`:
 * it was as fast or faster in every run (numbers below), and pipeline tears
 * the other socket down with `destroy(err)` — a FIN, not a RST — before our
 * error handler could choose; it also hides which side failed first. `pipe`
 * is the same mechanism as the hand loop (same numbers) without the error
 * and count hooks we need.
 *
 * Each direction reads into one reused 64 KiB buffer (`readInto`), not a
 * fresh Buffer per read; `bench/relay-bench.ts` measures it and the malloc
 * tunables. Older figures, before that change (Node's 'data' path):
 * Loopback, 2 GiB origin → relay → sink (origin and sink in child
 * processes), Node 20.20, 2 vCPU shared with other jobs, Gbit/s, median of 3
 * (modes interleaved per run):
 *                 no relay   hand loop   pipeline   pipe
 *   quieter host    15.4        7.8         7.2       7.9
 *   loaded (5 runs)  4.3        2.5         2.0       2.0
 * One JS hop costs about half of raw loopback: per 64 KiB chunk one read,
 * one 'data' dispatch, one write syscall; no copies in JS.
 */
import type * as net from 'node:net';
import { availableParallelism } from 'node:os';
import { getSystemErrorName } from 'node:util';
import {
  type NativeRelay,
  type NativeRelayTotals,
  native,
  RELAY_ENDS,
  RELAY_RECORD_FIELDS,
  type RelayEnd,
} from '../native.js';

export type { RelayEnd };

export interface RelayOptions {
  /**
   * Close both sockets after this long with no bytes either way. 0 disables.
   * @default 600000 — 10 min: longer than common app keepalives (HTTP/2
   * pings, SSH ServerAlive, ~1–5 min) so live idle connections survive,
   * short enough that abandoned ones free their two sockets and buffers;
   * Linux conntrack's 5 days suits a kernel entry, not a userspace relay.
   */
  idleTimeoutMs?: number;
}

export interface RelayResult {
  /** app → upstream bytes written through the relay. */
  bytesUp: number;
  /** upstream → app. */
  bytesDown: number;
  end: RelayEnd;
  /** The socket error behind an '*-reset' end. */
  error?: Error;
  /**
   * SpliceRelay.dial through a proxy that ended 'connect-failed': where and
   * why, packed as native/relay.h PackHandshakeFailure (decoded by the
   * outbound's NativeProxyDial.failure, HS_FAIL).
   */
  handshake?: number;
  /** An HTTP CONNECT that failed on the proxy's response (HS_FAIL.httpHead): the whole head. */
  head?: Buffer;
}

export class Relay {
  bytesUp = 0;
  bytesDown = 0;
  /** Directions (0–2) that read into their one reused buffer (`readInto`); the rest allocate per read. */
  userBuffers = 0;
  readonly done: Promise<RelayResult>;
  #end: RelayEnd | undefined;
  #error: Error | undefined;
  readonly #app: net.Socket;
  readonly #up: net.Socket;

  constructor(app: net.Socket, upstream: net.Socket, opts: RelayOptions = {}) {
    this.#app = app;
    this.#up = upstream;
    const idle = opts.idleTimeoutMs ?? 600_000;
    let closed = 0;
    let resolveDone!: (r: RelayResult) => void;
    this.done = new Promise((r) => {
      resolveDone = r;
    });
    const onClose = () => {
      if (++closed < 2) return;
      resolveDone({
        bytesUp: this.bytesUp,
        bytesDown: this.bytesDown,
        end: this.#end ?? 'done',
        ...(this.#error ? { error: this.#error } : {}),
      });
    };

    this.#wire(app, upstream, 'app', (n) => {
      this.bytesUp += n;
    });
    this.#wire(upstream, app, 'upstream', (n) => {
      this.bytesDown += n;
    });
    for (const s of [app, upstream]) {
      if (idle > 0) {
        s.setTimeout(idle, () => {
          this.#first('idle');
          app.destroy();
          upstream.destroy();
        });
      }
      if (s.destroyed) onClose();
      else s.once('close', onClose);
    }
  }

  /** Tear both sockets down now (daemon shutdown): `reset` sends RST, else FIN. */
  close(how: 'reset' | 'fin' = 'fin'): void {
    this.#first('closed');
    for (const s of [this.#app, this.#up]) {
      if (how === 'reset') s.resetAndDestroy();
      else s.destroy();
    }
  }

  #first(end: RelayEnd, err?: Error): void {
    if (this.#end !== undefined) return;
    this.#end = end;
    if (err) this.#error = err;
  }

  #wire(src: net.Socket, dst: net.Socket, side: 'app' | 'upstream', count: (n: number) => void): void {
    if (readInto(src, dst, count)) this.userBuffers++;
    else {
      src.on('data', (chunk: Buffer) => {
        count(chunk.length);
        if (!dst.write(chunk)) src.pause();
      });
      dst.on('drain', () => src.resume());
    }
    // FIN one way: forward it after the queued bytes; the other way stays open.
    src.on('end', () => dst.end());
    src.on('error', (err) => {
      this.#first(side === 'app' ? 'app-reset' : 'upstream-reset', err);
      dst.resetAndDestroy();
    });
    src.on('close', () => {
      // Closed without an error event but not finished both ways: someone
      // destroyed it (or the kernel dropped it); do not leave the peer hanging.
      if (!(src.readableEnded && src.writableFinished) && !dst.destroyed) {
        this.#first(side === 'app' ? 'app-reset' : 'upstream-reset');
        dst.resetAndDestroy();
      }
    });
  }
}

/** Bytes one JS relay direction reads at a time: Node's own per-read allocation size. */
const READ_BUFFER = 65_536;

interface UserBufferHandle {
  useUserBuffer?: (buf: Uint8Array) => void;
  reading?: boolean;
}

/** Node's per-socket symbols behind the public `onread` option (lib/net.js), found once by name. */
let onreadKeys: { buf: symbol; cb: symbol; gen: symbol } | null | undefined;

function findOnreadKeys(s: net.Socket): typeof onreadKeys {
  if (onreadKeys !== undefined) return onreadKeys;
  const syms = Object.getOwnPropertySymbols(s);
  const by = (d: string) => syms.find((x) => x.description === d);
  const buf = by('kBuffer');
  const cb = by('kBufferCb');
  const gen = by('kBufferGen');
  onreadKeys = buf && cb && gen ? { buf, cb, gen } : null;
  return onreadKeys;
}

/**
 * Relay `src` → `dst` reading into one buffer of its own, reused for every
 * read, instead of the fresh 64 KiB Buffer Node allocates per read (the
 * malloc/free churn per chunk behind issue 11's page-fault profile). This
 * is Node's `onread` option (`net.connect({ onread })`), which Node only
 * takes at socket creation; our sockets already read their handshake or
 * sniffed bytes through 'data', so the same per-socket fields are set here
 * (found by their names; on a Node without them this returns false and the
 * caller keeps 'data').
 *
 * The buffer is handed to `dst.write` as a view; while that write is still
 * queued (the kernel took only part of it) the next read would overwrite
 * it, so the read side pauses until the write completes: at most 64 KiB in
 * user space per direction. Bytes Node had already buffered are written first.
 */
function readInto(src: net.Socket, dst: net.Socket, count: (n: number) => void): boolean {
  const h = (src as unknown as { _handle?: UserBufferHandle | null })._handle;
  const keys = findOnreadKeys(src);
  // Plain TCP handles only: a TLS socket's handle decrypts in between.
  if (!keys || h?.constructor?.name !== 'TCP' || typeof h.useUserBuffer !== 'function') return false;
  const fields = src as unknown as Record<symbol, unknown>;
  if (fields[keys.buf] !== null || fields[keys.cb] !== null) return false; // already in onread mode
  const early = takeBuffered(src);
  if (early) {
    count(early.length);
    dst.write(early);
  }
  const buf = Buffer.allocUnsafe(READ_BUFFER);
  let waiting = false;
  const written = () => {
    if (!waiting) return;
    waiting = false;
    src.resume();
  };
  fields[keys.buf] = buf;
  fields[keys.cb] = (n: number) => {
    count(n);
    dst.write(buf.subarray(0, n), written);
    if (dst.writableLength === 0) return true; // the kernel took it all: buf is free again
    waiting = true;
    return false; // Node stops reading until `written` resumes it
  };
  h.useUserBuffer(buf);
  src.resume(); // no 'data' listener to start the flow; Node's onread resume() restarts a stopped read
  return true;
}

/** Start relaying `app` ⇄ `upstream`; see `Relay`. */
export function relay(app: net.Socket, upstream: net.Socket, opts?: RelayOptions): Relay {
  return new Relay(app, upstream, opts);
}

/** A proxy handshake the native relay runs itself (the outbounds' nativeDial, native/relay.h ProxyPlan). */
export type ProxyDialPlan =
  | {
      kind: 'socks5';
      /** The CONNECT request (RFC 1928 §4). */
      request: Buffer;
      /** The RFC 1929 username/password request, or null: offer no-auth only. */
      auth: Buffer | null;
    }
  | {
      kind: 'http';
      /** The CONNECT request head (RFC 9110 §9.3.6). */
      request: Buffer;
      /** The longest response head accepted (HttpOutboundOptions.maxHeadBytes). */
      maxHeadBytes: number;
    };

/** Stage and kind of RelayResult.handshake (native/relay.h HsFail; detail in the low byte). */
export const HS_FAIL = Object.freeze({
  /** Stage (handshake >>> 16) 1: reaching the proxy; 2: its handshake. */
  reachingProxy: 1,
  errno: 0,
  closed: 1,
  noMethod: 2,
  badMethod: 3,
  authFailed: 4,
  reply: 5,
  version: 6,
  atyp: 7,
  authVersion: 8,
  httpHead: 9,
  httpTooLarge: 10,
});

/** What the Listener needs of a relay, JS or native. */
export interface RelayHandle {
  readonly bytesUp: number;
  readonly bytesDown: number;
  readonly done: Promise<RelayResult>;
  close(how?: 'reset' | 'fin'): void;
}

export interface SpliceRelayOptions extends RelayOptions {
  /**
   * Epoll threads moving bytes.
   * @default os.availableParallelism() — one per core: a thread relays at
   * line rate with splice, so more than one per core only adds switches.
   */
  threads?: number;
  /**
   * Pipe size per direction (F_SETPIPE_SZ): the most bytes one direction
   * holds in flight between read and write.
   * @default 1048576 — Go's splice relay uses 1 MiB per call too; the pages
   * are the socket buffers' own (SPLICE_F_MOVE), and an idle pair holds no
   * pipe at all.
   */
  pipeSize?: number;
}

interface NodeHandle {
  fd?: number;
}

/** The fd under a connected TCP net.Socket, or undefined (not a TCP handle, closed). */
function fdOf(s: net.Socket): number | undefined {
  const fd = (s as unknown as { _handle?: NodeHandle | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** Every byte Node already read off `s` and buffered (none → null). */
function takeBuffered(s: net.Socket): Buffer | null {
  if (s.readableLength === 0) return null;
  const chunks: Buffer[] = [];
  for (let c = s.read() as Buffer | null; c !== null; c = s.read() as Buffer | null) chunks.push(c);
  return chunks.length === 0 ? null : chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
}

function endError(errno: number): Error | undefined {
  if (errno === 0) return undefined;
  let code = 'EFAKEPROXY';
  try {
    code = getSystemErrorName(-errno);
  } catch {
    // unknown errno: keep the generic code
  }
  return Object.assign(new Error(`${code}: relay socket error`), { code, errno: -errno });
}

/**
 * The native relay (native/relay.h): after the outbound handshake both
 * sockets' fds go to epoll threads that splice bytes between them; no byte
 * of the stream enters JavaScript. The JS sockets are destroyed without
 * sending anything (the native side holds dup'd fds, so closing Node's fd is
 * no FIN), after taking what Node had already read on either side; those
 * bytes are written first, exactly once, in order. Same ends as `Relay`.
 */
export class SpliceRelay {
  readonly #n: NativeRelay;
  /** Live pairs by id: one small object each, nothing else per pair in JS. */
  readonly #waiting = new Map<number, SplicePair>();
  #nextId = 1;
  #stopped = false;

  constructor(opts: SpliceRelayOptions = {}) {
    this.#n = new (native().Relay)(
      {
        threads: opts.threads ?? availableParallelism(),
        idleTimeoutMs: opts.idleTimeoutMs ?? 600_000,
        ...(opts.pipeSize !== undefined ? { pipeSize: opts.pipeSize } : {}),
      },
      (recs, heads) => this.#deliver(recs, heads),
    );
  }

  /**
   * Hand `app` ⇄ `upstream` to the native relay. Returns undefined (sockets
   * untouched) when they cannot be handed off: not plain TCP handles,
   * already destroyed, or writes still queued in Node.
   */
  handOff(app: net.Socket, upstream: net.Socket): RelayHandle | undefined {
    if (this.#stopped || app.destroyed || upstream.destroyed) return undefined;
    if (app.writableLength > 0 || upstream.writableLength > 0) return undefined;
    const appFd = fdOf(app);
    const upFd = fdOf(upstream);
    if (appFd === undefined || upFd === undefined) return undefined;
    // Synchronous from here to destroy(): libuv cannot read in between.
    const preUp = takeBuffered(app);
    const preDown = takeBuffered(upstream);
    const id = this.#nextId++;
    try {
      this.#n.add(id, appFd, upFd, preUp, preDown);
    } catch {
      if (preUp) app.unshift(preUp);
      if (preDown) upstream.unshift(preDown);
      return undefined;
    }
    // The native side holds its own fds: closing Node's sends nothing, and
    // libuv takes its fd out of its epoll set on close (uv__platform_invalidate_fd).
    app.destroy();
    upstream.destroy();
    return this.#track(id);
  }

  /**
   * Connect to addr:port natively and relay `app` ⇄ it: no JavaScript socket,
   * promise or timer for the upstream (native/relay.h Dial). `addr` is an IPv4
   * address as an unsigned 32-bit number or an IP literal; `mark` is SO_MARK
   * (0 = none). A failed or timed-out connect resets the app and `done`
   * resolves with end 'connect-failed' and the errno's code (ECONNREFUSED,
   * ETIMEDOUT, …). Returns undefined (app untouched) when the app socket
   * cannot be handed off; throws the errno's error when the relay cannot take
   * the pair (EBADF, ESHUTDOWN) or, with `opts.local`, when socket() or the
   * connect fails at once (EMFILE; EPERM for a mark without CAP_NET_ADMIN);
   * without it the upstream socket is made on a relay thread and such a
   * failure ends as 'connect-failed' with its code. `app` may be a
   * bare fd from TcpAcceptor: it is handed over (reset if dial throws).
   * `opts.local`: connect before this returns and write the bound
   * [IPv4 as a u32, port] there (the loop guard's 4-tuple, ./ownTcp.ts).
   */
  dial(
    app: net.Socket | number,
    addr: number | string,
    port: number,
    opts: {
      mark: number;
      connectTimeoutMs: number;
      local?: Float64Array | undefined;
      /** addr:port is a SOCKS5 or HTTP proxy: run this CONNECT natively first (NativeRelay.dial). */
      proxy?: ProxyDialPlan | undefined;
      /**
       * Called with the result when the pair ends, as `done` resolves but
       * synchronously, from the batch that reports it: the accept path's way,
       * with no promise, reaction or microtask per connection.
       */
      onEnd?: ((r: RelayResult) => void) | undefined;
    },
  ): RelayHandle | undefined {
    const local = opts.local ?? null;
    const plan = opts.proxy;
    const req = plan?.request ?? null;
    const auth = plan?.kind === 'socks5' ? plan.auth : null;
    const maxHead = plan?.kind === 'http' ? plan.maxHeadBytes : undefined;
    if (typeof app === 'number') {
      if (this.#stopped) return undefined;
      const id = this.#nextId++;
      this.#n.dial(id, app, addr, port, opts.mark, opts.connectTimeoutMs, null, true, local, req, auth, maxHead);
      return this.#track(id, opts.onEnd);
    }
    if (this.#stopped || app.destroyed || app.writableLength > 0) return undefined;
    const appFd = fdOf(app);
    if (appFd === undefined) return undefined;
    const preUp = takeBuffered(app);
    const id = this.#nextId++;
    try {
      this.#n.dial(id, appFd, addr, port, opts.mark, opts.connectTimeoutMs, preUp, false, local, req, auth, maxHead);
    } catch (e) {
      if (preUp) app.unshift(preUp);
      throw e;
    }
    app.destroy();
    return this.#track(id, opts.onEnd);
  }

  /** A small SplicePair per live pair: its id (and the owner's onEnd), no sockets. */
  #track(id: number, onEnd?: (r: RelayResult) => void): RelayHandle {
    const pair = new SplicePair(this, id, onEnd);
    this.#waiting.set(id, pair);
    return pair;
  }

  /** Live byte counts of pair `id` into out[0] (up), out[1] (down); false when it is not live. */
  bytes(id: number, out: Float64Array): boolean {
    return this.#n.bytes(id, out);
  }

  /** Ends pair `id` now (RST both ways when `reset`, else FIN). */
  close(id: number, reset: boolean): void {
    if (!this.#stopped) this.#n.close(id, reset);
  }

  /** Live pairs and bytes moved so far (ended pairs included). */
  totals(): NativeRelayTotals {
    return this.#n.totals();
  }

  /** Close every pair (FIN) and join the threads; every pending `done` resolves before this returns. */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#deliver(this.#n.stop());
  }

  #deliver(recs: Float64Array, heads?: Array<number | Buffer>): void {
    for (let i = 0; i + RELAY_RECORD_FIELDS <= recs.length; i += RELAY_RECORD_FIELDS) {
      const id = recs[i] as number;
      const pair = this.#waiting.get(id);
      if (!pair) continue;
      this.#waiting.delete(id);
      const error = endError(recs[i + 4] as number);
      const handshake = recs[i + 5] as number;
      const at = heads ? heads.indexOf(id) : -1;
      const head = at >= 0 ? (heads?.[at + 1] as Buffer) : undefined;
      const r: RelayResult = {
        bytesUp: recs[i + 1] as number,
        bytesDown: recs[i + 2] as number,
        end: RELAY_ENDS[recs[i + 3] as number] ?? 'closed',
      };
      if (error) r.error = error;
      if (handshake !== 0) r.handshake = handshake;
      if (head) r.head = head;
      pair.end(r);
    }
  }
}

/** Scratch for live byte reads (read synchronously right after the call). */
const BYTES = new Float64Array(2);

/**
 * What JavaScript keeps of a native pair while it runs: its id and, once
 * it ended, the result. No sockets, closures or timers (10 000 idle pairs
 * are cheap: issue 11, "nothing regresses").
 */
class SplicePair implements RelayHandle {
  /** Made when first asked for: the Listener's native dials take onEnd instead. */
  #done: Promise<RelayResult> | undefined;
  #resolve: ((r: RelayResult) => void) | undefined;
  #result: RelayResult | undefined;

  constructor(
    readonly relay: SpliceRelay,
    readonly id: number,
    readonly onEnd?: (r: RelayResult) => void,
  ) {}

  get done(): Promise<RelayResult> {
    if (!this.#done) {
      const r = this.#result;
      this.#done = r
        ? Promise.resolve(r)
        : new Promise((resolve) => {
            this.#resolve = resolve;
          });
    }
    return this.#done;
  }

  get bytesUp(): number {
    if (this.#result) return this.#result.bytesUp;
    return this.relay.bytes(this.id, BYTES) ? (BYTES[0] as number) : 0;
  }

  get bytesDown(): number {
    if (this.#result) return this.#result.bytesDown;
    return this.relay.bytes(this.id, BYTES) ? (BYTES[1] as number) : 0;
  }

  close(how: 'reset' | 'fin' = 'fin'): void {
    if (!this.#result) this.relay.close(this.id, how === 'reset');
  }

  end(r: RelayResult): void {
    this.#result = r;
    this.#resolve?.(r);
    this.onEnd?.(r);
  }
}
