/**
 * engine: the in-process packet-engine benchmark (bench/engine_bench.cc, written
 * with the engine). Built here with g++ against the napi-free engine sources
 * (native/*.cc except the addon glue) and run `reps` times; its output is parsed
 * into rows:
 *   - a JSON object on one line: every numeric field becomes a row, or
 *   - lines "name: <number> <unit>" (e.g. "rewrite: 12.3 Mpps").
 * Rows whose name says Mpps get the issue's goal (≥ 10), bytes per flow ≤ 300.
 * The TUN-vs-loopback part of the engine issue (iperf3) is in the tcp scenario.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Ctx, need, ROOT, run, Unavailable } from '../lib/env.js';
import type { Row, Section } from '../lib/report.js';
import type { Scenario } from './common.js';

export const engine: Scenario = {
  name: 'engine',
  describe: 'in-process packet engine: rewrite Mpps, flow memory (bench/engine_bench.cc)',
  async run(ctx: Ctx): Promise<Section[]> {
    const src = join(ROOT, 'bench', 'engine_bench.cc');
    if (!existsSync(src)) throw new Unavailable('not available yet: bench/engine_bench.cc has not landed');
    const gxx = need('g++', 'g++');
    const out = join(ctx.tmp, 'engine_bench');
    // Same sources and flags as bench/engine_bench.sh (the engine's own script): the napi-free
    // engine files. A line "// bench-build-flags: …" in the source adds flags or sources.
    const text = readFileSync(src, 'utf8');
    const extra = /\/\/\s*bench-build-flags:\s*(.*)/.exec(text)?.[1]?.trim().split(/\s+/).filter(Boolean) ?? [];
    const sh = existsSync(join(ROOT, 'bench', 'engine_bench.sh'))
      ? readFileSync(join(ROOT, 'bench', 'engine_bench.sh'), 'utf8')
      : '';
    const fromSh = [...sh.matchAll(/native\/[\w-]+\.cc/g)].map((m) => m[0]);
    const sources = (
      fromSh.length
        ? [...new Set(fromSh)]
        : readdirSync(join(ROOT, 'native'))
            .filter((f) => f.endsWith('.cc') && !f.includes('addon') && f !== 'tun.cc')
            .map((f) => `native/${f}`)
    ).map((f) => join(ROOT, f));
    const args = [
      '-std=c++17',
      '-O2',
      '-pthread',
      '-Wno-missing-field-initializers',
      '-I',
      join(ROOT, 'native'),
      src,
      ...sources,
      ...extra.map((x) => (x.startsWith('-') ? x : join(ROOT, x))),
      '-o',
      out,
    ];
    const b = await run(gxx, args, { timeoutMs: 180_000 });
    if (b.code !== 0) {
      return [
        {
          scenario: 'engine',
          title: 'bench/engine_bench.cc',
          rows: [],
          notes: [],
          skipped: `not available yet: bench/engine_bench.cc does not build (g++ ${args.join(' ')}): ${b.stderr.trim().split('\n').slice(0, 5).join(' | ')}`,
        },
      ];
    }
    // engine_bench takes the number of runs and prints its own per-run figures: run it once.
    const runs = ctx.quick ? 1 : ctx.reps;
    const s: Section = {
      scenario: 'engine',
      title: `bench/engine_bench.cc, ${runs} run(s) (one core, synthetic packets, no TUN)`,
      rows: [],
      notes: [],
    };
    const r = await run(out, [String(runs)], { timeoutMs: 600_000 });
    if (r.code !== 0) {
      s.error = `engine_bench exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(-400)}`;
      return [s];
    }
    parseEngineBench(r.stdout, s);
    if (s.rows.length === 0) s.notes.push(`could not parse engine_bench output; raw: ${r.stdout.trim().slice(0, 800)}`);
    return [s];
  },
};

/** Knows engine_bench's lines; anything else falls back to JSON / "name: value unit" parsing. */
export function parseEngineBench(stdout: string, s: Section): void {
  for (const line of stdout.split('\n')) {
    const t = line.trim();
    let m =
      /^\(a\) rewrite\s+(\d+) flows,\s+(\d+) B payload: median\s+([\d.]+) Mpps \(runs:([\d. ]+)\)(?:\s+\[memcpy alone ([\d.]+) Mpps\])?(.*)$/.exec(
        t,
      );
    if (m) {
      const runs = m[4].trim().split(/\s+/).map(Number);
      s.rows.push({
        id: `rewrite-${m[1]}f-${m[2]}B`,
        label: `rewrite, ${Number(m[1]).toLocaleString('en')} flows, ${m[2]} B payload`,
        metric: 'rate',
        unit: 'Mpps',
        samples: runs,
        goal: { value: 10, text: '≥ 10 Mpps' },
        note: m[5] ? `memcpy of the same packets alone: ${m[5]} Mpps` : undefined,
      });
      if (m[6]?.includes('unexpected drops')) s.error = [s.error, `${t}`].filter(Boolean).join('; ');
      continue;
    }
    m =
      /^\(c\) memory for (\d+) flows: RSS \+([\d.]+) MB = (\d+) B\/flow \(engine estimate (\d+) B\/flow.*?\)(?:.*created at ([\d.]+) M flows\/s)?/.exec(
        t,
      );
    if (m) {
      s.rows.push(
        {
          id: 'mem-rss',
          label: `${Number(m[1]).toLocaleString('en')} flows, RSS growth`,
          metric: 'memory',
          unit: 'B/flow',
          samples: [Number(m[3])],
          higherIsBetter: false,
          goal: { value: 300, text: '≤ 300 B/flow' },
        },
        {
          id: 'mem-engine',
          label: 'engine estimate',
          metric: 'memory',
          unit: 'B/flow',
          samples: [Number(m[4])],
          higherIsBetter: false,
        },
      );
      if (m[5])
        s.rows.push({
          id: 'create',
          label: 'flow creation',
          metric: 'rate',
          unit: 'M flows/s',
          samples: [Number(m[5])],
        });
      continue;
    }
    m = /^\(c\) flow (\d+) was not created/.exec(t);
    if (m) {
      s.error = [s.error, t].filter(Boolean).join('; ');
      continue;
    }
    m = /^thread loop.*?: (\d+)\/(\d+) rewritten correctly, ([\d.]+) k round trips\/s/.exec(t);
    if (m) {
      s.rows.push({
        id: 'thread-rtt',
        label: 'thread loop over a socketpair, 1 in flight',
        metric: 'round trips',
        unit: 'k/s',
        samples: [Number(m[3])],
      });
      if (m[1] !== m[2])
        s.error = [s.error, `thread loop: only ${m[1]}/${m[2]} rewritten correctly`].filter(Boolean).join('; ');
    }
  }
  if (s.rows.length) {
    s.notes.push(
      "rewrite rows: samples are engine_bench's own runs; memory is measured once for 1 M flows (sizeof(Flow) and index tables)",
    );
    return;
  }
  for (const [name, v] of parse(stdout))
    s.rows.push({ id: name, label: name, metric: name, unit: v.unit, samples: [v.value], ...goalFor(name, v.unit) });
}

function goalFor(name: string, unit: string): Partial<Row> {
  const n = `${name} ${unit}`.toLowerCase();
  if (n.includes('mpps')) return { goal: { value: 10, text: '≥ 10 Mpps' } };
  if (/bytes.?per.?flow|b\/flow|bytes_per_flow/.test(n))
    return { higherIsBetter: false, goal: { value: 300, text: '≤ 300 B/flow' } };
  if (/ns\/|_ns\b|\bns\b/.test(n)) return { higherIsBetter: false };
  return {};
}

function parse(stdout: string): Map<string, { value: number; unit: string }> {
  const m = new Map<string, { value: number; unit: string }>();
  for (const line of stdout.split('\n')) {
    const t = line.trim();
    if (t.startsWith('{')) {
      try {
        const flat = (o: Record<string, unknown>, pre: string) => {
          for (const [k, v] of Object.entries(o)) {
            if (typeof v === 'number') m.set(pre + k, { value: v, unit: unitFromKey(k) });
            else if (v && typeof v === 'object' && !Array.isArray(v)) flat(v as Record<string, unknown>, `${pre}${k}.`);
          }
        };
        flat(JSON.parse(t) as Record<string, unknown>, '');
        continue;
      } catch {
        // not JSON: fall through
      }
    }
    const x = /^([A-Za-z][\w .()/+-]*?)\s*[:=]\s*([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*([^\s,;]*)/.exec(t);
    if (x) m.set(x[1].trim(), { value: Number(x[2]), unit: x[3] ?? '' });
  }
  return m;
}

function unitFromKey(k: string): string {
  const l = k.toLowerCase();
  if (l.includes('mpps')) return 'Mpps';
  if (l.endsWith('ns') || l.includes('ns_per') || l.includes('nsper')) return 'ns';
  if (l.includes('bytes')) return 'B';
  return '';
}
