/**
 * Throw-away network namespaces for end-to-end tests. Every namespace is
 * named fpt-<pid>-<n>, so a later run can tell a stale one (its pid is dead)
 * from one a concurrent run still uses, and delete only the former.
 *
 * Network rule: nothing here touches the root namespace's links or routes;
 * the fake range is routed only inside namespaces made here.
 */
import { type ChildProcess, execFile, type SpawnOptions, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);
export const PREFIX = 'fpt-';
let counter = 0;

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function run(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; input?: string } = {},
): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string }) | null;
        const code = e ? (typeof e.code === 'number' ? e.code : (child.exitCode ?? -1)) : 0;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Deletes fpt-* namespaces (and their /etc/netns dirs) left by runs that are no longer alive. */
export async function cleanupStale(): Promise<string[]> {
  const removed: string[] = [];
  const { stdout } = await run('ip', ['netns', 'list']);
  const names = stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter((n) => n?.startsWith(PREFIX));
  const etc = existsSync('/etc/netns') ? readdirSync('/etc/netns').filter((n) => n.startsWith(PREFIX)) : [];
  for (const n of new Set([...names, ...etc])) {
    const pid = Number(n.split('-')[1]);
    if (Number.isInteger(pid) && pid !== process.pid && pidAlive(pid)) continue;
    await killNamespaceProcesses(n);
    await run('ip', ['netns', 'del', n]);
    rmSync(`/etc/netns/${n}`, { recursive: true, force: true });
    removed.push(n);
  }
  return removed;
}

async function killNamespaceProcesses(name: string): Promise<void> {
  const { stdout } = await run('ip', ['netns', 'pids', name]);
  for (const p of stdout
    .split('\n')
    .map(Number)
    .filter((x) => x > 0)) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

export class Netns {
  private readonly children = new Set<ChildProcess>();
  private constructor(readonly name: string) {}

  /** Creates fpt-<pid>-<n>[-tag] with loopback up. */
  static async create(tag = ''): Promise<Netns> {
    const name = `${PREFIX}${process.pid}-${++counter}${tag ? `-${tag}` : ''}`.slice(0, 60);
    const r = await run('ip', ['netns', 'add', name]);
    if (r.code !== 0) throw new Error(`ip netns add ${name}: ${r.stderr.trim()}`);
    const ns = new Netns(name);
    await ns.must('ip', ['link', 'set', 'lo', 'up']);
    return ns;
  }

  /** Writes /etc/netns/<ns>/<file>; `ip netns exec` bind-mounts it over /etc/<file>. */
  writeEtc(file: 'resolv.conf' | 'hosts', text: string): void {
    mkdirSync(`/etc/netns/${this.name}`, { recursive: true });
    writeFileSync(`/etc/netns/${this.name}/${file}`, text);
  }

  exec(cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
    return run('ip', ['netns', 'exec', this.name, cmd, ...args], opts);
  }

  /** Like exec, but throws with stderr when the command fails. */
  async must(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
    const r = await this.exec(cmd, args, opts);
    if (r.code !== 0) throw new Error(`[${this.name}] ${cmd} ${args.join(' ')} → ${r.code}: ${r.stderr.trim()}`);
    return r.stdout;
  }

  /** Long-running process inside the namespace; killed by delete(). */
  spawn(cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', this.name, cmd, ...args], { stdio: 'pipe', ...opts });
    // Keep the pipes flowing even when no one listens: a chatty server
    // (microsocks logs every connection) would otherwise block once the
    // 64 KiB pipe buffer fills. Listeners attached in the same tick still
    // see everything.
    child.stdout?.resume();
    child.stderr?.resume();
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  async delete(): Promise<void> {
    for (const c of this.children) c.kill('SIGKILL');
    await killNamespaceProcesses(this.name);
    await run('ip', ['netns', 'del', this.name]);
    rmSync(`/etc/netns/${this.name}`, { recursive: true, force: true });
  }
}

/**
 * Joins two namespaces with a veth pair on a /30 (a = .1, b = .2). The subnet
 * defaults to one in 10.201.0.0/16 picked from the counter; it exists only
 * inside the two namespaces.
 */
export async function vethPair(a: Netns, b: Netns, subnet?: string): Promise<{ aIp: string; bIp: string }> {
  const n = ++counter;
  const base = subnet ?? `10.201.${n % 250}.0`;
  const p = base.split('.').map(Number);
  const aIp = `${p[0]}.${p[1]}.${p[2]}.${p[3] + 1}`;
  const bIp = `${p[0]}.${p[1]}.${p[2]}.${p[3] + 2}`;
  const ifA = `fpv${process.pid % 100000}a${n}`.slice(0, 15);
  const ifB = `fpv${process.pid % 100000}b${n}`.slice(0, 15);
  // Created directly inside namespace a, then one end moved to b: the pair never exists in the root namespace.
  await a.must('ip', ['link', 'add', ifA, 'type', 'veth', 'peer', 'name', ifB]);
  await a.must('ip', ['link', 'set', ifB, 'netns', b.name]);
  await a.must('ip', ['addr', 'add', `${aIp}/30`, 'dev', ifA]);
  await b.must('ip', ['addr', 'add', `${bIp}/30`, 'dev', ifB]);
  await a.must('ip', ['link', 'set', ifA, 'up']);
  await b.must('ip', ['link', 'set', ifB, 'up']);
  return { aIp, bIp };
}

/** The interface that carries `ip` inside `ns`. */
export async function ifaceOf(ns: Netns, ip: string): Promise<string> {
  const out = await ns.must('ip', ['-o', '-4', 'addr', 'show']);
  const name = out
    .split('\n')
    .find((l) => l.includes(` ${ip}/`))
    ?.split(/\s+/)[1];
  if (!name) throw new Error(`[${ns.name}] no interface has ${ip}: ${out}`);
  return name;
}

/** Why e2e cannot run here, or undefined when it can. */
export function e2eUnavailableReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'e2e tests need root (network namespaces, TUN devices)';
  if (!existsSync('/dev/net/tun')) return 'e2e tests need /dev/net/tun';
  return undefined;
}

export { execFileP };
