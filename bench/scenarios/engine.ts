/**
 * engine: the in-process packet-engine benchmark (bench/engine_bench.cc).
 * Built here with g++ against the napi-free engine sources (the ones
 * bench/engine_bench.sh names) and run once with `reps` runs; its lines are
 * parsed into rows. engine_bench verifies what it measures (rewritten
 * addresses, payload, checksums, no drops) and exits 1 with "FAIL" lines
 * otherwise; a build failure, a non-zero exit, a FAIL line or output we
 * cannot parse fails the scenario — no number is reported unverified.
 * The TUN-vs-loopback part of the engine issue (iperf3) is in the tcp scenario.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Ctx, need, ROOT, run } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import type { Scenario } from './common.js';

export const engine: Scenario = {
  name: 'engine',
  describe: 'in-process packet engine: rewrite Mpps, flow memory (bench/engine_bench.cc)',
  async run(ctx: Ctx): Promise<Section[]> {
    const src = join(ROOT, 'bench', 'engine_bench.cc');
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
          error: `bench/engine_bench.cc does not build (g++ ${args.join(' ')}): ${b.stderr.trim().split('\n').slice(0, 5).join(' | ')}`,
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
    parseEngineBench(r.stdout, s);
    if (r.code !== 0) {
      s.error = [s.error, `engine_bench exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(-400)}`]
        .filter(Boolean)
        .join('; ');
    }
    if (s.rows.length === 0) s.error ??= `could not parse engine_bench output; raw: ${r.stdout.trim().slice(0, 800)}`;
    if (s.error) s.rows = [];
    return [s];
  },
};

/** engine_bench's lines → rows; its FAIL lines → the section's error. */
export function parseEngineBench(stdout: string, s: Section): void {
  for (const line of stdout.split('\n')) {
    const t = line.trim();
    if (t.startsWith('FAIL')) {
      s.error = [s.error, t].filter(Boolean).join('; ');
      continue;
    }
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
      "rewrite rows: samples are engine_bench's own runs, each checked (addresses, payload, checksums, no drops) before it is timed; memory is measured once for 1 M flows",
    );
  }
}
