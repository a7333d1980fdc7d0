/**
 * The native splice relay end to end (issue 11): app in the client namespace
 * → TUN → Listener → outbound (direct, dante) → servers in the upstream
 * namespace. Bytes read before the hand-off, backpressure with an app that
 * never reads, daemon shutdown with live relays.
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { danteConf } from '../support/confs.js';
import { runCli } from './harness/daemon.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { createTopology, type Topology, tmpFile, waitListening } from './harness/topology.js';

const skip = e2eUnavailableReason();
const DANTE = 1090;
const BANNER = 9301; // server-first: greets at once, answers "got:<everything received>" on the client's FIN
const FLOOD = 9302; // writes as fast as the client lets it, never reads

/** Daemon RSS in KiB from /proc (the daemon's pid is the spawned child's: `ip netns exec` execs). */
const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);

describe.skipIf(skip)('native relay end to end', () => {
  let t: Topology;

  beforeAll(async () => {
    t = await createTopology();
    const u = t.upstreamIp;
    const danteFile = tmpFile(t, 'danted.conf', danteConf({ ip: u, port: DANTE, unprivileged: 'root' }));
    t.upstream.spawn('danted', ['-f', danteFile, '-N', '1']);
    t.upstream.spawn('node', [
      '-e',
      `require('node:net').createServer({ allowHalfOpen: true }, (s) => {
        const got = [];
        s.write('220 banner\\n');
        s.on('data', (d) => got.push(d));
        s.on('end', () => s.end('got:' + Buffer.concat(got).toString()));
        s.on('error', () => {});
      }).listen(${BANNER}, '${u}')`,
    ]);
    t.upstream.spawn('node', [
      '-e',
      `const chunk = Buffer.alloc(1 << 20, 7);
      require('node:net').createServer((s) => {
        s.on('error', () => {});
        const pump = () => { while (s.write(chunk)) {} };
        s.on('drain', pump);
        pump();
      }).listen(${FLOOD}, '${u}')`,
    ]);
    for (const p of [DANTE, BANNER, FLOOD]) await waitListening(t.upstream, p);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  /** In the client ns: connect to echo.test:BANNER, speak first, then more after the banner; prints what came back. */
  const bannerClient = `
    const s = require('node:net').connect({ host: 'echo.test', port: ${BANNER}, allowHalfOpen: true });
    s.write('HELLO\\n'); // before the Listener has even dialled upstream
    let got = '';
    let sentMore = false;
    s.on('data', (d) => {
      got += d;
      if (!sentMore && got.includes('\\n')) { sentMore = true; s.end('MORE\\n'); }
    });
    s.on('end', () => console.log(JSON.stringify({ got })));
    s.on('error', (e) => console.log(JSON.stringify({ error: e.code })));
  `;

  it.each([
    ['direct', () => 'direct'],
    ['socks5 (dante)', () => `socks5://${t.upstreamIp}:${DANTE}`],
  ])('%s: app speaks first and the server greets first: every byte exactly once, in order', async (_n, up) => {
    if (t.daemon) await t.daemon.stop();
    await t.startDaemon(['--upstream', up()]);
    for (let i = 0; i < 5; i++) {
      const r = await t.client.exec('node', ['-e', bannerClient], { timeoutMs: 20_000 });
      expect(r.stderr).toBe('');
      expect(JSON.parse(r.stdout.trim())).toEqual({ got: '220 banner\ngot:HELLO\nMORE\n' });
    }
    const st = JSON.parse((await runCli(t.client, ['status', '--json'])).stdout).tcp;
    // 5 × "HELLO\nMORE\n" up, 5 × ("220 banner\n" + "got:HELLO\nMORE\n") down: each byte counted once.
    expect(st.bytesUp).toBe(5 * 11);
    expect(st.bytesDown).toBe(5 * (11 + 15));
  });

  it('backpressure: an app that never reads holds the server back; the daemon’s RSS stays flat', async () => {
    if (t.daemon) await t.daemon.stop();
    const d = await t.startDaemon(['--upstream', 'direct']);
    const pid = d.child.pid as number;
    const client = t.client.spawn('node', [
      '-e',
      `const s = require('node:net').connect({ host: 'echo.test', port: ${FLOOD} });
       s.pause(); // never reads
       s.on('connect', () => console.log('connected'));
       setInterval(() => {}, 1000);`,
    ]);
    try {
      await new Promise<void>((resolve) =>
        client.stdout?.on('data', (x: Buffer) => x.includes('connected') && resolve()),
      );
      const down = async () =>
        JSON.parse((await runCli(t.client, ['status', '--json'])).stdout).tcp.bytesDown as number;
      // Wait until the stream stalls: the byte count stops moving.
      let last = -1;
      let cur = await down();
      for (let i = 0; i < 100 && cur !== last; i++) {
        await new Promise((r) => setTimeout(r, 300));
        last = cur;
        cur = await down();
      }
      expect(cur).toBe(last);
      const rss1 = rssKiB(pid);
      await new Promise((r) => setTimeout(r, 2000));
      const rss2 = rssKiB(pid);
      // Stalled after a few MiB (socket buffers + one pipe), not the server's unbounded stream.
      expect(cur).toBeLessThan(64 * 1024 * 1024);
      expect(await down()).toBe(cur);
      expect(rss2 - rss1).toBeLessThan(8 * 1024);
    } finally {
      client.kill('SIGKILL');
    }
  });

  it('daemon shutdown ends live relays with a FIN both ways: to the upstream and, through the TUN, to the app', async () => {
    if (t.daemon) await t.daemon.stop();
    const d = await t.startDaemon(['--upstream', 'direct']);
    const PORT = 9303;
    const server = t.upstream.spawn('node', [
      '-e',
      `require('node:net').createServer({ allowHalfOpen: true }, (s) => {
        s.on('data', (x) => console.log('data ' + x));
        s.on('end', () => console.log('end'));
        s.on('error', (e) => console.log('error ' + e.code));
      }).listen(${PORT}, '${t.upstreamIp}')`,
    ]);
    let out = '';
    server.stdout?.on('data', (x: Buffer) => {
      out += x.toString();
    });
    await waitListening(t.upstream, PORT);
    const client = t.client.spawn('node', [
      '-e',
      `const s = require('node:net').connect({ host: 'echo.test', port: ${PORT} });
       s.on('error', (e) => console.log('error ' + e.code));
       s.on('end', () => console.log('end'));
       s.write('ping');
       setInterval(() => {}, 1000);`,
    ]);
    let appOut = '';
    client.stdout?.on('data', (x: Buffer) => {
      appOut += x.toString();
    });
    try {
      const deadline = Date.now() + 15_000;
      while (!out.includes('data ping') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(out).toContain('data ping');
      expect(await d.stop()).toBe(0);
      while (!/end|error/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(out.trim().split('\n')).toEqual(['data ping', 'end']);
      // The app's FIN left the daemon before the engine stopped (it used to get neither FIN nor RST).
      while (!/end|error/.test(appOut) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      expect(appOut.trim()).toBe('end');
    } finally {
      client.kill('SIGKILL');
      server.kill('SIGKILL');
    }
  });
});
