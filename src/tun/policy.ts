/**
 * Global mode's policy routing (DESIGN.md "Routing modes"): everything IPv4
 * enters the TUN through our own routing table, except what the rules below
 * return to the main table first. Installed with `ip` (iproute2), removed on
 * every exit path; a daemon killed with -9 leaves them, and the next start
 * (or `fakeproxy cleanup`) removes every rule of our priorities and flushes
 * our table before anything else.
 *
 *   pref P    fwmark MARK        lookup main   our own sockets (SO_MARK)
 *   pref P+1  to EXCLUDED        lookup main   one rule per excluded CIDR
 *   pref P+2  uidrange U         lookup main   --bypass-uid
 *   pref P+9  (all)              lookup TABLE  table TABLE: default dev TUN
 *             or, with --only-uid / --only-cgroup, instead of (all):
 *   pref P+9  uidrange U         lookup TABLE  one per --only-uid
 *   pref P+9  fwmark MARK+1      lookup TABLE  --only-cgroup's packets (src/tun/cgroup.ts)
 *
 * `--bypass-cgroup` needs no rule of its own: its packets carry MARK (set by
 * the daemon's nftables table, src/tun/cgroup.ts), so the first rule applies.
 *
 * The local table (pref 0) still comes first, so the gateway's own address
 * (Listener, DNS) is delivered locally.
 *
 * With strict rp_filter on the host (`rpMark`), the same nftables table also
 * carries the mark onto the replies of everything these rules send to main
 * by mark or uid, and `src_valid_mark` is set (src/tun/rpfilter.ts).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import type { Change, TeardownJournal } from '../daemon/teardown.js';
import { FakeproxyError, UsageError } from '../errors.js';
import { parseSourceCidr } from '../util/cidr.js';
import { type CgroupRules, captureMark, nftTableName, runNft } from './cgroup.js';
import { rpMarkScript, SRC_VALID_MARK } from './rpfilter.js';

/** The ranges global mode leaves on the main table unless `--capture NAME`. */
export const DEFAULT_EXCLUDES = {
  loopback: ['127.0.0.0/8'],
  'link-local': ['169.254.0.0/16'],
  multicast: ['224.0.0.0/4', '255.255.255.255/32'],
  // RFC 1918 and the carrier-grade NAT space (RFC 6598), which ISPs and
  // Tailscale hand out as if private.
  private: ['10.0.0.0/8', '172.16.0.0/12', '192.168.0.0/16', '100.64.0.0/10'],
} as const;
export type DefaultExclude = keyof typeof DEFAULT_EXCLUDES;

/** `--fwmark`: decimal or 0x hex, 1..0xffffffff. */
export function parseFwmark(v: unknown): number {
  const text = String(v).trim();
  const n = /^0x[0-9a-f]{1,8}$/i.test(text) ? Number.parseInt(text, 16) : /^\d{1,10}$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(n) || n < 1 || n > 0xffffffff) {
    throw new UsageError(`--fwmark ${JSON.stringify(text)}: a mark is 1-0xffffffff, decimal or 0x hex (e.g. 0x2d0)`);
  }
  return n;
}

/** `--bypass-uid` / `--only-uid`: `UID` or `UID-UID` → the `ip rule uidrange` text. */
export function parseUidRange(v: string, flag: string): string {
  const m = /^(\d{1,10})(?:-(\d{1,10}))?$/.exec(v.trim());
  const a = Number(m?.[1]);
  const b = m?.[2] === undefined ? a : Number(m[2]);
  if (!m || a > 0xfffffffe || b > 0xfffffffe || b < a) {
    throw new UsageError(`${flag} ${JSON.stringify(v)}: a uid or an ascending range such as 1000-1999`);
  }
  return `${a}-${b}`;
}

/** `--capture` names, checked. */
export function parseCapture(names: readonly string[]): DefaultExclude[] {
  for (const n of names) {
    if (!(n in DEFAULT_EXCLUDES)) {
      throw new UsageError(`--capture ${JSON.stringify(n)}: one of ${Object.keys(DEFAULT_EXCLUDES).join(', ')}`);
    }
  }
  return names as DefaultExclude[];
}

/** The excluded CIDRs: the defaults not captured, then `--exclude`s, then `always` (upstreams), deduplicated. */
export function excludedCidrs(
  exclude: readonly string[],
  capture: readonly DefaultExclude[],
  always: readonly string[] = [],
): string[] {
  const out: string[] = [];
  for (const [name, nets] of Object.entries(DEFAULT_EXCLUDES)) {
    if (!capture.includes(name as DefaultExclude)) out.push(...nets);
  }
  out.push(
    ...exclude.map((c) => parseSourceCidr(c, '--exclude')),
    ...always.map((a) => parseSourceCidr(a, 'upstream')),
  );
  return [...new Set(out)];
}

export interface PolicyRoutingOptions {
  tun: string;
  mark: number;
  table: number;
  priority: number;
  /** Canonical CIDRs that keep the main table. */
  excluded: readonly string[];
  /** uidranges (`1000-1000`) whose traffic keeps the main table. @default none */
  bypassUids?: readonly string[];
  /** When given, only these uidranges are captured (instead of everything). @default none */
  onlyUids?: readonly string[];
  /** `--bypass-cgroup` / `--only-cgroup`, checked by prepareCgroupRules: the nftables table and its script. @default none */
  cgroups?: { rules: CgroupRules; script: string } | undefined;
  /** Strict rp_filter is in effect: mark the replies and set src_valid_mark (src/tun/rpfilter.ts). @default false */
  rpMark?: boolean;
  /** Every rule, route, table and sysctl is recorded here before it is made (src/daemon/teardown.ts). */
  journal: Pick<TeardownJournal, 'exec' | 'undo' | 'sysctl'>;
  /** Runs `ip ARGS…` for the leftover sweep; throws with stderr on failure. Injectable for tests. @default execFileSync('ip', …) */
  ip?: (args: string[]) => string;
  /** Runs `nft ARGS…` for the leftover sweep; throws on failure. Injectable for tests. @default runNft */
  nft?: (args: string[]) => string;
}

/** Offsets from --rule-priority. */
const PREF_MARK = 0;
const PREF_EXCLUDE = 1;
const PREF_BYPASS_UID = 2;
const PREF_CAPTURE = 9;
/** How many priorities we own (the sweep removes every rule in [P, P + PREF_SPAN)). */
export const PREF_SPAN = 10;

function runIp(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; code?: string; message: string };
    if (err.code === 'ENOENT')
      throw new FakeproxyError('ENOIP', 'global mode needs iproute2 (`ip`): apt install iproute2');
    throw new FakeproxyError('EIPROUTE', `ip ${args.join(' ')}: ${(err.stderr ?? err.message).trim()}`);
  }
}

/**
 * Installs and removes global mode's rules and table through the teardown
 * journal: each is journaled before it is made, so stop, signals, a fatal
 * error and (with a state dir) `fakeproxy cleanup` or the next start after a
 * kill -9 undo them. `install` also sweeps rules in our priority span and
 * our table first: leftovers of a daemon killed without a state dir (the
 * journal was in memory only).
 */
export class PolicyRouting {
  readonly #o: Required<Omit<PolicyRoutingOptions, 'cgroups'>> & Pick<PolicyRoutingOptions, 'cgroups'>;
  #changes: Change[] = [];

  constructor(opts: PolicyRoutingOptions) {
    this.#o = { ip: runIp, nft: runNft, bypassUids: [], onlyUids: [], rpMark: false, ...opts };
  }

  /** The `ip rule` selectors after `pref N`, in priority order. */
  rules(): { pref: number; selector: string[] }[] {
    const { mark, table, priority: p, excluded, bypassUids, onlyUids, cgroups } = this.#o;
    const only = [
      ...onlyUids.map((u) => ({ pref: p + PREF_CAPTURE, selector: ['uidrange', u, 'lookup', String(table)] })),
      ...(cgroups?.rules.only.length
        ? [
            {
              pref: p + PREF_CAPTURE,
              selector: ['fwmark', `0x${captureMark(mark).toString(16)}`, 'lookup', String(table)],
            },
          ]
        : []),
    ];
    const capture = only.length ? only : [{ pref: p + PREF_CAPTURE, selector: ['lookup', String(table)] }];
    return [
      { pref: p + PREF_MARK, selector: ['fwmark', `0x${mark.toString(16)}`, 'lookup', 'main'] },
      ...excluded.map((c) => ({ pref: p + PREF_EXCLUDE, selector: ['to', c, 'lookup', 'main'] })),
      ...bypassUids.map((u) => ({ pref: p + PREF_BYPASS_UID, selector: ['uidrange', u, 'lookup', 'main'] })),
      ...capture,
    ];
  }

  install(): void {
    this.sweep();
    const { tun, table, journal } = this.#o;
    // The table first, then the rule that uses it last of all: no moment
    // where traffic is captured before the exclusions are in place.
    const route = ['-4', 'route', '{}', 'default', 'dev', tun, 'table', String(table)];
    const verb = (argv: string[], v: string) => ['ip', ...argv.map((a) => (a === '{}' ? v : a))];
    this.#changes.push(journal.exec(verb(route, 'add'), verb(route, 'del'), `global mode: table ${table} via ${tun}`));
    // Before the rules: a bypassed cgroup is never captured, not even for a moment.
    const { cgroups: cg, rpMark, mark, bypassUids } = this.#o;
    if (rpMark) {
      // Before the first packet of a marked socket, so its replies pass the reverse-path check.
      const path = `/proc/sys/${SRC_VALID_MARK.replace(/\./g, '/')}`;
      if (readFileSync(path, 'utf8').trim() !== '1') this.#changes.push(journal.sysctl(SRC_VALID_MARK, '1'));
    }
    const name = nftTableName(tun);
    const script = (cg?.script ?? '') + (rpMark ? rpMarkScript(name, tun, mark, bypassUids) : '');
    if (script) {
      this.#changes.push(
        journal.exec(['nft', script], ['nft', 'delete', 'table', 'ip', name], `global mode: nftables table ip ${name}`),
      );
    }
    for (const r of this.rules()) {
      const argv = ['-4', 'rule', '{}', 'pref', String(r.pref), ...r.selector];
      this.#changes.push(
        journal.exec(verb(argv, 'add'), verb(argv, 'del'), `global mode: ip rule ${r.pref} ${r.selector.join(' ')}`),
      );
    }
  }

  /** Removes every rule in our priority span, flushes our table and deletes our nftables table. Never throws: returns what failed. */
  sweep(): string[] {
    const errors: string[] = [];
    const { priority: p, table } = this.#o;
    let listing = '';
    try {
      listing = this.#o.ip(['-4', 'rule', 'show']);
    } catch (e) {
      errors.push((e as Error).message);
    }
    for (const line of listing.split('\n')) {
      const pref = Number(line.split(':')[0]);
      if (line === '' || !Number.isInteger(pref) || pref < p || pref >= p + PREF_SPAN) continue;
      try {
        this.#o.ip(['-4', 'rule', 'del', 'pref', String(pref)]);
      } catch (e) {
        errors.push((e as Error).message);
      }
    }
    try {
      this.#o.ip(['-4', 'route', 'flush', 'table', String(table)]);
    } catch (e) {
      // an empty table "does not exist": nothing to flush
      if (!/does not exist|No such file/i.test((e as Error).message)) errors.push((e as Error).message);
    }
    try {
      this.#o.nft(['delete', 'table', 'ip', nftTableName(this.#o.tun)]);
    } catch (e) {
      // none left (the usual case), or no nft on this host: then there was never a table
      const err = e as FakeproxyError;
      if (err.code !== 'ENONFT' && !/No such file/i.test(err.message)) errors.push(err.message);
    }
    return errors;
  }

  /** Undo install() (newest first, through the journal). Synchronous and idempotent. */
  remove(): void {
    const changes = this.#changes.reverse();
    this.#changes = [];
    for (const c of changes) this.#o.journal.undo(c);
  }
}
