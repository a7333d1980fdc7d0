import { describe, expect, it } from 'vitest';
import {
  LOOP_BURST_BACKOFF_MS,
  LOOP_BURST_THRESHOLD,
  LOOP_BURST_WINDOW_MS,
  LoopBurst,
} from '../../../src/proxy/loopBurst.js';

describe('LoopBurst (the loop guard burst detector)', () => {
  it('trips on the threshold-th refusal inside the window, once, and sheds for the back-off only', () => {
    const b = new LoopBurst({ threshold: 4, windowMs: 1000, backoffMs: 5000 });
    expect([b.refused(100), b.refused(300), b.refused(600)]).toEqual([false, false, false]);
    expect(b.shedding(600)).toBe(false);
    expect(b.refused(1100)).toBe(true); // 4 within 100..1100: exactly the window
    expect(b.shedding(1100)).toBe(true);
    // more refusals during the back-off do not trip again (one log line per burst)
    for (let t = 1200; t < 2000; t += 50) expect(b.refused(t)).toBe(false);
    expect(b.shedding(6099)).toBe(true);
    expect(b.shedding(6100)).toBe(false);
  });

  it('a slow trickle never trips: the oldest of the last threshold refusals is outside the window', () => {
    const b = new LoopBurst({ threshold: 4, windowMs: 1000, backoffMs: 5000 });
    // one refusal every 400 ms: 4 span 1200 ms > 1000
    for (let t = 0; t < 60_000; t += 400) expect(b.refused(t)).toBe(false);
    expect(b.shedding(60_000)).toBe(false);
  });

  it('after the back-off a still-broken mark trips again, with a fresh burst', () => {
    const b = new LoopBurst({ threshold: 3, windowMs: 1000, backoffMs: 2000 });
    b.refused(0);
    b.refused(10);
    expect(b.refused(20)).toBe(true);
    // refusals during the back-off are not counted toward the next burst
    b.refused(500);
    b.refused(600);
    expect(b.refused(2020)).toBe(false); // back-off over; only 1 fresh refusal
    expect(b.refused(2030)).toBe(false);
    expect(b.refused(2040)).toBe(true);
    expect(b.shedding(4039)).toBe(true);
    expect(b.shedding(4040)).toBe(false);
  });

  it('the defaults: a burst of the threshold within the window trips; one short of it does not', () => {
    const b = new LoopBurst();
    const step = Math.floor(LOOP_BURST_WINDOW_MS / LOOP_BURST_THRESHOLD);
    for (let i = 0; i < LOOP_BURST_THRESHOLD - 1; i++) expect(b.refused(i * step)).toBe(false);
    const at = (LOOP_BURST_THRESHOLD - 1) * step;
    expect(b.refused(at)).toBe(true);
    expect(b.shedding(at + LOOP_BURST_BACKOFF_MS - 1)).toBe(true);
    expect(b.shedding(at + LOOP_BURST_BACKOFF_MS)).toBe(false);
  });
});
