import { type Logger, stderrLogger } from './log.js';
import type { StartConfig } from './config.js';
import { isPublicSpace } from './util/cidr.js';
import { TunDevice } from './tun/TunDevice.js';

export interface DaemonDeps {
  log?: Logger;
  /** Start-up report lines (stdout). */
  say?: (line: string) => void;
}

/**
 * Wires the parts together; owns nothing but their lifetimes. Teardown runs in
 * the reverse order of start-up and is safe to call twice.
 */
export class Daemon {
  private tun?: TunDevice;
  private readonly closers: (() => void | Promise<void>)[] = [];
  private stopping?: Promise<void>;
  private resolveStopped!: () => void;
  /** Resolves once stop() has finished. */
  readonly stopped = new Promise<void>((r) => {
    this.resolveStopped = r;
  });
  readonly log: Logger;
  private readonly say: (line: string) => void;

  constructor(
    readonly config: StartConfig,
    deps: DaemonDeps = {},
  ) {
    this.log = deps.log ?? stderrLogger;
    this.say = deps.say ?? ((l) => process.stdout.write(`${l}\n`));
  }

  async start(): Promise<void> {
    const c = this.config;
    if (isPublicSpace(c.cidr)) {
      this.log(
        `warning: ${c.cidr.text} is public address space: real hosts in it are unreachable while fakeproxy runs (198.18.0.0/16 is reserved and safe)`,
      );
    }
    try {
      this.tun = TunDevice.open({ name: c.tun, range: c.cidr, mtu: c.mtu, queues: c.queues });
      const tun = this.tun;
      this.closers.push(() => tun.close());
      this.say(`device ${tun.name} up (mtu ${tun.mtu}, ${tun.fds.length} queue${tun.fds.length > 1 ? 's' : ''})`);
      this.say(`address ${tun.address}/${c.cidr.prefixLen}`);
      this.say(`route ${c.cidr.text} dev ${tun.name}`);
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  /** Synchronous last-resort teardown for process 'exit' (uncaught errors). */
  closeSync(): void {
    this.tun?.close();
  }

  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = (async () => {
        for (const close of this.closers.reverse()) {
          try {
            await close();
          } catch (e) {
            this.log(`teardown: ${(e as Error).message}`);
          }
        }
        this.resolveStopped();
      })();
    }
    return this.stopping;
  }
}
