/**
 * The teardown journal: every change the daemon makes to the system outside
 * its own process (resolver file contents, routes, `ip rule`s, nftables
 * tables, sysctls) is written here, with the way to undo it, BEFORE it is
 * made; it is undone in reverse order on every exit path (stop, signals,
 * a fatal error, process 'exit'), and after a kill -9 by `fakeproxy cleanup`
 * or the next start (DESIGN.md "global": "journaled first, removed on every
 * exit path, undone by `fakeproxy cleanup`").
 *
 * Usage (all synchronous, so it also works in a process 'exit' handler):
 *
 *   const td = TeardownJournal.open({ stateDir, tun, log });   // undoes a killed daemon's leftovers first
 *   const h = td.exec(['ip', 'rule', 'add', …], ['ip', 'rule', 'del', …], 'ip rule fwmark 0x1');
 *   td.writeFile('/etc/resolv.conf', 'nameserver 198.18.0.1\n', 'system resolver');
 *   td.sysctl('net.ipv4.ip_forward', '1');
 *   td.undo(h);      // undo one change early (optional)
 *   td.undoAll();    // reverse order; removes the journal file
 *
 * File: `<stateDir>/teardown-<tun>.jsonl`, one JSON object a line, each
 * append fdatasync'd: a header (owner pid + its start time, network
 * namespace), then `{"id":n,"step":…}` per change and `{"done":n}` per undo.
 * A torn last line (killed mid-append) is skipped: its change was never
 * made, because the change comes only after the append is durable. Nothing
 * is written until the first change, so a daemon that changes nothing
 * leaves no file. Without a state dir (`--state-dir ''`) the journal lives
 * in memory: exit paths still undo, a kill -9 cannot be.
 *
 * Undo is idempotent and tolerant: a file is restored only while it still
 * holds what we wrote (someone else's later edit is kept and named in the
 * log); a failed undo command (the rule is already gone) is logged and the
 * rest still run. A leftover journal is undone only when its owner is dead
 * (pid + start time) and it was written in this network namespace.
 */
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  fdatasyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readlinkSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { FakeproxyError } from '../errors.js';
import { fsyncDirSync, readIfExistsSync } from '../util/stateFile.js';

/** How to undo one change. */
export type UndoStep =
  /** Put a file's bytes back (base64; `before` null: it did not exist → remove it) if it still holds `after`. */
  | { kind: 'file'; path: string; before: string | null; after: string; what: string }
  /** Run a command (argv, no shell); a non-zero exit is logged, not fatal. */
  | { kind: 'exec'; argv: string[]; what: string };

/** A change recorded in the journal, for `undo()`. */
export interface Change {
  readonly id: number;
  readonly step: UndoStep;
}

/** Runs argv without a shell; returns the exit status and stderr. Injectable for tests. */
export type Runner = (argv: readonly string[]) => { status: number | null; stderr: string; error?: Error };

export const defaultRunner: Runner = (argv) => {
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
  return { status: r.status, stderr: r.stderr ?? '', ...(r.error ? { error: r.error } : {}) };
};

export interface TeardownOptions {
  /** The state dir; null or '' keeps the journal in memory only. */
  stateDir: string | null;
  /** The TUN name: one journal per device, so two daemons may share a state dir. */
  tun: string;
  log: (line: string) => void;
  run?: Runner;
}

interface Header {
  v: 1;
  pid: number;
  /** /proc/<pid>/stat start time (clock ticks since boot): tells a reused pid apart. */
  start: string;
  netns: string;
}

export const teardownFile = (stateDir: string, tun: string) => join(stateDir, `teardown-${tun}.jsonl`);

function procStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 22; the command name (field 2) may hold spaces and parentheses.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

function currentNetns(): string {
  try {
    return readlinkSync('/proc/self/ns/net');
  } catch {
    return 'unknown';
  }
}

const b64 = (b: Buffer | string) => (typeof b === 'string' ? Buffer.from(b) : b).toString('base64');

/** Parsed journal: header, the changes not yet undone (in order), torn lines skipped. */
function parseJournal(text: string): { header?: Header; steps: Change[] } {
  let header: Header | undefined;
  const steps = new Map<number, UndoStep>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch {
      continue; // torn tail: that change was never made
    }
    if (o.v === 1) header = o as unknown as Header;
    else if (typeof o.done === 'number') steps.delete(o.done);
    else if (typeof o.id === 'number' && o.step && typeof o.step === 'object') steps.set(o.id, o.step as UndoStep);
  }
  return { header, steps: [...steps].map(([id, step]) => ({ id, step })) };
}

/** Undo one step; never throws (a failure is one log line). */
function undoStep(step: UndoStep, log: (line: string) => void, run: Runner): void {
  try {
    if (step.kind === 'file') {
      const now = readIfExistsSync(step.path);
      const before = step.before === null ? null : Buffer.from(step.before, 'base64');
      const after = Buffer.from(step.after, 'base64');
      if (now === undefined ? before === null : before !== null && now.equals(before)) return; // already restored
      if (now === undefined || !now.equals(after)) {
        log(
          `teardown: ${step.path} was changed by something else since fakeproxy wrote it; left as it is (${step.what})`,
        );
        return;
      }
      // In place, not rename: the file may be a bind mount (ip netns exec) or under /proc/sys.
      if (before === null) unlinkSync(step.path);
      else writeFileSync(step.path, before);
      return;
    }
    const r = run(step.argv);
    if (r.error || r.status !== 0) {
      const why = r.error?.message ?? (r.stderr.trim().split('\n')[0] || `exit ${r.status}`);
      log(`teardown: ${step.what}: ${step.argv.join(' ')} failed: ${why}`);
    }
  } catch (e) {
    log(`teardown: ${step.what}: ${(e as Error).message}`);
  }
}

/**
 * Undo a journal a killed daemon left for this TUN in this state dir (what
 * `fakeproxy cleanup` and every start do). Returns how many changes were
 * undone (0: no journal). Throws when its owner still runs or it belongs to
 * another network namespace: then it is not ours to undo.
 */
export function undoLeftover(opts: TeardownOptions): number {
  if (!opts.stateDir) return 0;
  const file = teardownFile(opts.stateDir, opts.tun);
  const raw = readIfExistsSync(file);
  if (raw === undefined) return 0;
  const { header, steps } = parseJournal(raw.toString());
  if (header && header.pid !== process.pid && procStart(header.pid) === header.start) {
    throw new FakeproxyError(
      'EBUSY',
      `${file} belongs to fakeproxy pid ${header.pid}, which still runs: stop it first (its own exit undoes its changes)`,
    );
  }
  if (header && header.netns !== currentNetns()) {
    throw new FakeproxyError(
      'ENETNS',
      `${file} was written in network namespace ${header.netns}, not this one (${currentNetns()}): run \`fakeproxy cleanup\` there (ip netns exec NAME …), or remove the file if that namespace is gone`,
    );
  }
  const run = opts.run ?? defaultRunner;
  for (const c of steps.reverse()) {
    opts.log(`teardown: undoing ${c.step.what} (left by fakeproxy pid ${header?.pid ?? '?'})`);
    undoStep(c.step, opts.log, run);
  }
  unlinkSync(file);
  fsyncDirSync(opts.stateDir);
  return steps.length;
}

export class TeardownJournal {
  readonly file: string | undefined;
  private fd: number | undefined;
  private nextId = 1;
  private readonly live = new Map<number, Change>();
  private readonly run: Runner;
  private readonly log: (line: string) => void;

  private constructor(opts: TeardownOptions) {
    this.file = opts.stateDir ? teardownFile(opts.stateDir, opts.tun) : undefined;
    this.run = opts.run ?? defaultRunner;
    this.log = opts.log;
  }

  /** Undo what a killed daemon left (undoLeftover, may throw), then start an empty journal. */
  static open(opts: TeardownOptions): TeardownJournal {
    undoLeftover(opts);
    return new TeardownJournal(opts);
  }

  /** Changes made and not undone yet, oldest first. */
  get changes(): Change[] {
    return [...this.live.values()];
  }

  /**
   * Record `undo` durably, then make the change with `apply`. If `apply`
   * throws, the undo runs at once (the change may be half made) and the
   * error is rethrown.
   */
  change(undo: UndoStep, apply: () => void): Change {
    const c: Change = { id: this.nextId++, step: undo };
    this.append({ id: c.id, step: undo });
    this.live.set(c.id, c);
    try {
      apply();
    } catch (e) {
      this.undo(c);
      throw e;
    }
    return c;
  }

  /** Run `argv`; `undoArgv` reverses it. A failing `argv` throws (with its stderr) after the undo ran. */
  exec(argv: readonly string[], undoArgv: readonly string[], what: string): Change {
    return this.execSeq([argv], undoArgv, what);
  }

  /** Run several commands in order as one change that `undoArgv` reverses as a whole; the first failure throws. */
  execSeq(argvs: readonly (readonly string[])[], undoArgv: readonly string[], what: string): Change {
    return this.change({ kind: 'exec', argv: [...undoArgv], what }, () => {
      for (const argv of argvs) {
        const r = this.run(argv);
        if (r.error || r.status !== 0) {
          const why = r.error?.message ?? (r.stderr.trim().split('\n')[0] || `exit ${r.status}`);
          throw new FakeproxyError('ESYSCHANGE', `${what}: ${argv.join(' ')} failed: ${why}`, { cause: r.error });
        }
      }
    });
  }

  /**
   * Replace a file's bytes in place (follows a symlink, works on a bind
   * mount), remembering the old bytes. Writes without rename: a kill -9
   * mid-write can leave it partial, and the journal still restores `before`.
   */
  writeFile(path: string, data: string | Buffer, what: string): Change {
    const before = readIfExistsSync(path);
    const after = typeof data === 'string' ? Buffer.from(data) : data;
    return this.change(
      { kind: 'file', path, before: before === undefined ? null : b64(before), after: b64(after), what },
      () => writeFileSync(path, after),
    );
  }

  /** Set a sysctl (`net.ipv4.ip_forward`) and restore its old value on exit. */
  sysctl(name: string, value: string): Change {
    return this.writeFile(`/proc/sys/${name.replace(/\./g, '/')}`, `${value}\n`, `sysctl ${name}=${value}`);
  }

  /** Undo one change now (no-op if already undone). */
  undo(c: Change): void {
    if (!this.live.delete(c.id)) return;
    undoStep(c.step, this.log, this.run);
    this.append({ done: c.id });
  }

  /** Undo every change left, newest first, and remove the journal. Safe to call twice. */
  undoAll(): void {
    for (const c of [...this.live.values()].reverse()) this.undo(c);
    if (this.fd !== undefined && this.file) {
      try {
        closeSync(this.fd);
        unlinkSync(this.file);
      } catch (e) {
        this.log(`teardown: cannot remove ${this.file}: ${(e as Error).message}`);
      }
      this.fd = undefined;
    }
  }

  private append(record: object): void {
    if (!this.file) return;
    if (this.fd === undefined) {
      const dir = this.file.slice(0, this.file.lastIndexOf('/'));
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      this.fd = openSync(this.file, 'w', 0o600);
      const header: Header = { v: 1, pid: process.pid, start: procStart(process.pid) ?? '', netns: currentNetns() };
      this.writeLine(header);
      fsyncDirSync(dir);
    }
    this.writeLine(record);
  }

  private writeLine(o: object): void {
    const buf = Buffer.from(`${JSON.stringify(o)}\n`);
    let off = 0;
    while (off < buf.length) off += writeSync(this.fd as number, buf, off);
    fdatasyncSync(this.fd as number);
  }
}
