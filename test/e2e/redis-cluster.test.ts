/**
 * Shared fake-IP pool through a Redis Cluster failover (issue 18,
 * docs/redis.md "Fleets: Sentinel and Cluster"): two gateways share one pool
 * on a 3-primary Cluster (`--redis-cluster`); the primary serving the pool's
 * slot is SIGKILLed while both resolve 1 000 names and its replica is
 * promoted. The same checks as the Sentinel test (test/e2e/harness/failover.ts).
 */
import { describe, expect, it } from 'vitest';
import { expectFailover, expectMirrorsResynced, twoGatewaysAround } from './harness/failover.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { startRedisCluster } from './harness/redis.js';

const skip = e2eUnavailableReason();
const POOL_KEY = 'fakeproxy:pool:{198.18.0.0/16}:n2i';

describe.skipIf(skip)('shared fake-IP pool through a Redis Cluster failover (two gateways)', () => {
  const s = twoGatewaysAround(startRedisCluster, (cluster) => ['--redis-cluster', cluster.seeds]);

  it("the pool's primary killed while 1 000 names resolve on both: one address per name, SERVFAIL in the gap, answers resume after the promotion", async () => {
    const { gws, fleet: cluster } = s;
    const before = await cluster.ownerOf(POOL_KEY);
    expect(before.replica).toBeDefined();
    const replica = before.replica as number;
    const survivor = cluster.ports.find((p) => p !== before.primary && p !== replica) as number;
    const watch = cluster.watchPromotion(POOL_KEY, replica, survivor);
    await expectFailover('cluster', gws, watch, () => cluster.kill(before.primary), { ip: cluster.ip, port: replica });
  });

  it('the mirrors resynchronised: dns ls and nat ls read through the Cluster', async () => {
    await expectMirrorsResynced(s.gws.t, s.gws.client2, s.fleet.url, s.gws.daemons, 'cluster');
  });
});
