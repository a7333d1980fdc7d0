/**
 * Commands to the running daemon (`fakeproxy route`, `fakeproxy select`,
 * `fakeproxy reload`): one JSON line in, one JSON line out, over an abstract
 * Unix socket beside the status socket of src/control.ts (`\0fakeproxy/<tun>/cmd`),
 * so it too lives in the network namespace and leaves nothing behind. Only
 * root (or whoever may enter the namespace) can reach it; the Clash
 * controller API is a separate, later piece.
 */
import type * as net from 'node:net';
import { askDaemon, controlPath, listenAbstract } from './control.js';
import { FakeproxyError } from './errors.js';

export const commandPath = (tun: string) => `${controlPath(tun)}/cmd`;

export type CommandRequest =
  | { cmd: 'route'; name: string; port: number; udp: boolean; src?: string | undefined; srcPort?: number | undefined }
  | { cmd: 'select'; group: string; proxy: string }
  | { cmd: 'reload' }
  | { cmd: 'groups' };

export type CommandReply = { ok: true; [k: string]: unknown } | { ok: false; error: string };

/** Longest request line accepted; a route query is far shorter. */
const MAX_REQUEST_BYTES = 4096;

export class CommandServer {
  #server?: net.Server;
  constructor(
    private readonly tun: string,
    private readonly handle: (req: CommandRequest) => CommandReply | Promise<CommandReply>,
    private readonly log: (line: string) => void = () => {},
  ) {}

  async start(): Promise<void> {
    this.#server = await listenAbstract(
      commandPath(this.tun),
      (sock) => {
        let buf = '';
        sock.setEncoding('utf8');
        sock.on('data', (d: string) => {
          buf += d;
          const nl = buf.indexOf('\n');
          if (nl < 0 && buf.length <= MAX_REQUEST_BYTES) return;
          sock.removeAllListeners('data');
          const line = nl < 0 ? buf : buf.slice(0, nl);
          void this.#answer(line).then((reply) => sock.end(`${JSON.stringify(reply)}\n`));
        });
      },
      'command',
      this.log,
    );
  }

  async #answer(line: string): Promise<CommandReply> {
    let req: CommandRequest;
    try {
      req = JSON.parse(line) as CommandRequest;
    } catch {
      return { ok: false, error: 'not a JSON request line' };
    }
    try {
      return await this.handle(req);
    } catch (e) {
      return { ok: false, error: (e as Error).message };
    }
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.#server ? this.#server.close(() => resolve()) : resolve()));
  }
}

/** Sends one command to the daemon serving `tun` in this namespace. */
export async function sendCommand(tun: string, req: CommandRequest, timeoutMs = 5000): Promise<CommandReply> {
  const buf = await askDaemon(
    commandPath(tun),
    tun,
    `${JSON.stringify(req)}\n`,
    timeoutMs,
    '--tun NAME; or evaluate a file offline with --config FILE',
  );
  try {
    return JSON.parse(buf) as CommandReply;
  } catch {
    throw new FakeproxyError('EPROTO', `unreadable answer from the daemon serving ${tun}`);
  }
}
