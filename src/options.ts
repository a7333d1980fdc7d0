/**
 * The options of `fakeproxy start`, each written once: flag, config-file key,
 * default, allowed range and the why. Commander's options (src/cli.ts), the
 * config-file check and validation (src/config.ts), the modules' defaults
 * (TunDevice, NatManager, the Listeners, FakeDns) and the README options
 * tables (`npm run docs:options`, checked by test/unit/options.test.ts) all
 * come from here.
 *
 * Adding an option: one entry below, then wire its value where it is used.
 * The native addon applies no default of its own: it validates what
 * TypeScript passes and names the field when it is missing or out of range.
 */

/** One option of `fakeproxy start`. */
export interface StartOption {
  /** Commander flag with its value placeholder, e.g. `--mtu <n>`. */
  readonly flag: string;
  /** One line for `--help`. */
  readonly help: string;
  /**
   * The value used when neither the flag nor the config file gives one.
   * `undefined` when it is computed at start-up (`defaultText` says how) or
   * when the option is off unless given.
   */
  readonly default?: string | number | boolean;
  /** The default as shown in `--help` and README, when not `default` itself. */
  readonly defaultText?: string;
  /** Inclusive bounds of a numeric option. */
  readonly range?: readonly [number, number];
  /** The flag may be given several times (values collect into a list). */
  readonly repeatable?: boolean;
  /** README: what it does and why the default is what it is. */
  readonly why: string;
}

/**
 * Measured by `npm run bench -- engine` (bench/engine_bench.cc, 1 M flows):
 * the Flow record (sizeof 152 on x86-64) plus its two index slots and pool
 * overhead. README and --max-flows quote this figure.
 */
export const NATIVE_BYTES_PER_FLOW = 184;

const DEFAULT_MAX_FLOWS = 1_048_576;

/** Keyed by the config-file key (camelCase), which is also commander's attribute name. */
export const START_OPTIONS = {
  cidr: {
    flag: '--cidr <cidr>',
    help: 'fake-IP range routed into the TUN',
    default: '198.18.0.0/16',
    why: 'fake-IP range routed into the TUN. 198.18.0.0/15 is reserved for benchmarking (RFC 2544/6890), so no real host is hidden. Public space (`--cidr 198.10.0.0/16`) works after a one-line warning. /8 to /30.',
  },
  tun: {
    flag: '--tun <name>',
    help: 'TUN device name',
    default: 'fp0',
    why: 'device name, 1–15 bytes',
  },
  mtu: {
    flag: '--mtu <n>',
    help: 'TUN MTU',
    default: 65535,
    range: [576, 65535],
    why: 'TUN MTU. The hop between app and Listener never leaves the machine (like `lo`, MTU 65536), so the largest IPv4 MTU costs nothing on the wire: ~64 KiB TCP segments instead of 9 KiB take ~70 % of the ACKs and half the wake-ups per GB off the engine against 9000 (`iperf3 -R` through the TUN: ~20 % less CPU per byte, `npm run bench -- iperf`). Peers on a LAN still negotiate their own MSS. 576 is the least every IPv4 host must accept (RFC 791).',
  },
  queues: {
    flag: '--queues <n>',
    help: 'TUN queues, one engine thread each',
    default: 1,
    range: [1, 16],
    why: 'TUN queues (IFF_MULTI_QUEUE), one engine thread each',
  },
  tunOffload: {
    flag: '--no-tun-offload',
    help: 'open the TUN without offloads (no virtio_net_hdr, TSO or checksum offload)',
    default: true,
    defaultText: 'offloads on',
    why: 'Open the TUN without `IFF_VNET_HDR`/TSO/checksum offload. With them (the default) the kernel hands the engine 64 KiB TSO super-packets with partial checksums and takes GSO packets back: ~5× fewer syscalls per byte. If the kernel refuses them the daemon logs one line and runs without. Config twin `tunOffload: false`.',
  },
  tunTxqueuelen: {
    flag: '--tun-txqueuelen <n>',
    help: 'kernel transmit queue length of the TUN (packets)',
    default: 4096,
    range: [64, 1048576],
    why: 'Kernel transmit queue of the TUN (`ip link` txqueuelen): packets routed into the TUN wait there until the engine thread reads them, and the kernel drops them (counted in `fakeproxy status` as TUN kernel drops) when it is full. The kernel default of 500 overflows at 1 Gbit/s of UDP while the engine reads in bursts (most datagrams died there); 4096 absorbs a burst of ~5 MB of 1200-byte datagrams. A longer queue only holds packets the engine has not read yet: it adds no latency while the engine keeps up.',
  },
  tunCongestion: {
    flag: '--tun-congestion <name>',
    help: "TCP congestion control of the Listener's sockets (the TUN side of each connection); kernel: the system's",
    default: 'cubic',
    why: "TCP congestion control of the Listener's sockets, the TUN side of every proxied connection (the upstream side keeps the system's, e.g. BBR, for the real network). The TUN hop is in memory: no loss to react to, so pacing is pure cost. With BBR (a common system default) the Listener paces every download burst with a timer and a softirq and queues megabytes in the TUN; `iperf3 -R` through the TUN cost 1.84 CPU s/GB with BBR against 1.29 with cubic (same run, `npm run bench -- iperf`, rows TKRc and TRc; reno measured like cubic). `kernel` keeps `net.ipv4.tcp_congestion_control`. An algorithm the kernel lacks or refuses gets one warning line and the system's.",
  },
  listenPort: {
    flag: '--listen-port <port>',
    help: 'Listener port on the gateway, TCP and UDP',
    default: 1313,
    range: [1, 65535],
    why: 'Listener port on the gateway (TCP and UDP)',
  },
  dnsListen: {
    flag: '--dns-listen <addr:port>',
    help: 'DNS listen address, repeatable',
    defaultText: 'gateway:53',
    repeatable: true,
    why: 'repeatable',
  },
  dnsUpstream: {
    flag: '--dns-upstream <addr[:port]>',
    help: 'real resolver',
    defaultText: 'first nameserver in `/etc/resolv.conf` that is not fakeproxy itself',
    why: 'the real resolver for filtered names, other record types, and the `direct` outbound',
  },
  fakeIpFilter: {
    flag: '--fake-ip-filter <pattern>',
    help: 'names that get real answers, repeatable (+.lan, *.local, time.*.com)',
    defaultText: 'none',
    repeatable: true,
    why: 'repeatable; names that get real answers (`+.lan`, `*.local`, `time.*.com`) — see `src/dns/README.md`',
  },
  fakeIpTtl: {
    flag: '--fake-ip-ttl <seconds>',
    help: 'TTL of fake answers',
    default: 1,
    range: [0, 86400],
    why: 'TTL of fake answers in seconds: short, so a recycled address or a stopped daemon is not held long by caches (as mihomo and sing-box)',
  },
  dnsHijack: {
    flag: '--no-dns-hijack',
    help: 'do not answer port-53 traffic to other addresses that enters the TUN',
    default: true,
    defaultText: 'hijack on',
    why: 'by default every port-53 packet that enters the TUN is answered by fakeproxy',
  },
  upstream: {
    flag: '--upstream <url>',
    help: 'direct | socks5://[user:pass@]host:port | http://[user:pass@]host:port',
    default: 'direct',
    why: '`direct`, `socks5://[user:pass@]host:port`, `http://[user:pass@]host:port`',
  },
  redis: {
    flag: '--redis <url>',
    help: 'mirror the NAT table and fake-IP map to redis://[user:pass@]host:port[/db], redis+sentinel://… or redis+cluster://…',
    defaultText: 'off',
    why: 'mirror the NAT table and fake-IP map: one server `redis://[user:pass@]host:port[/db]`, a Sentinel-managed primary `redis+sentinel://[user:pass@]host:port[,host:port…]/mastername[/db][?sentinelUsername=…&sentinelPassword=…]` or a Cluster `redis+cluster://[user:pass@]host:port[,host:port…]` (`rediss…` for TLS); docs/redis.md',
  },
  redisCluster: {
    flag: '--redis-cluster <nodes>',
    help: 'instead of --redis: a Redis Cluster found from these seed nodes, [user:pass@]host:port[,host:port…]',
    defaultText: 'off',
    why: 'a Redis Cluster instead of `--redis`, from its seed nodes `[user:pass@]host:port[,host:port…]` (the same as `--redis redis+cluster://…`); give one of the two',
  },
  nodeId: {
    flag: '--node-id <id>',
    help: 'Redis key namespace fakeproxy:{<id>}:',
    defaultText: 'hostname',
    why: 'Redis key namespace `fakeproxy:{<id>}:` (a hash tag: one Cluster slot per node)',
  },
  redisSharedPool: {
    flag: '--redis-shared-pool',
    help: 'share the fake-IP pool with other daemons on the same Redis and CIDR',
    default: false,
    defaultText: 'off',
    why: 'several daemons share one fake-IP pool through Redis',
  },
  stateDir: {
    flag: '--state-dir <dir>',
    help: "where the fake-IP map survives restarts; '' disables",
    default: '/var/lib/fakeproxy',
    why: "the fake-IP map survives restarts here; `''` disables",
  },
  systemDns: {
    flag: '--system-dns',
    help: "point the host's resolver at the daemon while it runs (resolv.conf, or systemd-resolved on the TUN link)",
    default: false,
    defaultText: 'off',
    why: "point the host's resolver at the daemon while it runs: systemd-resolved (when `/etc/resolv.conf` is its stub) sends every name to the TUN link; otherwise `/etc/resolv.conf` is rewritten in place to name only the daemon (its `search`/`options` kept). The old state is journaled in `--state-dir` first and comes back byte-identical on SIGTERM/SIGINT/a fatal error, and after a kill -9 by `fakeproxy cleanup` or the next start. Off by default: the resolver is the host's, not ours to take unasked. Needs a `--state-dir` and a DNS listen address on port 53",
  },
  maxFlows: {
    flag: '--max-flows <n>',
    help: 'NAT table size',
    default: DEFAULT_MAX_FLOWS,
    // 2^24 flows is ~3 GB of native memory: beyond it a typo, not a LAN. The
    // engine itself accepts 1..2^28 (its index width; tests use tiny tables).
    range: [16, 16_777_216],
    why: `NAT table size (~${NATIVE_BYTES_PER_FLOW} bytes of native memory per flow, so ~${Math.round((DEFAULT_MAX_FLOWS * NATIVE_BYTES_PER_FLOW) / 2 ** 20)} MiB at the default: room for the flows of a whole LAN); a full table answers new TCP flows with RST, UDP with ICMP port unreachable, and logs one line per 10 s`,
  },
  relayThreads: {
    flag: '--relay-threads <n>',
    help: 'threads splicing TCP bytes between app and upstream sockets',
    defaultText: 'one per core',
    range: [1, 256],
    why: 'threads of the native TCP relay: once the outbound handshake is done, both sockets go to epoll threads that move bytes with `splice(2)`, so relayed bytes never enter JavaScript; one per core because a splicing thread is bound by the kernel, not by waiting',
  },
  lan: {
    flag: '--lan <cidr>',
    help: 'serve this LAN network too (DNS and proxying), repeatable',
    defaultText: 'this machine only',
    repeatable: true,
    why: 'repeatable; a LAN network (or address) whose hosts may use this machine as gateway and resolver. Packets entering the TUN and DNS queries from any other source are dropped and counted (`dropForeignSource`, `udpRefusedSource`/`tcpRefusedSource`); see "LAN gateway mode"',
  },
  natTimeout: {
    flag: '--nat-timeout <name=seconds>',
    help: 'NAT idle timeout, repeatable: tcp-syn, tcp-established, tcp-fin, tcp-closed, udp, udp-dns',
    defaultText: 'see below',
    repeatable: true,
    why: 'repeatable: `tcp-syn`, `tcp-established`, `tcp-fin`, `tcp-closed`, `udp`, `udp-dns` (seconds, > 0 and at most 10 days)',
  },
  mode: {
    flag: '--mode <mode>',
    help: 'fake-ip: only the fake range enters the TUN; global: all IPv4 traffic of the machine does',
    default: 'fake-ip',
    why: "`fake-ip`: only the fake range enters the TUN, so apps that connect to an IP literal or bring their own DNS go around the proxy, and no loop is possible. `global`: all IPv4 traffic (and `--lan` clients') enters the TUN through fakeproxy's own routing table and `ip rule`s (see \"Global mode\"); the daemon's own sockets carry `--fwmark` and go out by the main table",
  },
  fwmark: {
    flag: '--fwmark <mark>',
    help: 'SO_MARK on every socket the daemon opens in global mode; marked packets use the main table',
    default: 0x2d0,
    defaultText: '`0x2d0`',
    why: "global mode: every socket the daemon opens (upstream TCP/UDP, DNS upstream, health checks) carries this `SO_MARK`, and an `ip rule fwmark` sends it to the main table, so our own traffic never re-enters the TUN. Decimal or 0x hex, 1–0xffffffff. sing-box and mihomo have no fixed default (mihomo's examples use 6666); 0x2d0 is rare in practice — pick another if your firewall already uses it",
  },
  routeTable: {
    flag: '--route-table <n>',
    help: 'global mode: the routing table that sends traffic into the TUN',
    default: 2022,
    range: [1, 4_294_967_294],
    why: "global mode: the routing table holding `default dev <tun>`; sing-box's default (`iproute2_table_index`), not main (254), default (253) or local (255)",
  },
  rulePriority: {
    flag: '--rule-priority <n>',
    help: "global mode: priority of fakeproxy's first ip rule (it uses the next few too)",
    default: 9000,
    range: [1, 32000],
    why: "global mode: the first of fakeproxy's `ip rule` priorities (it uses up to 10 from here): after `local` (0), before `main` (32766); sing-box's default (`iproute2_rule_index`). Rules with these priorities left behind by a killed daemon are removed at the next start",
  },
  exclude: {
    flag: '--exclude <cidr>',
    help: 'global mode: destinations that go direct, not into the TUN; repeatable',
    defaultText: 'the defaults below',
    repeatable: true,
    why: "global mode, repeatable: IPv4 destinations that keep the main table. Always excluded: the upstream proxies' and `--dns-upstream`'s addresses. Excluded by default (`--capture NAME` turns one off): `loopback` 127.0.0.0/8, `link-local` 169.254.0.0/16, `multicast` 224.0.0.0/4 (and 255.255.255.255), `private` 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 — so the LAN keeps working",
  },
  capture: {
    flag: '--capture <name>',
    help: 'global mode: route a default exclusion into the TUN after all: private, link-local, multicast, loopback; repeatable',
    defaultText: 'none',
    repeatable: true,
    why: 'global mode, repeatable: `private`, `link-local`, `multicast` or `loopback` — one of the default `--exclude`s is captured after all (e.g. `--capture private` proxies the LAN too)',
  },
  bypassUid: {
    flag: '--bypass-uid <uid[-uid]>',
    help: 'global mode: processes of these uids go direct; repeatable',
    defaultText: 'none',
    repeatable: true,
    why: 'global mode, repeatable: an `ip rule uidrange` sends the traffic of these local users to the main table (e.g. a download user, or a VPN client of its own). Forwarded `--lan` traffic has no uid and is not affected',
  },
  onlyUid: {
    flag: '--only-uid <uid[-uid]>',
    help: 'global mode: capture only processes of these uids; repeatable',
    defaultText: 'every uid',
    repeatable: true,
    why: "global mode, repeatable: only these local users' traffic enters the TUN (one `ip rule uidrange … lookup <table>` each, instead of the catch-all rule); everything else, forwarded `--lan` traffic included, keeps the main table",
  },
  bypassCgroup: {
    flag: '--bypass-cgroup <path>',
    help: 'global mode: processes in this cgroup v2 (and below) go direct; repeatable',
    defaultText: 'none',
    repeatable: true,
    why: 'global mode, repeatable: sockets created by processes in this cgroup v2 or one below it go direct — an nftables `socket cgroupv2` rule in the daemon\'s own table marks their packets with `--fwmark` (and masquerades them, since they were first routed into the TUN). PATH is the cgroup as `/proc/PID/cgroup` shows it (`/system.slice/foo.service`) or its directory under the cgroup2 mount (`/sys/fs/cgroup/unified/x` on a hybrid host). The cgroup must exist at start; see "Per-app: cgroups" for what the host needs',
  },
  onlyCgroup: {
    flag: '--only-cgroup <path>',
    help: 'global mode: capture only processes in this cgroup v2 (and below); repeatable',
    defaultText: 'every process',
    repeatable: true,
    why: 'global mode, repeatable: only sockets created in these cgroups (with `--only-uid`: or by those users) enter the TUN: their packets are marked `--fwmark`+1 and an `ip rule fwmark … lookup <table>` replaces the catch-all rule; everything else, forwarded `--lan` traffic included, keeps the main table',
  },
  sniff: {
    flag: '--sniff <when>',
    help: 'take the name of a connection to a real address from its TLS SNI or HTTP Host: auto, on, off',
    default: 'auto',
    why: "`auto`: on in global mode, off in fake-ip mode; `on`: also in fake-ip mode (a `--lan` client's or a stale fake address's connection); `off`. A TCP connection whose destination has no name (an IP literal, an app's own DNS) waits up to `--sniff-timeout` for its first bytes; a TLS ClientHello's SNI or an HTTP/1 `Host` becomes its name, so domain rules apply (IP rules still see the address) and a proxy upstream is given the name (SOCKS5 domain, HTTP CONNECT host) while `DIRECT` dials the address the app chose. The bytes are sent on unchanged. As sing-box's `sniff` and mihomo's `sniffer`",
  },
  sniffTimeout: {
    flag: '--sniff-timeout <ms>',
    help: "sniffing: longest wait for an app's first bytes",
    default: 300,
    range: [1, 10_000],
    why: "sniffing: how long a connection without a name waits for the app's first bytes before it is routed by address. Clients speak first in TLS and HTTP, within a round trip; a server-speaks-first protocol (SSH, SMTP, FTP) is delayed by this much once per connection. sing-box's default (`sniff_timeout` 300 ms)",
  },
  geoipDb: {
    flag: '--geoip-db <file.mmdb>',
    help: 'MaxMind-format country database for GEOIP rules',
    defaultText: 'none',
    why: 'MaxMind-format country database for `GEOIP` rules; without it a GEOIP rule is a usage error',
  },
  config: {
    flag: '--config <file.yaml>',
    help: 'config file: our camelCase keys and/or Clash proxies, proxy-groups, rules, dns; flags win; SIGHUP re-reads it',
    defaultText: 'none',
    why: "YAML; every flag's camelCase twin (`cidr`, `fakeIpFilter: [...]`, `natTimeout: {udp: 30}`) and/or Clash `proxies`, `proxy-groups`, `rules`, `dns`; SIGHUP re-reads it",
  },
  controller: {
    flag: '--controller <addr:port>',
    help: "Clash-compatible controller API (dashboards, `fakeproxy connections`); 'off' disables",
    default: '127.0.0.1:9090',
    why: "Clash-compatible REST + WebSocket controller (Clash key `external-controller`): MetaCubeXD, yacd and zashboard show connections, traffic, logs, rules and groups and can close a connection or switch a group; `fakeproxy connections` uses it too. 9090 is Clash's and mihomo's port, so dashboards find it. Loopback by default; any other address needs `--secret` (usage error otherwise). `off` disables it. If the port is taken the daemon logs one line and runs without it",
  },
  secret: {
    flag: '--secret <token>',
    help: 'controller API secret: Bearer token, or ?token= on WebSockets',
    defaultText: 'none (loopback only)',
    why: "the controller's secret (Clash key `secret`): every request carries `Authorization: Bearer TOKEN` (WebSockets may use `?token=`), compared in constant time; wrong or missing → 401. Without one the controller only binds to loopback and only answers loopback pages",
  },
  ui: {
    flag: '--ui <dir>',
    help: "serve a dashboard's static files (e.g. MetaCubeXD) at http://controller/ui/",
    defaultText: 'none',
    why: 'directory of a built dashboard (Clash key `external-ui`) served at `/ui/` on the controller; files outside it are never served',
  },
  debug: {
    flag: '--debug',
    help: 'stack traces on errors; one log line per connection with its rule and chain',
    default: false,
    defaultText: 'off',
    why: 'stack traces on errors; one log line per connection with its rule and chain',
  },
} as const satisfies Record<string, StartOption>;

export type StartOptionKey = keyof typeof START_OPTIONS;

/** The flag without its placeholder: `--max-flows <n>` → `--max-flows`. */
export function flagName(o: StartOption): string {
  return o.flag.split(' ')[0] as string;
}

/** One NAT idle timeout (`--nat-timeout NAME=SECONDS`). */
export interface NatTimeoutOption {
  /** The NatTimeouts / EngineOptions.timeouts field. */
  readonly key: 'tcpSynMs' | 'tcpEstablishedMs' | 'tcpFinMs' | 'tcpClosedMs' | 'udpMs' | 'udpDnsMs';
  readonly defaultMs: number;
  readonly why: string;
}

/** Longest `--nat-timeout` in seconds (10 days); the shortest is anything > 0. */
export const NAT_TIMEOUT_MAX_SECONDS = 864_000;

/** Keyed by the `--nat-timeout` name. */
export const NAT_TIMEOUTS = {
  'tcp-syn': {
    key: 'tcpSynMs',
    defaultMs: 60_000,
    why: "half-open flow. conntrack's `syn_sent` is 120 s for a peer across the Internet; ours is the local Listener, which answers in microseconds. 60 s still covers an app's SYN retries up to the 32 s back-off step and halves what a SYN flood can pin.",
  },
  'tcp-established': {
    key: 'tcpEstablishedMs',
    defaultMs: 7_440_000,
    why: "RFC 5382 REQ-5: never below 2 h 4 min, so connections kept alive with default TCP keep-alive (7200 s) survive. conntrack uses 5 days; sing-box/mihomo drop idle proxied TCP after minutes. The Listener's own relay idle timeout is 10 min.",
  },
  'tcp-fin': {
    key: 'tcpFinMs',
    defaultMs: 240_000,
    why: 'half-closed flow (RFC 5382: ≥ 4 min for transitory states; conntrack 120 s). A half-close still carrying data is refreshed by every packet.',
  },
  'tcp-closed': {
    key: 'tcpClosedMs',
    defaultMs: 10_000,
    why: 'after both FINs or a RST, so the last ACK and retransmitted FINs still translate (conntrack `close` 10 s). The NAT *pair* then stays out of use for 60 s more (kernel TIME_WAIT on the Listener side).',
  },
  udp: {
    key: 'udpMs',
    defaultMs: 60_000,
    why: "conntrack 30 s unreplied / 120 s stream, mihomo 60 s, sing-box 5 min. 60 s outlives QUIC's keep-alive cadence. Also the idle timeout of the upstream UDP association.",
  },
  'udp-dns': {
    key: 'udpDnsMs',
    defaultMs: 10_000,
    why: 'a query is answered in milliseconds; glibc retries on the same socket after 5 s.',
  },
} as const satisfies Record<string, NatTimeoutOption>;

export type NatTimeoutName = keyof typeof NAT_TIMEOUTS;
export type NatTimeoutKey = (typeof NAT_TIMEOUTS)[NatTimeoutName]['key'];

/** The engine's idle timeouts in ms when no `--nat-timeout` overrides them. */
export const DEFAULT_NAT_TIMEOUTS: Readonly<Record<NatTimeoutKey, number>> = Object.freeze(
  Object.fromEntries(Object.values(NAT_TIMEOUTS).map((t) => [t.key, t.defaultMs])) as Record<NatTimeoutKey, number>,
);

/** The default as `--help` and README show it. */
export function defaultText(o: StartOption): string {
  return o.defaultText ?? String(o.default);
}

/** `--help` line: the help text and the default. */
export function helpLine(o: StartOption): string {
  const text = defaultText(o);
  const plain = o.flag.startsWith('--no-') || ['none', 'off', 'see below'].includes(text);
  return plain ? o.help : `${o.help} (default ${text.replace(/`/g, '')})`;
}

/** 7_440_000 → '2 h 4 min', 60_000 → '60 s'. */
export function durationText(ms: number): string {
  if (ms < 3_600_000) return `${ms / 1000} s`;
  const h = Math.floor(ms / 3_600_000);
  const min = Math.round((ms % 3_600_000) / 60_000);
  return min ? `${h} h ${min} min` : `${h} h`;
}

const cell = (s: string) => s.replace(/\|/g, '\\|');

/** The README tables between the `options` markers (`npm run docs:options`). */
export function optionsMarkdown(): string {
  const rows = Object.entries(START_OPTIONS).map(([key, o]: [string, StartOption]) => {
    const [name, arg] = o.flag.split(' ');
    const flag = arg ? `${name} ${arg.replace(/[<>]/g, '').toUpperCase()}` : name;
    const def = o.defaultText ?? `\`${o.default}\``;
    const range = o.range ? `${o.range[0]}–${o.range[1]}` : '';
    return `| \`${flag}\` | \`${key}\` | ${cell(def)} | ${range} | ${cell(o.why)} |`;
  });
  const timeouts = Object.entries(NAT_TIMEOUTS).map(
    ([name, t]: [string, NatTimeoutOption]) => `| \`${name}\` | ${durationText(t.defaultMs)} | ${cell(t.why)} |`,
  );
  return [
    '| flag | config key | default | range | meaning |',
    '|---|---|---|---|---|',
    ...rows,
    '',
    '### NAT timeouts',
    '',
    '| name | default | why |',
    '|---|---|---|',
    ...timeouts,
  ].join('\n');
}

export const OPTIONS_BEGIN = '<!-- options:begin (generated from src/options.ts by `npm run docs:options`) -->';
export const OPTIONS_END = '<!-- options:end -->';

/** README text with the generated tables put between the markers. */
export function withOptionsMarkdown(readme: string): string {
  const a = readme.indexOf(OPTIONS_BEGIN);
  const b = readme.indexOf(OPTIONS_END);
  if (a < 0 || b < a) throw new Error(`README.md: markers ${OPTIONS_BEGIN} … ${OPTIONS_END} not found`);
  return `${readme.slice(0, a + OPTIONS_BEGIN.length)}\n${optionsMarkdown()}\n${readme.slice(b)}`;
}
