/**
 * fakeproxy benchmark suite.
 *
 *   npm run bench                              every scenario
 *   npm run bench -- tcp dns --reps 5 --json   some scenarios, 5 repetitions, JSON to bench/results/
 *   npm run bench -- --quick                   smaller sizes and shorter runs (< 3 min)
 *   npm run bench -- --list                    scenario names
 *
 * Every scenario builds its own namespaces (fpt-<pid>-…), measures its
 * baselines in the same run, verifies its results before reporting them and
 * deletes its namespaces (also on Ctrl-C). Needs root. See docs/benchmarks.md.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Ctx, deleteAllNetns, hostInfo, makeTmp, ROOT, removeStale, removeTmp, Unavailable } from './lib/env.js';
import { renderSection, type Section, toRecord } from './lib/report.js';
import { SCENARIOS, type Scenario } from './scenarios/index.js';

const EXIT_USAGE = 2;

function usage(): string {
  const names = SCENARIOS.map((s) => `  ${[s.name, ...(s.aliases ?? [])].join(', ').padEnd(28)} ${s.describe}`).join(
    '\n',
  );
  return `usage: npm run bench -- [name ...] [--json] [--reps N] [--quick] [--list]\n\nscenarios:\n${names}\n`;
}

interface Args {
  names: string[];
  json: boolean;
  reps: number;
  quick: boolean;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { names: [], json: false, reps: 3, quick: false };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    if (x === '--json') a.json = true;
    else if (x === '--quick') a.quick = true;
    else if (x === '--reps') {
      const n = Number(argv[++i]);
      if (!Number.isInteger(n) || n < 1 || n > 50) throw new UsageErr(`--reps needs an integer 1..50 (got ${argv[i]})`);
      a.reps = n;
    } else if (x === '--list' || x === '-h' || x === '--help') {
      process.stdout.write(usage());
      process.exit(0);
    } else if (x.startsWith('-')) throw new UsageErr(`unknown option ${x}`);
    else a.names.push(x);
  }
  return a;
}

class UsageErr extends Error {}

function pick(names: string[]): Scenario[] {
  if (names.length === 0) return SCENARIOS;
  const out: Scenario[] = [];
  for (const n of names) {
    const s = SCENARIOS.find((x) => x.name === n || x.aliases?.includes(n));
    if (!s) throw new UsageErr(`unknown scenario "${n}"; known: ${SCENARIOS.map((x) => x.name).join(', ')}`);
    if (!out.includes(s)) out.push(s);
  }
  return out;
}

async function main(): Promise<number> {
  let args: Args;
  let scenarios: Scenario[];
  try {
    args = parseArgs(process.argv.slice(2));
    scenarios = pick(args.names);
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n${usage()}`);
    return EXIT_USAGE;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write(
      'bench: needs root: every scenario builds network namespaces, veth pairs and a TUN device (inside the namespaces only). Run `sudo npm run bench`.\n',
    );
    return EXIT_USAGE;
  }
  if (args.reps < 3)
    process.stderr.write(
      `bench: warning: --reps ${args.reps} < 3; medians of fewer than 3 repetitions are not reported as results\n`,
    );

  const ctx: Ctx = {
    reps: args.reps,
    quick: args.quick,
    tmp: makeTmp(),
    aborted: false,
    log: (m) => process.stderr.write(`  · ${m}\n`),
  };

  let stopping = false;
  const onSignal = (sig: string) => {
    if (stopping) return;
    stopping = true;
    ctx.aborted = true;
    process.stderr.write(`\nbench: ${sig}: deleting namespaces and exiting\n`);
    void deleteAllNetns().finally(() => {
      removeTmp();
      process.exit(130);
    });
  };
  process.once('SIGINT', () => onSignal('SIGINT'));
  process.once('SIGTERM', () => onSignal('SIGTERM'));

  const stale = await removeStale();
  if (stale.length) ctx.log(`removed ${stale.length} stale namespace(s) from dead runs: ${stale.join(', ')}`);

  const startedAt = new Date();
  const host = hostInfo();
  process.stdout.write(
    `fakeproxy bench — ${startedAt.toISOString()} — ${host.cpus} CPU (${host.model}), Linux ${host.kernel}, Node ${host.node}, reps ${args.reps}${args.quick ? ', quick' : ''}\n\n`,
  );
  const sections: Section[] = [];
  let failed = false;
  for (const s of scenarios) {
    if (ctx.aborted) break;
    const t0 = Date.now();
    process.stderr.write(`▶ ${s.name}\n`);
    let out: Section[];
    try {
      out = await s.run(ctx);
    } catch (e) {
      const err = e as Error;
      out = [
        e instanceof Unavailable
          ? { scenario: s.name, title: s.describe, rows: [], notes: [], skipped: err.message }
          : { scenario: s.name, title: s.describe, rows: [], notes: [], error: err.stack ?? err.message },
      ];
    } finally {
      await deleteAllNetns();
    }
    const secs = (Date.now() - t0) / 1000;
    for (const sec of out) {
      sec.seconds ??= secs / out.length;
      if (sec.error) failed = true;
      sections.push(sec);
      process.stdout.write(`${renderSection(sec)}\n\n`);
    }
  }

  if (args.json) {
    const dir = join(ROOT, 'bench', 'results');
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `${startedAt.toISOString().replace(/[:.]/g, '-')}.json`);
    const rec = toRecord(sections, {
      startedAt: startedAt.toISOString(),
      argv: process.argv.slice(2),
      host,
      reps: args.reps,
      quick: args.quick,
    });
    writeFileSync(
      file,
      `${JSON.stringify(rec, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`,
    );
    process.stdout.write(`results: ${file}\n`);
  }
  removeTmp();
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  async (e) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
    await deleteAllNetns();
    removeTmp();
    process.exit(1);
  },
);
