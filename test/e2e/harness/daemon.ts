import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cliNodeFlags } from '../../../src/util/nodeFlags.js';
import type { Netns } from './netns.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** The compiled CLI: e2e tests run what users run (`npm run build` first). */
export const CLI = join(ROOT, 'dist', 'src', 'cli.js');
/** `node` and the flags on cli.js's #! line, as `fakeproxy …` runs it (src/util/nodeFlags.ts). */
const nodeCmd = (): string[] => ['node', ...cliNodeFlags(CLI)];

export function assertBuilt(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run \`npm run build\` before the e2e suite`);
}

/** A `fakeproxy` process running inside a namespace, with its output captured. */
export class DaemonProc {
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  private constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      this.stdout += d;
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve(code ?? (sig ? -1 : null))));
  }

  /** `wrap`: a command that runs the daemon (e.g. setpriv with its flags). */
  static start(ns: Netns, args: string[], env: NodeJS.ProcessEnv = {}, wrap: string[] = []): DaemonProc {
    assertBuilt();
    const [cmd, ...rest] = [...wrap, ...nodeCmd(), CLI, ...args] as [string, ...string[]];
    const child = ns.spawn(cmd, rest, { env: { ...process.env, ...env } });
    return new DaemonProc(child);
  }

  get output(): string {
    return this.stdout + this.stderr;
  }

  /** Resolves when the combined output matches, rejects if the process exits first or after timeoutMs. */
  async waitFor(re: RegExp, timeoutMs = 15_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void this.exited.then(() => {
      exited = true;
    });
    for (;;) {
      const m = this.output.match(re);
      if (m) return m;
      if (exited) throw new Error(`daemon exited before ${re}: ${this.output}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${re}; output so far:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 10_000): Promise<number | null> {
    if (this.child.exitCode !== null) return this.child.exitCode;
    // `ip netns exec` execs the command, so the child pid is the daemon itself.
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }
}

/** Runs the CLI to completion (for usage errors and one-shot commands). */
export async function runCli(
  ns: Netns | undefined,
  args: string[],
  opts: { timeoutMs?: number; asUser?: number } = {},
) {
  const { run } = await import('./netns.js');
  assertBuilt();
  const base =
    opts.asUser !== undefined
      ? ['setpriv', `--reuid=${opts.asUser}`, `--regid=${opts.asUser}`, '--clear-groups', ...nodeCmd(), CLI, ...args]
      : [...nodeCmd(), CLI, ...args];
  return ns ? ns.exec(base[0], base.slice(1), opts) : run(base[0], base.slice(1), opts);
}
