/**
 * Global mode's per-app choice by cgroup v2 (`--bypass-cgroup`,
 * `--only-cgroup`): an nftables table owned by the daemon marks the packets
 * of sockets created in those cgroups, and the `ip rule`s of
 * src/tun/policy.ts route by the mark.
 *
 *   table ip fakeproxy_<tun>
 *     chain route  (type route hook output priority mangle)
 *       meta mark MARK return                          the daemon's own sockets keep theirs
 *       ct mark MARK|CAP meta mark set ct mark return  later packets of a marked connection
 *       socket cgroupv2 level N "P" meta mark set MARK ct mark set MARK    --bypass-cgroup
 *       socket cgroupv2 level N "P" meta mark set CAP  ct mark set CAP     --only-cgroup
 *     chain nat    (type nat hook postrouting priority srcnat)   only with --bypass-cgroup
 *       meta mark MARK ip saddr <tun address> oifname != <tun> masquerade
 *
 * Why the masquerade: the route (and with it the source address) of a
 * connection is chosen at connect(), before any packet exists, and the
 * socket's cgroup cannot be matched by an `ip rule`. A bypassed socket is
 * first routed into the TUN (source = the TUN's address); the route chain
 * re-routes its packets by the mark to the main table, but the source stays
 * the TUN's address, which no peer can answer. The masquerade gives those
 * packets the outgoing interface's address (mullvad's split tunnelling does
 * the same). `--only-cgroup` needs none: its sockets are routed by main
 * first (the uplink's address) and enter the TUN only by the re-route; the
 * engine accepts every local address as a source.
 *
 * Why `ct mark`: the socket match needs a full socket; a TIME_WAIT ACK or
 * RST has none, so the connection's mark is kept on conntrack and restored.
 *
 * nft resolves the cgroup path by stat()ing `/sys/fs/cgroup/<path>` and
 * matching the inode (the cgroup id). On a hybrid host cgroup2 is mounted at
 * /sys/fs/cgroup/unified, so the path given to nft is the cgroup2 mount
 * point relative to /sys/fs/cgroup plus the cgroup's path (`unified/x`);
 * the mount is found in /proc/self/mountinfo. The level is the cgroup's
 * depth below the root the mount shows (kernels ≥ 6.12 count levels from
 * the cgroup namespace's root, as the mount shows it).
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { posix } from 'node:path';
import { FakeproxyError, UsageError } from '../errors.js';

/** A cgroup2 mount from /proc/self/mountinfo: where it is, and which cgroup it shows as its root. */
export interface Cgroup2Mount {
  mountPoint: string;
  /** The cgroup path of the mount's root (`/` unless a subtree was bind-mounted). */
  root: string;
}

/** One `--bypass-cgroup` / `--only-cgroup`, resolved against the cgroup2 mount. */
export interface CgroupMatch {
  /** As the user gave it (for log lines). */
  given: string;
  /** The cgroup's path in the hierarchy, `/a/b` (as `/proc/PID/cgroup` shows it after `0::`). */
  cgroup: string;
  /** The path nft is given: relative to /sys/fs/cgroup. */
  nftPath: string;
  /** `socket cgroupv2 level N`: the cgroup's depth (the root is 0). */
  level: number;
}

/** nft's hard-coded cgroup2 location (nftables src/datatype.c, SYSFS_CGROUPSV2_PATH). */
const NFT_CGROUP_ROOT = '/sys/fs/cgroup';

/** mountinfo escapes space, tab, newline and backslash as \ooo. */
const unescapeMount = (s: string) =>
  s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(Number.parseInt(o, 8)));

/** The cgroup2 mounts in a mountinfo text, in order. */
export function cgroup2Mounts(mountinfo: string): Cgroup2Mount[] {
  const out: Cgroup2Mount[] = [];
  for (const line of mountinfo.split('\n')) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
    const [pre, post] = line.split(' - ');
    if (!pre || !post || post.split(' ')[0] !== 'cgroup2') continue;
    const f = pre.split(' ');
    if (f.length < 5) continue;
    out.push({ root: unescapeMount(f[3] as string), mountPoint: unescapeMount(f[4] as string) });
  }
  return out;
}

/**
 * Syntax check of a `--bypass-cgroup` / `--only-cgroup` value (config time):
 * a path, no `..`, nothing nft's string syntax cannot carry.
 */
export function parseCgroupPath(v: unknown, flag: string): string {
  const text = String(v).trim();
  const parts = text.split('/').filter((p) => p !== '');
  const unquotable = [...text].some((ch) => ch === '"' || ch === '\\' || ch.charCodeAt(0) < 0x20 || ch === '\x7f');
  if (parts.length === 0 || parts.some((p) => p === '.' || p === '..') || unquotable) {
    throw new UsageError(
      `${flag} ${JSON.stringify(text)}: a cgroup v2 path as /proc/PID/cgroup shows it (e.g. /system.slice/foo.service) or a directory under the cgroup2 mount; not the root, no "..", no quotes`,
    );
  }
  return text;
}

const isCgroupDir = (p: string) => {
  try {
    return statSync(p).isDirectory() && statSync(posix.join(p, 'cgroup.procs')).isFile();
  } catch {
    return false;
  }
};

/**
 * Resolve one value against the visible cgroup2 mounts. Accepted: a
 * directory under a cgroup2 mount point (`/sys/fs/cgroup/unified/x`), or the
 * cgroup's path in the hierarchy (`/x` or `x`). Throws a UsageError naming
 * where it looked when the cgroup does not exist.
 */
export function resolveCgroup(
  given: string,
  mounts: readonly Cgroup2Mount[],
  flag: string,
  isDir: (p: string) => boolean = isCgroupDir,
): CgroupMatch {
  const norm = posix.normalize(`/${given}`);
  // Prefer the mount that shows the whole hierarchy.
  const ordered = [...mounts].sort((a, b) => (a.root === '/' ? 0 : 1) - (b.root === '/' ? 0 : 1));
  let mount: Cgroup2Mount | undefined;
  let rel: string | undefined;
  for (const m of ordered) {
    if (given.startsWith('/') && (norm === m.mountPoint || norm.startsWith(`${m.mountPoint}/`))) {
      mount = m;
      rel = norm.slice(m.mountPoint.length);
      break;
    }
  }
  if (!mount) {
    mount = ordered[0] as Cgroup2Mount;
    // A hierarchy path: relative to the mount's root.
    const r = mount.root === '/' ? '' : mount.root;
    if (r && !(norm === r || norm.startsWith(`${r}/`))) {
      throw new UsageError(
        `${flag} ${given}: the cgroup2 mount at ${mount.mountPoint} shows only ${mount.root}; give a cgroup inside it`,
      );
    }
    rel = norm.slice(r.length);
  }
  const relParts = (rel ?? '').split('/').filter((p) => p !== '');
  if (relParts.length === 0) {
    throw new UsageError(`${flag} ${given}: that is the root cgroup (every process); name a cgroup below it`);
  }
  const dir = posix.join(mount.mountPoint, ...relParts);
  if (!isDir(dir)) {
    throw new UsageError(
      `${flag} ${given}: no such cgroup (looked for ${dir}; cgroup v2 is mounted at ${mount.mountPoint}); create it first (mkdir) and move the processes in (cgroup.procs)`,
    );
  }
  const cgroup = posix.join(mount.root, ...relParts);
  return {
    given,
    cgroup,
    nftPath: posix.relative(NFT_CGROUP_ROOT, dir),
    level: cgroup.split('/').filter((p) => p !== '').length,
  };
}

/** The mark `--only-cgroup` packets carry (one the `ip rule` sends into the TUN): next to --fwmark. */
export const captureMark = (fwmark: number) => (fwmark === 0xffffffff ? fwmark - 1 : fwmark + 1);

/** The daemon's nftables table (ip family) for this TUN: nft identifiers take [A-Za-z0-9_]. */
export const nftTableName = (tun: string) => `fakeproxy_${tun.replace(/[^A-Za-z0-9_]/g, '_')}`;

export interface CgroupRules {
  tun: string;
  /** The TUN's own address: the source a bypassed socket was given by its first route. */
  tunAddress: string;
  mark: number;
  bypass: readonly CgroupMatch[];
  only: readonly CgroupMatch[];
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** The nft script (one transaction) that creates the table; see the header comment. */
export function cgroupNftScript(o: CgroupRules): string {
  const t = `ip ${nftTableName(o.tun)}`;
  const mark = hex(o.mark);
  const cap = hex(captureMark(o.mark));
  const match = (m: CgroupMatch) => `socket cgroupv2 level ${m.level} "${m.nftPath}"`;
  const lines = [
    `add table ${t}`,
    `add chain ${t} route { type route hook output priority mangle; policy accept; }`,
    `add rule ${t} route meta mark ${mark} return`,
    ...(o.bypass.length ? [`add rule ${t} route ct mark ${mark} meta mark set ct mark return`] : []),
    ...(o.only.length ? [`add rule ${t} route ct mark ${cap} meta mark set ct mark return`] : []),
    ...o.bypass.map((m) => `add rule ${t} route ${match(m)} meta mark set ${mark} ct mark set ${mark} return`),
    ...o.only.map((m) => `add rule ${t} route ${match(m)} meta mark set ${cap} ct mark set ${cap} return`),
  ];
  if (o.bypass.length) {
    lines.push(
      `add chain ${t} nat { type nat hook postrouting priority srcnat; policy accept; }`,
      `add rule ${t} nat meta mark ${mark} ip saddr ${o.tunAddress} oifname != "${o.tun}" masquerade`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Runs `nft ARGS…`; throws FakeproxyError (ENONFT when missing, ENFT with nft's first error line). */
export function runNft(args: string[]): string {
  const r = spawnSync('nft', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    throw new FakeproxyError('ENONFT', "nftables' `nft` is not installed (apt install nftables)");
  }
  if (r.error || r.status !== 0) {
    const first = (r.stderr ?? '').trim().split('\n')[0] || r.error?.message || `exit ${r.status}`;
    throw new FakeproxyError('ENFT', `nft: ${first}`);
  }
  return r.stdout;
}

export interface CgroupCheckDeps {
  mountinfo?: () => string;
  filesystems?: () => string;
  isDir?: (p: string) => boolean;
  nft?: (args: string[]) => string;
}

/**
 * Everything `--bypass-cgroup` / `--only-cgroup` need, checked before the
 * daemon changes anything: cgroup v2 in the kernel and mounted where the
 * daemon can see it, every cgroup present, `nft` installed and the whole
 * table accepted by `nft --check` (the kernel's socket/nat support).
 * Returns the matches and the script; throws one UsageError line otherwise.
 */
export function prepareCgroupRules(
  o: Omit<CgroupRules, 'bypass' | 'only'> & { bypass: readonly string[]; only: readonly string[] },
  deps: CgroupCheckDeps = {},
): { rules: CgroupRules; script: string } | undefined {
  if (o.bypass.length === 0 && o.only.length === 0) return undefined;
  const flag = o.bypass.length ? '--bypass-cgroup' : '--only-cgroup';
  const mounts = cgroup2Mounts((deps.mountinfo ?? (() => readFileSync('/proc/self/mountinfo', 'utf8')))());
  if (mounts.length === 0) {
    const fs = (deps.filesystems ?? (() => readFileSync('/proc/filesystems', 'utf8')))();
    throw new UsageError(
      /\bcgroup2\b/.test(fs)
        ? `${flag}: no cgroup v2 hierarchy is mounted where fakeproxy can see it (no cgroup2 in /proc/self/mountinfo): mount it (mount -t cgroup2 none /sys/fs/cgroup/unified); \`ip netns exec\` hides the host's /sys/fs/cgroup`
        : `${flag}: this kernel has no cgroup v2 (no cgroup2 in /proc/filesystems)`,
    );
  }
  const resolve = (list: readonly string[], f: string) => list.map((p) => resolveCgroup(p, mounts, f, deps.isDir));
  const rules: CgroupRules = {
    ...o,
    bypass: resolve(o.bypass, '--bypass-cgroup'),
    only: resolve(o.only, '--only-cgroup'),
  };
  const script = cgroupNftScript(rules);
  const nft = deps.nft ?? runNft;
  try {
    nft(['--check', script]);
  } catch (e) {
    const err = e as FakeproxyError;
    throw new UsageError(
      err.code === 'ENONFT'
        ? `${flag} needs ${err.message}`
        : `${flag}: nftables refused the cgroup rules (kernel ≥ 5.13 with nft_socket, nf_nat and conntrack needed): ${err.message}`,
      { cause: e },
    );
  }
  return { rules, script };
}
