/**
 * Global mode's per-app choice by cgroup v2 (--bypass-cgroup, --only-cgroup)
 * end to end. A test cgroup is made in the host's cgroup2 hierarchy; a curl
 * is moved into it (from the host's mount namespace, joined only to the
 * client's network namespace with nsenter --net) before it execs. The
 * origin (whoami.mjs) writes the peer of every request: the client's own
 * address means direct, microsocks' means proxied; the daemon's
 * tcp.accepted counter says whether the connection reached it at all.
 *
 * `ip netns exec` remounts /sys, so the daemon sees no cgroup2 mount of its
 * own: each run mounts one in the daemon's private mount namespace, as a
 * hybrid host has it (tmpfs on /sys/fs/cgroup, cgroup2 on
 * /sys/fs/cgroup/unified) or as a cgroup-v2-only host has it (cgroup2 on
 * /sys/fs/cgroup). Nothing here touches the root namespace's network.
 */
import { mkdirSync, readFileSync, rmdirSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cgroup2Mounts } from '../../src/tun/cgroup.js';
import { runCli } from './harness/daemon.js';
import { e2eUnavailableReason, run } from './harness/netns.js';
import { capture, createTopology, startDaemonIn, type Topology, tmpFile, waitListening } from './harness/topology.js';

const skip = e2eUnavailableReason();

const MIC = 1080;
const WHO = 8081;
const CAPTURED = '203.0.113.30'; // public-looking, routed into the TUN in global mode
/** The daemon's mount namespace laid out like a hybrid host / a cgroup-v2-only host. */
const HYBRID = [
  'sh',
  '-c',
  'mount -t tmpfs fpt-cg /sys/fs/cgroup && mkdir /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified && exec "$@"',
  'sh',
];
const UNIFIED = ['sh', '-c', 'mount -t cgroup2 none /sys/fs/cgroup && exec "$@"', 'sh'];

describe.skipIf(skip)('global mode: per-app by cgroup v2', () => {
  let t: Topology;
  let mic: { readonly text: string };
  /** The client namespace's rules, routes and nftables before any daemon. */
  let before: string;
  /** The test cgroup: its path in the hierarchy and its directory in this (the host's) mount namespace. */
  const name = `fpt-${process.pid}-cg`;
  const cgroup = `/${name}`;
  let hostDir = '';

  const dumps = async () => {
    const rules = await t.client.must('ip', ['-4', 'rule', 'show']);
    const routes = await t.client.must('ip', ['-4', 'route', 'show', 'table', 'all']);
    const nft = await t.client.must('nft', ['list', 'ruleset']);
    return `${rules}\n--\n${routes}\n--\n${nft}`;
  };
  const curlArgs = (path: string) => ['curl', '-sS', '--max-time', '8', `http://${CAPTURED}:${WHO}${path}`];
  /** curl in the client namespace, outside the test cgroup. */
  const curlOutside = (path: string) => t.client.exec(curlArgs(path)[0] as string, curlArgs(path).slice(1));
  /** curl in the client namespace, moved into the test cgroup before it execs (its sockets are made there). */
  const curlInside = (path: string) =>
    run(
      'nsenter',
      [
        `--net=/run/netns/${t.client.name}`,
        '--',
        'sh',
        '-c',
        `echo $$ > ${hostDir}/cgroup.procs && exec "$@"`,
        'sh',
        ...curlArgs(path),
      ],
      { timeoutMs: 12_000 },
    );
  const accepted = async () => JSON.parse((await runCli(t.client, ['status', '--json'])).stdout).tcp.accepted as number;
  const start = (args: string[], layout: string[]) =>
    t.startDaemon(['--mode', 'global', '--upstream', `socks5://${t.upstreamIp}:${MIC}`, ...args], layout);

  beforeAll(async () => {
    const mount = cgroup2Mounts(readFileSync('/proc/self/mountinfo', 'utf8')).find((m) => m.root === '/');
    if (!mount)
      throw new Error('this test needs the host cgroup v2 hierarchy mounted (cgroup2 in /proc/self/mountinfo)');
    hostDir = `${mount.mountPoint}/${name}`;
    mkdirSync(hostDir);
    t = await createTopology();
    await t.upstream.must('ip', ['addr', 'add', `${CAPTURED}/32`, 'dev', 'lo']);
    await t.client.must('ip', ['route', 'add', `${CAPTURED}/32`, 'via', t.upstreamIp]);
    capture(t.upstream.spawn('node', [`${process.cwd()}/test/e2e/fixtures/whoami.mjs`, CAPTURED, String(WHO)]));
    mic = capture(t.upstream.spawn('/usr/bin/microsocks', ['-i', t.upstreamIp, '-p', String(MIC)]));
    await waitListening(t.upstream, MIC);
    await waitListening(t.upstream, WHO);
    before = await dumps();
  }, 60_000);

  afterAll(async () => {
    await t?.destroy();
    // Empty once its curls have exited (rmdir of a cgroup with no processes).
    for (let i = 0; i < 50 && hostDir; i++) {
      try {
        rmdirSync(hostDir);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  });

  it('usage errors are one line each, before anything is made', async () => {
    const fails = async (args: string[], prefix: string[] | undefined, re: RegExp) => {
      const d = startDaemonIn(t.client, t.upstreamIp, args, prefix);
      expect(await d.exited).toBe(2);
      const lines = d.output.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(re);
    };
    await fails(
      ['--mode', 'global', '--bypass-cgroup', '/sys/fs/cgroup/unified/fpt-no-such-cgroup'],
      HYBRID,
      /--bypass-cgroup \/sys\/fs\/cgroup\/unified\/fpt-no-such-cgroup: no such cgroup \(looked for \/sys\/fs\/cgroup\/unified\/fpt-no-such-cgroup; cgroup v2 is mounted at \/sys\/fs\/cgroup\/unified\)/,
    );
    await fails(
      ['--mode', 'global', '--only-cgroup', '/fpt-no-such-cgroup'],
      UNIFIED,
      /--only-cgroup \/fpt-no-such-cgroup: no such cgroup \(looked for \/sys\/fs\/cgroup\/fpt-no-such-cgroup; cgroup v2 is mounted at \/sys\/fs\/cgroup\)/,
    );
    // `ip netns exec` alone: no cgroup2 mount visible
    await fails(['--mode', 'global', '--bypass-cgroup', cgroup], undefined, /no cgroup v2 hierarchy is mounted/);
    // no nft on PATH (it is in /usr/sbin)
    await fails(
      ['--mode', 'global', '--bypass-cgroup', cgroup],
      ['env', 'PATH=/usr/bin:/bin', ...UNIFIED],
      /--bypass-cgroup needs nftables' `nft` is not installed \(apt install nftables\)/,
    );
    await fails(['--only-cgroup', cgroup], UNIFIED, /--only-cgroup works in global mode only/);
    await fails(
      ['--mode', 'global', '--bypass-cgroup', '/a/../b'],
      UNIFIED,
      /--bypass-cgroup "\/a\/\.\.\/b": a cgroup v2 path/,
    );
    expect(await dumps()).toBe(before);
    expect((await t.client.exec('ip', ['link', 'show', 'fp0'])).code).not.toBe(0);
  });

  it('--bypass-cgroup (hybrid layout, the directory under /sys/fs/cgroup/unified): that process goes direct, others are proxied; SIGTERM restores everything', async () => {
    const config = tmpFile(t, 'bypass.yaml', `bypassCgroup: ['/sys/fs/cgroup/unified/${name}']\n`);
    const d = await start(['--config', config], HYBRID);
    expect(d.output).toMatch(new RegExp(`nftables table ip fakeproxy_fp0: bypass ${cgroup} \\(level 1\\)`));
    expect(await t.client.must('nft', ['list', 'table', 'ip', 'fakeproxy_fp0'])).toMatch(/socket cgroupv2 level 1/);
    const a0 = await accepted();
    const micAt = mic.text.length;
    const inside = await curlInside('/bypassed');
    // The origin sees the client's own address (masqueraded from the TUN's), and the daemon never saw it.
    expect(inside.stderr).toBe('');
    expect(inside.stdout.trim()).toBe(`peer=${t.clientIp} host=${CAPTURED}:${WHO}`);
    expect(await accepted()).toBe(a0);
    expect(mic.text.slice(micAt)).not.toContain('connected to');
    const outside = await curlOutside('/proxied');
    expect(outside.stdout).toMatch(new RegExp(`^peer=\\S+ host=${CAPTURED.replace(/\./g, '\\.')}:${WHO}$`, 'm'));
    expect(outside.stdout).not.toContain(`peer=${t.clientIp} `);
    expect(await accepted()).toBe(a0 + 1);
    expect(mic.text.slice(micAt)).toContain(`connected to ${CAPTURED}:${WHO}`);
    await d.stop('SIGTERM');
    expect(await dumps()).toBe(before);
  });

  it('--only-cgroup (cgroup-v2-only layout, the hierarchy path): only that process is proxied; kill -9 leaves the table, `fakeproxy cleanup` removes it', async () => {
    const stateDir = `${t.tmp}/state-only`;
    const d = await start(['--only-cgroup', cgroup, '--state-dir', stateDir], UNIFIED);
    const rules = await t.client.must('ip', ['-4', 'rule', 'show']);
    expect(rules).toMatch(/^9009:\s+from all fwmark 0x2d1 lookup 2022/m);
    expect(rules).not.toMatch(/^9009:\s+from all lookup 2022/m);
    const a0 = await accepted();
    const micAt = mic.text.length;
    const inside = await curlInside('/only');
    expect(inside.stdout).toMatch(new RegExp(`^peer=\\S+ host=${CAPTURED.replace(/\./g, '\\.')}:${WHO}$`, 'm'));
    expect(inside.stdout).not.toContain(`peer=${t.clientIp} `);
    expect(await accepted()).toBe(a0 + 1);
    expect(mic.text.slice(micAt)).toContain(`connected to ${CAPTURED}:${WHO}`);
    const outside = await curlOutside('/not-captured');
    expect(outside.stdout.trim()).toBe(`peer=${t.clientIp} host=${CAPTURED}:${WHO}`);
    expect(await accepted()).toBe(a0 + 1);
    await d.stop('SIGKILL');
    expect(await t.client.must('nft', ['list', 'ruleset'])).toMatch(/table ip fakeproxy_fp0/);
    const r = await runCli(t.client, ['cleanup', '--state-dir', stateDir]);
    expect(r.stdout).toMatch(/teardown: undoing global mode: nftables table ip fakeproxy_fp0/);
    expect(r.stdout).toMatch(/cleanup: undid \d+ changes/);
    expect(await dumps()).toBe(before);
  });

  it('the next start after a kill -9 undoes the leftovers first: one table, one set of rules; SIGTERM restores everything', async () => {
    const stateDir = `${t.tmp}/state-restart`;
    const first = await start(['--bypass-cgroup', cgroup, '--state-dir', stateDir], UNIFIED);
    const installed = await dumps();
    await first.stop('SIGKILL');
    const second = await start(['--bypass-cgroup', cgroup, '--state-dir', stateDir], UNIFIED);
    expect(second.output).toMatch(/teardown: undoing global mode: nftables table ip fakeproxy_fp0/);
    expect(await dumps()).toBe(installed);
    const inside = await curlInside('/again');
    expect(inside.stdout.trim()).toBe(`peer=${t.clientIp} host=${CAPTURED}:${WHO}`);
    await second.stop('SIGTERM');
    expect(await dumps()).toBe(before);
  });

  it('--bypass-cgroup under strict rp_filter on the uplink: the bypassed process still gets its replies (src/tun/rpfilter.ts); SIGTERM restores the sysctls', async () => {
    const uplink = /\bdev (\S+)/.exec(await t.client.must('ip', ['-4', 'route', 'get', t.upstreamIp]))?.[1] ?? '';
    const svm = async () => (await t.client.must('cat', ['/proc/sys/net/ipv4/conf/all/src_valid_mark'])).trim();
    await t.client.must('sysctl', ['-qw', `net.ipv4.conf.${uplink}.rp_filter=1`]);
    try {
      expect(await svm()).toBe('0');
      const config = tmpFile(t, 'bypass-rp.yaml', `bypassCgroup: ['${cgroup}']\n`);
      const d = await start(['--config', config], UNIFIED);
      expect(d.output).toMatch(new RegExp(`global mode: strict rp_filter on ${uplink}:`));
      expect(await svm()).toBe('1');
      const inside = await curlInside('/bypassed-strict');
      expect(inside.stderr).toBe('');
      expect(inside.stdout.trim()).toBe(`peer=${t.clientIp} host=${CAPTURED}:${WHO}`);
      await d.stop('SIGTERM');
      expect(await svm()).toBe('0');
    } finally {
      await t.client.must('sysctl', ['-qw', `net.ipv4.conf.${uplink}.rp_filter=0`]);
    }
    expect(await dumps()).toBe(before);
  });
});
