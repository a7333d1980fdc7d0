/**
 * The loop guard's burst detector (issue 19). The exact guard (./ownTcp.ts)
 * refuses each captured connection of ours, so a lost --fwmark costs one
 * refused app connection per dial, not a storm. But every app connection
 * from this machine still costs an accept, a route decision, a doomed dial
 * and a refusal — two fds for the app's lifetime of retries. When refusals
 * come in a burst the mark is plainly gone for everything: trip, log one
 * line naming the cause, and for a short back-off refuse new captured
 * connections from the machine's own addresses (every interface's, the
 * TUN's included: an app's source is the TUN's address) at accept, before any dial,
 * so the fd count stays far below the limit. LAN clients (other sources)
 * are still served: their flows can be fine while ours loop.
 *
 * Pure (time comes in as an argument) so its thresholds are unit-tested.
 */

/**
 * 20 refusals within 1 s. A healthy daemon never refuses (the count is 0
 * unless the mark is lost), so any sustained rate is a misconfiguration; 20
 * keeps one user's few retries (the e2e's 3 curls) on the exact guard alone,
 * and at 20 fds a second the limit (≥ 1 024) is minutes away.
 */
export const LOOP_BURST_THRESHOLD = 20;
export const LOOP_BURST_WINDOW_MS = 1000;
/**
 * Shed for 5 s, then try again: long enough that a retry storm stops
 * costing dials, short enough that a fixed rule is noticed at once (the
 * next burst trips again if it is not fixed).
 */
export const LOOP_BURST_BACKOFF_MS = 5000;

export interface LoopBurstOptions {
  threshold?: number;
  windowMs?: number;
  backoffMs?: number;
}

export class LoopBurst {
  readonly #threshold: number;
  readonly #windowMs: number;
  readonly #backoffMs: number;
  /** The last `threshold` refusal times, a ring. */
  readonly #times: number[];
  #next = 0;
  #count = 0;
  #until = Number.NEGATIVE_INFINITY;

  constructor(o: LoopBurstOptions = {}) {
    this.#threshold = Math.max(1, o.threshold ?? LOOP_BURST_THRESHOLD);
    this.#windowMs = o.windowMs ?? LOOP_BURST_WINDOW_MS;
    this.#backoffMs = o.backoffMs ?? LOOP_BURST_BACKOFF_MS;
    this.#times = new Array<number>(this.#threshold).fill(0);
  }

  /** A loop refusal at `nowMs`. True when it trips the detector (a back-off starts now). */
  refused(nowMs: number): boolean {
    // During a back-off the burst is already reported; the next trip needs a fresh one after it.
    if (this.shedding(nowMs)) return false;
    this.#times[this.#next] = nowMs;
    this.#next = (this.#next + 1) % this.#threshold;
    if (this.#count < this.#threshold) this.#count++;
    if (this.#count < this.#threshold) return false;
    // The oldest of the last `threshold` refusals is the slot written next.
    if (nowMs - (this.#times[this.#next] as number) > this.#windowMs) return false;
    this.#until = nowMs + this.#backoffMs;
    this.#count = 0;
    return true;
  }

  /** Whether new captured connections from our own addresses are refused at `nowMs`. */
  shedding(nowMs: number): boolean {
    return nowMs < this.#until;
  }
}
