/**
 * The daemon's read-only status endpoint: `fakeproxy status` asks the running
 * daemon for its counters without Redis. The socket is an *abstract* Unix
 * socket (`\0fakeproxy/<tun>`): it lives in the network namespace, not on
 * disk, so daemons in different namespaces never collide, nothing is left
 * behind after a crash, and you see the daemon of the namespace you are in.
 * It only reports counters (no flow details, no control).
 */
import * as net from 'node:net';
import { FakeproxyError } from './errors.js';
import { resourceAlarm } from './util/exhaustion.js';

export const controlPath = (tun: string) => `\0fakeproxy/${tun}`;

export type Status = Record<string, unknown>;

/**
 * Listens on one of the daemon's abstract sockets. `busy` is the error when
 * the name is taken. After listening, an accept failure (EMFILE/ENFILE once
 * libuv's reserve fd is spent) goes to the resource alarm or `log`: net.Server
 * emits it as 'error', and with no listener left that would end the daemon.
 */
export function listenAbstract(
  path: string,
  onConn: (sock: net.Socket) => void,
  what: string,
  log: (line: string) => void,
  busy?: (e: NodeJS.ErrnoException) => Error,
): Promise<net.Server> {
  const server = net.createServer((sock) => {
    sock.on('error', () => sock.destroy());
    onConn(sock);
  });
  return new Promise((resolve, reject) => {
    const onListenError = (e: NodeJS.ErrnoException) => reject(e.code === 'EADDRINUSE' && busy ? busy(e) : e);
    server.once('error', onListenError);
    server.listen(path, () => {
      server.off('error', onListenError);
      server.on('error', (e) => {
        if (!resourceAlarm.check(e, `${what} accept`)) log(`${what} socket: ${e.message}`);
      });
      resolve(server);
    });
  });
}

export class ControlServer {
  private server?: net.Server;
  constructor(
    private readonly tun: string,
    private readonly status: () => Status,
    private readonly log: (line: string) => void = () => {},
  ) {}

  async start(): Promise<void> {
    this.server = await listenAbstract(
      controlPath(this.tun),
      (sock) => {
        try {
          sock.end(`${JSON.stringify(this.status())}\n`);
        } catch (e) {
          sock.end(`${JSON.stringify({ error: (e as Error).message })}\n`);
        }
      },
      'status',
      this.log,
      () =>
        new FakeproxyError(
          'EBUSY',
          `EBUSY: device ${this.tun} is held by another process (another fakeproxy serves it in this network namespace): stop it or choose another --tun name`,
        ),
    );
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/**
 * One exchange with the daemon serving `tun` on one of its abstract sockets:
 * writes `request` (if any), resolves with everything it answered before
 * closing. `hint` ends the "not running" message.
 */
export function askDaemon(
  path: string,
  tun: string,
  request: string | undefined,
  timeoutMs: number,
  hint = '--tun NAME',
): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(path);
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new FakeproxyError('ETIMEDOUT', `the daemon serving ${tun} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    if (request !== undefined) sock.on('connect', () => sock.write(request));
    sock.on('data', (d: string) => {
      buf += d;
    });
    sock.on('end', () => {
      clearTimeout(timer);
      resolve(buf);
    });
    sock.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        e.code === 'ECONNREFUSED' || e.code === 'ENOENT'
          ? new FakeproxyError(
              'ENOTRUNNING',
              `no fakeproxy serves ${tun} in this network namespace (is it running? ${hint})`,
            )
          : e,
      );
    });
  });
}

/** Reads the status of the daemon serving `tun` in this network namespace. */
export async function readStatus(tun: string, timeoutMs = 3000): Promise<Status> {
  const buf = await askDaemon(controlPath(tun), tun, undefined, timeoutMs);
  if (buf === '') {
    // libuv accepts and closes at once when the daemon has no fd left (EMFILE).
    throw new FakeproxyError(
      'EMFILE',
      `the daemon serving ${tun} closed the status connection without answering: it is probably out of file descriptors (EMFILE); its log says since when, raise its fd limit (LimitNOFILE, ulimit -n)`,
    );
  }
  let s: Status;
  try {
    s = JSON.parse(buf) as Status;
  } catch {
    throw new FakeproxyError('EPROTO', `unreadable status from the daemon serving ${tun}`);
  }
  if (typeof s.error === 'string') {
    throw new FakeproxyError('ESTATUS', `the daemon serving ${tun} could not report its status: ${s.error}`);
  }
  return s;
}

const num = (o: unknown, k: string): number => {
  const v = (o as Record<string, unknown> | null)?.[k];
  return typeof v === 'number' ? v : 0;
};
const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

/** A few lines for people; `--json` prints the whole object instead. */
export function formatStatus(s: Status): string {
  const tun = s.tun as {
    name: string;
    range: string;
    mtu: number;
    queues: number;
    kernelTxDropped?: number | null;
  } | null;
  const e = s.engine;
  const drops = Object.entries((e as Record<string, number>) ?? {})
    .filter(([k, v]) => k.startsWith('drop') && v > 0)
    .map(([k, v]) => `${k.slice(4, 5).toLowerCase()}${k.slice(5)} ${v}`);
  // Before the engine: the kernel dropped these at the TUN's full transmit queue.
  if (tun && typeof tun.kernelTxDropped === 'number' && tun.kernelTxDropped > 0) {
    drops.push(`tun kernel tx queue ${tun.kernelTxDropped}`);
  }
  const lines = [
    `fakeproxy ${tun ? `on ${tun.name} ${tun.range} (mtu ${tun.mtu}, ${tun.queues} queue(s))` : '(starting)'}, pid ${s.pid}, up ${s.uptimeSec}s, rss ${typeof s.rssBytes === 'number' ? mib(s.rssBytes) : 'unknown'}, upstream ${s.upstream ?? 'none'}`,
    `engine: ${num(e, 'flowsActive')} flows (tcp ${num(e, 'tcpFlows')}, udp ${num(e, 'udpFlows')}), created ${num(e, 'flowsCreated')}, refused ${num(e, 'flowsRefused')}, half-open ${num(e, 'halfOpenFlows')} (early-dropped ${num(e, 'flowsEarlyDropped')}, revived ${num(e, 'flowsRevived')}, first SYNs dropped ${num(e, 'firstSynDropped')}, capped ${num(e, 'halfOpenCapped')}), rst ignored ${num(e, 'rstIgnored')}, packets in ${num(e, 'pktsIn')} out ${num(e, 'pktsOut')}, table ${mib(num(e, 'memoryBytes'))}`,
    `drops: ${drops.length ? drops.join(', ') : 'none'}`,
    `dns: ${num(s.dns, 'queries')} queries, ${num(s.dns, 'fakeA')} fake answers (${num(s.dns, 'fastAnswered')} of them native), ${num(s.dns, 'forwarded')} forwarded, ${num(s.dns, 'upstreamFailures')} upstream failures, ${num(s.dns, 'poolMapped')}/${num(s.dns, 'poolCapacity')} names mapped`,
    `tcp: ${num(s.tcp, 'active')} active, ${num(s.tcp, 'accepted')} accepted, ${num(s.tcp, 'connectFailed')} upstream failures, ${num(s.tcp, 'rejectedPeers')} rejected peers${typeof (s.tcp as { droppedForeignIngress?: number } | undefined)?.droppedForeignIngress === 'number' ? `, ${num(s.tcp, 'droppedForeignIngress')} spoofed segments dropped` : ''}`,
  ];
  if (s.udp) lines.push(`udp: ${JSON.stringify(s.udp)}`);
  if (s.redis) {
    lines.push(
      `redis: ${(s.redis as { connected?: boolean }).connected ? 'connected' : 'disconnected'}, ${num(s.redis, 'written')} written, ${num(s.redis, 'dropped')} dropped, ${num(s.redis, 'resyncs')} resyncs`,
    );
  }
  return `${lines.join('\n')}\n`;
}
