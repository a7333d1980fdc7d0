/**
 * Redis in e2e tests: redis-server, Sentinels and redis-cli run inside the
 * test's namespaces (spawned through Netns, so deleting the namespace kills
 * them), and the small polling/output helpers the Redis tests share.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import type { Netns } from './netns.js';
import { type Topology, waitListening } from './topology.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a value that is not undefined; throws with `what` (and the last value seen) at the deadline. */
export async function until<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  timeoutMs: number,
  last?: () => unknown,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline)
      throw new Error(
        `timed out (${timeoutMs} ms) waiting for ${what}${last ? `; last: ${JSON.stringify(last())}` : ''}`,
      );
    await sleep(200);
  }
}

/** Collects a child's stdout+stderr and resolves when it matches. */
export function output(child: ChildProcess): {
  text: () => string;
  wait: (re: RegExp, timeoutMs?: number) => Promise<RegExpMatchArray>;
} {
  let buf = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    buf += d;
  });
  return {
    text: () => buf,
    wait: (re, timeoutMs = 15_000) =>
      until(
        `${re} in output`,
        async () => {
          const m = buf.match(re);
          if (m) return m;
          if (child.exitCode !== null || child.signalCode !== null)
            throw new Error(`process exited before ${re}: ${buf}`);
          return undefined;
        },
        timeoutMs,
        () => buf.slice(-2000),
      ),
  };
}

/** redis-server inside `ns` (no persistence); spawned through ns.spawn so ns.delete() kills it. */
export async function startRedis(
  ns: Netns,
  t: Pick<Topology, 'tmp'>,
  port: number,
  extra: string[] = [],
  bind = '127.0.0.1',
): Promise<ChildProcess> {
  const child = ns.spawn('redis-server', [
    '--port',
    String(port),
    '--bind',
    bind,
    '--save',
    '',
    '--appendonly',
    'no',
    '--dir',
    t.tmp,
    ...extra,
  ]);
  const out = output(child);
  await out.wait(/Ready to accept connections/, 10_000);
  await waitListening(ns, port);
  return child;
}

export async function killRedis(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await gone;
}

/** redis-cli in `ns`; throws when it fails or replies with an error. */
export async function rcli(
  ns: Netns,
  port: number,
  args: string[],
  opts: { host?: string; input?: string; auth?: string } = {},
): Promise<string> {
  const base = ['--no-auth-warning', '-h', opts.host ?? '127.0.0.1', '-p', String(port)];
  if (opts.auth) base.push('-a', opts.auth);
  const r = await ns.exec('redis-cli', [...base, ...args], { input: opts.input });
  if (r.code !== 0 || /^(ERR|WRONGPASS|NOAUTH)/m.test(r.stdout))
    throw new Error(`redis-cli ${args.join(' ')}: ${r.code} ${r.stdout}${r.stderr}`);
  return r.stdout;
}

/** `SENTINEL master <name>` (or any flat key/value reply) as an object. */
function pairs(text: string): Record<string, string> {
  const l = text.split('\n');
  const o: Record<string, string> = {};
  for (let i = 0; i + 1 < l.length; i += 2) o[l[i]] = l[i + 1];
  return o;
}

/**
 * Watches a fleet for its new primary. `switchedMs()` is when it was first
 * seen (0 until then); `stop()` ends the watch and resolves only once its
 * last check has finished, so the time read after it is final.
 */
export interface SwitchWatch {
  switchedMs(): number;
  stop(): Promise<void>;
}

export interface SentinelFleet {
  ip: string;
  primaryPort: number;
  replicaPort: number;
  sentinelPorts: number[];
  /** redis+sentinel://ip:port,…/mymaster */
  url: string;
  primary: ChildProcess;
  replica: ChildProcess;
  /** Where the Sentinels say the primary is now (ask the first one). */
  primaryNow(): Promise<number>;
  /** Subscribes to +switch-master on a Sentinel; resolves once subscribed. */
  watchSwitch(): Promise<SwitchWatch>;
}

/** Where a fleet runs: in the topology's upstream namespace, on its address. */
export type FleetSite = Pick<Topology, 'upstream' | 'upstreamIp' | 'tmp'>;

/**
 * A primary, one replica and three Sentinels (quorum 2,
 * down-after-milliseconds 1000) in t.upstream on t.upstreamIp, all answering
 * before this resolves: the replica in sync and every Sentinel knowing the
 * replica and the two other Sentinels, so a failover can start as soon as
 * the primary is gone.
 */
export async function startSentinelFleet(t: FleetSite, base = 6390): Promise<SentinelFleet> {
  const { upstream: ns, upstreamIp: ip } = t;
  const [primaryPort, replicaPort] = [base, base + 1];
  const sentinelPorts = [base + 20000, base + 20001, base + 20002];
  const primary = await startRedis(ns, t, primaryPort, ['--protected-mode', 'no'], ip);
  const replica = await startRedis(
    ns,
    t,
    replicaPort,
    ['--protected-mode', 'no', '--replicaof', ip, String(primaryPort), '--dbfilename', `replica-${replicaPort}.rdb`],
    ip,
  );
  await until(
    'the replica in sync',
    async () =>
      // Both sides: the primary lists the replica online only at its first ACK.
      /master_link_status:up/.test(await rcli(ns, replicaPort, ['INFO', 'replication'], { host: ip })) &&
      /state=online/.test(await rcli(ns, primaryPort, ['INFO', 'replication'], { host: ip }))
        ? true
        : undefined,
    15_000,
  );
  for (const port of sentinelPorts) {
    const conf = `${t.tmp}/sentinel-${port}.conf`;
    writeFileSync(
      conf,
      [
        `port ${port}`,
        `bind ${ip}`,
        'protected-mode no',
        `dir ${t.tmp}`,
        `sentinel monitor mymaster ${ip} ${primaryPort} 2`,
        'sentinel down-after-milliseconds mymaster 1000',
        'sentinel failover-timeout mymaster 10000',
        'sentinel parallel-syncs mymaster 1',
        '',
      ].join('\n'),
    );
    const s = ns.spawn('redis-sentinel', [conf]);
    await output(s).wait(/\+monitor master mymaster/, 10_000);
  }
  for (const port of sentinelPorts) {
    await until(
      `Sentinel ${port} to know the replica and the two other Sentinels`,
      async () => {
        const m = pairs(await rcli(ns, port, ['SENTINEL', 'MASTER', 'mymaster'], { host: ip }));
        return m['num-slaves'] === '1' && m['num-other-sentinels'] === '2' ? true : undefined;
      },
      30_000,
    );
  }
  return {
    ip,
    primaryPort,
    replicaPort,
    sentinelPorts,
    url: `redis+sentinel://${sentinelPorts.map((p) => `${ip}:${p}`).join(',')}/mymaster`,
    primary,
    replica,
    async primaryNow() {
      const r = await rcli(ns, sentinelPorts[0], ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', 'mymaster'], { host: ip });
      return Number(r.split('\n')[1]);
    },
    async watchSwitch() {
      const watch = ns.spawn('redis-cli', ['-h', ip, '-p', String(sentinelPorts[1]), 'SUBSCRIBE', '+switch-master']);
      let switchedMs = 0;
      const watched = output(watch);
      watch.stdout?.on('data', (d: string) => {
        if (switchedMs === 0 && /mymaster \S+ \d+ \S+ \d+/.test(d)) switchedMs = Date.now();
      });
      // Subscribed (Sentinels have no PUBSUB to ask): redis-cli printed the confirmation.
      await watched.wait(/^\+switch-master\n1$/m, 10_000);
      return {
        switchedMs: () => switchedMs,
        stop: () => killRedis(watch),
      };
    },
  };
}

export interface RedisClusterFleet {
  ip: string;
  ports: number[];
  /** redis+cluster://ip:port,… (every node as a seed) */
  url: string;
  /** `--redis-cluster` value: ip:port,… */
  seeds: string;
  /** Kill the node listening on `port` (SIGKILL). */
  kill(port: number): Promise<void>;
  /** The primary serving `key`'s slot now, and its replica (ports), as `asker` sees the cluster. */
  ownerOf(key: string, asker?: number): Promise<{ primary: number; replica?: number }>;
  /** Polls `asker` (a node that stays up) until `node` serves `key`'s slot as its primary. */
  watchPromotion(key: string, node: number, asker: number): SwitchWatch;
}

/**
 * A Redis Cluster of 3 primaries and 3 replicas (redis-cli --cluster create,
 * cluster-node-timeout 1000 ms) in t.upstream on t.upstreamIp, every node
 * agreeing that the cluster is ok before this resolves.
 */
export async function startRedisCluster(t: FleetSite, base = 7000): Promise<RedisClusterFleet> {
  const { upstream: ns, upstreamIp: ip } = t;
  const ports = Array.from({ length: 6 }, (_, i) => base + i);
  const procs = new Map<number, ChildProcess>();
  for (const port of ports) {
    const extra = [
      '--protected-mode',
      'no',
      '--cluster-enabled',
      'yes',
      '--cluster-config-file',
      `nodes-${port}.conf`,
      '--cluster-node-timeout',
      '1000',
      '--cluster-announce-ip',
      ip,
      '--dbfilename',
      `dump-${port}.rdb`,
    ];
    procs.set(port, await startRedis(ns, t, port, extra, ip));
  }
  const hosts = ports.map((p) => `${ip}:${p}`);
  const created = await ns.exec(
    'redis-cli',
    ['--cluster', 'create', ...hosts, '--cluster-replicas', '1', '--cluster-yes'],
    { timeoutMs: 60_000 },
  );
  if (created.code !== 0 || !/All 16384 slots covered/.test(created.stdout)) {
    throw new Error(`redis-cli --cluster create: ${created.code} ${created.stdout}${created.stderr}`);
  }
  for (const port of ports) {
    await until(
      `cluster node ${port} to report cluster_state:ok with 6 nodes`,
      async () => {
        const info = await rcli(ns, port, ['CLUSTER', 'INFO'], { host: ip });
        return /cluster_state:ok/.test(info) && /cluster_known_nodes:6/.test(info) ? true : undefined;
      },
      30_000,
    );
  }
  // Replicas in sync (a failover needs a replica that has the data).
  for (const port of ports) {
    await until(
      `node ${port} replication settled`,
      async () => {
        const r = await rcli(ns, port, ['INFO', 'replication'], { host: ip });
        return /role:master/.test(r) || /master_link_status:up/.test(r) ? true : undefined;
      },
      30_000,
    );
  }
  const ownerOf: RedisClusterFleet['ownerOf'] = async (key, asker) => {
    const from = asker ?? ports[0];
    const slot = Number((await rcli(ns, from, ['CLUSTER', 'KEYSLOT', key], { host: ip })).trim());
    const lines = (await rcli(ns, from, ['CLUSTER', 'NODES'], { host: ip })).split('\n').filter(Boolean);
    const nodes = lines.map((l) => {
      const [id, addr, flags, masterId, , , , , ...slots] = l.split(' ');
      return { id, port: Number(addr.split('@')[0].split(':')[1]), flags, masterId, slots };
    });
    const owns = (ranges: string[]) =>
      ranges.some((r) => {
        const [a, b = a] = r.split('-').map(Number);
        return slot >= a && slot <= b;
      });
    const primary = nodes.find((n) => /master/.test(n.flags) && !/fail/.test(n.flags) && owns(n.slots));
    if (!primary) throw new Error(`no live primary serves slot ${slot}: ${lines.join(' / ')}`);
    const replica = nodes.find((n) => n.masterId === primary.id && !/fail/.test(n.flags));
    return { primary: primary.port, replica: replica?.port };
  };
  return {
    ip,
    ports,
    url: `redis+cluster://${hosts.join(',')}`,
    seeds: hosts.join(','),
    async kill(port) {
      const p = procs.get(port);
      if (p) await killRedis(p);
    },
    ownerOf,
    watchPromotion(key, node, asker) {
      let switchedMs = 0;
      let watching = true;
      const polls = (async () => {
        while (watching && switchedMs === 0) {
          const now = await ownerOf(key, asker).catch(() => undefined);
          if (now?.primary === node) switchedMs = Date.now();
          else await sleep(50);
        }
      })();
      return {
        switchedMs: () => switchedMs,
        stop: async () => {
          watching = false;
          await polls;
        },
      };
    },
  };
}
