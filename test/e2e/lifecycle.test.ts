/**
 * Lifecycle end to end: usage errors before anything exists, the real
 * resolver remembered across restarts (the quick start's second run).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DaemonProc, ROOT, runCli } from './harness/daemon.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { createTopology, type Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('lifecycle: usage errors and the remembered resolver', () => {
  let t: Topology;
  beforeAll(async () => {
    t = await createTopology();
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('every usage error exits 2 with one line before the TUN exists, even while resolv.conf names only the daemon', async () => {
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
  let t: Topology;
  beforeAll(async () => {
    t = await createTopology();
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('after 20 random kill points every address an app received still maps to its name', async () => {
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
