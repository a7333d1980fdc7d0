/**
 * Give memory back to the kernel once a burst of work is over.
 *
 * V8 collects when the heap grows, not when the process goes quiet: after a
 * burst of connection set-ups the young generation stays at its peak size
 * (2 semi-spaces, 1 MiB each with the flag on cli.ts's #! line, 16 MiB by
 * default on Node 20; all of it resident once used) and the
 * accept/dial path's garbage, promoted while dials were in flight, keeps its
 * old-space pages. A daemon then holding thousands of idle connections would
 * carry that as RSS for hours (issue 11: 10 000 idle proxied connections must
 * cost < 100 MiB). One V8 low-memory notification when a burst has been quiet
 * for `quietMs` returns it. Steady traffic never triggers it (each event
 * pushes the timer back), and it runs at most once per burst of at least
 * `minEvents` events, so its cost (a full collection; its pause is measured,
 * see `stats()` and docs/memory.md) is paid only when the daemon has nothing
 * to do. Start-up is such a burst too (module loading and config parsing
 * leave V8's young generation at its peak): `soon()` asks for one collection
 * whatever the count.
 */
import { readFileSync } from 'node:fs';
import { native } from '../native.js';

export interface QuietGcOptions {
  /** How long without `note()` counts as "the burst is over". */
  quietMs: number;
  /** The least events since the last collection worth one. */
  minEvents: number;
  /** @default the addon's lowMemoryNotification (V8 CollectAllAvailableGarbage) */
  collect?: () => void;
}

export interface QuietGcStats {
  /** Collections run so far. */
  runs: number;
  /** How long the last one held the event loop, and the longest so far (ms, wall clock). */
  lastPauseMs: number;
  maxPauseMs: number;
  /**
   * Of the last pause, the time this thread was on a CPU (ms, /proc/thread-self/schedstat): the
   * pause on an unloaded machine. The rest was spent waiting for a CPU.
   */
  lastCpuMs: number;
}

/** This thread's time on a CPU in ns (Linux schedstat), NaN where unreadable. */
function threadCpuNs(): number {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ')[0]);
  } catch {
    return Number.NaN;
  }
}

export class QuietGc {
  #events = 0;
  #forced = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #o: Required<QuietGcOptions>;
  readonly #stats: QuietGcStats = { runs: 0, lastPauseMs: 0, maxPauseMs: 0, lastCpuMs: 0 };

  constructor(opts: QuietGcOptions) {
    this.#o = { collect: () => native().lowMemoryNotification(), ...opts };
  }

  /** Collections run so far. */
  get runs(): number {
    return this.#stats.runs;
  }

  stats(): QuietGcStats {
    return { ...this.#stats };
  }

  /** One unit of work (an accepted connection). Cheap: re-arms one timer. */
  note(): void {
    this.#events++;
    this.#arm();
  }

  /** One collection once `quietMs` pass without `note()`, however few events came before. */
  soon(): void {
    this.#forced = true;
    this.#arm();
  }

  #arm(): void {
    if (this.#timer) this.#timer.refresh();
    else {
      this.#timer = setTimeout(() => this.#fire(), this.#o.quietMs);
      this.#timer.unref();
    }
  }

  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #fire(): void {
    if (!this.#forced && this.#events < this.#o.minEvents) return;
    this.#events = 0;
    this.#forced = false;
    const c0 = threadCpuNs();
    const t0 = performance.now();
    this.#o.collect();
    const ms = performance.now() - t0;
    this.#stats.lastCpuMs = (threadCpuNs() - c0) / 1e6;
    this.#stats.runs++;
    this.#stats.lastPauseMs = ms;
    this.#stats.maxPauseMs = Math.max(this.#stats.maxPauseMs, ms);
  }
}
