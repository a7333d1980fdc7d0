/**
 * redis: what the Redis mirror costs. The same daemon (direct) without and with
 * --redis (redis-server in the client namespace on 127.0.0.1): connection rate
 * (ab, no keep-alive) and bulk download, in one run.
 */
import { join } from 'node:path';
import { type Ctx, need, waitListening } from '../lib/env.js';
import type { Section } from '../lib/report.js';
import { abRun, curlGbps, curlVerifySha, VerifyError } from '../lib/tools.js';
import { bigFile, ORIGIN_NAME, PORTS, Topology } from '../lib/topology.js';
import { MiB, path, repeat, row, rows, type Scenario } from './common.js';
import { withDaemon } from './tcp.js';
import { CONCURRENCY } from './tcpConnect.js';

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
      ),
    };
    const topo = await Topology.create(ctx, 'redis');
    try {
      topo.big = bigFile(ctx, size);
      const file = topo.big;
      await topo.start('dnsmasq', 'origin');
      topo.client.spawn(
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
      );
      await waitListening(topo.client, 'tcp', '127.0.0.1', 6379);
      const csv = join(ctx.tmp, 'ab-redis.csv');
      const small = `http://${ORIGIN_NAME}:${PORTS.origin}/small`;
      const big = `http://${ORIGIN_NAME}:${PORTS.origin}/big`;
      const measure = async (prefix: string) => {
        await curlVerifySha(topo.client, big, [], file, 120_000);
        await abRun(topo.client, small, Math.min(500, n), CONCURRENCY, csv, 20);
        const ab = await repeat(ctx, () => abRun(topo.client, small, n, CONCURRENCY, csv, limit));
        row(s, `${prefix}conn`).samples = ab.map((r) => r.rps);
        row(s, `${prefix}conn-p99`).samples = ab.map((r) => r.p99ms);
        row(s, `${prefix}gbps`).samples = await repeat(ctx, () => curlGbps(topo.client, big, [], file, 120_000));
      };
      await path(ctx, s, ['conn', 'conn-p99', 'gbps'], 'redis: without', () =>
        withDaemon(topo, 'direct', () => measure('')),
      );
      await path(ctx, s, ['redis-conn', 'redis-conn-p99', 'redis-gbps'], 'redis: with --redis', () =>
        withDaemon(
          topo,
          'direct',
          async () => {
            await measure('redis-');
            // The mirror must actually be written: some fakeproxy:* keys exist.
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
              `Redis held ${list.length} fakeproxy:* keys after the run, the fake-IP map among them (mirror verified)`,
            );
            const stats = await topo.client.exec(
              'redis-cli',
              ['-h', '127.0.0.1', '-p', '6379', 'info', 'commandstats'],
              {
                timeoutMs: 20_000,
              },
            );
            const calls = [...stats.stdout.matchAll(/^cmdstat_(\w+):calls=(\d+)/gm)]
              .map(([, cmd, n]) => [cmd as string, Number(n)] as const)
              .filter(([, n]) => n >= 100)
              .sort((a, b) => b[1] - a[1]);
            s.notes.push(`Redis commands the mirror sent: ${calls.map(([c, n]) => `${c} ${n}`).join(', ')}`);
          },
          { redis: REDIS },
        ),
      );
      s.notes.push(
        'redis-server runs in the client namespace (no persistence); both daemons see the same traffic in the same order',
      );
      return [s];
    } finally {
      await topo.destroy();
    }
  },
};
