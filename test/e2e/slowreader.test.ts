/**
 * A slow reader does not make the daemon's memory grow: curl reads a big
 * download at 2 MB/s; the bytes wait in the kernel's socket buffers (receive
 * queue of the upstream socket, send queue of the app's, bounded by tcp_rmem
 * and tcp_wmem max: ~24 MB here with autotuning, tcp_rmem max 32 MiB on our
 * VMs), never in the daemon, whose RSS stays flat. The relay sets no
 * SO_RCVBUF / TCP_NOTSENT_LOWAT caps (autotuning, as mihomo and sing-box):
 * 2 MiB / 1 MiB caps cut this backlog to ~5 MB but cost a third of the
 * download bench's throughput (e6e3ecf); the host's tcp_rmem / tcp_wmem
 * maxima are the operator's bound.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eUnavailableReason } from './harness/netns.js';
import { createTopology, HTTP_PORT, slowCurl, type Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('slow reader', () => {
  let t: Topology;
  let pid: number;
  const rssKb = async () => Number(/VmRSS:\s+(\d+)/.exec(await t.client.must('cat', [`/proc/${pid}/status`]))?.[1]);
  /** Recv-Q + Send-Q of every TCP socket the daemon holds, from ss. */
  const queued = async () => {
    const out = await t.client.must('ss', ['-tnp']);
    let sum = 0;
    const rows: string[] = [];
    for (const l of out.split('\n')) {
      if (!l.includes(`pid=${pid},`)) continue;
      const [, rq, sq] = l.trim().split(/\s+/);
      sum += Number(rq) + Number(sq);
      rows.push(l.replace(/\s+/g, ' ').trim());
    }
    return { sum, rows };
  };

  beforeAll(async () => {
    t = await createTopology();
    const d = await t.startDaemon([]);
    pid = d.child.pid as number;
  }, 60_000);

  afterAll(async () => {
    await t?.destroy();
  });

  it('curl at 2 MB/s: the backlog waits in kernel socket buffers (bounded by tcp_rmem/tcp_wmem), the daemon RSS stays flat', async () => {
    const rss0 = await rssKb();
    const curl = slowCurl(t.client, `http://origin.test:${HTTP_PORT}/big?mib=512`, '2M', 60);
    try {
      let worst = 0;
      let rows: string[] = [];
      for (let i = 0; i < 6; i++) {
        await new Promise((r) => setTimeout(r, 2000));
        const q = await queued();
        if (q.sum > worst) [worst, rows] = [q.sum, q.rows];
      }
      const rss1 = await rssKb();
      process.stdout.write(
        `slow reader: daemon sockets hold at most ${(worst / 2 ** 20).toFixed(1)} MiB; RSS ${rss0} → ${rss1} kB\n${rows.join('\n')}\n`,
      );
      expect(curl.exitCode).toBeNull();
      expect(worst).toBeGreaterThan(0);
      // Each of the two sockets holds at most its kernel maximum (autotuning; no relay cap by default).
      const max = async (f: string) =>
        Number((await t.client.must('cat', [`/proc/sys/net/ipv4/${f}`])).trim().split(/\s+/)[2]);
      expect(worst).toBeLessThanOrEqual(2 * (await max('tcp_rmem')) + 2 * (await max('tcp_wmem')));
      expect(rss1 - rss0).toBeLessThan(16 * 1024);
    } finally {
      curl.kill('SIGKILL');
    }
  }, 60_000);
});
