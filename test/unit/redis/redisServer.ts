/**
 * A real redis-server for the tests, on 127.0.0.1 and a free port, with no
 * persistence. stop()/start() keep the port so clients can reconnect to "the
 * same Redis" after an outage.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
export const REDIS_SERVER = '/usr/bin/redis-server';

export async function freePort(): Promise<number> {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as net.AddressInfo).port;
  srv.close();
  await once(srv, 'close');
  return port;
}

export class TestRedis {
  private proc?: ChildProcess;
  /** Working dir: a SAVE before stop() makes the next start() load the data (a restart that keeps state). */
  readonly dir = mkdtempSync(join(tmpdir(), 'fp-redis-'));
  private constructor(
    readonly port: number,
    readonly password?: string,
    readonly extraArgs: string[] = [],
  ) {}

  /** `args`: more redis-server options, e.g. ['--replicaof', '127.0.0.1', '6379']. */
  static async start(opts: { password?: string; port?: number; args?: string[] } = {}): Promise<TestRedis> {
    const r = new TestRedis(opts.port ?? (await freePort()), opts.password, opts.args);
    await r.start();
    return r;
  }

  /** Send a signal to the server (SIGSTOP/SIGCONT: a replica that is connected but does not answer). */
  signal(sig: NodeJS.Signals): void {
    this.proc?.kill(sig);
  }

  get url(): string {
    return this.password ? `redis://:${this.password}@127.0.0.1:${this.port}` : `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const args = [
      '--save',
      '',
      '--appendonly',
      'no',
      '--port',
      String(this.port),
      '--bind',
      '127.0.0.1',
      '--dir',
      this.dir,
    ];
    if (this.password) args.push('--requirepass', this.password);
    args.push(...this.extraArgs);
    const proc = spawn(REDIS_SERVER, args, { stdio: 'ignore' });
    this.proc = proc;
    const deadline = Date.now() + 10_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`redis-server exited with ${proc.exitCode}`);
      try {
        const out = await this.cli('PING');
        if (out.trim() === 'PONG') return;
      } catch {
        /* not up yet */
      }
      if (Date.now() > deadline) throw new Error('redis-server did not answer PING within 10 s');
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    proc.kill('SIGKILL');
    await once(proc, 'exit');
    this.proc = undefined;
  }

  /** Stop for good and remove the working dir. */
  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Run redis-cli against this server; returns stdout (raw mode, one reply element per line). */
  async cli(...args: string[]): Promise<string> {
    const auth = this.password ? ['-a', this.password, '--no-auth-warning'] : [];
    const { stdout } = await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(this.port), ...auth, ...args]);
    return stdout;
  }

  async cliLines(...args: string[]): Promise<string[]> {
    return (await this.cli(...args)).split('\n').filter((l) => l !== '');
  }
}

/** Poll until `fn` returns a truthy value (or stops throwing); generous deadline, no timing assertions. */
export async function eventually<T>(fn: () => Promise<T> | T, what: string, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
      last = new Error(`not yet: ${what}`);
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out waiting for ${what}: ${String((last as Error)?.message ?? last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface CapturedLog {
  lines: string[];
  info(msg: string): void;
  warn(msg: string): void;
}

export function captureLog(): CapturedLog {
  const lines: string[] = [];
  return { lines, info: (m) => lines.push(`info ${m}`), warn: (m) => lines.push(`warn ${m}`) };
}

/**
 * A real redis-sentinel on 127.0.0.1 watching `primary` as "mymaster"
 * (quorum 1). It answers get-master-addr-by-name from its configuration at
 * once, so clients can resolve the primary without waiting for discovery.
 */
export class TestSentinel {
  private constructor(
    readonly port: number,
    private readonly proc: ChildProcess,
    private readonly dir: string,
    readonly password?: string,
  ) {}

  static async start(primary: TestRedis, opts: { password?: string } = {}): Promise<TestSentinel> {
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'fp-sentinel-'));
    const conf = join(dir, 'sentinel.conf');
    const lines = [
      `port ${port}`,
      'bind 127.0.0.1',
      `dir ${dir}`,
      `sentinel monitor mymaster 127.0.0.1 ${primary.port} 1`,
      ...(primary.password ? [`sentinel auth-pass mymaster ${primary.password}`] : []),
      ...(opts.password ? [`requirepass ${opts.password}`] : []),
    ];
    writeFileSync(conf, `${lines.join('\n')}\n`);
    const proc = spawn('/usr/bin/redis-sentinel', [conf], { stdio: 'ignore' });
    const s = new TestSentinel(port, proc, dir, opts.password);
    await eventually(
      async () => {
        if (proc.exitCode !== null) throw new Error(`redis-sentinel exited with ${proc.exitCode}`);
        const auth = opts.password ? ['-a', opts.password, '--no-auth-warning'] : [];
        const { stdout } = await execFileP('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...auth, 'PING']);
        return stdout.trim() === 'PONG';
      },
      'redis-sentinel to answer PING',
      10_000,
    );
    return s;
  }

  async destroy(): Promise<void> {
    if (this.proc.exitCode === null) {
      this.proc.kill('SIGKILL');
      await once(this.proc, 'exit');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
