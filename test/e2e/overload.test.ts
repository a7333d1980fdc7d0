/**
 * Bounded under overload (issue 12 item 3), for the DNS server and for the
 * UDP relay: for 60 s each is offered at least twice what it carries. The
 * daemon must drop instead of queueing: the drops are counted, logged in one
 * line per 10 s, its RSS stays flat, and another flow still gets through.
 * The floods are bounded in time and count.
 *
 * "At least twice" is checked, not assumed, from the daemon's own counters:
 * DNS, queries the kernel dropped at the socket ≥ queries received; the
 * relay, datagrams dropped anywhere on the way through the daemon (the TUN's
 * transmit queue before the engine read them, the relay's receive buffer,
 * refused sends) ≥ datagrams it sent on. "Flat" is: the largest RSS sample
 * of the last 20 s is at most the largest of the first 20 s plus
 * RSS_MARGIN_MIB — growth that goes on through the run fails, the garbage
 * collector's sawtooth does not.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import * as dnsPacket from 'dns-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, runCli } from './harness/daemon.js';
import { e2eUnavailableReason, Netns, run as runCmd, vethPair } from './harness/netns.js';
import { createTopology, type Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();
const LOAD = join(ROOT, 'test/e2e/fixtures/dnsload.mjs');
const UDP_CLIENT = join(ROOT, 'test/e2e/fixtures/udp-client.mjs');
/** Where the relay flood goes: a UDP socket on the upstream end that reads and discards (no ICMP back). */
const SINK_PORT = 9100;
const GW = '198.18.0.1';
const SECONDS = 60;
/** Both log lines are written by a 10 s timer while drops go on. */
const LOG_PERIOD_S = 10;
/** Allowed rise of the last 20 s's RSS peak over the first 20 s's (V8's heap and the allocator's free lists breathe by a few MiB). */
const RSS_MARGIN_MIB = 16;

const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Run {
  /** [seconds since the flood started, RSS MiB], one a second. */
  rss: [number, number][];
  /** Seconds since the flood started at which each overload line arrived. */
  lines: number[];
  text: string[];
}

describe.skipIf(skip)(
  'overload: twice what the DNS server or the UDP relay carries for 60 s is dropped, counted, logged once per 10 s; RSS flat',
  () => {
    let t: Topology;
    let lan: Netns;

    const status = async () => {
      const r = await runCli(t.client, ['status', '--json']);
      if (r.code !== 0) throw new Error(`fakeproxy status → ${r.code}: ${r.stderr}`);
      return JSON.parse(r.stdout);
    };

    /**
     * Starts the daemon, then `flood()` (which must run SECONDS and end by
     * itself); samples RSS once a second and timestamps every output line that
     * matches `line` until the flood ends. `during` runs meanwhile (legitimate
     * traffic), started 20 s in.
     */
    const overload = async <T>(line: RegExp, flood: () => Promise<void>, during: () => Promise<T>) => {
      if (t.daemon) expect(await t.daemon.stop(), `previous daemon:\n${t.daemon.output}`).toBe(0);
      // The daemon on CPU 0 only, which one of the two flooders shares (the other has CPU 1): the
      // generator gets about three times the daemon's CPU, so "at least twice" holds on a quiet
      // machine too (with one flooder and a whole core each, a quiet run carried 64 %).
      const d = await t.startDaemon(['--lan', lanCidr], ['taskset', '-c', '0']);
      const pid = d.child.pid as number;
      const run: Run = { rss: [], lines: [], text: [] };
      const t0 = Date.now();
      const since = () => (Date.now() - t0) / 1000;
      let partial = '';
      const onOut = (chunk: Buffer) => {
        const parts = (partial + chunk.toString()).split('\n');
        partial = parts.pop() ?? '';
        for (const l of parts)
          if (line.test(l)) {
            run.lines.push(since());
            run.text.push(l);
          }
      };
      d.child.stdout?.on('data', onOut);
      d.child.stderr?.on('data', onOut);
      const before = await status();
      let flooding = true;
      const floodDone = flood().finally(() => {
        flooding = false;
      });
      const sampler = (async () => {
        while (flooding) {
          run.rss.push([since(), rssMiB(pid)]);
          await sleep(1000);
        }
      })();
      await sleep(20_000);
      const legit = await during();
      await floodDone;
      await sampler;
      const elapsed = since();
      const after = await status();
      d.child.stdout?.off('data', onOut);
      d.child.stderr?.off('data', onOut);
      return { run, before, after, legit, elapsed };
    };

    /** The RSS verdict and the line pattern checks common to both paths. */
    const expectBounded = (run: Run, elapsed: number, what: string) => {
      const first = run.rss.filter(([s]) => s < 20).map(([, m]) => m);
      const last = run.rss.filter(([s]) => s >= elapsed - 20).map(([, m]) => m);
      const firstMax = Math.max(...first);
      const lastMax = Math.max(...last);
      const gaps = run.lines.slice(1).map((s, i) => s - (run.lines[i] as number));
      console.info(
        `${what}: RSS first-20 s max ${firstMax.toFixed(1)} MiB, last-20 s max ${lastMax.toFixed(1)} MiB (samples ${run.rss.map(([, m]) => m.toFixed(0)).join(' ')}); ${run.lines.length} overload lines at ${run.lines.map((s) => s.toFixed(1)).join(', ')} s:\n  ${run.text.join('\n  ')}`,
      );
      expect(first.length).toBeGreaterThanOrEqual(10);
      expect(last.length).toBeGreaterThanOrEqual(10);
      expect(lastMax, 'RSS grew through the overload').toBeLessThanOrEqual(firstMax + RSS_MARGIN_MIB);
      // One line per 10 s window: as many lines as whole periods the flood lasted (give or take the
      // window the flood began or ended in), never two within one period (1 s allowed for the pipe).
      expect(run.lines.length).toBeGreaterThanOrEqual(Math.floor(elapsed / LOG_PERIOD_S) - 1);
      expect(run.lines.length).toBeLessThanOrEqual(Math.ceil(elapsed / LOG_PERIOD_S) + 1);
      for (const g of gaps) expect(g).toBeGreaterThan(LOG_PERIOD_S - 1);
    };

    let lanCidr = '';
    let flooder = '';

    /** Two udpflood processes for SECONDS, one on CPU 0 (the daemon's) and one on CPU 1; datagrams sent. */
    const floodFor = async (ip: string, port: number, payload: string) => {
      const one = async (cpu: number) => {
        const r = await t.client.exec(
          'taskset',
          ['-c', cpu, flooder, ip, port, SECONDS, 100_000_000, payload].map(String),
          { timeoutMs: (SECONDS + 15) * 1000 },
        );
        if (r.code !== 0) throw new Error(`udpflood on CPU ${cpu} → ${r.code}: ${r.stderr}`);
        return (JSON.parse(r.stdout) as { sent: number }).sent;
      };
      return (await Promise.all([one(0), one(Math.min(1, availableParallelism() - 1))])).reduce((a, b) => a + b);
    };
    beforeAll(async () => {
      t = await createTopology();
      flooder = join(t.tmp, 'udpflood');
      const cc = await runCmd('cc', ['-O2', '-o', flooder, join(ROOT, 'test/e2e/fixtures/udpflood.c')]);
      if (cc.code !== 0) throw new Error(`cc udpflood.c → ${cc.code}: ${cc.stderr}`);
      lan = await Netns.create('lan');
      await t.client.must('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
      const p = await vethPair(t.client, lan);
      await lan.must('ip', ['route', 'add', 'default', 'via', p.aIp]);
      lan.writeEtc('resolv.conf', `nameserver ${GW}\n`);
      lan.writeEtc('hosts', '127.0.0.1 localhost\n');
      lanCidr = `${p.aIp}/30`;
    }, 60_000);

    afterAll(async () => {
      await t?.destroy();
      await lan?.delete();
    });

    it(
      'DNS: a 60 s UDP query flood from this machine (≥ 2× what is answered); a LAN host’s queries still get answers',
      async () => {
        // One A query, sent by udpflood as fast as it can (from this machine: trusted, not rate-limited).
        const q = dnsPacket.encode({
          type: 'query',
          id: 4242,
          flags: dnsPacket.RECURSION_DESIRED,
          questions: [{ type: 'A', name: 'flood.load.test' }],
        });
        const qfile = join(t.tmp, 'query.bin');
        writeFileSync(qfile, q);
        let floodSent = 0;
        const { run, before, after, legit, elapsed } = await overload(
          /dns: UDP .* dropped \d+ queries\/answers in the last/,
          async () => {
            floodSent = await floodFor(GW, 53, qfile);
          },
          () =>
            lan.exec('node', [LOAD, 'udpq', GW, 53, 300, 30].map(String), { timeoutMs: 30_000 }).then((r) => {
              if (r.code !== 0) throw new Error(`dnsload udpq → ${r.code}: ${r.stderr}`);
              return JSON.parse(r.stdout) as { sent: number; answered: number };
            }),
        );
        const received = after.dns.udpReceived - before.dns.udpReceived;
        const dropped = after.dns.udpDropped - before.dns.udpDropped;
        const carried = received / (received + dropped);
        console.info(
          `DNS overload: flood sent ${floodSent}; ${received} received, ${dropped} dropped in ${elapsed.toFixed(0)} s (carried ${(100 * carried).toFixed(0)} % of offered); LAN host ${legit.answered}/${legit.sent} answered; dns ${JSON.stringify(after.dns)}`,
        );
        // Offered ≥ 2× carried.
        expect(dropped, 'the flood did not reach twice what the server answers').toBeGreaterThanOrEqual(received);
        expect(after.dns.udpRefusedSource + after.dns.udpRateLimited).toBe(0);
        expectBounded(run, elapsed, 'DNS overload');
        // The LAN host shares the socket with the flood: it gets at least half its fair share (the carried fraction).
        expect(legit.answered / legit.sent).toBeGreaterThanOrEqual(carried / 2);
      },
      (SECONDS + 90) * 1000,
    );

    it(
      'UDP relay: a 60 s flood through the TUN to one direct destination (≥ 2× what is relayed); another flow still gets through',
      async () => {
        // 1200-byte datagrams (iperf3's size in the bench) from one app socket: one flow, one association.
        const pfile = join(t.tmp, 'dgram.bin');
        writeFileSync(pfile, Buffer.alloc(1200, 0x5a));
        const sink = await t.spawnUpstream('socat', ['-u', `UDP4-RECV:${SINK_PORT},bind=${t.upstreamIp}`, '/dev/null']);
        try {
          let floodSent = 0;
          const { run, before, after, legit, elapsed } = await overload(
            /udp relay: dropped \d+ datagrams in the last|tun: in the last \d+ s the kernel dropped \d+ packets/,
            async () => {
              // The fake address of echo.test (its real one is the upstream end, where the sink listens).
              const fake = (await t.client.must('dig', ['+short', '+time=2', 'echo.test', 'A', `@${GW}`])).trim();
              if (!/^198\.18\./.test(fake)) throw new Error(`echo.test resolved to ${fake}, not a fake address`);
              floodSent = await floodFor(fake, SINK_PORT, pfile);
            },
            // Another flow, from the LAN: echoes of 300 datagrams, 10 outstanding, each given up after 1 s (~30 s of
            // the flood: its replies leave the relay on the daemon's CPU while the flood refills the TUN queue from
            // the other, so they get through in bursts, not evenly; 100 over ~10 s once saw none); none
            // over the LAN link's MTU (the engine drops IP fragments).
            () =>
              lan
                .exec(
                  'node',
                  [
                    UDP_CLIENT,
                    'echo.test',
                    '9000',
                    '--count',
                    '300',
                    '--window',
                    '10',
                    '--lost-after',
                    '1000',
                    '--max-size',
                    '1472',
                  ],
                  { timeoutMs: 45_000 },
                )
                .then((r) => {
                  if (r.code !== 0) throw new Error(`udp-client → ${r.code}: ${r.stderr}`);
                  const s = (JSON.parse(r.stdout) as { sockets: { sent: number; echoed: number; corrupt: number }[] })
                    .sockets[0];
                  if (!s) throw new Error(`udp-client: no socket in ${r.stdout}`);
                  return s;
                }),
          );
          const d = (k: string) => (after.udp.dropped[k] ?? 0) - (before.udp.dropped[k] ?? 0);
          const tunDropped = (after.tun.kernelTxDropped ?? 0) - (before.tun.kernelTxDropped ?? 0);
          const relayed = after.udp.datagramsUp - before.udp.datagramsUp - d('send-error');
          const dropped = tunDropped + d('rcvbuf') + d('send-error');
          const carried = relayed / (relayed + dropped);
          console.info(
            `UDP relay overload: flood sent ${floodSent}; relayed ${relayed}, dropped ${dropped} (TUN queue ${tunDropped}, rcvbuf ${d('rcvbuf')}, send-error ${d('send-error')}) in ${elapsed.toFixed(0)} s (carried ${(100 * carried).toFixed(0)} % of offered); other flow ${legit.echoed}/${legit.sent} echoed; engine ${JSON.stringify(after.engine)}; udp ${JSON.stringify(after.udp)}`,
          );
          // Offered ≥ 2× carried, all counted by the daemon.
          expect(dropped, 'the flood did not reach twice what the relay carries').toBeGreaterThanOrEqual(relayed);
          // Every datagram the flood got into the daemon is either relayed or counted as dropped.
          expect(relayed + dropped).toBeLessThanOrEqual(floodSent + legit.sent + 1000);
          expectBounded(run, elapsed, 'UDP relay overload');
          // The line names the cause and the fix.
          expect(run.text.join('\n')).toMatch(/raise --tun-txqueuelen or lower the load|lower the load/);
          // The other flow crosses the full TUN queue twice (there and back): it gets through at about the
          // carried fraction squared; at least half of that, and never a corrupt echo.
          expect(legit.corrupt).toBe(0);
          expect(legit.echoed).toBeGreaterThan(0);
          expect(legit.echoed / legit.sent).toBeGreaterThanOrEqual((carried * carried) / 2);
        } finally {
          sink.kill('SIGKILL');
        }
      },
      (SECONDS + 90) * 1000,
    );
  },
);
