/**
 * The node flags the daemon runs with. They are written once, on cli.ts's `#!` line, so that
 * `fakeproxy start` (the npm bin link, the systemd unit) gets them from the kernel; the bench and
 * the e2e harness, which start `node cli.js` themselves, read them from that line too.
 *
 * Why there is one at all (issue 11): with Node 20's default 16 MiB semi-spaces every scavenge
 * copies into a to-space whose pages are fresh, and on this VM kind a fresh page costs a hypervisor
 * round trip: scavenges held the event loop 5–25 ms, and the connections accepted meanwhile
 * stalled in clusters (the paced conn/s p99). At 1 MiB a scavenge takes 0.5–2.6 ms, with no
 * measurable JS CPU cost per connection (docs/benchmarks.md). V8 reads the flag only at
 * start-up (`v8.setFlagsFromString` afterwards leaves the young generation as it is), so it
 * must be on node's command line.
 */
import { readFileSync } from 'node:fs';

/** `#!/usr/bin/env -S node --flag …` → ['--flag', …]; [] for a plain `#!/usr/bin/env node`. */
export function shebangNodeFlags(firstLine: string): string[] {
  const m = /^#!\S*\benv(?:\s+-S)?\s+node(?:\s+(.*))?$/.exec(firstLine.trimEnd());
  if (!m) throw new Error(`not a node #! line: ${JSON.stringify(firstLine)}`);
  return (m[1] ?? '').split(/\s+/).filter(Boolean);
}

/** The node flags on `cliPath`'s `#!` line (the compiled dist/src/cli.js keeps it). */
export function cliNodeFlags(cliPath: string): string[] {
  return shebangNodeFlags(readFileSync(cliPath, 'utf8').split('\n', 1)[0] ?? '');
}

/**
 * Of `wanted`, the flags this process was not started with (neither on node's command line nor
 * in NODE_OPTIONS), compared by name: `--max-semi-space-size=2` counts as given.
 */
export function missingNodeFlags(wanted: readonly string[], execArgv: readonly string[], nodeOptions = ''): string[] {
  const given = new Set([...execArgv, ...nodeOptions.split(/\s+/)].map((f) => f.split('=')[0]));
  return wanted.filter((f) => !given.has(f.split('=')[0]));
}
