/**
 * The daemon's log lines as the controller API streams them (`/logs?level=`):
 * every line the daemon logs is also published here, with a level. Our log
 * lines carry no level of their own: `warning: …` is a warning, lines naming
 * an internal error or a failure to start a part are errors, the rest info.
 */
import type { Logger } from '../log.js';

/** mihomo's levels, lowest first (log/level.go); `silent` subscribes to nothing. */
export const LOG_LEVELS = ['debug', 'info', 'warning', 'error', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface LogEvent {
  level: Exclude<LogLevel, 'silent'>;
  payload: string;
  timeMs: number;
}

export function isLogLevel(s: string): s is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(s);
}

export function levelOf(line: string): LogEvent['level'] {
  if (line.startsWith('warning:')) return 'warning';
  if (line.startsWith('internal error') || line.startsWith('teardown:')) return 'error';
  return 'info';
}

export class LogBus {
  readonly #subs = new Set<(e: LogEvent) => void>();

  /** A logger that writes to `log` and publishes the same line here. */
  tee(log: Logger): Logger {
    return (line) => {
      log(line);
      this.publish(line, levelOf(line));
    };
  }

  publish(payload: string, level: LogEvent['level'] = 'info'): void {
    if (this.#subs.size === 0) return;
    const e: LogEvent = { level, payload, timeMs: Date.now() };
    for (const s of this.#subs) s(e);
  }

  /** Events at `min` and above; returns the unsubscribe function. */
  subscribe(min: LogLevel, cb: (e: LogEvent) => void): () => void {
    const floor = LOG_LEVELS.indexOf(min);
    const sub = (e: LogEvent) => {
      if (LOG_LEVELS.indexOf(e.level) >= floor) cb(e);
    };
    this.#subs.add(sub);
    return () => this.#subs.delete(sub);
  }

  get subscribers(): number {
    return this.#subs.size;
  }
}
