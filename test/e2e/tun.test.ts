import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { START_OPTIONS } from '../../src/options.js';
import { DaemonProc, runCli } from './harness/daemon.js';
import { e2eUnavailableReason, Netns } from './harness/netns.js';
import { eventually } from './harness/topology.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('fakeproxy start: the TUN device (in a namespace)', () => {
  let ns: Netns;
  beforeEach(async () => {
    ns = await Netns.create('tun');
  });
  afterEach(async () => {
    await ns.delete();
  });

  it('creates the device, address and route, and removes them on SIGTERM with exit 0', async () => {
    const d = DaemonProc.start(ns, ['start', '--state-dir', '', '--tun', 'fp0']);
    await d.waitFor(/running/);
    expect(d.stdout).toContain('device fp0 up (mtu 65535');
    expect(d.stdout).toContain('address 198.18.0.1/16');
    expect(d.stdout).toContain('route 198.18.0.0/16 dev fp0');
    const addr = await ns.must('ip', ['-4', '-o', 'addr', 'show', 'dev', 'fp0']);
    expect(addr).toMatch(/inet 198\.18\.0\.1\/16/);
    const link = await ns.must('ip', ['-o', 'link', 'show', 'dev', 'fp0']);
    expect(link).toMatch(/mtu 65535 /);
    expect(link).toMatch(new RegExp(` qlen ${START_OPTIONS.tunTxqueuelen.default}\\b`));
    expect(link).toMatch(/[<,]UP[,>]/);
    const routes = await ns.must('ip', ['-4', 'route', 'show']);
    expect(routes).toMatch(/^198\.18\.0\.0\/16 dev fp0 .*src 198\.18\.0\.1/m);

    // `fakeproxy status` reaches the daemon of this namespace (abstract socket).
    const st = await runCli(ns, ['status', '--json']);
    expect(st.code).toBe(0);
    const status = JSON.parse(st.stdout);
    expect(status.tun).toMatchObject({ name: 'fp0', range: '198.18.0.0/16', mtu: 65535, queues: 1 });
    expect(status.engine.threadsRunning).toBe(1);

    expect(await d.stop('SIGTERM')).toBe(0);
    const gone = await runCli(ns, ['status']);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/no fakeproxy serves fp0 in this network namespace/);
    const after = await ns.exec('ip', ['link', 'show', 'dev', 'fp0']);
    expect(after.code).not.toBe(0);
    expect(await ns.must('ip', ['-4', 'route', 'show'])).not.toMatch(/198\.18\./);
  });

  it('counts the kernel drops at the TUN transmit queue in status and on the overload line', async () => {
    const qlen = START_OPTIONS.tunTxqueuelen.range[0];
    const d = DaemonProc.start(ns, ['start', '--state-dir', '', '--tun-txqueuelen', String(qlen)]);
    await d.waitFor(/running/);
    const before = JSON.parse((await runCli(ns, ['status', '--json'])).stdout);
    expect(before.tun).toMatchObject({ txQueueLen: qlen, kernelTxDropped: 0 });
    // A stopped daemon reads nothing: the kernel queues `qlen` packets and drops the rest.
    const sent = qlen * 4;
    const pid = d.child.pid as number;
    process.kill(pid, 'SIGSTOP');
    try {
      await ns.must('node', [
        '-e',
        `const s=require('dgram').createSocket('udp4');let n=0;const go=()=>{if(n++>=${sent})return s.close();s.send(Buffer.alloc(100),9,'198.18.200.200',go)};go();`,
      ]);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const st = JSON.parse((await runCli(ns, ['status', '--json'])).stdout);
    expect(st.tun.kernelTxDropped).toBeGreaterThanOrEqual(sent - qlen);
    expect(st.tun.kernelTxDropped).toBeLessThanOrEqual(sent);
    const link = await ns.must('ip', ['-s', 'link', 'show', 'dev', 'fp0']);
    expect(link).toMatch(new RegExp(`TX:[^\\n]*\\n\\s*\\d+\\s+\\d+\\s+\\d+\\s+${st.tun.kernelTxDropped}\\s`));
    const text = (await runCli(ns, ['status'])).stdout;
    expect(text).toContain(`tun kernel tx queue ${st.tun.kernelTxDropped}`);
    // The 10 s overload timer names them.
    const m = await d.waitFor(/the kernel dropped (\d+) packets at fp0's full transmit queue/, 25_000);
    expect(Number(m[1])).toBe(st.tun.kernelTxDropped);
    expect(await d.stop()).toBe(0);
  });

  it('--config file.yaml sets options; a flag given on the command line wins', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'fpt-cfg-'));
    const file = join(dir, 'fakeproxy.yaml');
    writeFileSync(
      file,
      'tun: fpcfg\nmtu: 1500\ntunTxqueuelen: 1000\ncidr: 198.19.0.0/16\nstateDir: ""\nfakeIpFilter:\n  - +.lan\n',
    );
    try {
      const d = DaemonProc.start(ns, ['start', '--config', file, '--mtu', '4000']);
      await d.waitFor(/running/);
      expect(await ns.must('ip', ['-o', 'link', 'show', 'dev', 'fpcfg'])).toMatch(/mtu 4000 .* qlen 1000\b/);
      expect(await ns.must('ip', ['-4', 'route', 'show'])).toMatch(/^198\.19\.0\.0\/16 dev fpcfg/m);
      expect(await d.stop()).toBe(0);
      writeFileSync(file, 'tun: fpcfg\nbogusKey: 1\n');
      const bad = await runCli(ns, ['start', '--config', file]);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/unknown key 'bogusKey'/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('opens the device with offloads by default; --no-tun-offload opens it without', async () => {
    for (const [args, on] of [
      [[], true],
      [['--no-tun-offload'], false],
    ] as const) {
      const d = DaemonProc.start(ns, ['start', '--state-dir', '', ...args]);
      await d.waitFor(/running/);
      expect(d.stdout).toContain(`offload ${on ? 'on' : 'off'})`);
      const st = await runCli(ns, ['status', '--json']);
      expect(JSON.parse(st.stdout).tun).toMatchObject({ name: 'fp0', offload: on });
      // The kernel's view: TSO on the device only with offloads.
      // (ethtool comes from scripts/install-test-deps.sh.)
      const k = await ns.exec('ethtool', ['-k', 'fp0']);
      expect(k.code, k.stderr).toBe(0);
      expect(k.stdout).toMatch(on ? /tcp-segmentation-offload: on/ : /tcp-segmentation-offload: off/);
      expect(await d.stop('SIGTERM')).toBe(0);
    }
  });

  it('SIGINT (Ctrl-C) tears down the same way', async () => {
    const d = DaemonProc.start(ns, ['start', '--state-dir', '', '--tun', 'fpint']);
    await d.waitFor(/running/);
    expect(await d.stop('SIGINT')).toBe(0);
    expect((await ns.exec('ip', ['link', 'show', 'dev', 'fpint'])).code).not.toBe(0);
  });

  it('SIGKILL leaves nothing behind either (the device is not persistent)', async () => {
    const d = DaemonProc.start(ns, ['start', '--state-dir', '', '--tun', 'fpkill']);
    await d.waitFor(/running/);
    await d.stop('SIGKILL');
    // The kernel deletes the device once its last fd is released; the engine's io_uring lets go of its
    // files in the ring's teardown work, which may run just after the process is reaped: allow it 5 s.
    const gone = await eventually(
      async () => (await ns.exec('ip', ['link', 'show', 'dev', 'fpkill'])).code !== 0,
      (v) => v,
      5000,
    );
    expect(gone, 'fpkill still exists 5 s after SIGKILL').toBe(true);
  });

  it('--cidr 198.10.0.0/16 warns that it is public space, then works', async () => {
    const d = DaemonProc.start(ns, ['start', '--state-dir', '', '--cidr', '198.10.0.0/16']);
    await d.waitFor(/running/);
    expect(d.stderr).toMatch(/warning: 198\.10\.0\.0\/16 is public address space/);
    expect(d.stderr.split('\n').filter((l) => l.includes('warning')).length).toBe(1);
    expect(await ns.must('ip', ['-4', 'route', 'show'])).toMatch(/^198\.10\.0\.0\/16 dev fp0/m);
    expect(await d.stop()).toBe(0);
  });

  it('the reserved default range starts without a warning', async () => {
    const d = DaemonProc.start(ns, ['start', '--state-dir', '']);
    await d.waitFor(/running/);
    expect(d.stderr).not.toMatch(/warning/);
    expect(await d.stop()).toBe(0);
  });

  it('refuses a second instance on the same device with a one-line EBUSY error and exit 1', async () => {
    const d = DaemonProc.start(ns, ['start', '--state-dir', '']);
    await d.waitFor(/running/);
    const second = await runCli(ns, ['start', '--state-dir', '']);
    expect(second.code).toBe(1);
    expect(second.stderr.trim().split('\n')).toHaveLength(1);
    expect(second.stderr).toMatch(/EBUSY: .*fp0 is held by another process/);
    // The first one is unharmed.
    expect(await ns.must('ip', ['-4', '-o', 'addr', 'show', 'dev', 'fp0'])).toMatch(/198\.18\.0\.1/);
    expect(await d.stop()).toBe(0);
  });

  it('refuses a range that overlaps a route of another interface', async () => {
    // A veth pair wholly inside the namespace stands for "another interface".
    await ns.must('ip', ['link', 'add', 'other0', 'type', 'veth', 'peer', 'name', 'other1']);
    await ns.must('ip', ['addr', 'add', '198.18.5.1/24', 'dev', 'other0']);
    await ns.must('ip', ['link', 'set', 'other0', 'up']);
    await ns.must('ip', ['link', 'set', 'other1', 'up']);
    const r = await runCli(ns, ['start', '--state-dir', '']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/overlaps route 198\.18\.5\.0\/24 of other0/);
  });

  it('as a non-root user: exit 1 with the permission message, no stack trace', async () => {
    const r = await runCli(ns, ['start', '--state-dir', ''], { asUser: 65534 });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/needs CAP_NET_ADMIN/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });

  it.each([
    [['--cidr', '198.18.0.0/33'], /not an IPv4 CIDR/],
    [['--cidr', 'banana'], /not an IPv4 CIDR/],
    [['--cidr', '198.18.0.0/31'], /between \/8 and \/30/],
    [['--tun', 'a-name-longer-than-15'], /1-15 bytes/],
    [['--mtu', '70000'], /--mtu/],
    [['--tun-txqueuelen', '10'], /--tun-txqueuelen/],
    [['--listen-port', '0'], /port must be/],
    [['--bogus'], /unknown option '--bogus'/],
  ])('usage error %j → one line, exit 2, nothing created', async (args, re) => {
    const r = await runCli(ns, ['start', '--state-dir', '', ...(args as string[])]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(re as RegExp);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(await ns.must('ip', ['-o', 'link', 'show'])).not.toMatch(/fp0/);
  });
});
