/**
 * What the A/B tools (bench/ab-connect.ts, bench/ab-udp.ts) share: their
 * command line (numeric flags, then NAME=cli.js builds), their context, and
 * the daemon's CPU per thread from /proc.
 */
import { readdirSync, readFileSync } from 'node:fs';
import type { Ctx } from './env.js';
import { makeTmp } from './env.js';

/** Per thread name (comm, digits stripped): CPU ticks (user + system) and context switches, summed. */
export type ThreadTicks = Map<string, { ticks: number; csw: number }>;

export function threadTicks(pid: number): ThreadTicks {
  const out: ThreadTicks = new Map();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')).replace(/\d+$/, '');
      const f = stat.slice(stat.lastIndexOf(') ') + 2).split(' ');
      const st = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
      const csw =
        Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(st)?.[1]) +
        Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(st)?.[1]);
      const o = out.get(comm) ?? { ticks: 0, csw: 0 };
      o.ticks += Number(f[11]) + Number(f[12]);
      o.csw += csw;
      out.set(comm, o);
    } catch {
      // a thread that ended meanwhile
    }
  }
  return out;
}

/**
 * `--name VALUE` for each key of `defaults` (a number where its default is one;
 * a key whose default is undefined is an optional string), then
 * NAME=/path/to/cli.js builds in the order given.
 */
export function parseAbArgs<T extends Record<string, number | string | undefined>>(
  argv: readonly string[],
  defaults: T,
): { opts: T; builds: [string, string][] } {
  const opts: Record<string, number | string | undefined> = { ...defaults };
  const builds: [string, string][] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const key = a.startsWith('--') ? a.slice(2) : '';
    if (key in opts) {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      if (typeof defaults[key] !== 'number') {
        opts[key] = v;
        continue;
      }
      const n = Number(v);
      if (!Number.isFinite(n)) throw new Error(`${a} needs a number, got ${v}`);
      opts[key] = n;
    } else {
      const eq = a.indexOf('=');
      if (eq < 1) throw new Error(`expected NAME=cli.js, got ${a}`);
      builds.push([a.slice(0, eq), a.slice(eq + 1)]);
    }
  }
  return { opts: opts as T, builds };
}

/** One repetition per measurement: the tools interleave rounds themselves. */
export function abCtx(): Ctx {
  return { reps: 1, quick: false, tmp: makeTmp(), aborted: false, log: (m) => process.stderr.write(`  · ${m}\n`) };
}
