/**
 * --system-dns end to end: the daemon points the namespace's resolver at
 * itself and every exit path puts the file back byte-identical. The file
 * is /etc/netns/<ns>/resolv.conf, which `ip netns exec` bind-mounts over
 * /etc/resolv.conf for the daemon: the host's own resolv.conf is checked
 * unchanged at the end.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DaemonProc, runCli } from './harness/daemon.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { createTopology, type Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('--system-dns: resolver pointed at the daemon, restored on every exit path', () => {
  let t: Topology;
  const host = readFileSync('/etc/resolv.conf');
  beforeAll(async () => {
    t = await createTopology();
  });
  afterAll(async () => {
    await t?.destroy();
    // Never the host's file: only the namespace's bind-mounted copy was written.
    expect(readFileSync('/etc/resolv.conf').equals(host)).toBe(true);
  });

  it('SIGTERM, SIGINT, kill -9 + cleanup, kill -9 + next start: resolv.conf byte-identical each time', async () => {
    const state = join(t.tmp, 'state-sysdns');
    const journal = join(state, 'teardown-fp0.jsonl');
    const etc = `/etc/netns/${t.client.name}/resolv.conf`;
    // Odd on purpose: comments, options, a blank line, no final newline.
    const original = `# the test's resolver\nsearch example.lan\n\nnameserver ${t.upstreamIp}\noptions timeout:1 attempts:2`;
    t.client.writeEtc('resolv.conf', original);
    const same = () => readFileSync(etc, 'utf8') === original;

    const start = async () => {
      const d = DaemonProc.start(t.client, ['start', '--state-dir', state, '--system-dns']);
      await d.waitFor(/running; Ctrl-C to stop/, 20_000);
      expect(d.stdout).toContain('system dns: /etc/resolv.conf names 198.18.0.1');
      expect(d.stdout).toContain(`upstream ${t.upstreamIp}:53`);
      const now = readFileSync(etc, 'utf8');
      expect(now).toMatch(/^nameserver 198\.18\.0\.1$/m);
      expect(now).not.toContain(t.upstreamIp);
      expect(now).toMatch(/^search example\.lan$/m);
      expect(now).toMatch(/^options timeout:1 attempts:2$/m);
      expect(existsSync(journal)).toBe(true);
      // The system resolver is now the daemon: a name gets a fake address.
      const g = await t.client.exec('getent', ['ahostsv4', 'origin.test']);
      expect(g.code, g.stderr).toBe(0);
      expect(g.stdout.split(/\s+/)[0]).toMatch(/^198\.18\.\d+\.\d+$/);
      return d;
    };

    for (const sig of ['SIGTERM', 'SIGINT'] as const) {
      const d = await start();
      expect(await d.stop(sig)).toBe(0);
      expect(same(), `${sig}: ${readFileSync(etc, 'utf8')}`).toBe(true);
      expect(existsSync(journal)).toBe(false);
    }

    // kill -9, then `fakeproxy cleanup`.
    let d = await start();
    expect(await d.stop('SIGKILL')).toBe(-1);
    expect(same()).toBe(false);
    let r = await runCli(t.client, ['cleanup', '--state-dir', state]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/undoing system resolver \/etc\/resolv\.conf \(left by fakeproxy pid \d+\)/);
    expect(r.stdout).toMatch(/cleanup: undid 1 change$/m);
    expect(same()).toBe(true);
    r = await runCli(t.client, ['cleanup', '--state-dir', state]);
    expect(r.stdout).toMatch(/nothing to undo/);
    expect(same()).toBe(true);

    // kill -9, then the same start command: it undoes the leftover first, and the
    // real resolver is still known (resolv.conf named only the daemon).
    d = await start();
    expect(await d.stop('SIGKILL')).toBe(-1);
    d = await start();
    expect(d.stderr).toMatch(/teardown: undoing system resolver/);
    expect(await d.stop('SIGTERM')).toBe(0);
    expect(same()).toBe(true);
    expect(existsSync(journal)).toBe(false);
  });

  it('runs with only the capabilities packaging/fakeproxy.service leaves (CAP_NET_ADMIN, CAP_NET_BIND_SERVICE)', async () => {
    const etc = `/etc/netns/${t.client.name}/resolv.conf`;
    const original = `nameserver ${t.upstreamIp}\n`;
    t.client.writeEtc('resolv.conf', original);
    const caps = '-all,+net_admin,+net_bind_service';
    const d = DaemonProc.start(t.client, ['start', '--state-dir', join(t.tmp, 'state-caps'), '--system-dns'], {}, [
      'setpriv',
      `--bounding-set=${caps}`,
      `--inh-caps=${caps}`,
      '--ambient-caps=+net_admin,+net_bind_service',
      '--no-new-privs',
    ]);
    await d.waitFor(/running; Ctrl-C to stop/, 20_000);
    const status = readFileSync(`/proc/${d.child.pid}/status`, 'utf8');
    expect(/^CapBnd:\s+(\S+)$/m.exec(status)?.[1]).toBe('0000000000001400'); // bits 10 and 12
    expect(readFileSync(etc, 'utf8')).toMatch(/^nameserver 198\.18\.0\.1$/m);
    const g = await t.client.exec('getent', ['ahostsv4', 'origin.test']);
    expect(g.stdout.split(/\s+/)[0]).toMatch(/^198\.18\.\d+\.\d+$/);
    const c = await t.client.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://origin.test:8080/']);
    expect(c.stdout).toBe('200');
    expect(await d.stop('SIGTERM')).toBe(0);
    expect(readFileSync(etc, 'utf8')).toBe(original);
  });

  it('usage: --system-dns without a state dir exits 2 before anything changes', async () => {
    const r = await runCli(t.client, ['start', '--state-dir', '', '--system-dns']);
    expect(r.code).toBe(2);
    expect(r.stderr.trim()).toBe(
      "fakeproxy: --system-dns needs a --state-dir (not ''): the resolver it replaces is journaled there so a crash can be undone",
    );
  });
});
