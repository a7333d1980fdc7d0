/**
 * The fake-IP map's write-ahead journal: every new mapping is appended to
 * `<stateDir>/fake-ip-journal.<gen>` and fdatasync'd before the DNS answer
 * that hands it out leaves, so a kill -9 at any moment never loses a mapping
 * an app may hold (the snapshot alone, saved every 60 s, lost every name
 * answered since).
 *
 * Group commit: the mappings made in one event-loop turn go out in one
 * write + one fdatasync (libuv thread pool, the loop keeps serving); those
 * made while a sync is in flight form the next batch. `durable(name)` is the
 * promise an answer waits on.
 *
 * Compaction: `rotate()` switches appends to a new generation file in the
 * same turn the snapshot is taken, so the snapshot covers every older
 * generation; once the snapshot is durable (persist.ts: fsync + rename +
 * directory fsync) the older files are deleted. Replay at start: the
 * snapshot, then every generation >= the snapshot's `journalGen`, in order.
 * A torn last line (crash mid-write) is skipped.
 */
import { closeSync, fdatasync, openSync, readdirSync, readFileSync, unlinkSync, write } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fsyncDirSync } from '../util/stateFile.js';

const fdatasyncP = promisify(fdatasync);
const writeP = promisify(write);

export const JOURNAL_PREFIX = 'fake-ip-journal.';

/** One journaled mapping: name → ip, at t (ms). */
export interface JournalRecord {
  n: string;
  i: string;
  t: number;
}

/** Journal generations present in `dir`, ascending. */
export function journalGens(dir: string): number[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((f) => f.startsWith(JOURNAL_PREFIX) && /^\d+$/.test(f.slice(JOURNAL_PREFIX.length)))
    .map((f) => Number(f.slice(JOURNAL_PREFIX.length)))
    .sort((a, b) => a - b);
}

/** The records of every generation >= fromGen, in order, and how many torn/bad lines were skipped. */
export function readJournal(dir: string, fromGen: number): { records: JournalRecord[]; bad: number } {
  const records: JournalRecord[] = [];
  let bad = 0;
  for (const gen of journalGens(dir)) {
    if (gen < fromGen) continue;
    const text = readFileSync(join(dir, `${JOURNAL_PREFIX}${gen}`), 'utf8');
    for (const line of text.split('\n')) {
      if (line === '') continue;
      try {
        const r = JSON.parse(line) as Partial<JournalRecord>;
        if (typeof r.n === 'string' && typeof r.i === 'string' && typeof r.t === 'number') {
          records.push({ n: r.n, i: r.i, t: r.t });
          continue;
        }
      } catch {
        // torn or garbage line: counted below
      }
      bad++;
    }
  }
  return { records, bad };
}

interface Batch {
  lines: string[];
  names: Set<string>;
  done: Promise<void>;
}

export class MapJournal {
  private fd: number;
  private gen: number;
  /** Appended this turn, not yet handed to write(). */
  private pending: Batch | undefined;
  private resolvePending: (() => void) | undefined;
  private rejectPending: ((e: Error) => void) | undefined;
  /** Name → the batch that makes it durable (pending or in flight). */
  private readonly waiting = new Map<string, Promise<void>>();
  private flushing: Promise<void> = Promise.resolve();
  private inFlight = false;
  private closed = false;
  /** Batches written and synced (for stats and the benchmark). */
  syncs = 0;

  /** Opens generation `gen` (created, or appended to) in `dir` (which must exist). */
  constructor(
    private readonly dir: string,
    gen: number,
  ) {
    this.gen = gen;
    this.fd = this.openGen(gen);
  }

  get generation(): number {
    return this.gen;
  }

  /** Record name → ip. The returned promise resolves once it is on disk; it rejects when the write fails. */
  append(name: string, ip: string, t: number): Promise<void> {
    if (!this.pending) this.startBatch();
    const b = this.pending as Batch;
    b.lines.push(JSON.stringify({ n: name, i: ip, t } satisfies JournalRecord));
    b.names.add(name);
    this.waiting.set(name, b.done);
    return b.done;
  }

  /** The promise to wait on before answering `name`, when its mapping is not durable yet. */
  durable(name: string): Promise<void> | undefined {
    return this.waiting.get(name);
  }

  /**
   * Switch appends to generation gen+1 (synchronously, so the caller's
   * snapshot taken in the same turn covers every older generation). Returns
   * the new generation.
   */
  rotate(): number {
    const old = this.fd;
    this.gen++;
    this.fd = this.openGen(this.gen);
    // Batches already in flight finish on the old fd; pending ones go to the new.
    const after = this.flushing;
    this.flushing = after.then(() => closeSync(old)).catch(() => {});
    return this.gen;
  }

  /** Delete generations older than `gen` (their content is in a durable snapshot). */
  async dropBefore(gen: number): Promise<void> {
    await this.flushing;
    for (const g of journalGens(this.dir)) {
      if (g >= gen) continue;
      try {
        unlinkSync(join(this.dir, `${JOURNAL_PREFIX}${g}`));
      } catch {
        // gone already
      }
    }
    fsyncDirSync(this.dir);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    while (this.inFlight || this.pending) {
      await this.flushing;
      if (this.pending && !this.inFlight) await this.flush();
    }
    closeSync(this.fd);
  }

  private openGen(gen: number): number {
    const fd = openSync(join(this.dir, `${JOURNAL_PREFIX}${gen}`), 'a', 0o644);
    fsyncDirSync(this.dir); // the new file's directory entry is durable before we rely on it
    return fd;
  }

  private startBatch(): void {
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    const done = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // Callers that do not wait (restores) must not raise unhandled rejections.
    done.catch(() => {});
    this.pending = { lines: [], names: new Set(), done };
    this.resolvePending = resolve;
    this.rejectPending = reject;
    // One batch per event-loop turn: everything appended before the check phase.
    setImmediate(() => void this.flush());
  }

  /**
   * Hand the pending batch to write + fdatasync, unless a batch is in flight:
   * then everything appended meanwhile waits and goes out as one batch when
   * it completes (group commit — batches grow with the load).
   */
  private flush(): Promise<void> {
    if (this.inFlight) return this.flushing;
    const b = this.pending;
    const resolve = this.resolvePending;
    const reject = this.rejectPending;
    if (!b || !resolve || !reject) return this.flushing;
    this.pending = undefined;
    this.resolvePending = this.rejectPending = undefined;
    this.inFlight = true;
    const run = async () => {
      const fd = this.fd;
      const buf = Buffer.from(`${b.lines.join('\n')}\n`);
      let off = 0;
      while (off < buf.length) off += (await writeP(fd, buf, off, buf.length - off, null)).bytesWritten;
      await fdatasyncP(fd);
      this.syncs++;
    };
    const done = (err?: Error) => {
      this.inFlight = false;
      this.settle(b);
      if (err) reject(err);
      else resolve();
      if (this.pending) void this.flush();
    };
    this.flushing = this.flushing.then(run).then(
      () => done(),
      (e: Error) => done(e),
    );
    return this.flushing;
  }

  private settle(b: Batch): void {
    for (const n of b.names) if (this.waiting.get(n) === b.done) this.waiting.delete(n);
  }
}
