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
 * The handler may return synchronously (the fast path for fake answers) or a
 * promise; a throw or rejection is logged and the query dropped — nothing
 * escapes into the event loop.
 */
import dgram from 'node:dgram';
import { lookup as dnsLookup } from 'node:dns';
import net from 'node:net';
import { FakeproxyError } from '../errors.js';

export type QueryResult = Buffer | undefined | Promise<Buffer | undefined>;
export type QueryHandler = (msg: Buffer, proto: 'udp' | 'tcp') => QueryResult;

export interface DnsServerOptions {
  /** @default 10000 ms — RFC 7766 §6.2.3 asks servers to close idle connections; a few seconds frees them fast while letting a stub pipeline. */
  idleTimeoutMs?: number;
  /** Largest TCP query accepted. @default 16384 — queries are small; this stops a client from making us buffer 64 KiB per connection. */
  maxMessageSize?: number;
  /** @default 256 */
  maxConnections?: number;
  /** @default 32 */
  maxPipelined?: number;
  logger?: (line: string) => void;
}

export interface ServerStats {
  udpReceived: number;
  tcpReceived: number;
  tcpConnections: number;
  tcpRefused: number;
  tcpIdleClosed: number;
  tcpOversize: number;
  handlerErrors: number;
  sendErrors: number;
}

interface Listener {
  udp: dgram.Socket;
  tcp: net.Server;
}

export class DnsServer {
  readonly stats: ServerStats = {
    udpReceived: 0,
    tcpReceived: 0,
    tcpConnections: 0,
    tcpRefused: 0,
    tcpIdleClosed: 0,
    tcpOversize: 0,
    handlerErrors: 0,
    sendErrors: 0,
  };
  private readonly listeners: Listener[] = [];
  private readonly conns = new Set<net.Socket>();
  private readonly idleTimeoutMs: number;
  private readonly maxMessageSize: number;
  private readonly maxConnections: number;
  private readonly maxPipelined: number;
  private readonly log: (line: string) => void;
  private bound: { host: string; port: number }[] = [];

  constructor(
    private readonly handler: QueryHandler,
    opts: DnsServerOptions = {},
  ) {
    this.idleTimeoutMs = opts.idleTimeoutMs ?? 10_000;
    this.maxMessageSize = opts.maxMessageSize ?? 16_384;
    this.maxConnections = opts.maxConnections ?? 256;
    this.maxPipelined = opts.maxPipelined ?? 32;
    this.log = opts.logger ?? (() => {});
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
        this.bound.push({ host: a.host, port: (l.udp.address() as { port: number }).port });
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
      const udp = await this.bindUdp(host, port);
      const actual = (udp.address() as { port: number }).port;
      try {
        const tcp = await this.bindTcp(host, actual);
        return { udp, tcp };
      } catch (err) {
        udp.close();
        if (port !== 0 || attempt >= 10 || (err as { code?: string }).code !== 'EADDRINUSE') throw err;
      }
    }
  }

  private bindUdp(host: string, port: number): Promise<dgram.Socket> {
    return new Promise((resolve, reject) => {
      const sock = dgram.createSocket({ type: net.isIPv6(host) ? 'udp6' : 'udp4', lookup: literalLookup });
      const onError = (err: Error) => reject(bindError('UDP', host, port, err));
      sock.once('error', onError);
      sock.bind(port, host, () => {
        sock.off('error', onError);
        sock.on('error', (err) => {
          // Send failures (e.g. ENOBUFS under a flood) land here; count, log a few.
          if (++this.stats.sendErrors <= 10 || this.stats.sendErrors % 10_000 === 0) {
            this.log(`dns: UDP socket on ${host}:${port} (${this.stats.sendErrors} errors so far): ${err.message}`);
          }
        });
        try {
          // Room for a burst while the loop is busy; the kernel caps it at rmem_max.
          sock.setRecvBufferSize(1 << 21);
        } catch {
          // not fatal
        }
        sock.on('message', (msg, rinfo) => this.onUdp(sock, msg, rinfo));
        resolve(sock);
      });
    });
  }

  private bindTcp(host: string, port: number): Promise<net.Server> {
    return new Promise((resolve, reject) => {
      const srv = net.createServer({ noDelay: true }, (s) => this.onConn(s));
      srv.maxConnections = this.maxConnections;
      srv.on('drop', () => {
        this.stats.tcpRefused++;
      });
      const onError = (err: Error) => reject(bindError('TCP', host, port, err));
      srv.once('error', onError);
      srv.listen({ host, port, exclusive: true }, () => {
        srv.off('error', onError);
        srv.on('error', (err) => this.log(`dns: TCP server on ${host}:${port}: ${err.message}`));
        resolve(srv);
      });
    });
  }

  private run(msg: Buffer, proto: 'udp' | 'tcp', reply: (out: Buffer) => void): Promise<void> | undefined {
    let r: QueryResult;
    try {
      r = this.handler(msg, proto);
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
    this.stats.handlerErrors++;
    if (this.stats.handlerErrors <= 10 || this.stats.handlerErrors % 1000 === 0) {
      this.log(`dns: query handler failed (${this.stats.handlerErrors} so far): ${(err as Error)?.message ?? err}`);
    }
  }

  private onUdp(sock: dgram.Socket, msg: Buffer, rinfo: dgram.RemoteInfo): void {
    this.stats.udpReceived++;
    // Hot path: no closure unless the handler went async; send errors surface on the socket's 'error' listener.
    let r: QueryResult;
    try {
      r = this.handler(msg, 'udp');
    } catch (err) {
      this.handlerError(err);
      return;
    }
    if (r === undefined) return;
    if (r instanceof Promise) {
      r.then(
        (out) => {
          if (out) this.udpSend(sock, out, rinfo);
        },
        (err) => this.handlerError(err),
      );
      return;
    }
    this.udpSend(sock, r, rinfo);
  }

  private udpSend(sock: dgram.Socket, out: Buffer, rinfo: dgram.RemoteInfo): void {
    try {
      sock.send(out, rinfo.port, rinfo.address);
    } catch {
      // The socket was closed while an upstream answer was pending (shutdown).
      this.stats.sendErrors++;
    }
  }

  private onConn(s: net.Socket): void {
    this.stats.tcpConnections++;
    this.conns.add(s);
    let buf: Buffer | undefined;
    let pending = 0;
    let closed = false;
    const idle = setTimeout(() => {
      this.stats.tcpIdleClosed++;
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
    });
    const pump = () => {
      while (buf && buf.length >= 2 && pending < this.maxPipelined && !closed) {
        const len = buf.readUInt16BE(0);
        if (len > this.maxMessageSize) {
          this.stats.tcpOversize++;
          s.destroy();
          return;
        }
        if (buf.length < 2 + len) break; // wait for the rest (or the idle timeout)
        const msg = buf.subarray(2, 2 + len);
        buf = buf.length === 2 + len ? undefined : buf.subarray(2 + len);
        this.stats.tcpReceived++;
        idle.refresh();
        const p = this.run(msg, 'tcp', reply);
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
    for (const s of this.conns) s.destroy();
    this.conns.clear();
    const ls = this.listeners.splice(0);
    await Promise.all(
      ls.map(
        (l) =>
          new Promise<void>((resolve) => {
            let n = 2;
            const one = () => {
              if (--n === 0) resolve();
            };
            try {
              l.udp.close(one);
            } catch {
              one();
            }
            l.tcp.close(() => one());
          }),
      ),
    );
    this.bound = [];
  }
}

/**
 * dgram resolves the destination of every send through `lookup` (dns.lookup by
 * default, which answers an IP literal on the next tick). We only ever send to
 * the literal address a query came from, so answer synchronously: one less
 * tick and closure per answer on the hot path.
 */
function literalLookup(
  address: string,
  family: unknown,
  callback: (err: NodeJS.ErrnoException | null, address: string, family: number) => void,
): void {
  const f = net.isIP(address);
  if (f !== 0) callback(null, address, f);
  else dnsLookup(address, family as number, callback);
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
