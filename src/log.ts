/** One-line operator log. Injected everywhere as `(line: string) => void` so tests can capture it. */
export type Logger = (line: string) => void;

export const stderrLogger: Logger = (line) => {
  process.stderr.write(`fakeproxy: ${line}\n`);
};

/** Wraps a logger so the same key logs at most once per `intervalMs` (with a count of what was suppressed). */
export function rateLimited(log: Logger, intervalMs: number, clock: () => number = Date.now) {
  const last = new Map<string, { at: number; suppressed: number }>();
  return (key: string, line: string) => {
    const now = clock();
    const s = last.get(key);
    if (s && now - s.at < intervalMs) {
      s.suppressed++;
      return;
    }
    const extra = s && s.suppressed > 0 ? ` (${s.suppressed} more since last report)` : '';
    last.set(key, { at: now, suppressed: 0 });
    if (last.size > 1000) last.delete(last.keys().next().value as string);
    log(line + extra);
  };
}
