/** Human output helpers for the inspection commands: units, ages, aligned tables. */

/** Where command output goes (process.stdout, or a buffer in tests). */
export interface Out {
  write(chunk: string): unknown;
}

const UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 0 B, 512 B, 1.2 KiB, 3.4 MiB, 12 GiB (IEC units, one decimal below 10). */
export function humanBytes(n: number): string {
  if (!Number.isFinite(n) || n < 1024) return `${Math.max(0, Math.round(n || 0))} B`;
  let v = n;
  let i = -1;
  while (v >= 1024 && i < UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  const s = v < 10 ? v.toFixed(1) : String(Math.round(v));
  return `${s} ${UNITS[i]}`;
}

/** 45s, 3m12s, 2h05m, 3d04h: two units at most, like `kubectl get`. */
export function humanAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${String(m % 60).padStart(2, '0')}m`;
  const d = Math.floor(h / 24);
  return `${d}d${String(h % 24).padStart(2, '0')}h`;
}

export interface Column<Row> {
  header: string;
  get(row: Row): string;
  /** Right-align (numbers, sizes, ages). */
  right?: boolean;
}

/** Columns separated by two spaces, padded to the widest cell; no trailing spaces. */
export function renderTable<Row>(rows: Row[], columns: Column<Row>[]): string {
  const cells = [columns.map((c) => c.header), ...rows.map((r) => columns.map((c) => c.get(r)))];
  const widths = columns.map((_, i) => Math.max(...cells.map((line) => line[i].length)));
  return cells
    .map((line) =>
      line
        .map((cell, i) => (columns[i].right ? cell.padStart(widths[i]) : cell.padEnd(widths[i])))
        .join('  ')
        .trimEnd(),
    )
    .map((l) => `${l}\n`)
    .join('');
}
