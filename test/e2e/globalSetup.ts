import { cleanupStale, e2eUnavailableReason, run } from './harness/netns.js';

/**
 * Runs once before the e2e project. Locally, a machine that cannot run the
 * suite (not root, no /dev/net/tun) skips it with the reason; with CI=true a
 * skipped e2e suite is a failure, so CI can never pass on unit tests alone.
 */
export default async function setup(): Promise<void> {
  const reason = e2eUnavailableReason();
  if (reason) {
    if (process.env.CI === 'true') throw new Error(`CI=true and the e2e suite cannot run: ${reason}`);
    console.warn(`skipping e2e: ${reason}`);
    return;
  }
  const probe = await run('ip', ['netns', 'list']);
  if (probe.code !== 0) {
    const msg = `ip netns does not work here: ${probe.stderr.trim()}`;
    if (process.env.CI === 'true') throw new Error(`CI=true and ${msg}`);
    console.warn(`skipping e2e: ${msg}`);
    return;
  }
  const removed = await cleanupStale();
  if (removed.length) console.warn(`removed stale namespaces from a killed run: ${removed.join(', ')}`);
}
