/**
 * The run's environment: every namespace a scenario makes is registered here so
 * that the end of a scenario, an exception, or Ctrl-C deletes it; one temp dir
 * per run; tool lookup; bounded waits.
 *
 * Network rule: everything a scenario starts runs inside namespaces made through
 * `newNetns` (named fpt-<pid>-…); nothing touches the root namespace's links,
 * routes or firewall.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cleanupStale, Netns, run } from '../../test/e2e/harness/netns.js';

export { Netns, run };

/** Repository root (this file is dist/bench/lib/env.js once built). */
export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** The daemon under test; FAKEPROXY_BENCH_CLI points the bench at another build (e.g. a baseline checkout). */
export const CLI = process.env.FAKEPROXY_BENCH_CLI || join(ROOT, 'dist', 'src', 'cli.js');

export interface Ctx {
  reps: number;
  quick: boolean;
  /** Per-run temp dir (deleted at exit). */
  tmp: string;
  log(msg: string): void;
  /** Set by Ctrl-C: long loops check it and stop early. */
  aborted: boolean;
}

const live = new Set<Netns>();
let runTmp: string | undefined;

export async function newNetns(tag: string): Promise<Netns> {
  const ns = await Netns.create(tag);
  live.add(ns);
  return ns;
}

export async function deleteNetns(ns: Netns): Promise<void> {
  live.delete(ns);
  await ns.delete();
}

/** Deletes every namespace this run still holds (end of scenario, error, Ctrl-C). */
export async function deleteAllNetns(): Promise<void> {
  const all = [...live];
  live.clear();
  await Promise.allSettled(all.map((ns) => ns.delete()));
}

export async function removeStale(): Promise<string[]> {
  return cleanupStale();
}

export function makeTmp(): string {
  runTmp = mkdtempSync(join(tmpdir(), 'fpbench-'));
  return runTmp;
}

export function removeTmp(): void {
  if (runTmp) rmSync(runTmp, { recursive: true, force: true });
  runTmp = undefined;
}

const toolCache = new Map<string, string | undefined>();
/** Absolute path of a tool, or undefined when it is not installed. */
export function which(tool: string): string | undefined {
  if (toolCache.has(tool)) return toolCache.get(tool);
  let p: string | undefined;
  for (const d of (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (d && existsSync(join(d, tool))) {
      p = join(d, tool);
      break;
    }
  }
  toolCache.set(tool, p);
  return p;
}

/** Throws "needs <tool> (Debian package <pkg>)" when a tool is missing. */
export function need(tool: string, pkg = tool): string {
  const p = which(tool);
  if (!p) throw new Unavailable(`needs ${tool} (Debian package ${pkg})`);
  return p;
}

/** A row or section that cannot be measured here; not a failure of the run. */
export class Unavailable extends Error {}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a value, at most timeoutMs. */
export async function waitUntil<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 10_000,
  everyMs = 50,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined && v !== null && (v as unknown) !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Waits until something listens on ip:port (tcp) inside the namespace. */
export async function waitListening(
  ns: Netns,
  proto: 'tcp' | 'udp',
  ip: string,
  port: number,
  timeoutMs = 10_000,
): Promise<void> {
  await waitUntil(
    `${proto} ${ip}:${port} listening in ${ns.name}`,
    async () => {
      const r = await ns.exec('ss', [proto === 'tcp' ? '-Hltn' : '-Hlun', `( sport = :${port} )`]);
      return r.stdout.includes(`${ip}:${port}`) ||
        r.stdout.includes(`*:${port}`) ||
        r.stdout.includes(`0.0.0.0:${port}`)
        ? true
        : undefined;
    },
    timeoutMs,
    100,
  );
}

export function hostInfo(): { cpus: number; model: string; kernel: string; node: string } {
  let model = '';
  try {
    model = /model name\s*:\s*(.*)/.exec(execFileSync('cat', ['/proc/cpuinfo'], { encoding: 'utf8' }))?.[1] ?? '';
  } catch {
    // not fatal
  }
  let kernel = '';
  try {
    kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  } catch {
    // not fatal
  }
  return { cpus: cpus().length, model, kernel, node: process.version };
}
