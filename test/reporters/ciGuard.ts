import type { Reporter, TestModule } from 'vitest/node';

/**
 * Prints one plain closing line for the whole run ("N passed, N failed,
 * N skipped") and, when CI=true, fails the run if any test was skipped or
 * none ran: CI must never go green on a suite that quietly did not run
 * (e.g. the root-only e2e project on a machine without /dev/net/tun).
 */
export default class CiGuard implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    const skippedNames: string[] = [];
    for (const m of modules) {
      for (const t of m.children.allTests()) {
        const s = t.result().state;
        if (s === 'passed') passed++;
        else if (s === 'failed') failed++;
        else {
          skipped++;
          if (skippedNames.length < 10) skippedNames.push(`${m.project.name}: ${t.fullName}`);
        }
      }
      // A module that failed to load has no tests but must count as a failure.
      if (m.state() === 'failed' && m.children.size === 0) failed++;
    }
    process.stdout.write(`\n${passed} passed, ${failed} failed, ${skipped} skipped\n`);
    if (process.env.CI === 'true' && (skipped > 0 || passed === 0)) {
      process.stdout.write(
        `CI=true: ${skipped > 0 ? `${skipped} skipped test(s) count as failure` : 'no test ran'}\n${skippedNames.map((n) => `  skipped: ${n}`).join('\n')}\n`,
      );
      process.exitCode = 1;
    }
  }
}
