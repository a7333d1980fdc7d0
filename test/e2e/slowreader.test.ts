/**
 * A slow reader does not make the daemon hold tens of MB: curl reads a big
 * download at 2 MB/s; after 12 s the bytes the daemon's own sockets hold
 * (receive queue of the upstream socket, send queue of the app's) stay under
 * 10 MiB (measured 5.0–7.5), and its RSS does not grow with the backlog. Without the relay's caps
 * (native/relay.h: SO_RCVBUF, TCP_NOTSENT_LOWAT) autotuning grew the upstream
 * receive buffer to ~20 MB and the app-side send queue to 4 MB for this one
 * connection (tcp_rmem max 32 MiB on our VMs).
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

  it('curl at 2 MB/s: the daemon holds under 10 MiB in its sockets and its RSS stays flat', async () => {
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
      // Upstream receive queue ≤ 4 MiB (SO_RCVBUF 2 MiB, doubled by the kernel); the app side's send
      // queue ≤ 4 MiB (tcp_wmem max; at most 1 MiB of it unsent): 10 MiB, against ~24 MB uncapped.
      expect(worst).toBeLessThan(10 * 2 ** 20);
      expect(rss1 - rss0).toBeLessThan(16 * 1024);
    } finally {
      curl.kill('SIGKILL');
    }
  }, 60_000);
});
