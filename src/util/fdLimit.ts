/**
 * The open-file limit (RLIMIT_NOFILE) of this process. Node itself raises the
 * soft limit to the hard limit when it starts (src/node.cc, PlatformInit), so
 * the daemon only reads it back from /proc/self/limits and prints it: under
 * `ulimit -n 4096` (which sets both) the operator sees why connections stop
 * at ~4000.
 */
import { readFileSync } from 'node:fs';

export interface FdLimit {
  soft: number;
  hard: number;
}

/** Parses the "Max open files" row of /proc/<pid>/limits; undefined when absent. */
export function parseFdLimit(limits: string): FdLimit | undefined {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(limits);
  if (!m) return undefined;
  const n = (t: string) => (t === 'unlimited' ? Number.POSITIVE_INFINITY : Number(t));
  return { soft: n(m[1] as string), hard: n(m[2] as string) };
}

export function readFdLimit(): FdLimit | undefined {
  try {
    return parseFdLimit(readFileSync('/proc/self/limits', 'utf8'));
  } catch {
    return undefined;
  }
}
