/**
 * Shared fake-IP pool through a Redis failover (issue 18, docs/redis.md
 * "Fleets: Sentinel and Cluster"): two gateways in two namespaces share one
 * pool through Sentinel; the primary is SIGKILLed while both resolve 1 000
 * names. No name may get two addresses, no address two names; during the gap
 * new names get SERVFAIL; answers resume once the replica is promoted; the
 * mirror resynchronises into the new primary, and `nat ls`/`dns ls` read
 * through the Sentinels. The scenario and its checks: harness/failover.ts.
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
import { killRedis, output, type SentinelFleet, startSentinelFleet } from './harness/redis.js';
import type { Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('shared fake-IP pool through a Sentinel failover (two gateways)', () => {
  let gws: TwoGateways;
  let t: Topology;
  let client2: Netns;
  let fleet: SentinelFleet;

  beforeAll(async () => {
    // Primary, replica and 3 Sentinels in the upstream namespace, on its address;
    // the second gateway reaches it through its own link.
    gws = await startTwoGateways(async (topo) => {
      fleet = await startSentinelFleet(topo.upstream, topo, topo.upstreamIp);
      return () => ['--redis', fleet.url];
    });
    ({ t, client2 } = gws);
  });
  afterAll(async () => {
    await gws?.destroy();
  });

  it('the primary killed while 1 000 names resolve on both: one address per name, SERVFAIL in the gap, answers resume after the switch', async () => {
    // Told when the Sentinels announce the new primary.
    const watch = t.upstream.spawn('redis-cli', [
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

    const { res1, res2, killedMs } = await resolveThroughKill(t, client2, () => killRedis(fleet.primary));
    watch.kill('SIGKILL');

    // The replica took over.
    expect(switchedMs).toBeGreaterThan(killedMs);
    expect(await fleet.primaryNow()).toBe(fleet.replicaPort);
    const ipOf = expectOneAddressPerName(res1, res2);
    const resumed = resumedAfter(res1, res2, killedMs, switchedMs);
    console.log(
      `sentinel failover: switch ${switchedMs - killedMs} ms after the kill; answers resumed at ${resumed
        .map((ms) => ms - killedMs)
        .join(' / ')} ms (gw1 / gw2); SERVFAIL answers ${res1.rcodes['2']} / ${res2.rcodes['2']}`,
    );
    // Bounded: the switch by the Sentinels (down-after 1 s + election); answers after
    // one reconnect backoff (≤ 2 s) and a Sentinel round trip, generous for a loaded machine.
    expect(switchedMs - killedMs).toBeLessThan(20_000);
    for (const ms of resumed) expect(ms - switchedMs).toBeLessThan(15_000);
    // The new primary holds every answered allocation (WAIT had it on the replica before it was answered).
    await expectPoolHolds(t.upstream, fleet.ip, fleet.replicaPort, ipOf);
  });

  it('the mirror resynchronised into the new primary: dns ls and nat ls read through the Sentinels', async () => {
    await expectMirrorsResynced(t, client2, fleet.url, gws.daemons, 'sentinel');
  });
});
