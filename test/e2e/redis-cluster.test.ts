/**
 * Shared fake-IP pool through a Redis Cluster failover (issue 18,
 * docs/redis.md "Fleets: Sentinel and Cluster"): two gateways share one pool
 * on a 3-primary Cluster (`--redis-cluster`); the primary serving the pool's
 * slot is SIGKILLed while both resolve 1 000 names and its replica is
 * promoted. The same checks as the Sentinel test (test/e2e/harness/failover.ts).
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
import { startRedisCluster } from './harness/redis.js';

const skip = e2eUnavailableReason();
const POOL_KEY = 'fakeproxy:pool:{198.18.0.0/16}:n2i';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(skip)('shared fake-IP pool through a Redis Cluster failover (two gateways)', () => {
  const s = twoGatewaysAround(
    (topo) => startRedisCluster(topo.upstream, topo, topo.upstreamIp),
    (cluster) => ['--redis-cluster', cluster.seeds],
  );

  it("the pool's primary killed while 1 000 names resolve on both: one address per name, SERVFAIL in the gap, answers resume after the promotion", async () => {
    const { gws, fleet: cluster } = s;
    const before = await cluster.ownerOf(POOL_KEY);
    expect(before.replica).toBeDefined();
    const survivor = cluster.ports.find((p) => p !== before.primary && p !== before.replica) as number;
    let switchedMs = 0;
    let watching = true;
    // Polls (from a node that stays up) until the replica serves the pool's slot.
    const watch = (async () => {
      while (watching && switchedMs === 0) {
        const now = await cluster.ownerOf(POOL_KEY, survivor).catch(() => undefined);
        if (now?.primary === before.replica) switchedMs = Date.now();
        else await sleep(50);
      }
    })();
    const { res1, res2, killedMs } = await resolveThroughKill(gws.t, gws.client2, () => cluster.kill(before.primary));
    watching = false;
    await watch;

    const ipOf = expectFailoverTimeline('cluster', res1, res2, killedMs, switchedMs);
    await expectPoolHolds(gws.t.upstream, cluster.ip, before.replica as number, ipOf);
  });

  it('the mirrors resynchronised: dns ls and nat ls read through the Cluster', async () => {
    await expectMirrorsResynced(s.gws.t, s.gws.client2, s.fleet.url, s.gws.daemons, 'cluster');
  });
});
