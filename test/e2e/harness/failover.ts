/**
 * The shared-pool failover scenario of redis-failover.test.ts, for any Redis
 * a fleet can fail over (Sentinel, Cluster): two gateways resolve 1 000
 * names while `kill` takes the pool's primary away, and every reply is
 * checked. Uses vitest's expect: test files only (bench/ never imports it).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect } from 'vitest';
import { type DaemonProc, ROOT, runCli } from './daemon.js';
import type { Netns } from './netns.js';
import { output, rcli, type SwitchWatch, until } from './redis.js';
import { addClient, createTopology, ECHO_PORT, inRange, startDaemonIn, type Topology, tmpFile } from './topology.js';

const RESOLVE = join(ROOT, 'test/e2e/fixtures/resolve-paced.mjs');

export interface Resolved {
  answers: [name: string, ip: string, ms: number][];
  rcodes: Record<string, number>;
  unanswered: string[];
}

export const failoverName = (i: number) => `n${i}.failover.test`;

/**
 * Side 1 (t.client) asks n0..n599, side 2 (client2) n400..n999: the 200
 * shared names are spread through both runs, so both sides race for them
 * before, during and after the failover. Each resolver asks its first half,
 * prints "half" once every name of it is answered, and waits; `kill` runs
 * then, and only once it returned do both go on with the rest: answers
 * before the kill, queries in the gap and after the switch hold by
 * construction, not by timing. Returns both sides' replies and when the
 * kill began.
 */
async function resolveThroughKill(
  t: Topology,
  client2: Netns,
  kill: () => Promise<void>,
): Promise<{ res1: Resolved; res2: Resolved; killedMs: number }> {
  const interleave = (own: number[]) =>
    own.flatMap((i, k) => (k % 2 === 0 ? [failoverName(400 + k / 2), failoverName(i)] : [failoverName(i)]));
  const side1 = interleave(Array.from({ length: 400 }, (_, k) => k));
  const side2 = interleave(Array.from({ length: 400 }, (_, k) => 600 + k));
  expect(new Set([...side1, ...side2]).size).toBe(1000);
  const f1 = tmpFile(t, 'failover1.txt', side1.join('\n'));
  const f2 = tmpFile(t, 'failover2.txt', side2.join('\n'));
  const p1 = t.client.spawn('node', [RESOLVE, f1, '40000']);
  const p2 = client2.spawn('node', [RESOLVE, f2, '40000']);
  const [o1, o2] = [output(p1), output(p2)];
  // Generous: 300 names each through a loaded machine's Redis round trips.
  await Promise.all([o1.wait(/^half \d+$/m, 60_000), o2.wait(/^half \d+$/m, 60_000)]);
  const killedMs = Date.now();
  await kill();
  for (const p of [p1, p2]) p.stdin?.write('go\n');
  const [j1, j2] = await Promise.all([o1.wait(/^\{.*\}$/m, 60_000), o2.wait(/^\{.*\}$/m, 60_000)]);
  return { res1: JSON.parse(j1[0]) as Resolved, res2: JSON.parse(j2[0]) as Resolved, killedMs };
}

/**
 * Every name answered, in range, SERVFAIL the only error; one address per
 * name and one name per address over every reply either side gave. Returns
 * name → address.
 */
export function expectOneAddressPerName(res1: Resolved, res2: Resolved): Map<string, string> {
  for (const r of [res1, res2]) {
    expect(r.unanswered).toEqual([]);
    for (const [, ip] of r.answers) expect(inRange(ip)).toBe(true);
    expect(Object.keys(r.rcodes).filter((k) => k !== '0' && k !== '2')).toEqual([]);
  }
  const ipOf = new Map<string, Set<string>>();
  const nameOf = new Map<string, Set<string>>();
  for (const [n, ip] of [...res1.answers, ...res2.answers]) {
    ipOf.set(n, (ipOf.get(n) ?? new Set()).add(ip));
    nameOf.set(ip, (nameOf.get(ip) ?? new Set()).add(n));
  }
  expect([...ipOf].filter(([, s]) => s.size > 1).map(([n, s]) => `${n}: ${[...s]}`)).toEqual([]);
  expect([...nameOf].filter(([, s]) => s.size > 1).map(([ip, s]) => `${ip}: ${[...s]}`)).toEqual([]);
  expect(ipOf.size).toBe(1000);
  return new Map([...ipOf].map(([n, s]) => [n, [...s][0]]));
}

/**
 * The kill fell inside both runs (answers before it, SERVFAIL, answers after
 * `switchedMs`); returns when each side answered its first name after the
 * switch (any earlier answer after the kill was a name that side had cached).
 */
export function resumedAfter(res1: Resolved, res2: Resolved, killedMs: number, switchedMs: number): number[] {
  for (const [i, r] of [res1, res2].entries()) {
    // What a failure here needs to be read: which side, its rcodes, its answers around the kill and the switch.
    const ms = r.answers.map(([, , at]) => at);
    const why = `gw${i + 1}: rcodes ${JSON.stringify(r.rcodes)}; switch ${switchedMs - killedMs} ms after the kill; answers ${ms.filter((at) => at < killedMs).length} before the kill, ${ms.filter((at) => at >= killedMs && at <= switchedMs).length} in the gap (first ${Math.min(...ms.filter((at) => at >= killedMs)) - killedMs} ms after it), ${ms.filter((at) => at > switchedMs).length} after the switch`;
    expect(
      r.answers.some(([, , at]) => at < killedMs),
      why,
    ).toBe(true);
    expect(r.rcodes['2'] ?? 0, why).toBeGreaterThan(0);
    expect(
      r.answers.some(([, , at]) => at > switchedMs),
      why,
    ).toBe(true);
  }
  return [res1, res2].map((r) => Math.min(...r.answers.map(([, , ms]) => ms).filter((ms) => ms > switchedMs)));
}

/**
 * The checks both failover tests make once the run is over: the new primary
 * took over after the kill, one address per name, answers resumed on both
 * sides within bounds. Prints the timeline; returns name → address.
 */
function expectFailoverTimeline(
  label: string,
  res1: Resolved,
  res2: Resolved,
  killedMs: number,
  switchedMs: number,
): Map<string, string> {
  expect(switchedMs).toBeGreaterThan(killedMs);
  const ipOf = expectOneAddressPerName(res1, res2);
  const resumed = resumedAfter(res1, res2, killedMs, switchedMs);
  console.log(
    `${label} failover: new primary ${switchedMs - killedMs} ms after the kill; answers resumed at ${resumed
      .map((ms) => ms - killedMs)
      .join(' / ')} ms (gw1 / gw2); SERVFAIL answers ${res1.rcodes['2']} / ${res2.rcodes['2']}`,
  );
  // Bounded: the switch (Sentinel down-after 1 s + election, or Cluster node timeout +
  // promotion); answers after one reconnect backoff (≤ 2 s) and a round trip to the
  // fleet, generous for a loaded machine.
  expect(switchedMs - killedMs).toBeLessThan(20_000);
  for (const ms of resumed) expect(ms - switchedMs).toBeLessThan(15_000);
  return ipOf;
}

/** Every answered allocation is in the pool held by the Redis at ip:port (the promoted replica). */
async function expectPoolHolds(ns: Netns, ip: string, port: number, ipOf: Map<string, string>): Promise<void> {
  const names = [...ipOf.keys()];
  const input = names.map((n) => `HGET fakeproxy:pool:{198.18.0.0/16}:n2i ${n}\n`).join('');
  const inRedis = (await rcli(ns, port, [], { host: ip, input })).split('\n');
  names.forEach((n, i) => {
    expect(inRedis[i], n).toBe(ipOf.get(n));
  });
}

/**
 * The failover itself, as both fleet tests run it: `kill` takes the pool's
 * primary away while both gateways resolve (resolveThroughKill), `watch`
 * (started before) is stopped and its last check awaited, the timeline is checked
 * (expectFailoverTimeline, printed with `label`), and the promoted node at
 * `promoted` holds every answered allocation.
 */
export async function expectFailover(
  label: string,
  gws: TwoGateways,
  watch: SwitchWatch,
  kill: () => Promise<void>,
  promoted: { ip: string; port: number },
): Promise<void> {
  let run: Awaited<ReturnType<typeof resolveThroughKill>>;
  try {
    run = await resolveThroughKill(gws.t, gws.client2, kill);
  } finally {
    await watch.stop();
  }
  const ipOf = expectFailoverTimeline(label, run.res1, run.res2, run.killedMs, watch.switchedMs());
  await expectPoolHolds(gws.t.upstream, promoted.ip, promoted.port, ipOf);
}

/**
 * After the failover: both gateways' fake-IP maps (600 failover names each)
 * are back in Redis and agree on the shared names (`dns ls`), and a
 * connection held open through each gateway shows in `nat ls`, all read
 * through `url`. Prints how long the mirrors took and their Redis log lines.
 */
export async function expectMirrorsResynced(
  t: Topology,
  client2: Netns,
  url: string,
  daemons: (DaemonProc | undefined)[],
  label: string,
): Promise<void> {
  const hold = `require('node:net').connect(${ECHO_PORT}, 'echo.test').on('connect', () => console.log('connected'))`;
  const holders = [t.client, client2].map((ns) => ns.spawn('node', ['-e', hold]));
  try {
    await Promise.all(holders.map((h) => output(h).wait(/^connected$/m, 15_000)));
    const namesOf = async (node: string) => {
      const r = await runCli(t.client, ['dns', 'ls', '--redis', url, '--node', node, '--json']);
      expect(r.code, r.stderr).toBe(0);
      return (JSON.parse(r.stdout) as { names: { node: string; name: string; ip: string }[] }).names;
    };
    const began = Date.now();
    for (const node of ['gw1', 'gw2']) {
      let last: unknown;
      await until(
        `${node}'s fake-IP map (600 failover names) in Redis`,
        async () => {
          last = (await namesOf(node)).filter((n) => n.name.endsWith('.failover.test')).length;
          return last === 600 ? true : undefined;
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
      `${label}: mirror maps complete ${Date.now() - began} ms into the check; gw1: ${redisLines(daemons[0])}; gw2: ${redisLines(daemons[1])}`,
    );
    const [m1, m2] = [await namesOf('gw1'), await namesOf('gw2')].map(
      (l) => new Map(l.map((n) => [n.name, n.ip] as const)),
    );
    for (let i = 400; i < 600; i++) expect(m2.get(failoverName(i))).toBe(m1.get(failoverName(i)));

    const flows = await until(
      'both gateways’ echo.test flows in nat ls',
      async () => {
        const r = await runCli(t.client, ['nat', 'ls', '--redis', url, '--json']);
        if (r.code !== 0) return undefined;
        const f = (JSON.parse(r.stdout) as { flows: { node: string; name: string }[] }).flows.filter(
          (x) => x.name === 'echo.test',
        );
        return new Set(f.map((x) => x.node)).size === 2 ? f : undefined;
      },
      20_000,
    );
    expect([...new Set(flows.map((f) => f.node))].sort()).toEqual(['gw1', 'gw2']);
  } finally {
    for (const h of holders) h.kill('SIGKILL');
  }
}

export interface TwoGateways {
  t: Topology;
  client2: Netns;
  /** gw1 in t.client (also t.daemon), gw2 in client2. */
  daemons: [DaemonProc, DaemonProc];
  destroy(): Promise<void>;
}

/**
 * The topology with a second client namespace and a daemon in each (node ids
 * gw1, gw2), sharing the pool through the Redis flags `fleet` returns once it
 * started the Redis side in t.upstream.
 */
async function startTwoGateways(fleet: (t: Topology) => Promise<string[]>): Promise<TwoGateways> {
  const t = await createTopology();
  const args = await fleet(t);
  const { ns: client2 } = await addClient(t, 'c2');
  const d2 = startDaemonIn(client2, t.upstreamIp, [...args, '--redis-shared-pool', '--node-id', 'gw2']);
  const d1 = await t.startDaemon([...args, '--redis-shared-pool', '--node-id', 'gw1']);
  await d2.waitFor(/running; Ctrl-C to stop/, 20_000);
  return {
    t,
    client2,
    daemons: [d1, d2],
    async destroy() {
      await d2.stop();
      await client2.delete();
      await t.destroy();
    },
  };
}

/**
 * A failover suite's set-up: beforeAll starts the fleet (`start`, in
 * t.upstream) and two gateways sharing the pool through `args(fleet)`;
 * afterAll tears them down. Read the fields inside tests.
 */
export function twoGatewaysAround<F>(
  start: (t: Topology) => Promise<F>,
  args: (fleet: F) => string[],
): { gws: TwoGateways; fleet: F } {
  const s = {} as { gws: TwoGateways; fleet: F };
  beforeAll(async () => {
    s.gws = await startTwoGateways(async (t) => {
      s.fleet = await start(t);
      return args(s.fleet);
    });
  });
  afterAll(async () => {
    await s.gws?.destroy();
  });
  return s;
}
