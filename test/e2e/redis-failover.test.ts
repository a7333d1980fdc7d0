/**
 * Shared fake-IP pool through a Redis failover (issue 18, docs/redis.md
 * "Fleets: Sentinel and Cluster"): two gateways in two namespaces share one
 * pool through Sentinel; the primary is SIGKILLed while both resolve 1 000
 * names. No name may get two addresses, no address two names; during the gap
 * new names get SERVFAIL; answers resume once the replica is promoted; the
 * mirror resynchronises into the new primary, and `nat ls`/`dns ls` read
 * through the Sentinels. The scenario and its checks: harness/failover.ts.
 */
import { describe, expect, it } from 'vitest';
import {
  expectFailoverTimeline,
  expectMirrorsResynced,
  expectPoolHolds,
  resolveThroughKill,
  twoGatewaysAround,
} from './harness/failover.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { killRedis, output, startSentinelFleet } from './harness/redis.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('shared fake-IP pool through a Sentinel failover (two gateways)', () => {
  // Primary, replica and 3 Sentinels in the upstream namespace, on its address;
  // the second gateway reaches it through its own link.
  const s = twoGatewaysAround(
    (topo) => startSentinelFleet(topo.upstream, topo, topo.upstreamIp),
    (fleet) => ['--redis', fleet.url],
  );

  it('the primary killed while 1 000 names resolve on both: one address per name, SERVFAIL in the gap, answers resume after the switch', async () => {
    const { gws, fleet } = s;
    // Told when the Sentinels announce the new primary.
    const watch = gws.t.upstream.spawn('redis-cli', [
      '-h',
      fleet.ip,
      '-p',
      String(fleet.sentinelPorts[1]),
      'SUBSCRIBE',
      '+switch-master',
    ]);
    let switchedMs = 0;
    const watched = output(watch);
    watch.stdout?.on('data', (d: string) => {
      if (switchedMs === 0 && /mymaster \S+ \d+ \S+ \d+/.test(d)) switchedMs = Date.now();
    });
    // Subscribed (Sentinels have no PUBSUB to ask): redis-cli printed the confirmation.
    await watched.wait(/^\+switch-master\n1$/m, 10_000);

    const { res1, res2, killedMs } = await resolveThroughKill(gws.t, gws.client2, () => killRedis(fleet.primary));
    watch.kill('SIGKILL');

    // The replica took over.
    const ipOf = expectFailoverTimeline('sentinel', res1, res2, killedMs, switchedMs);
    expect(await fleet.primaryNow()).toBe(fleet.replicaPort);
    // The new primary holds every answered allocation (WAIT had it on the replica before it was answered).
    await expectPoolHolds(gws.t.upstream, fleet.ip, fleet.replicaPort, ipOf);
  });

  it('the mirror resynchronised into the new primary: dns ls and nat ls read through the Sentinels', async () => {
    await expectMirrorsResynced(s.gws.t, s.gws.client2, s.fleet.url, s.gws.daemons, 'sentinel');
  });
});
