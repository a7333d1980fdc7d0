/**
 * redis: what the Redis mirror costs. The same daemon (direct) without and with
 * --redis (redis-server in the client namespace on 127.0.0.1): connection rate
 * (ab, no keep-alive) and bulk download, in one run.
 */
import { join } from 'node:path';
import { procCpuSecs } from '../lib/daemon.js';
import { type Ctx, need, waitListening } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import { abRun, curlGbps, curlVerifySha, VerifyError } from '../lib/tools.js';
import { bigFile, ORIGIN_NAME, PORTS, Topology } from '../lib/topology.js';
import { alternate, MiB, row, rows, type Scenario, spec } from './common.js';
import { withDaemon } from './tcp.js';
import { CONCURRENCY, JS_US } from './tcpConnect.js';

const REDIS = 'redis://127.0.0.1:6379';

export const redis: Scenario = {
  name: 'redis',
  describe: 'cost of --redis: connection rate and throughput with and without the mirror',
  async run(ctx: Ctx): Promise<Section[]> {
    need('redis-server', 'redis-server');
    const n = ctx.quick ? 1_500 : 10_000;
    const limit = ctx.quick ? 4 : 15;
    const size = ctx.quick ? 64 * MiB : 512 * MiB;
    const s: Section = {
      scenario: 'redis',
      title: `TUN direct, ab -n ${n} -c ${CONCURRENCY} and ${size / MiB} MiB download, without vs with --redis`,
      notes: [],
      rows: rows(
        { id: 'conn', label: 'no --redis', metric: 'rate', unit: 'conn/s' },
        { id: 'conn-p99', label: 'no --redis', metric: 'p99', unit: 'ms', higherIsBetter: false },
        { id: 'gbps', label: 'no --redis', metric: 'throughput', unit: 'Gbit/s' },
        { id: 'redis-conn', label: '--redis', metric: 'rate', unit: 'conn/s', compare: [{ to: 'conn', goal: 0.9 }] },
        {
          id: 'redis-conn-p99',
          label: '--redis',
          metric: 'p99',
          unit: 'ms',
          higherIsBetter: false,
          compare: [{ to: 'conn-p99' }],
        },
        {
          id: 'redis-gbps',
          label: '--redis',
          metric: 'throughput',
          unit: 'Gbit/s',
          compare: [{ to: 'gbps', goal: 0.95 }],
        },
        spec('js-us', 'no --redis', JS_US),
        spec('redis-js-us', '--redis', JS_US, { compare: [{ to: 'js-us' }] }),
        spec('redis-cpu-us', '--redis: redis-server', { metric: 'CPU/conn', unit: 'µs', higherIsBetter: false }),
      ),
    };
    const topo = await Topology.create(ctx, 'redis');
    try {
      topo.big = bigFile(ctx, size);
      const file = topo.big;
      await topo.start('dnsmasq', 'origin');
      const redisPid = topo.client.spawn(
        'redis-server',
        [
          '--bind',
          '127.0.0.1',
          '--port',
          '6379',
          '--save',
          '',
          '--appendonly',
          'no',
          '--daemonize',
          'no',
          '--dir',
          ctx.tmp,
        ],
        {
          stdio: 'ignore',
        },
      ).pid;
      if (redisPid === undefined) throw new Error('redis-server could not be started');
      await waitListening(topo.client, 'tcp', '127.0.0.1', 6379);
      const csv = join(ctx.tmp, 'ab-redis.csv');
      const small = `http://${ORIGIN_NAME}:${PORTS.origin}/small`;
      const big = `http://${ORIGIN_NAME}:${PORTS.origin}/big`;
      interface Leg {
        prefix: '' | 'redis-';
        what: string;
        redis?: string;
      }
      const legs: Leg[] = [
        { prefix: '', what: 'without' },
        { prefix: 'redis-', what: 'with --redis', redis: REDIS },
      ];
      // The two legs alternate, a fresh daemon each time (--redis is a start option): a drift of
      // this host's load between minutes hits both alike.
      const got = await alternate(
        ctx,
        legs,
        (l) => ({
          section: s,
          ids: ['conn', 'conn-p99', 'gbps', 'js-us'].map((id) => l.prefix + id).concat(l.redis ? ['redis-cpu-us'] : []),
          what: `redis: ${l.what}`,
        }),
        (l, rep) =>
          withDaemon(
            topo,
            'direct',
            async (d) => {
              if (rep === 0) await curlVerifySha(topo.client, big, [], file, 120_000);
              await abRun(topo.client, small, Math.min(1000, n), CONCURRENCY, csv, 20);
              const js0 = d.jsThreadCpuSecs();
              const redis0 = procCpuSecs(redisPid);
              const ab = await abRun(topo.client, small, n, CONCURRENCY, csv, limit);
              const per = (secs: number) => (ab.complete > 0 ? (secs * 1e6) / ab.complete : Number.NaN);
              const jsUs = per(d.jsThreadCpuSecs() - js0);
              const redisUs = per(procCpuSecs(redisPid) - redis0);
              const gbps = await curlGbps(topo.client, big, [], file, 120_000);
              if (l.redis && rep === 0) await verifyMirror(topo, s);
              return { ab, jsUs, redisUs, gbps };
            },
            l.redis ? { redis: l.redis } : {},
          ),
      );
      for (const [l, rs] of got) {
        row(s, `${l.prefix}conn`).samples = rs.map((r) => r.ab.rps);
        row(s, `${l.prefix}conn-p99`).samples = rs.map((r) => r.ab.p99ms);
        row(s, `${l.prefix}gbps`).samples = rs.map((r) => r.gbps);
        row(s, `${l.prefix}js-us`).samples = rs.map((r) => r.jsUs);
        if (l.redis) row(s, 'redis-cpu-us').samples = rs.map((r) => r.redisUs);
      }
      if (got.has(legs[1] as Leg)) s.notes.push(await commandStats(topo));
      s.notes.push(
        'redis-server runs in the client namespace (no persistence); the legs alternate repetition by repetition, a fresh daemon each (1 000 untimed connections first), and see the same traffic in the same order',
        `JS thread CPU/conn and redis-server CPU/conn: user + system CPU (/proc/<pid>/task/<pid>/stat of the daemon's main thread, /proc/<pid>/stat of redis-server) over the timed ab run ÷ completed connections; the mirror's cost per connection, which moves far less with this host's load than conn/s`,
      );
      return [s];
    } finally {
      await topo.destroy();
    }
  },
};

/** The mirror must actually be written: Redis holds the fake-IP map among some fakeproxy:* keys. */
async function verifyMirror(topo: Topology, s: Section): Promise<void> {
  const keys = await topo.client.exec(
    'redis-cli',
    ['-h', '127.0.0.1', '-p', '6379', '--scan', '--pattern', 'fakeproxy:*'],
    {
      timeoutMs: 20_000,
    },
  );
  const list = keys.stdout.split('\n').filter(Boolean);
  if (keys.code !== 0 || !list.some((k) => k.endsWith(':dns:name')))
    throw new VerifyError(
      `--redis was given but Redis holds no fakeproxy:*:dns:name key (${list.length} fakeproxy:* keys; ${keys.stderr.trim()})`,
    );
  s.notes.push(
    `Redis held ${list.length} fakeproxy:* keys after the first --redis run, the fake-IP map among them (mirror verified)`,
  );
}

/** What the mirrors sent, by command (INFO commandstats; ≥ 100 calls), as a note. */
async function commandStats(topo: Topology): Promise<string> {
  const stats = await topo.client.exec('redis-cli', ['-h', '127.0.0.1', '-p', '6379', 'info', 'commandstats'], {
    timeoutMs: 20_000,
  });
  const calls = [...stats.stdout.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)]
    .map(([, cmd, n]) => [cmd as string, Number(n)] as const)
    .filter(([, n]) => n >= 100)
    .sort((a, b) => b[1] - a[1]);
  return `Redis commands the mirrors sent over the whole run: ${calls.map(([c, n]) => `${c} ${n}`).join(', ')}`;
}
