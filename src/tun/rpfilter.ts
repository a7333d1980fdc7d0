/**
 * Global mode under strict reverse-path filtering (`rp_filter=1`, the
 * RHEL/Fedora default). The sockets global mode leaves on the main table by
 * a mark or a uid — the daemon's own (`--fwmark`), `--bypass-cgroup`'s,
 * `--bypass-uid`'s — get their replies on the uplink, and the kernel checks
 * the reply's source with a route lookup that carries neither: no mark
 * (unless `src_valid_mark`) and uid 0. Our catch-all rule then answers
 * "via the TUN", the interfaces differ, and the reply is dropped
 * (TcpExtIPReversePathFilter); the connection times out.
 *
 * The fix is wg-quick's: `net.ipv4.conf.all.src_valid_mark=1` makes the
 * check use the packet's mark, and the daemon's nftables table puts the
 * mark on the replies:
 *
 *   table ip fakeproxy_<tun>
 *     chain rpsave    (type filter hook postrouting priority mangle)
 *       oifname != <tun> meta mark MARK     ct mark set MARK      own sockets, --bypass-cgroup
 *       oifname != <tun> meta skuid U       ct mark set MARK      one per --bypass-uid
 *     chain rprestore (type filter hook prerouting priority mangle)
 *       iifname != <tun> ct mark MARK meta mark set MARK
 *
 * so the check looks up with MARK, which our first `ip rule` sends to the
 * main table: the uplink, as the reply came. Installed only when strict
 * filtering is in effect at start (`all`, `default` — what new interfaces
 * inherit — or an existing interface), so a host that does not filter is
 * not changed. The sysctl and the table go through the teardown journal.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** `conf/all`, `conf/default` and each interface but `skip` (the TUN) and lo whose rp_filter is 1 (strict). */
export function strictRpFilter(
  skip: string,
  read: (p: string) => string = (p) => readFileSync(p, 'utf8'),
  list: () => string[] = () => readdirSync('/proc/sys/net/ipv4/conf'),
): string[] {
  const out: string[] = [];
  let names: string[];
  try {
    names = list();
  } catch {
    return out; // no /proc/sys: nothing we could change either
  }
  for (const n of names) {
    if (n === skip || n === 'lo') continue;
    try {
      if (read(`/proc/sys/net/ipv4/conf/${n}/rp_filter`).trim() === '1') out.push(n);
    } catch {
      // interface gone meanwhile
    }
  }
  return out;
}

const hex = (n: number) => `0x${n.toString(16)}`;

/** The nft lines (one transaction, table included) that mark replies; see the header comment. */
export function rpMarkScript(table: string, tun: string, mark: number, bypassUids: readonly string[]): string {
  const t = `ip ${table}`;
  const m = hex(mark);
  const uid = (u: string) => {
    const [a, b] = u.split('-');
    return a === b ? String(a) : u;
  };
  return `${[
    `add table ${t}`,
    `add chain ${t} rpsave { type filter hook postrouting priority mangle; policy accept; }`,
    `add rule ${t} rpsave oifname != "${tun}" meta mark ${m} ct mark set ${m}`,
    ...bypassUids.map((u) => `add rule ${t} rpsave oifname != "${tun}" meta skuid ${uid(u)} ct mark set ${m}`),
    `add chain ${t} rprestore { type filter hook prerouting priority mangle; policy accept; }`,
    `add rule ${t} rprestore iifname != "${tun}" ct mark ${m} meta mark set ${m}`,
  ].join('\n')}\n`;
}

/** The sysctl that makes the reverse-path check use the packet's mark. */
export const SRC_VALID_MARK = 'net.ipv4.conf.all.src_valid_mark';
