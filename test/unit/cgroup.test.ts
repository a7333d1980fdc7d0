import { describe, expect, it } from 'vitest';
import { resolveStartConfig } from '../../src/config.js';
import { FakeproxyError } from '../../src/errors.js';
import {
  type CgroupMatch,
  captureMark,
  cgroup2Mounts,
  cgroupNftScript,
  nftTableName,
  parseCgroupPath,
  prepareCgroupRules,
  resolveCgroup,
} from '../../src/tun/cgroup.js';

// /proc/self/mountinfo as a hybrid host (this VM) and a cgroup-v2-only host show it.
const HYBRID = [
  '30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
  '31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu',
  '40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw',
  '',
].join('\n');
const UNIFIED =
  '25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n';
/** A container: its cgroup namespace's root bind-mounted at an escaped path. */
const ODD = '50 22 0:40 /system.slice/box /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n';

const dirs =
  (...present: string[]) =>
  (p: string) =>
    present.includes(p);

describe('cgroup2 mounts', () => {
  it('finds the cgroup2 mount among v1 ones, and unescapes mountinfo paths', () => {
    expect(cgroup2Mounts(HYBRID)).toEqual([{ mountPoint: '/sys/fs/cgroup/unified', root: '/' }]);
    expect(cgroup2Mounts(UNIFIED)).toEqual([{ mountPoint: '/sys/fs/cgroup', root: '/' }]);
    expect(cgroup2Mounts(ODD)).toEqual([{ mountPoint: '/mnt/my cg', root: '/system.slice/box' }]);
    expect(cgroup2Mounts('garbage\n\n1 2 3 - cgroup2\n')).toEqual([]);
  });
});

describe('resolveCgroup: the path nft stats and the level', () => {
  const hybrid = cgroup2Mounts(HYBRID);
  const unified = cgroup2Mounts(UNIFIED);
  it.each([
    // hybrid: nft looks under /sys/fs/cgroup, so the mount's place goes in front
    [hybrid, '/sys/fs/cgroup/unified/app', '/sys/fs/cgroup/unified/app', '/app', 'unified/app', 1],
    [
      hybrid,
      '/system.slice/foo.service',
      '/sys/fs/cgroup/unified/system.slice/foo.service',
      '/system.slice/foo.service',
      'unified/system.slice/foo.service',
      2,
    ],
    [
      hybrid,
      'user.slice/user@1000.service/app.slice',
      '/sys/fs/cgroup/unified/user.slice/user@1000.service/app.slice',
      '/user.slice/user@1000.service/app.slice',
      'unified/user.slice/user@1000.service/app.slice',
      3,
    ],
    [unified, '/sys/fs/cgroup/app/', '/sys/fs/cgroup/app', '/app', 'app', 1],
    [unified, '/app//sub', '/sys/fs/cgroup/app/sub', '/app/sub', 'app/sub', 2],
  ])('%#: %s', (mounts, given, dir, cgroup, nftPath, level) => {
    expect(resolveCgroup(given, mounts, '--bypass-cgroup', dirs(dir))).toEqual({ given, cgroup, nftPath, level });
  });

  it('a mount of a subtree: hierarchy paths inside it, levels counted from the hierarchy root', () => {
    const odd = cgroup2Mounts(ODD);
    const m = resolveCgroup('/system.slice/box/web', odd, '--only-cgroup', dirs('/mnt/my cg/web'));
    expect(m).toMatchObject({ cgroup: '/system.slice/box/web', nftPath: '../../../mnt/my cg/web', level: 3 });
    expect(resolveCgroup('/mnt/my cg/web', odd, '--only-cgroup', dirs('/mnt/my cg/web'))).toMatchObject({
      cgroup: '/system.slice/box/web',
    });
    expect(() => resolveCgroup('/user.slice', odd, '--only-cgroup', dirs())).toThrow(
      /--only-cgroup \/user\.slice: the cgroup2 mount at \/mnt\/my cg shows only \/system\.slice\/box/,
    );
  });

  it('a missing cgroup names where it looked; the root cgroup is refused', () => {
    expect(() => resolveCgroup('/sys/fs/cgroup/app', hybrid, '--bypass-cgroup', dirs())).toThrow(
      '--bypass-cgroup /sys/fs/cgroup/app: no such cgroup (looked for /sys/fs/cgroup/unified/sys/fs/cgroup/app; cgroup v2 is mounted at /sys/fs/cgroup/unified); create it first (mkdir) and move the processes in (cgroup.procs)',
    );
    expect(() => resolveCgroup('/sys/fs/cgroup/unified', hybrid, '--bypass-cgroup', dirs())).toThrow(
      /that is the root cgroup/,
    );
  });
});

describe('--bypass-cgroup / --only-cgroup options', () => {
  it('config twins, repeatable, global mode only, syntax checked', () => {
    expect(
      resolveStartConfig({ mode: 'global', bypassCgroup: ['/a', 'b/c'], onlyCgroup: '/sys/fs/cgroup/unified/d' }),
    ).toMatchObject({ bypassCgroup: ['/a', 'b/c'], onlyCgroup: ['/sys/fs/cgroup/unified/d'] });
    expect(resolveStartConfig({}, { mode: 'global', onlyCgroup: ['/x'] })).toMatchObject({ onlyCgroup: ['/x'] });
    expect(resolveStartConfig({})).toMatchObject({ bypassCgroup: [], onlyCgroup: [] });
    expect(() => resolveStartConfig({ bypassCgroup: '/a' })).toThrow(
      '--bypass-cgroup works in global mode only (--mode global): in fake-ip mode only named traffic is captured',
    );
  });

  it.each(['/', '', '../etc', '/a/./b', 'a"b', 'a\\b', 'a\nb'])('%j is a usage error', (v) => {
    expect(() => parseCgroupPath(v, '--only-cgroup')).toThrow(
      /--only-cgroup .*: a cgroup v2 path as \/proc\/PID\/cgroup shows it/,
    );
  });
});

describe('the nftables table', () => {
  const m = (nftPath: string, level: number): CgroupMatch => ({
    given: nftPath,
    cgroup: `/${nftPath}`,
    nftPath,
    level,
  });

  it('bypass: own sockets first, restore by ct mark, mark by cgroup, masquerade what left the TUN address elsewhere', () => {
    expect(
      cgroupNftScript({ tun: 'fp0', tunAddress: '198.18.0.1', mark: 0x2d0, bypass: [m('unified/a', 1)], only: [] }),
    ).toBe(
      [
        'add table ip fakeproxy_fp0',
        'add chain ip fakeproxy_fp0 route { type route hook output priority mangle; policy accept; }',
        'add rule ip fakeproxy_fp0 route meta mark 0x2d0 return',
        'add rule ip fakeproxy_fp0 route ct mark 0x2d0 meta mark set ct mark return',
        'add rule ip fakeproxy_fp0 route socket cgroupv2 level 1 "unified/a" meta mark set 0x2d0 ct mark set 0x2d0 return',
        'add chain ip fakeproxy_fp0 nat { type nat hook postrouting priority srcnat; policy accept; }',
        'add rule ip fakeproxy_fp0 nat meta mark 0x2d0 ip saddr 198.18.0.1 oifname != "fp0" masquerade',
        '',
      ].join('\n'),
    );
  });

  it('only: the capture mark (--fwmark + 1), bypass before only, no masquerade without bypass', () => {
    const only = cgroupNftScript({ tun: 'fp0', tunAddress: '198.18.0.1', mark: 7, bypass: [], only: [m('x/y', 2)] });
    expect(only).toContain('route ct mark 0x8 meta mark set ct mark return');
    expect(only).toContain('route socket cgroupv2 level 2 "x/y" meta mark set 0x8 ct mark set 0x8 return');
    expect(only).not.toContain('nat');
    const both = cgroupNftScript({
      tun: 'fp0',
      tunAddress: '10.0.0.1',
      mark: 7,
      bypass: [m('b', 1)],
      only: [m('o', 1)],
    });
    expect(both.indexOf('"b"')).toBeLessThan(both.indexOf('"o"'));
    expect(captureMark(0xffffffff)).toBe(0xfffffffe);
    expect(nftTableName('tun-1.x')).toBe('fakeproxy_tun_1_x');
  });
});

describe('prepareCgroupRules: every check before anything is made', () => {
  const base = { tun: 'fp0', tunAddress: '198.18.0.1', mark: 0x2d0, bypass: ['/app'], only: [] as string[] };
  const ok = { mountinfo: () => HYBRID, isDir: dirs('/sys/fs/cgroup/unified/app') };

  it('nothing asked: nothing checked', () => {
    expect(prepareCgroupRules({ ...base, bypass: [] }, { mountinfo: () => '' })).toBeUndefined();
  });

  it('checks the whole script with nft --check and returns it', () => {
    const calls: string[][] = [];
    const r = prepareCgroupRules(base, {
      ...ok,
      nft: (a) => {
        calls.push(a);
        return '';
      },
    });
    expect(calls).toEqual([['--check', r?.script]]);
    expect(r?.rules.bypass[0]).toMatchObject({ cgroup: '/app', nftPath: 'unified/app', level: 1 });
  });

  it.each([
    [
      { mountinfo: () => '', filesystems: () => 'nodev\tcgroup\nnodev\tcgroup2\n' },
      /--bypass-cgroup: no cgroup v2 hierarchy is mounted where fakeproxy can see it/,
    ],
    [{ mountinfo: () => '', filesystems: () => 'nodev\tcgroup\n' }, /--bypass-cgroup: this kernel has no cgroup v2/],
    [{ ...ok, isDir: dirs() }, /--bypass-cgroup \/app: no such cgroup \(looked for \/sys\/fs\/cgroup\/unified\/app;/],
    [
      {
        ...ok,
        nft: () => {
          throw new FakeproxyError('ENONFT', "nftables' `nft` is not installed (apt install nftables)");
        },
      },
      /^--bypass-cgroup needs nftables' `nft` is not installed \(apt install nftables\)$/,
    ],
    [
      {
        ...ok,
        nft: () => {
          throw new FakeproxyError('ENFT', 'nft: Error: Could not process rule: No such file or directory');
        },
      },
      /--bypass-cgroup: nftables refused the cgroup rules \(kernel ≥ 5\.13 .*\): nft: Error: Could not process rule/,
    ],
  ])('%#: one usage line', (deps, msg) => {
    expect(() => prepareCgroupRules(base, deps)).toThrow(msg);
  });
});
