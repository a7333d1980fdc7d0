/**
 * Give memory back to the kernel once a burst of work is over.
 *
 * V8 collects when the heap grows, not when the process goes quiet: after a
 * burst of connection set-ups the young generation stays at its peak size
 * (2 × 16 MiB semi-spaces on Node 20, all of it resident once used) and the
 * accept/dial path's garbage, promoted while dials were in flight, keeps its
 * old-space pages. A daemon then holding thousands of idle connections would
 * carry that as RSS for hours (issue 11: 10 000 idle proxied connections must
 * cost < 100 MiB). One V8 low-memory notification when a burst has been quiet
 * for `quietMs` returns it. Steady traffic never triggers it (each event
 * pushes the timer back), and it runs at most once per burst of at least
 * `minEvents` events, so its cost (a full collection, ~10–50 ms with
 * 10 000 live connections) is paid only when the daemon has nothing to do.
 */
import { native } from '../native.js';

export interface QuietGcOptions {
  /** How long without `note()` counts as "the burst is over". */
  quietMs: number;
  /** The least events since the last collection worth one. */
  minEvents: number;
  /** @default the addon's lowMemoryNotification (V8 CollectAllAvailableGarbage) */
  collect?: () => void;
}

export class QuietGc {
  #events = 0;
  #timer: NodeJS.Timeout | undefined;
  readonly #o: Required<QuietGcOptions>;
  /** Collections run so far. */
  runs = 0;

  constructor(opts: QuietGcOptions) {
    this.#o = { collect: () => native().lowMemoryNotification(), ...opts };
  }

  /** One unit of work (an accepted connection). Cheap: re-arms one timer. */
  note(): void {
    this.#events++;
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
    if (this.#events < this.#o.minEvents) return;
    this.#events = 0;
    this.#o.collect();
    this.runs++;
  }
}
