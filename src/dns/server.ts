/**
 * UDP and TCP (RFC 7766) listeners around a query handler.
 *
 * TCP: 2-byte length-prefixed messages, several per connection, pipelined
 * (each answered as soon as it is ready, possibly out of order — allowed by
 * RFC 7766 §6.2.1.1 since answers carry the query id). A connection is closed
 * when no complete query arrived for `idleTimeoutMs` (which also defeats a
 * client trickling a partial message byte by byte), when a length prefix
 * exceeds `maxMessageSize`, or at shutdown. Connections beyond
 * `maxConnections` are refused at accept; a connection with more than
 * `maxPipelined` queries outstanding stops being read until answers drain.
 *
 * UDP: one native socket per address (src/util/dgramBatch.ts) receives up
 * to UDP_BATCH queries per recvmmsg. With a `fastAnswers` table, the A
 * queries it can answer (names that already hold a fake address, from
 * sources the policy trusts) are answered there, natively, in one sendmmsg;
 * the rest go to JS as one batch; the
 * answers made synchronously leave together in one sendmmsg at the end of the
 * batch, later (upstream) answers on the next event-loop turn. Under overload
 * the kernel's receive buffer fills and further queries are dropped there —
 * counted (SO_RXQ_OVFL, stats.udpDropped) and logged at most once per
 * DROP_LOG_MS — instead of queueing in the daemon.
 *
 * Who may ask (DESIGN.md "Who may use it"), with a `sources` policy: every
 * query's source is mapped to the client behind it (a NAT address → the app
 * the engine translated); sources the policy does not serve are dropped and
 * counted (udpRefusedSource, tcpRefusedSource). Fairness between clients:
 * a client holds at most `maxConnectionsPerClient` TCP connections (more are
 * closed at accept, tcpPerClientRefused); when all `maxConnections` are taken,
 * a new connection evicts the longest-idle connection of the client holding
 * the most (tcpEvicted), so one client's idle connections never lock others
 * out; UDP queries of a client the policy does not trust are limited to
 * `udpQueriesPerSecond` (token bucket, burst 2 s worth), the excess dropped
 * and counted (udpRateLimited).
 *
 * The handler may return synchronously (the fast path for fake answers) or a
 * promise; a throw or rejection is logged and the query dropped — nothing
 * escapes into the event loop.
 */
import net from 'node:net';
import { FakeproxyError } from '../errors.js';
import type { DgramSocketStats, NativeFakeAnswers } from '../native.js';
import { ipToInt } from '../util/cidr.js';
import {
  DgramBatchSocket,
  M_ADDR,
  M_FAMILY,
  M_LEN,
  M_OFF,
  M_PORT,
  META_WORDS,
  peerAddress,
} from '../util/dgramBatch.js';
import { resourceAlarm } from '../util/exhaustion.js';

export type QueryResult = Buffer | undefined | Promise<Buffer | undefined>;
/** Where a query came from (per-source policy hooks). `address` is computed on first use. */
export interface QuerySource {
  readonly address: string;
  readonly port: number;
}
export type QueryHandler = (msg: Buffer, proto: 'udp' | 'tcp', from: QuerySource) => QueryResult;

/** Queries per recvmmsg: 64 small queries fit easily and amortise the wake-up and the JS call. */
const UDP_BATCH = 64;
/** At most one overload line per socket this often. */
const DROP_LOG_MS = 10_000;
/**
 * SO_RCVBUF of a DNS socket: room for a burst while the loop is busy (at
 * ~700 B of kernel memory per small query, ~3000 queries); the kernel caps it
 * at rmem_max.
 */
const UDP_RCVBUF = 1 << 21;

/** A UDP query's source, read from the batch metadata only if the handler asks. */
class UdpSource implements QuerySource {
  #address: string | undefined;
  constructor(
    private readonly meta: Uint32Array,
    private readonly i: number,
  ) {}
  get address(): string {
    if (this.#address === undefined) this.#address = peerAddress(this.meta, this.i);
    return this.#address;
  }
  get port(): number {
    return this.meta[this.i * META_WORDS + M_PORT] as number;
  }
}

/** Maps query sources to clients (see the file comment). */
export interface DnsSourcePolicy {
  /** The client behind an IPv4 source (host-order u32), or -1 when the source is not served. */
  client(addr: number, port: number, proto: 'udp' | 'tcp'): number;
  /** Clients exempt from the UDP rate limit (this machine). */
  trusted(client: number): boolean;
  /**
   * The IPv4 sources (host order) that are their own trusted client, besides
   * 127.0.0.0/8, which a policy implementing this trusts too: the fast path
   * answers only them. Undefined while the policy serves nobody yet. Asked
   * once a second and on every batch JS gets; return the same array while
   * nothing changed. @default not implemented: the fast path answers nobody.
   */
  trustedSources?(): readonly number[] | undefined;
}

export interface DnsServerOptions {
  /** Who may ask; absent: everyone, no per-client limits but the connection cap. */
  sources?: DnsSourcePolicy;
  /**
   * TCP connections one client may hold. @default 32 — a stub resolver
   * needs one or two (RFC 7766 §6.2.2 asks clients to reuse); 32 leaves room
   * for a busy host while 8 clients still fit in the global cap.
   */
  maxConnectionsPerClient?: number;
  /**
   * UDP queries per second one untrusted (LAN) client may send. @default 1000
   * — a LAN host resolves tens of names per second at most; 1000/s keeps a
   * flooding host from taking the JS thread from everyone else.
   */
  udpQueriesPerSecond?: number;
  /** @default 10000 ms — RFC 7766 §6.2.3 asks servers to close idle connections; a few seconds frees them fast while letting a stub pipeline. */
  idleTimeoutMs?: number;
  /** Largest TCP query accepted. @default 16384 — queries are small; this stops a client from making us buffer 64 KiB per connection. */
  maxMessageSize?: number;
  /** @default 256 */
  maxConnections?: number;
  /** @default 32 */
  maxPipelined?: number;
  /** The native fast path's table (see the file comment); attached to every UDP socket. @default none */
  fastAnswers?: NativeFakeAnswers;
  logger?: (line: string) => void;
}

export interface ServerStats {
  udpReceived: number;
  /** UDP queries dropped by the kernel (receive buffer full: overload) or too large, plus answers the kernel refused. */
  udpDropped: number;
  /** UDP queries answered by the native fast path (also counted in udpReceived). */
  udpFastAnswered: number;
  tcpReceived: number;
  tcpConnections: number;
  tcpRefused: number;
  tcpIdleClosed: number;
  tcpOversize: number;
  handlerErrors: number;
  /** Answers the kernel refused (send buffer full under a flood, per-datagram errors): dropped. */
  sendErrors: number;
  /** Queries / connections from sources the daemon does not serve (dropped). */
  udpRefusedSource: number;
  tcpRefusedSource: number;
  /** UDP queries over a client's rate limit (dropped). */
  udpRateLimited: number;
  /** TCP connections closed at accept: the client already held maxConnectionsPerClient. */
  tcpPerClientRefused: number;
  /** Idle TCP connections closed to admit another client's connection. */
  tcpEvicted: number;
}

/** A TCP connection as the fairness bookkeeping sees it. */
interface Conn {
  sock: net.Socket;
  client: number;
  lastActive: number;
  pending: () => number;
}

/** Token bucket of one client (UDP rate limit). */
interface Bucket {
  tokens: number;
  at: number;
}

interface Listener {
  udp: DgramBatchSocket;
  tcp: net.Server;
  host: string;
  dropTimer?: NodeJS.Timeout;
}

export class DnsServer {
  private readonly counters: Omit<ServerStats, 'udpDropped' | 'sendErrors' | 'udpFastAnswered'> = {
    udpReceived: 0,
    tcpReceived: 0,
    tcpConnections: 0,
    tcpRefused: 0,
    tcpIdleClosed: 0,
    tcpOversize: 0,
    handlerErrors: 0,
    udpRefusedSource: 0,
    tcpRefusedSource: 0,
    udpRateLimited: 0,
    tcpPerClientRefused: 0,
    tcpEvicted: 0,
  };
  private readonly policy: DnsSourcePolicy | undefined;
  private readonly maxPerClient: number;
  private readonly udpRate: number;
  /** TCP connections by client. */
  private readonly byClient = new Map<number, Set<Conn>>();
  private readonly buckets = new Map<number, Bucket>();
  private bucketTimer: NodeJS.Timeout | undefined;
  private trustedTimer: NodeJS.Timeout | undefined;
  private lastRefusedLog = Number.NEGATIVE_INFINITY;
  private refusedLogged = 0;
  private readonly listeners: Listener[] = [];
  private readonly conns = new Set<net.Socket>();
  private readonly idleTimeoutMs: number;
  private readonly maxMessageSize: number;
  private readonly maxConnections: number;
  private readonly maxPipelined: number;
  private readonly log: (line: string) => void;
  private bound: { host: string; port: number }[] = [];
  /** Drops and refused sends of sockets already closed. */
  private closedDrops = 0;
  private closedSendErrors = 0;
  private closedFast = 0;
  private readonly fast: NativeFakeAnswers | undefined;
  private trustedSeen: readonly number[] | undefined;

  constructor(
    private readonly handler: QueryHandler,
    opts: DnsServerOptions = {},
  ) {
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 10_000;
    this.maxMessageSize = opts.maxMessageSize ?? 16_384;
    this.maxConnections = opts.maxConnections ?? 256;
    this.maxPipelined = opts.maxPipelined ?? 32;
    this.log = opts.logger ?? (() => {});
    this.policy = opts.sources;
    this.maxPerClient = opts.maxConnectionsPerClient ?? 32;
    this.udpRate = opts.udpQueriesPerSecond ?? 1000;
    this.fast = opts.fastAnswers;
    // Without a policy every source is served, none rate-limited: the fast path may answer all.
    if (this.fast) this.fast.setTrusted([], false, !this.policy);
    if (this.fast && this.policy?.trustedSources) {
      // Also checked on every batch JS gets, so a source that just became trusted is answered natively at once.
      this.trustedTimer = setInterval(() => this.refreshTrusted(), 1000);
      this.trustedTimer.unref();
    }
    if (this.policy) {
      // Full buckets carry no state: forget them, so the map stays as large as the set of active clients.
      this.bucketTimer = setInterval(() => {
        const now = Date.now();
        for (const [k, b] of this.buckets)
          if (b.tokens + ((now - b.at) * this.udpRate) / 1000 >= 2 * this.udpRate) this.buckets.delete(k);
      }, 10_000);
      this.bucketTimer.unref();
    }
  }

  /** Hand the fast path the policy's trusted sources when they changed. */
  private refreshTrusted(): void {
    const policy = this.policy;
    if (!this.fast || !policy?.trustedSources) return;
    const list = policy.trustedSources();
    if (list === this.trustedSeen) return;
    this.trustedSeen = list;
    if (list) this.fast.setTrusted([...list], true, false);
    else this.fast.setTrusted([], false, false);
  }

  /** One line per 10 s while sources are refused or limited. */
  private noteRefused(): void {
    const c = this.counters;
    const n = c.udpRefusedSource + c.tcpRefusedSource + c.udpRateLimited + c.tcpPerClientRefused + c.tcpEvicted;
    const now = Date.now();
    if (n === this.refusedLogged || now - this.lastRefusedLog < 10_000) return;
    this.lastRefusedLog = now;
    this.refusedLogged = n;
    this.log(
      `dns: refused sources this daemon does not serve (udp ${c.udpRefusedSource}, tcp ${c.tcpRefusedSource}; admit a LAN with --lan CIDR), rate-limited ${c.udpRateLimited} UDP queries, refused ${c.tcpPerClientRefused} TCP connections over the per-client cap, evicted ${c.tcpEvicted} idle ones (totals)`,
    );
  }

  /** Whether a UDP query of `client` fits its bucket (takes a token). */
  private udpAllowed(client: number): boolean {
    const now = Date.now();
    let b = this.buckets.get(client);
    if (!b) {
      b = { tokens: 2 * this.udpRate, at: now };
      this.buckets.set(client, b);
    } else {
      b.tokens = Math.min(2 * this.udpRate, b.tokens + ((now - b.at) * this.udpRate) / 1000);
      b.at = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  get stats(): ServerStats {
    let udpDropped = this.closedDrops;
    let sendErrors = this.closedSendErrors;
    let udpFastAnswered = this.closedFast;
    for (const l of this.listeners) {
      const st = l.udp.stats();
      udpDropped += udpDrops(st);
      sendErrors += st.sendDropped;
      udpFastAnswered += st.fastAnswered;
    }
    return {
      ...this.counters,
      udpReceived: this.counters.udpReceived + udpFastAnswered,
      udpFastAnswered,
      udpDropped,
      sendErrors,
    };
  }

  get addresses(): { host: string; port: number }[] {
    return this.bound.map((a) => ({ ...a }));
  }

  get openConnections(): number {
    return this.conns.size;
  }

  /** Bind UDP and TCP on every address; port 0 picks one port free for both. */
  async listen(addrs: readonly { host: string; port: number }[]): Promise<void> {
    try {
      for (const a of addrs) {
        const l = await this.listenOne(a.host, a.port);
        this.listeners.push(l);
        this.bound.push({ host: a.host, port: l.udp.address().port });
      }
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  private async listenOne(host: string, port: number): Promise<Listener> {
    // With port 0, UDP picks a port and TCP takes the same one; if TCP's is
    // taken by someone else, try again with a new UDP port.
    for (let attempt = 0; ; attempt++) {
      const udp = this.bindUdp(host, port);
      const actual = udp.address().port;
      try {
        const tcp = await this.bindTcp(host, actual);
        const l: Listener = { udp, tcp, host };
        if (this.fast) {
          this.refreshTrusted();
          udp.setFastPath(this.fast);
        }
        udp.start((bytes, meta, count) => this.onUdpBatch(udp, bytes, meta, count));
        this.watchDrops(l, actual);
        return l;
      } catch (err) {
        udp.close();
        if (port !== 0 || attempt >= 10 || (err as { code?: string }).code !== 'EADDRINUSE') throw err;
      }
    }
  }

  private bindUdp(host: string, port: number): DgramBatchSocket {
    try {
      return new DgramBatchSocket({ host, port, batch: UDP_BATCH, recvBufferBytes: UDP_RCVBUF });
    } catch (err) {
      throw bindError('UDP', host, port, err as Error);
    }
  }

  /** One operator line per DROP_LOG_MS while a socket drops (overload), none otherwise. */
  private watchDrops(l: Listener, port: number): void {
    let seen = 0;
    l.dropTimer = setInterval(() => {
      const st = l.udp.stats();
      const n = udpDrops(st);
      if (n > seen) {
        this.log(
          `dns: UDP ${l.host}:${port} dropped ${n - seen} queries/answers in the last ${DROP_LOG_MS / 1000} s (${st.kernelDrops} receive-buffer overflows, ${st.sendDropped} refused sends, ${st.truncated} oversized so far): more queries than the daemon answers; they are dropped, not queued`,
        );
        seen = n;
      }
    }, DROP_LOG_MS);
    l.dropTimer.unref();
  }

  private bindTcp(host: string, port: number): Promise<net.Server> {
    return new Promise((resolve, reject) => {
      const srv = net.createServer({ noDelay: true }, (s) => this.onConn(s));
      // Without a policy the kernel-side cap refuses; with one, onConn evicts fairly instead.
      if (!this.policy) srv.maxConnections = this.maxConnections;
      srv.on('drop', () => {
        this.counters.tcpRefused++;
      });
      const onError = (err: Error) => reject(bindError('TCP', host, port, err));
      srv.once('error', onError);
      srv.listen({ host, port, exclusive: true }, () => {
        srv.off('error', onError);
        srv.on('error', (err) => {
          if (!resourceAlarm.check(err, 'dns tcp accept'))
            this.log(`dns: TCP server on ${host}:${port}: ${err.message}`);
        });
        resolve(srv);
      });
    });
  }

  private run(
    msg: Buffer,
    proto: 'udp' | 'tcp',
    from: QuerySource,
    reply: (out: Buffer) => void,
  ): Promise<void> | undefined {
    let r: QueryResult;
    try {
      r = this.handler(msg, proto, from);
    } catch (err) {
      this.handlerError(err);
      return undefined;
    }
    if (r instanceof Promise) {
      return r.then(
        (out) => {
          if (out) reply(out);
        },
        (err) => this.handlerError(err),
      );
    }
    if (r) reply(r);
    return undefined;
  }

  private handlerError(err: unknown): void {
    this.counters.handlerErrors++;
    if (this.counters.handlerErrors <= 10 || this.counters.handlerErrors % 1000 === 0) {
      this.log(`dns: query handler failed (${this.counters.handlerErrors} so far): ${(err as Error)?.message ?? err}`);
    }
  }

  private onUdpBatch(sock: DgramBatchSocket, bytes: Buffer, meta: Uint32Array, count: number): void {
    this.counters.udpReceived += count;
    if (this.fast) this.refreshTrusted();
    const policy = this.policy;
    for (let i = 0; i < count; i++) {
      const b = i * META_WORDS;
      if (policy) {
        const client =
          meta[b + M_FAMILY] === 4 ? policy.client(meta[b + M_ADDR] as number, meta[b + M_PORT] as number, 'udp') : -1;
        if (client < 0) {
          this.counters.udpRefusedSource++;
          this.noteRefused();
          continue;
        }
        if (!policy.trusted(client) && !this.udpAllowed(client)) {
          this.counters.udpRateLimited++;
          this.noteRefused();
          continue;
        }
      }
      const off = meta[b + M_OFF] as number;
      const msg = bytes.subarray(off, off + (meta[b + M_LEN] as number));
      // Hot path: no closure unless the handler went async. Answers queue on
      // the socket and leave in one sendmmsg when the batch is done.
      let r: QueryResult;
      try {
        r = this.handler(msg, 'udp', new UdpSource(meta, i));
      } catch (err) {
        this.handlerError(err);
        continue;
      }
      if (r === undefined) continue;
      if (r instanceof Promise) {
        r.then(
          (out) => {
            if (out) sock.reply(out, meta, i);
          },
          (err) => this.handlerError(err),
        );
        continue;
      }
      sock.reply(r, meta, i);
    }
  }

  /**
   * Admission of a TCP connection under a policy: the source must be served,
   * its client under maxConnectionsPerClient; at the global cap the
   * longest-idle connection of the client holding the most makes room.
   */
  private admit(s: net.Socket): Conn | undefined | null {
    if (!this.policy) return null;
    const ip = s.remoteAddress ?? '';
    const client = net.isIPv4(ip) ? this.policy.client(ipToInt(ip), s.remotePort ?? 0, 'tcp') : -1;
    if (client < 0) {
      this.counters.tcpRefusedSource++;
      this.noteRefused();
      return undefined;
    }
    const mine = this.byClient.get(client);
    if (mine && mine.size >= this.maxPerClient) {
      this.counters.tcpPerClientRefused++;
      this.noteRefused();
      return undefined;
    }
    if (this.conns.size >= this.maxConnections) {
      let victims: Set<Conn> | undefined;
      for (const set of this.byClient.values()) if (!victims || set.size > victims.size) victims = set;
      let idlest: Conn | undefined;
      for (const c of victims ?? []) if (c.pending() === 0 && (!idlest || c.lastActive < idlest.lastActive)) idlest = c;
      if (!idlest) {
        // Every connection has queries in flight: none is idle, refuse.
        this.counters.tcpRefused++;
        return undefined;
      }
      this.counters.tcpEvicted++;
      this.noteRefused();
      idlest.sock.destroy();
      this.forget(idlest);
    }
    const conn: Conn = { sock: s, client, lastActive: Date.now(), pending: () => 0 };
    let set = this.byClient.get(client);
    if (!set) {
      set = new Set();
      this.byClient.set(client, set);
    }
    set.add(conn);
    return conn;
  }

  private forget(c: Conn): void {
    this.conns.delete(c.sock);
    const set = this.byClient.get(c.client);
    if (set?.delete(c) && set.size === 0) this.byClient.delete(c.client);
  }

  private onConn(s: net.Socket): void {
    const conn = this.admit(s);
    if (conn === undefined) {
      s.on('error', () => {});
      s.destroy();
      return;
    }
    this.counters.tcpConnections++;
    this.conns.add(s);
    const from: QuerySource = { address: s.remoteAddress ?? '', port: s.remotePort ?? 0 };
    let buf: Buffer | undefined;
    let pending = 0;
    let closed = false;
    const idle = setTimeout(() => {
      this.counters.tcpIdleClosed++;
      s.destroy();
    }, this.idleTimeoutMs);
    const reply = (out: Buffer) => {
      if (closed) return;
      const framed = Buffer.allocUnsafe(out.length + 2);
      framed.writeUInt16BE(out.length, 0);
      out.copy(framed, 2);
      s.write(framed);
      idle.refresh();
    };
    s.on('error', () => {
      // resets from clients are routine; 'close' follows
    });
    s.on('close', () => {
      closed = true;
      clearTimeout(idle);
      this.conns.delete(s);
      if (conn) this.forget(conn);
    });
    if (conn) conn.pending = () => pending;
    const pump = () => {
      while (buf && buf.length >= 2 && pending < this.maxPipelined && !closed) {
        const len = buf.readUInt16BE(0);
        if (len > this.maxMessageSize) {
          this.counters.tcpOversize++;
          s.destroy();
          return;
        }
        if (buf.length < 2 + len) break; // wait for the rest (or the idle timeout)
        const msg = buf.subarray(2, 2 + len);
        buf = buf.length === 2 + len ? undefined : buf.subarray(2 + len);
        this.counters.tcpReceived++;
        idle.refresh();
        if (conn) conn.lastActive = Date.now();
        const p = this.run(msg, 'tcp', from, reply);
        if (p) {
          pending++;
          void p.finally(() => {
            pending--;
            pump();
          });
        }
      }
      // Stop reading while too many queries are outstanding (bounded memory per connection).
      if (pending >= this.maxPipelined) s.pause();
      else if (s.isPaused()) s.resume();
    };
    s.on('data', (chunk: Buffer) => {
      buf = buf ? Buffer.concat([buf, chunk]) : chunk;
      pump();
    });
  }

  async close(): Promise<void> {
    clearInterval(this.bucketTimer);
    clearInterval(this.trustedTimer);
    for (const s of this.conns) s.destroy();
    this.conns.clear();
    this.byClient.clear();
    const ls = this.listeners.splice(0);
    await Promise.all(
      ls.map(
        (l) =>
          new Promise<void>((resolve) => {
            clearInterval(l.dropTimer);
            const st = l.udp.stats();
            this.closedDrops += udpDrops(st);
            this.closedSendErrors += st.sendDropped;
            this.closedFast += st.fastAnswered;
            l.udp.close();
            l.tcp.close(() => resolve());
          }),
      ),
    );
    this.bound = [];
  }
}

function udpDrops(st: DgramSocketStats): number {
  return st.kernelDrops + st.sendDropped + st.truncated;
}

function bindError(proto: string, host: string, port: number, err: Error): FakeproxyError {
  const code = (err as { code?: string }).code ?? 'EBIND';
  let fix = 'choose another address with --dns-listen';
  if (code === 'EADDRINUSE')
    fix = `another process (systemd-resolved, dnsmasq?) holds ${host}:${port}; stop it or choose another --dns-listen`;
  else if (code === 'EACCES')
    fix = `ports below 1024 need root or CAP_NET_BIND_SERVICE; or choose another --dns-listen`;
  else if (code === 'EADDRNOTAVAIL')
    fix = `${host} is not an address of this machine (yet); the gateway address exists only once the TUN is up`;
  return new FakeproxyError(code, `DNS ${proto} bind ${host}:${port}: ${err.message}: ${fix}`, { cause: err });
}
