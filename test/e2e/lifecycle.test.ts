/**
 * Lifecycle end to end: usage errors before anything exists, the real
 * resolver remembered across restarts (the quick start's second run).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DaemonProc, ROOT, runCli } from './harness/daemon.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { topologyPerSuite } from './harness/topology.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('lifecycle: usage errors and the remembered resolver', () => {
  const suite = topologyPerSuite();

  it('every usage error exits 2 with one line before the TUN exists, even while resolv.conf names only the daemon', async () => {
    const { t } = suite;
    t.client.writeEtc('resolv.conf', 'nameserver 198.18.0.1\n');
    for (const [args, re] of [
      [['--upstream', 'ftp://x:1'], /--upstream scheme "ftp" is not supported/],
      [['--fake-ip-filter', 'bad pattern!'], /bad --fake-ip-filter pattern "bad pattern!"/],
      [['--cidr', '198.18.0.0/33'], /198\.18\.0\.0\/33/],
      [['--nat-timeout', 'udp=0'], /--nat-timeout udp=0/],
      [['--redis', 'http://127.0.0.1:6379'], /scheme must be redis/],
    ] as const) {
      const r = await runCli(t.client, ['start', '--state-dir', '', ...args]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(r.stdout).not.toMatch(/device/);
      expect((await t.client.exec('ip', ['link', 'show', 'dev', 'fp0'])).code).not.toBe(0);
    }
    // Without a real resolver anywhere the daemon says how to give one (runtime: exit 1), still before the TUN.
    const r = await runCli(t.client, ['start', '--state-dir', join(t.tmp, 'empty-state')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no real resolver in \/etc\/resolv\.conf.*--dns-upstream/);
    expect(r.stdout).not.toMatch(/device/);
  });

  it('a restart while resolv.conf points at the daemon uses the resolver remembered in the state dir', async () => {
    const { t } = suite;
    const state = join(t.tmp, 'state-remember');
    const args = ['start', '--state-dir', state, '--fake-ip-filter', '+.lan'];
    // First run, as the quick start: resolv.conf still names the real resolver.
    t.client.writeEtc('resolv.conf', `nameserver ${t.upstreamIp}\n`);
    let d = DaemonProc.start(t.client, args);
    await d.waitFor(/running/);
    expect(d.stdout).toContain(`upstream ${t.upstreamIp}:53`);
    expect(await d.stop()).toBe(0);
    // The host's DNS now points at the daemon; the same command starts again.
    t.client.writeEtc('resolv.conf', 'nameserver 198.18.0.1\n');
    d = DaemonProc.start(t.client, args);
    await d.waitFor(/running/);
    expect(d.stdout).toContain(`upstream ${t.upstreamIp}:53`);
    expect(d.stderr).toMatch(/remembered in/);
    // The system resolver (the daemon) answers a filtered name from the real resolver.
    const g = await t.client.exec('getent', ['ahostsv4', 'printer.lan']);
    expect(g.code).toBe(0);
    expect(g.stdout.split(/\s+/)[0]).toBe(t.upstreamIp);
    expect(t.dnsmasqLog()).toMatch(/query\[A\] printer\.lan/);
    expect(await d.stop()).toBe(0);
  });
});

describe.skipIf(skip)('crash safety: kill -9 under a stream of new names', () => {
  const suite = topologyPerSuite();

  it('after 20 random kill points every address an app received still maps to its name', async () => {
    const { t } = suite;
    const state = join(t.tmp, 'state-crash');
    const stream = join(ROOT, 'test/e2e/fixtures/dnsstream.mjs');
    const held: string[] = [];
    const ROUNDS = 20;
    for (let round = 0; round < ROUNDS; round++) {
      const d = await t.startDaemon(['--state-dir', state]);
      const client = t.client.spawn('node', [stream, 'stream', '198.18.0.1', `r${round}`, '16']);
      let out = '';
      client.stdout?.setEncoding('utf8').on('data', (s: string) => {
        out += s;
      });
      const exited = new Promise((r) => client.once('exit', r));
      // A random kill point while answers are streaming (after the first one).
      while (!out.includes('\n')) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 400)));
      expect(await d.stop('SIGKILL')).toBe(-1);
      await exited;
      const lines = out.split('\n').filter((l) => /^\S+ 198\.18\.\d+\.\d+$/.test(l));
      expect(lines.length).toBeGreaterThan(0);
      held.push(...lines);
    }
    const d = await t.startDaemon(['--state-dir', state]);
    expect(d.stderr).toMatch(/from the journal/);
    const r = await t.client.exec('node', [stream, 'check', '198.18.0.1'], { input: `${held.join('\n')}\n` });
    expect(r.stdout.trim()).toBe(`ok ${held.length}`);
    expect(new Set(held.map((l) => l.split(' ')[1])).size).toBe(held.length);
    await d.stop();
  }, 180_000);
});

describe.skipIf(skip)('engine lifecycle: thread death, expiry resets both ends', () => {
  const suite = topologyPerSuite();

  it('an engine thread that dies (TUN device deleted under it) → one line with errno and the fix, exit 1 within 1 s', async () => {
    const { t } = suite;
    const d = await t.startDaemon(['--queues', '2']);
    const t0 = Date.now();
    // Something real: the device goes away under the engine; its reads fail with EBADFD.
    await t.client.must('ip', ['link', 'del', 'fp0']);
    const code = await d.exited;
    const ms = Date.now() - t0;
    expect(code).toBe(1);
    expect(ms).toBeLessThan(1000);
    const lines = d.stderr.split('\n').filter((l) => /engine thread/.test(l));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(
      /engine thread fp-engine-\d stopped: reading TUN device fp0 failed with EBADFD \(errno 77\)/,
    );
    expect(lines[0]).toMatch(/restart it/);
  });

  it('a TCP flow that times out resets the app blocked in read within 1 s of the upstream reset, and the upstream', async () => {
    const { t } = suite;
    // An upstream server that records when its side of the connection is reset.
    const server = await t.spawnUpstream(
      'node',
      [
        '-e',
        `require('net').createServer((s) => { s.on('error', (e) => console.log('server', e.code, Date.now())); s.on('close', () => console.log('server-close', Date.now())); }).listen(7001, '${t.upstreamIp}', () => console.log('listening'));`,
      ],
      /listening/,
    );
    let serverOut = '';
    server.stdout?.setEncoding('utf8').on('data', (s: string) => {
      serverOut += s;
    });
    const d = await t.startDaemon(['--nat-timeout', 'tcp-established=2']);
    // The app connects by name, then blocks in read; nothing moves until the flow times out.
    const app = await t.client.exec(
      'node',
      [
        '-e',
        `const s = require('net').connect(7001, 'echo.test', () => console.log('connected', Date.now()));
         s.on('error', (e) => { console.log('app', e.code, Date.now()); process.exit(0); });
         s.on('close', () => { console.log('app-close', Date.now()); process.exit(0); });
         setTimeout(() => { console.log('app-timeout'); process.exit(3); }, 15000);`,
      ],
      { timeoutMs: 20_000 },
    );
    expect(app.stdout).toMatch(/connected/);
    const appReset = /app ECONNRESET (\d+)/.exec(app.stdout);
    expect(appReset, app.stdout).not.toBeNull();
    for (let i = 0; i < 100 && !/server-close/.test(serverOut); i++) await new Promise((r) => setTimeout(r, 20));
    const upstreamClosed = /server-close (\d+)/.exec(serverOut);
    expect(upstreamClosed, serverOut).not.toBeNull();
    expect(Math.abs(Number(appReset?.[1]) - Number(upstreamClosed?.[1]))).toBeLessThan(1000);
    const st = JSON.parse((await runCli(t.client, ['status', '--json'])).stdout);
    expect(st.engine.rstOnExpiry).toBe(1);
    expect(await d.stop()).toBe(0);
    server.kill('SIGKILL');
  });

  it('a full table evicts a half-open flow whose app already saw the handshake: the app blocked in read gets a reset (rstOnEvict)', async () => {
    const { t } = suite;
    const server = await t.spawnUpstream(
      'node',
      ['-e', `require('net').createServer(() => {}).listen(7002, '${t.upstreamIp}', () => console.log('listening'));`],
      /listening/,
    );
    // 10.99.0.0/16 is the flood's source: admitted, so its SYNs make flows; nothing routes the answers back.
    const d = await t.startDaemon(['--max-flows', '16', '--lan', '10.99.0.0/16']);
    const fake = (await t.client.must('dig', ['+short', '@198.18.0.1', 'echo.test'])).trim();
    expect(fake).toMatch(/^198\.18\.\d+\.\d+$/);
    // Test instrument: the app's own ACKs never reach the TUN, so its flow stays half-open in the engine
    // (SYN and SYN-ACK seen) while the app's socket is established — the state rstOnEvict exists for.
    const nft = join(t.tmp, 'noack.nft');
    writeFileSync(
      nft,
      `table ip fptnoack {\n  chain out { type filter hook output priority 0; oifname "fp0" tcp dport 7002 tcp flags & (syn | rst) == 0 drop; }\n}\n`,
    );
    await t.client.must('nft', ['-f', nft]);
    const app = t.client.spawn('node', [
      '-e',
      `const s = require('net').connect(7002, '${fake}', () => console.log('connected'));
       s.on('error', (e) => { console.log('app ' + e.code); process.exit(0); });
       s.on('close', () => { console.log('app-close'); process.exit(0); });
       setTimeout(() => { console.log('app-timeout'); process.exit(3); }, 20000);`,
    ]);
    const exited = new Promise<number | null>((r) => app.once('exit', (c) => r(c)));
    let appOut = '';
    app.stdout?.setEncoding('utf8').on('data', (x: string) => {
      appOut += x;
    });
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('connected');
    const before = JSON.parse((await runCli(t.client, ['status', '--json'])).stdout).engine;
    // The app's flow has had its grace against first SYNs (FlowTable::kEvictGraceMs).
    await new Promise((r) => setTimeout(r, 1100));
    // Up to 64 SYNs into a 16-flow table: each new one early-drops the oldest half-open flow, the app's first.
    // 10 a second, so the table turns over more slowly than a SYN is retransmitted (faster, the engine
    // drops first SYNs instead: firstSynDropped, test/e2e/abuse.test.ts).
    const h = await t.client.exec(
      'hping3',
      ['-S', '-a', '10.99.0.5', '-p', '7002', '-c', '64', '-i', 'u100000', fake],
      {
        timeoutMs: 30_000,
      },
    );
    // hping3 stops early once it has counted 64 answers (it sees the SYN-ACKs the engine writes into the TUN).
    const sent = Number(/(\d+) packets transmitted/.exec(h.stderr)?.[1]);
    expect(sent, h.stderr).toBeGreaterThanOrEqual(32);
    expect(await exited).toBe(0);
    expect(appOut).toMatch(/app ECONNRESET/);
    const after = JSON.parse((await runCli(t.client, ['status', '--json'])).stdout).engine;
    // Each SYN beyond the table's 16 evicted a flow, or (a flow younger than 1 s at the head) was dropped
    // as a first SYN.
    const early = after.flowsEarlyDropped - before.flowsEarlyDropped;
    expect(early + after.firstSynDropped - before.firstSynDropped).toBeGreaterThanOrEqual(sent - 16);
    expect(early).toBeGreaterThanOrEqual(1);
    expect(after.rstOnEvict - before.rstOnEvict).toBeGreaterThanOrEqual(1);
    expect(after.rstOnExpiry).toBe(before.rstOnExpiry);
    await t.client.must('nft', ['delete', 'table', 'ip', 'fptnoack']);
    expect(await d.stop()).toBe(0);
    server.kill('SIGKILL');
  });
});
