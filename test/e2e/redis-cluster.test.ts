/**
 * Shared fake-IP pool through a Redis Cluster failover (issue 18,
 * docs/redis.md "Fleets: Sentinel and Cluster"): two gateways share one pool
 * on a 3-primary Cluster (`--redis-cluster`); the primary serving the pool's
 * slot is SIGKILLed while both resolve 1 000 names and its replica is
 * promoted. The same checks as the Sentinel test (test/e2e/harness/failover.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  expectMirrorsResynced,
  expectOneAddressPerName,
  expectPoolHolds,
  resolveThroughKill,
  resumedAfter,
  startTwoGateways,
  type TwoGateways,
} from './harness/failover.js';
import { e2eUnavailableReason, type Netns } from './harness/netns.js';
import { type RedisClusterFleet, startRedisCluster } from './harness/redis.js';
import type { Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();
const POOL_KEY = 'fakeproxy:pool:{198.18.0.0/16}:n2i';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(skip)('shared fake-IP pool through a Redis Cluster failover (two gateways)', () => {
  let gws: TwoGateways;
  let t: Topology;
  let client2: Netns;
  let cluster: RedisClusterFleet;

  beforeAll(async () => {
    gws = await startTwoGateways(async (topo) => {
      cluster = await startRedisCluster(topo.upstream, topo, topo.upstreamIp);
      return () => ['--redis-cluster', cluster.seeds];
    });
    ({ t, client2 } = gws);
  });
  afterAll(async () => {
    await gws?.destroy();
  });

  it("the pool's primary killed while 1 000 names resolve on both: one address per name, SERVFAIL in the gap, answers resume after the promotion", async () => {
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
    const { res1, res2, killedMs } = await resolveThroughKill(t, client2, () => cluster.kill(before.primary));
    watching = false;
    await watch;

    expect(switchedMs).toBeGreaterThan(killedMs);
    const ipOf = expectOneAddressPerName(res1, res2);
    const resumed = resumedAfter(res1, res2, killedMs, switchedMs);
    console.log(
      `cluster failover: replica promoted ${switchedMs - killedMs} ms after the kill; answers resumed at ${resumed
        .map((ms) => ms - killedMs)
        .join(' / ')} ms (gw1 / gw2); SERVFAIL answers ${res1.rcodes['2']} / ${res2.rcodes['2']}`,
    );
    expect(switchedMs - killedMs).toBeLessThan(20_000);
    for (const ms of resumed) expect(ms - switchedMs).toBeLessThan(15_000);
    await expectPoolHolds(t.upstream, cluster.ip, before.replica as number, ipOf);
  });

  it('the mirrors resynchronised: dns ls and nat ls read through the Cluster', async () => {
    await expectMirrorsResynced(t, client2, cluster.url, gws.daemons, 'cluster');
  });
});
