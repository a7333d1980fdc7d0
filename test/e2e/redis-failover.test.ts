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
import { expectFailover, expectMirrorsResynced, twoGatewaysAround } from './harness/failover.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { killRedis, startSentinelFleet } from './harness/redis.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('shared fake-IP pool through a Sentinel failover (two gateways)', () => {
  // Primary, replica and 3 Sentinels in the upstream namespace, on its address;
  // the second gateway reaches it through its own link.
  const s = twoGatewaysAround(startSentinelFleet, (fleet) => ['--redis', fleet.url]);

  it('the primary killed while 1 000 names resolve on both: one address per name, SERVFAIL in the gap, answers resume after the switch', async () => {
    const { gws, fleet } = s;
    // Told when the Sentinels announce the new primary.
    const watch = await fleet.watchSwitch();
    // WAIT had each allocation on the replica before it was answered: the new primary holds them all.
    await expectFailover('sentinel', gws, watch, () => killRedis(fleet.primary), {
      ip: fleet.ip,
      port: fleet.replicaPort,
    });
    // The replica took over.
    expect(await fleet.primaryNow()).toBe(fleet.replicaPort);
  });

  it('the mirror resynchronised into the new primary: dns ls and nat ls read through the Sentinels', async () => {
    await expectMirrorsResynced(s.gws.t, s.gws.client2, s.fleet.url, s.gws.daemons, 'sentinel');
  });
});
