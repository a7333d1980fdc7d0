/**
 * Resource exhaustion named as such (issue 16): when the process runs out of
 * file descriptors (EMFILE), the system out of file-table slots (ENFILE) or
 * the kernel out of memory/buffers (ENOMEM, ENOBUFS), every accept, dial and
 * upstream DNS query fails — and most of those failures surface under other
 * names: c-ares cannot open its socket and reports `queryA ECONNREFUSED`, so
 * a dial reads `ENOTFOUND … ECONNREFUSED` and blames the upstream resolver.
 *
 * `check(err, path)` says whether a failure is exhaustion: its own code or a
 * code in its `cause` chain, or — for the codes exhaustion hides behind — a
 * probe that opens /dev/null. Exhaustion is counted by code and path and
 * logged once per 10 s with the counts and the fix; callers then skip their
 * own (misleading) line.
 */
import { closeSync, openSync } from 'node:fs';
import { type Logger, stderrLogger } from '../log.js';
import { readFdLimit } from './fdLimit.js';

/** The codes that mean "out of a resource", with what ran out and the fix. */
const CODES: Record<string, string> = {
  EMFILE:
    'out of file descriptors (EMFILE: the open-file limit of this process{limit}); raise it (systemd LimitNOFILE=, ulimit -n) or lower the load',
  ENFILE: 'the system is out of file-table slots (ENFILE); raise fs.file-max or find the process holding them',
  ENOMEM: 'the kernel is out of memory (ENOMEM); free memory or lower the load',
  ENOBUFS: 'the kernel is out of socket buffers (ENOBUFS); lower the load or raise net.core.*mem',
};

/** Codes an exhaustion failure is reported under by the layers above the syscall (c-ares, our resolver, dial). */
const MAYBE_HIDDEN = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EUPSTREAM', 'ESERVFAIL', 'ETIMEOUT', 'ETIMEDOUT']);

/** The exhaustion code of `err` or of an error in its cause chain, or undefined. */
export function exhaustionCode(err: unknown): string | undefined {
  let e = err as { code?: unknown; cause?: unknown } | undefined;
  for (let depth = 0; e && depth < 8; depth++) {
    if (typeof e.code === 'string' && e.code in CODES) return e.code;
    e = e.cause as typeof e;
  }
  return undefined;
}

function hiddenCandidate(err: unknown): boolean {
  let e = err as { code?: unknown; cause?: unknown } | undefined;
  for (let depth = 0; e && depth < 8; depth++) {
    if (typeof e.code === 'string' && MAYBE_HIDDEN.has(e.code)) return true;
    e = e.cause as typeof e;
  }
  return false;
}

/** Whether this process can open a file now: undefined, or the exhaustion code it cannot. */
export function probeFd(): string | undefined {
  try {
    closeSync(openSync('/dev/null', 'r'));
    return undefined;
  } catch (e) {
    return exhaustionCode(e);
  }
}

export interface ResourceAlarmOptions {
  log?: Logger;
  /** @default 10_000 — one line per 10 s however many failures */
  intervalMs?: number;
  clock?: () => number;
  /** @default probeFd */
  probe?: () => string | undefined;
  /** "soft/hard" of RLIMIT_NOFILE for the EMFILE line. @default read from /proc/self/limits */
  fdLimit?: () => string | undefined;
}

export class ResourceAlarm {
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #clock: () => number;
  readonly #probe: () => string | undefined;
  readonly #fdLimit: () => string | undefined;
  /** code → path → failures not yet reported. */
  #pending = new Map<string, Map<string, number>>();
  readonly #total = new Map<string, number>();
  #lastLogAt = Number.NEGATIVE_INFINITY;
  #timer: NodeJS.Timeout | undefined;
  #probeAt = Number.NEGATIVE_INFINITY;
  #probed: string | undefined;

  constructor(opts: ResourceAlarmOptions = {}) {
    this.#log = opts.log ?? stderrLogger;
    this.#intervalMs = opts.intervalMs ?? 10_000;
    this.#clock = opts.clock ?? Date.now;
    this.#probe = opts.probe ?? probeFd;
    // Read now: at EMFILE, /proc/self/limits cannot be opened.
    const l = opts.fdLimit ? undefined : readFdLimit();
    const limit = l ? `${l.soft}` : undefined;
    this.#fdLimit = opts.fdLimit ?? (() => limit);
  }

  /**
   * Whether `err` (a failure on `path`: 'accept', 'dial', 'dns accept', …) is
   * resource exhaustion. If so it is counted and reported (at most one line
   * per interval) and the caller should not log it again under its own name.
   */
  check(err: unknown, path: string): boolean {
    let code = exhaustionCode(err);
    if (code === undefined && hiddenCandidate(err)) code = this.#probeCached();
    if (code === undefined) return false;
    this.note(code, path);
    return true;
  }

  /** Count one exhaustion failure of `code` on `path`. */
  note(code: string, path: string): void {
    let byPath = this.#pending.get(code);
    if (!byPath) {
      byPath = new Map();
      this.#pending.set(code, byPath);
    }
    byPath.set(path, (byPath.get(path) ?? 0) + 1);
    this.#total.set(code, (this.#total.get(code) ?? 0) + 1);
    const now = this.#clock();
    if (now - this.#lastLogAt >= this.#intervalMs) this.flush();
    else if (!this.#timer) {
      // Report what accumulates until then once the interval is over, even if nothing fails after it.
      this.#timer = setTimeout(() => this.flush(), this.#intervalMs - (now - this.#lastLogAt));
      this.#timer.unref();
    }
  }

  /** Failures by code since start (for `fakeproxy status`). */
  totals(): Record<string, number> {
    return Object.fromEntries(this.#total);
  }

  /** Log what is pending now (one line per code). */
  flush(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#pending.size === 0) return;
    const now = this.#clock();
    const since = Number.isFinite(this.#lastLogAt)
      ? ` in the last ${Math.round((now - this.#lastLogAt) / 1000)} s`
      : '';
    this.#lastLogAt = now;
    for (const [code, byPath] of this.#pending) {
      let n = 0;
      for (const v of byPath.values()) n += v;
      const paths = [...byPath].map(([p, v]) => `${p} ${v}`).join(', ');
      const limit = code === 'EMFILE' ? this.#fdLimit() : undefined;
      const why = (CODES[code] ?? code).replace('{limit}', limit ? `, ${limit}` : '');
      this.#log(`${why}: ${n} failure${n === 1 ? '' : 's'}${since} (${paths}); ${this.#total.get(code)} since start`);
    }
    this.#pending = new Map();
  }

  #probeCached(): string | undefined {
    const now = this.#clock();
    if (now - this.#probeAt >= 50) {
      this.#probeAt = now;
      this.#probed = this.#probe();
    }
    return this.#probed;
  }
}

/** The daemon's alarm: the accept, dial and DNS paths all report here. */
export const resourceAlarm = new ResourceAlarm();
