/**
 * Results of one benchmark run: sections (one or more per scenario) made of
 * rows (one path × one metric, several repetitions), printed as a table of
 * medians with min/max and ratios against baselines measured in the same run.
 */

export interface Comparison {
  /** id of the row this one is divided by (a baseline in the same section). */
  to: string;
  /** Goal for this ratio, e.g. 0.8 means "≥ 0.8×" (or "≤" when the metric is lower-is-better). */
  goal?: number;
}

export interface Row {
  /** Short id used by comparisons and in the table, e.g. "a", "b", "tun-dante". */
  id: string;
  /** What path was measured, e.g. "curl → dante (no TUN)". */
  label: string;
  metric: string;
  unit: string;
  /** One sample per repetition. Empty when the row could not be measured. */
  samples: number[];
  /** false for latencies, loss, memory: ratios and goals read the other way. */
  higherIsBetter?: boolean;
  compare?: Comparison[];
  /** Why there are no samples (tool missing, daemon not functional yet, …). */
  unavailable?: string;
  /** Free text after the table: what was verified, what limits the figure. */
  note?: string;
  /** Absolute goal, printed next to the median, e.g. "≤ 300 B/flow". */
  goal?: { value: number; text: string };
}

export interface Section {
  scenario: string;
  title: string;
  rows: Row[];
  notes: string[];
  /** Set when the whole section could not run. */
  skipped?: string;
  /** Set when the section failed (an exception or a failed verification). */
  error?: string;
  seconds?: number;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return Number.NaN;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return Number.NaN;
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}

export function fmt(x: number): string {
  if (!Number.isFinite(x)) return '—';
  const a = Math.abs(x);
  if (a >= 1e6) return x.toExponential(3);
  if (a >= 1000) return x.toFixed(0);
  if (a >= 100) return x.toFixed(1);
  if (a >= 10) return x.toFixed(2);
  return x.toFixed(3);
}

export interface RatioResult {
  to: string;
  ratio: number;
  goal?: number;
  pass?: boolean;
}

export function ratios(section: Section, row: Row): RatioResult[] {
  const out: RatioResult[] = [];
  for (const c of row.compare ?? []) {
    const base = section.rows.find((r) => r.id === c.to);
    if (!base || base.samples.length === 0 || row.samples.length === 0) {
      out.push({ to: c.to, ratio: Number.NaN, goal: c.goal });
      continue;
    }
    const ratio = median(row.samples) / median(base.samples);
    const hib = row.higherIsBetter !== false;
    const pass = c.goal === undefined ? undefined : hib ? ratio >= c.goal : ratio <= c.goal;
    out.push({ to: c.to, ratio, goal: c.goal, pass });
  }
  return out;
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

export function renderSection(s: Section): string {
  const lines: string[] = [];
  const head = `── ${s.scenario}: ${s.title}${s.seconds !== undefined ? ` (${s.seconds.toFixed(0)} s)` : ''} `;
  lines.push(head.padEnd(100, '─'));
  if (s.skipped) {
    lines.push(`   skipped: ${s.skipped}`);
    return lines.join('\n');
  }
  const table: string[][] = [['id', 'path', 'metric', 'median', 'min', 'max', 'n', 'vs baseline (goal)']];
  for (const r of s.rows) {
    const n = r.samples.length;
    const med = n ? fmt(median(r.samples)) : '—';
    const min = n ? fmt(Math.min(...r.samples)) : '—';
    const max = n ? fmt(Math.max(...r.samples)) : '—';
    const rs = ratios(s, r)
      .map((x) => {
        const sign = r.higherIsBetter === false ? '≤' : '≥';
        const g =
          x.goal === undefined ? '' : ` (${sign}${x.goal} ${x.pass === undefined ? '' : x.pass ? 'ok' : 'MISS'})`;
        return `${Number.isFinite(x.ratio) ? `${x.ratio.toFixed(2)}×` : '—'} ${x.to}${g}`;
      })
      .join(', ');
    const goal =
      r.goal && n
        ? ` [goal ${r.goal.text}: ${(r.higherIsBetter === false ? median(r.samples) <= r.goal.value : median(r.samples) >= r.goal.value) ? 'ok' : 'MISS'}]`
        : '';
    table.push([
      r.id,
      r.label,
      `${r.metric} (${r.unit})`,
      med,
      min,
      max,
      String(n),
      r.unavailable ? `unavailable: ${r.unavailable}` : rs + goal,
    ]);
  }
  const widths = table[0].map((_, i) => Math.min(i === 7 ? 200 : 44, Math.max(...table.map((row) => row[i].length))));
  for (const [k, row] of table.entries()) {
    lines.push(
      `   ${row.map((c, i) => pad(c.length > widths[i] && i !== 7 ? `${c.slice(0, widths[i] - 1)}…` : c, widths[i], i >= 3 && i <= 6)).join('  ')}`.trimEnd(),
    );
    if (k === 0) lines.push(`   ${widths.map((w) => '─'.repeat(Math.min(w, 40))).join('  ')}`);
  }
  for (const r of s.rows) if (r.note) lines.push(`   ${r.id}: ${r.note}`);
  for (const n of s.notes) lines.push(`   note: ${n}`);
  if (s.error) lines.push(`   ERROR: ${s.error}`);
  return lines.join('\n');
}

export interface RunRecord {
  startedAt: string;
  argv: string[];
  host: { cpus: number; model: string; kernel: string; node: string };
  reps: number;
  quick: boolean;
  sections: Array<
    Section & { summary: Array<{ id: string; median: number; min: number; max: number; ratios: RatioResult[] }> }
  >;
}

export function toRecord(sections: Section[], meta: Omit<RunRecord, 'sections'>): RunRecord {
  return {
    ...meta,
    sections: sections.map((s) => ({
      ...s,
      summary: s.rows.map((r) => ({
        id: r.id,
        median: median(r.samples),
        min: r.samples.length ? Math.min(...r.samples) : Number.NaN,
        max: r.samples.length ? Math.max(...r.samples) : Number.NaN,
        ratios: ratios(s, r),
      })),
    })),
  };
}
