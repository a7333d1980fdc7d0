/**
 * Shared fake-IP pool through a Redis failover (issue 18, docs/redis.md
 * "Fleets: Sentinel and Cluster"): two gateways in two namespaces share one
 * pool through Sentinel; the primary is SIGKILLed while both resolve 1 000
 * names. No name may get two addresses, no address two names; during the gap
 * new names get SERVFAIL; answers resume once the replica is promoted; the
 * mirror resynchronises into the new primary, and `nat ls`/`dns ls` read
 * through the Sentinels.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DaemonProc, ROOT, runCli } from './harness/daemon.js';
import { e2eUnavailableReason, type Netns } from './harness/netns.js';
import { killRedis, output, rcli, type SentinelFleet, startSentinelFleet, until } from './harness/redis.js';
import { addClient, createTopology, ECHO_PORT, startDaemonIn, type Topology, tmpFile } from './harness/topology.js';

const skip = e2eUnavailableReason();
const RESOLVE = join(ROOT, 'test/e2e/fixtures/resolve-paced.mjs');
const inRange = (ip: string) => /^198\.18\.\d+\.\d+$/.test(ip) && ip !== '198.18.0.1' && ip !== '198.18.0.0';

interface Resolved {
  answers: [name: string, ip: string, ms: number][];
  rcodes: Record<string, number>;
  unanswered: string[];
}

describe.skipIf(skip)('shared fake-IP pool through a Sentinel failover (two gateways)', () => {
  let t: Topology;
  let client2: Netns;
  let fleet: SentinelFleet;
  let d2: DaemonProc | undefined;

  beforeAll(async () => {
    t = await createTopology();
    // Primary, replica and 3 Sentinels in the upstream namespace, on its address;
    // the second gateway reaches it through its own link.
    fleet = await startSentinelFleet(t.upstream, t, t.upstreamIp);
    ({ ns: client2 } = await addClient(t, 'c2'));
    const args = (node: string) => ['--redis', fleet.url, '--redis-shared-pool', '--node-id', node];
    d2 = startDaemonIn(client2, t.upstreamIp, args('gw2'));
    await t.startDaemon(args('gw1'));
    await d2.waitFor(/running; Ctrl-C to stop/, 20_000);
  });
  afterAll(async () => {
    await d2?.stop();
    await client2?.delete();
    await t?.destroy();
  });

  it('the primary killed while 1 000 names resolve on both: one address per name, SERVFAIL in the gap, answers resume after the switch', async () => {
    // Side 1 asks n0..n599, side 2 n400..n999; the 200 shared names are spread
    // through both runs, so both sides race for them before, during and after the failover.
    const name = (i: number) => `n${i}.failover.test`;
    const interleave = (own: number[]) =>
      own.flatMap((i, k) => (k % 2 === 0 ? [name(400 + k / 2), name(i)] : [name(i)]));
    const side1 = interleave(Array.from({ length: 400 }, (_, k) => k));
    const side2 = interleave(Array.from({ length: 400 }, (_, k) => 600 + k));
    expect(new Set([...side1, ...side2]).size).toBe(1000);
    const f1 = tmpFile(t, 'failover1.txt', side1.join('\n'));
    const f2 = tmpFile(t, 'failover2.txt', side2.join('\n'));
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

    const r1 = t.client.spawn('node', [RESOLVE, f1, '40000']);
    const r2 = client2.spawn('node', [RESOLVE, f2, '40000']);
    const o1 = output(r1);
    const o2 = output(r2);
    // Half of each side's names went out: kill the primary.
    await Promise.all([o1.wait(/^half \d+$/m), o2.wait(/^half \d+$/m)]);
    const killedMs = Date.now();
    await killRedis(fleet.primary);
    const [j1, j2] = await Promise.all([o1.wait(/^\{.*\}$/m, 60_000), o2.wait(/^\{.*\}$/m, 60_000)]);
    watch.kill('SIGKILL');
    const res1 = JSON.parse(j1[0]) as Resolved;
    const res2 = JSON.parse(j2[0]) as Resolved;

    // The replica took over.
    expect(switchedMs).toBeGreaterThan(killedMs);
    expect(await fleet.primaryNow()).toBe(fleet.replicaPort);
    // Every name answered, in range; the only error was SERVFAIL (2).
    for (const r of [res1, res2]) {
      expect(r.unanswered).toEqual([]);
      for (const [, ip] of r.answers) expect(inRange(ip)).toBe(true);
      expect(Object.keys(r.rcodes).filter((k) => k !== '0' && k !== '2')).toEqual([]);
    }
    // One address per name over every answer either side ever gave, and one name per address.
    const ipOf = new Map<string, Set<string>>();
    const nameOf = new Map<string, Set<string>>();
    for (const [n, ip] of [...res1.answers, ...res2.answers]) {
      ipOf.set(n, (ipOf.get(n) ?? new Set()).add(ip));
      nameOf.set(ip, (nameOf.get(ip) ?? new Set()).add(n));
    }
    expect([...ipOf].filter(([, s]) => s.size > 1).map(([n, s]) => `${n}: ${[...s]}`)).toEqual([]);
    expect([...nameOf].filter(([, s]) => s.size > 1).map(([ip, s]) => `${ip}: ${[...s]}`)).toEqual([]);
    expect(ipOf.size).toBe(1000);

    // The kill fell inside both runs: names answered before it, SERVFAIL during the gap, answers after the switch.
    for (const r of [res1, res2]) {
      expect(r.answers.some(([, , ms]) => ms < killedMs)).toBe(true);
      expect(r.rcodes['2'] ?? 0).toBeGreaterThan(0);
      expect(r.answers.some(([, , ms]) => ms > switchedMs)).toBe(true);
    }
    // Resumed: the first answer after the switch on each side (any earlier answer
    // after the kill was a name that side had cached).
    const resumed = [res1, res2].map((r) =>
      Math.min(...r.answers.map(([, , ms]) => ms).filter((ms) => ms > switchedMs)),
    );
    console.log(
      `sentinel failover: switch ${switchedMs - killedMs} ms after the kill; answers resumed at ${resumed
        .map((ms) => ms - killedMs)
        .join(' / ')} ms (gw1 / gw2); SERVFAIL answers ${res1.rcodes['2']} / ${res2.rcodes['2']}`,
    );
    // Bounded: the switch by the Sentinels (down-after 1 s + election), answers within
    // one reconnect backoff (≤ 2 s) and a Sentinel round trip after it; generous for a loaded machine.
    expect(switchedMs - killedMs).toBeLessThan(20_000);
    for (const ms of resumed) expect(ms - switchedMs).toBeLessThan(10_000);

    // The new primary holds every answered allocation (WAIT had it on the replica before it was answered).
    const all = [...ipOf.keys()];
    const input = all.map((n) => `HGET fakeproxy:pool:{198.18.0.0/16}:n2i ${n}\n`).join('');
    const inRedis = (await rcli(t.upstream, fleet.replicaPort, [], { host: fleet.ip, input })).split('\n');
    all.forEach((n, i) => {
      expect(inRedis[i], n).toBe([...(ipOf.get(n) as Set<string>)][0]);
    });
  });

  it('the mirror resynchronised into the new primary: dns ls and nat ls read through the Sentinels', async () => {
    // A connection through each gateway after the failover, held open for nat ls.
    const hold = `require('node:net').connect(${ECHO_PORT}, 'echo.test').on('connect', () => console.log('connected'))`;
    const holders = [t.client, client2].map((ns) => ns.spawn('node', ['-e', hold]));
    await Promise.all(holders.map((h) => output(h).wait(/^connected$/m, 15_000)));
    const namesOf = async (node: string) => {
      const r = await runCli(t.client, ['dns', 'ls', '--redis', fleet.url, '--node', node, '--json']);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { names: { node: string; name: string; ip: string }[] }).names;
    };
    const began = Date.now();
    for (const [node, count] of [
      ['gw1', 600],
      ['gw2', 600],
    ] as const) {
      let last: unknown;
      await until(
        `${node}'s fake-IP map (${count} failover names) in the new primary`,
        async () => {
          const names = (await namesOf(node)).filter((n) => n.name.endsWith('.failover.test'));
          last = names.length;
          return names.length === count ? true : undefined;
        },
        30_000,
        () => last,
      );
    }
    const redisLines = (d: DaemonProc | undefined) =>
      (d?.output ?? '')
        .split('\n')
        .filter((l) => /redis|pool/i.test(l))
        .join(' | ');
    console.log(
      `mirror maps complete ${Date.now() - began} ms into this test; gw1: ${redisLines(t.daemon)}; gw2: ${redisLines(d2)}`,
    );
    // Both gateways' maps agree on every shared name.
    const [m1, m2] = [await namesOf('gw1'), await namesOf('gw2')].map(
      (l) => new Map(l.map((n) => [n.name, n.ip] as const)),
    );
    for (let i = 400; i < 600; i++) expect(m2.get(`n${i}.failover.test`)).toBe(m1.get(`n${i}.failover.test`));

    const flows = await until(
      'both gateways’ echo.test flows in nat ls',
      async () => {
        const r = await runCli(t.client, ['nat', 'ls', '--redis', fleet.url, '--json']);
        if (r.code !== 0) return undefined;
        const f = (JSON.parse(r.stdout) as { flows: { node: string; name: string }[] }).flows.filter(
          (x) => x.name === 'echo.test',
        );
        return new Set(f.map((x) => x.node)).size === 2 ? f : undefined;
      },
      20_000,
    );
    expect(flows.map((f) => f.node).sort()).toEqual(['gw1', 'gw2']);
    for (const h of holders) h.kill('SIGKILL');
  });
});
