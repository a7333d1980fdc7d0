import { type Ctx, Unavailable } from '../lib/env.js';
import type { Row, Section } from '../lib/report.js';

export interface Scenario {
  name: string;
  aliases?: string[];
  describe: string;
  run(ctx: Ctx): Promise<Section[]>;
}

export type RowSpec = Omit<Row, 'samples'>;

/** Makes rows with empty samples; `fill` adds samples by id. */
export function rows(...specs: RowSpec[]): Row[] {
  return specs.map((s) => ({ ...s, samples: [] }));
}

/** What a row measures: metric, unit and, for latencies, loss and costs, that lower is better. */
export type Measure = Pick<RowSpec, 'metric' | 'unit' | 'higherIsBetter'>;
export const GBPS: Measure = { metric: 'throughput', unit: 'Gbit/s' };
export const CONN_RATE: Measure = { metric: 'rate', unit: 'conn/s' };
export const QPS: Measure = { metric: 'QPS', unit: 'q/s' };
export const MS = (metric: string): Measure => ({ metric, unit: 'ms', higherIsBetter: false });

/** One row spec: id, label, what it measures, then anything else (compare, goal, note). */
export function spec(id: string, label: string, m: Measure, more: Partial<RowSpec> = {}): RowSpec {
  return { id, label, ...m, ...more };
}

/**
 * The latency rows of one path: `${id}-p50` and `${id}-p99` (ms, labelled
 * `label`), compared with `${to}-p50` / `${to}-p99` of a baseline path when `to` is given.
 */
export function latencyRows(id: string, label: string, to?: string): RowSpec[] {
  return ['p50', 'p99'].map((q) => spec(`${id}-${q}`, label, MS(q), to ? { compare: [{ to: `${to}-${q}` }] } : {}));
}

/** A section with no notes yet whose rows (empty samples) `specs` describe. */
export function section(scenario: string, title: string, ...specs: RowSpec[]): Section {
  return { scenario, title, notes: [], rows: rows(...specs) };
}

export function row(section: Section, id: string): Row {
  const r = section.rows.find((x) => x.id === id);
  if (!r) throw new Error(`no row ${id} in ${section.scenario}`);
  return r;
}

/**
 * Runs `body` (which measures one path, filling the rows `ids`) and turns a
 * failure into "unavailable" on those rows instead of failing the section:
 * Unavailable (tool missing, daemon not functional yet) is a plain skip; any
 * other error (a failed verification) also sets the section's error.
 */
export async function path(
  ctx: Ctx,
  section: Section,
  ids: string[],
  what: string,
  body: () => Promise<void>,
): Promise<void> {
  if (ctx.aborted) return;
  ctx.log(what);
  try {
    await body();
  } catch (e) {
    failed(ctx, { section, ids, what }, e);
  }
}

/** Marks a path's or a leg's rows as not measured because of `e` (see path()). */
export function failed(ctx: Ctx, { section, ids, what }: LegRows, e: unknown): void {
  const msg = (e instanceof Error ? e.message : String(e)).split('\n')[0].slice(0, 300);
  for (const id of ids) {
    const r = section.rows.find((x) => x.id === id);
    if (r) {
      r.samples = [];
      r.unavailable = e instanceof Unavailable ? msg : `FAILED: ${msg}`;
    }
  }
  if (!(e instanceof Unavailable)) section.error = [section.error, `${what}: ${msg}`].filter(Boolean).join('; ');
  ctx.log(`${what}: ${e instanceof Unavailable ? 'unavailable' : 'FAILED'}: ${msg}`);
}

/** Repeats `fn` ctx.reps times (stops early on Ctrl-C). */
export async function repeat<T>(ctx: Ctx, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < ctx.reps && !ctx.aborted; i++) out.push(await fn(i));
  return out;
}

/** Where a leg of alternate() writes: its rows (marked when it fails) and its name in the log. */
export interface LegRows {
  section: Section;
  ids: readonly string[];
  what: string;
}

/**
 * ctx.reps repetitions, each running `run` once per leg in the legs' order
 * (leg 1, leg 2, …, leg 1, leg 2, …): a drift of the host's load between
 * minutes hits every leg alike (`rep` counts from 0: an untimed check can
 * go before repetition 0). Each leg's results, in repetition order.
 *
 * A leg whose run throws loses only its own rows (`rowsOf(leg)`, marked as
 * path() marks them, the section's error set unless Unavailable), sits out
 * the remaining repetitions and is absent from the result; the other legs,
 * baselines included, go on. An error thrown outside a leg's run (a shared
 * set-up) is the enclosing path()'s.
 */
export async function alternate<L, T>(
  ctx: Ctx,
  legs: readonly L[],
  rowsOf: (leg: L) => LegRows,
  run: (leg: L, rep: number) => Promise<T>,
): Promise<Map<L, T[]>> {
  const out = new Map(legs.map((l) => [l, [] as T[]]));
  await repeat(ctx, async (rep) => {
    for (const l of legs) {
      const got = out.get(l);
      if (!got) continue;
      try {
        got.push(await run(l, rep));
      } catch (e) {
        failed(ctx, rowsOf(l), e);
        out.delete(l);
      }
    }
  });
  return out;
}

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;
