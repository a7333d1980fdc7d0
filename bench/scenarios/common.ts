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
    const msg = (e as Error).message.split('\n')[0].slice(0, 300);
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
}

/** Repeats `fn` ctx.reps times (stops early on Ctrl-C). */
export async function repeat<T>(ctx: Ctx, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < ctx.reps && !ctx.aborted; i++) out.push(await fn(i));
  return out;
}

/**
 * ctx.reps repetitions, each running `run` once per leg in the legs' order
 * (leg 1, leg 2, …, leg 1, leg 2, …): a drift of the host's load between
 * minutes hits every leg alike. Each leg's results, in repetition order.
 */
export async function alternate<L, T>(ctx: Ctx, legs: readonly L[], run: (leg: L) => Promise<T>): Promise<Map<L, T[]>> {
  const out = new Map(legs.map((l) => [l, [] as T[]]));
  await repeat(ctx, async () => {
    for (const l of legs) out.get(l)?.push(await run(l));
  });
  return out;
}

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;
