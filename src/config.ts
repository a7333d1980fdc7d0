import { readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { CLASH_KEYS, parseYamlFile, type Routing, readClash } from './config/clash.js';
import { FakeIpFilter } from './dns/filter.js';
import { FakeproxyError, UsageError } from './errors.js';
import {
  flagName,
  NAT_TIMEOUT_MAX_SECONDS,
  NAT_TIMEOUTS,
  type NatTimeoutKey,
  type NatTimeoutName,
  START_OPTIONS as O,
} from './options.js';
import { parseUpstream } from './proxy/outbound.js';
import { parseRedisUrl } from './redis/client.js';
import { checkNodeId } from './redis/schema.js';
import { parseCgroupPath } from './tun/cgroup.js';
import { type DefaultExclude, parseCapture, parseFwmark, parseUidRange } from './tun/policy.js';
import { type Ipv4Range, parseCidr, parseHostPort, parsePort, parseSourceCidr } from './util/cidr.js';

/**
 * Everything `fakeproxy start` can be told, validated. Every flag has a
 * config-file twin (the camelCase key in YAML); a flag given on the command
 * line wins. Defaults, ranges and the why of each: src/options.ts.
 */
export interface StartConfig {
  cidr: Ipv4Range;
  tun: string;
  mtu: number;
  queues: number;
  tunOffload: boolean;
  tunTxqueuelen: number;
  /** TCP congestion control set on the Listener's sockets; undefined: the system's (START_OPTIONS.tunCongestion). */
  tunCongestion: string | undefined;
  listenPort: number;
  dnsListen: { host: string; port: number }[];
  /** Unset: the first nameserver of /etc/resolv.conf that is not us (resolved at start). */
  dnsUpstream?: { host: string; port: number };
  fakeIpFilter: string[];
  fakeIpTtl: number;
  dnsHijack: boolean;
  upstream: string;
  redis?: string;
  nodeId: string;
  redisSharedPool: boolean;
  /** '' disables persistence. */
  stateDir: string;
  /** Point the host's resolver at the daemon while it runs (START_OPTIONS.systemDns). */
  systemDns: boolean;
  maxFlows: number;
  /** Native TCP relay threads; unset → one per core (TcpListenerOptions.relayThreads). */
  relayThreads?: number | undefined;
  /** LAN networks served besides this machine (canonical CIDRs); see START_OPTIONS.lan. */
  lan: string[];
  /** `--mode`: fake-ip (only the fake range enters the TUN) or global (policy routing, src/tun/policy.ts). */
  mode: 'fake-ip' | 'global';
  /** SO_MARK of the daemon's own sockets in global mode. */
  fwmark: number;
  routeTable: number;
  rulePriority: number;
  /** `--exclude`, canonical CIDRs (the defaults and upstream addresses are added at start). */
  exclude: string[];
  /** Default exclusions captured after all (`--capture`). */
  capture: DefaultExclude[];
  /** uidranges (`A-B`) that go direct / that alone are captured. */
  bypassUid: string[];
  onlyUid: string[];
  /** cgroup v2 paths (as given, syntax-checked) that go direct / that alone are captured; resolved at start (src/tun/cgroup.ts). */
  bypassCgroup: string[];
  onlyCgroup: string[];
  /** Sniff TCP connections without a name (`--sniff`; auto: in global mode), and for how long (ms). */
  sniff: 'auto' | 'on' | 'off';
  sniffTimeout: number;
  /** NAT timeouts in ms (NatManager's NatTimeouts); unset keys keep the defaults of NAT_TIMEOUTS. */
  natTimeouts: Partial<Record<NatTimeoutKey, number>>;
  debug: boolean;
  /** Controller API address; undefined: off (`--controller off`). */
  controller?: { host: string; port: number } | undefined;
  /** Controller secret; '' for none (then the controller binds to loopback only). */
  secret: string;
  /** Dashboard directory served at /ui/. */
  ui?: string | undefined;
  /** Clash `proxies` / `proxy-groups` / `rules` from --config; absent → everything through `upstream`. */
  routing?: Routing | undefined;
  /** MaxMind .mmdb for GEOIP rules (`--geoip-db`). @default none (GEOIP rules are then a usage error) */
  geoipDb?: string | undefined;
  /** The --config file, re-read on SIGHUP. */
  configPath?: string | undefined;
  /** One line per config key that was ignored. */
  configWarnings: string[];
}

/** `--nat-timeout NAME=SECONDS` names → NatTimeouts keys. */
export const NAT_TIMEOUT_NAMES = Object.fromEntries(Object.entries(NAT_TIMEOUTS).map(([name, t]) => [name, t.key])) as {
  readonly [N in NatTimeoutName]: (typeof NAT_TIMEOUTS)[N]['key'];
};
export type { NatTimeoutKey };

function natTimeouts(v: unknown): Partial<Record<NatTimeoutKey, number>> {
  const out: Partial<Record<NatTimeoutKey, number>> = {};
  // Flags give ['udp=30', …]; the config file may also give a mapping {udp: 30}.
  const pairs: [string, unknown][] =
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.entries(v)
      : list(v, '--nat-timeout').map((t) => {
          const i = t.indexOf('=');
          if (i < 0) throw new UsageError(`--nat-timeout ${JSON.stringify(t)}: write NAME=SECONDS, e.g. udp=30`);
          return [t.slice(0, i), t.slice(i + 1)];
        });
  for (const [name, secs] of pairs) {
    const key = NAT_TIMEOUT_NAMES[name as keyof typeof NAT_TIMEOUT_NAMES];
    if (!key) {
      throw new UsageError(`--nat-timeout ${name}: unknown; one of ${Object.keys(NAT_TIMEOUT_NAMES).join(', ')}`);
    }
    const n = Number(secs);
    if (!Number.isFinite(n) || n <= 0 || n > NAT_TIMEOUT_MAX_SECONDS) {
      throw new UsageError(`--nat-timeout ${name}=${secs}: seconds must be > 0 and at most ${NAT_TIMEOUT_MAX_SECONDS}`);
    }
    out[key] = Math.round(n * 1000);
  }
  return out;
}

/** Raw option bag as commander produces it (strings / arrays), or as YAML gives it. */
export type RawStart = Record<string, unknown>;

/** Keys a config file may hold: every option but `config` itself. */
const KNOWN_KEYS = new Set<string>(Object.keys(O).filter((k) => k !== 'config'));

/**
 * Top-level keys of Clash/mihomo configs that fakeproxy does not read: each
 * is ignored with one warning (real configs carry dozens). Anything neither
 * ours nor in this list is still an error (a typo must not pass silently).
 */
const CLASH_IGNORED = new Set(
  (
    'port socks-port redir-port tproxy-port mixed-port authentication skip-auth-prefixes lan-allowed-ips ' +
    'lan-disallowed-ips allow-lan bind-address mode log-level ipv6 external-controller-tls ' +
    'external-controller-cors external-controller-unix external-controller-pipe external-ui-name ' +
    'external-ui-url external-doh-server secret interface-name routing-mark hosts profile tun tunnels listeners ' +
    'sniffer experimental geodata-mode geodata-loader geosite-matcher geo-auto-update geo-update-interval geox-url ' +
    'global-client-fingerprint global-ua etag-support keep-alive-interval keep-alive-idle disable-keep-alive ' +
    'find-process-mode unified-delay tcp-concurrent proxy-providers rule-providers sub-rules ntp tls iptables ebpf ' +
    'tuic-server clash-for-android use-hosts use-system-hosts'
  ).split(' '),
);

export function loadConfigFile(path: string): RawStart {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`--config ${path}: cannot read it (${(e as NodeJS.ErrnoException).code ?? e})`);
  }
  const where = `--config ${path}`;
  const f = parseYamlFile(path, text);
  const own: RawStart = {};
  const warnings: string[] = [];
  for (const [key, v] of Object.entries(f.doc)) {
    // Clash's names for the controller's keys (ours: controller, secret, ui).
    const k = CLASH_TWINS[key] ?? key;
    // Clash's `tun:` is a mapping (its own TUN settings); ours is the device name.
    // Clash's `tun:` is a mapping (its own TUN settings) and its `mode:` is rule|global|direct
    // (which proxies route); ours are the device name and fake-ip|global. Clash's rule and
    // direct are ignored with a warning; `global` is read as ours (README "Global mode").
    const clashMode = k === 'mode' && (v === 'rule' || v === 'direct');
    if (KNOWN_KEYS.has(k) && !(k === 'tun' && v !== null && typeof v === 'object') && !clashMode) own[k] = v;
    else if (CLASH_IGNORED.has(k))
      warnings.push(`${where}: ${k} (line ${f.line([k])}) is not supported by fakeproxy: ignored`);
    else if (!CLASH_KEYS.has(k)) throw new UsageError(`${where} line ${f.line([k])}: unknown key '${k}'`);
  }
  const clash = readClash(where, f);
  // Our own keys beat what the dns section implies.
  const raw: RawStart = {
    ...clash.derived,
    ...own,
    configPath: path,
    configWarnings: [...warnings, ...clash.warnings],
  };
  if (clash.routing) {
    if (own.upstream !== undefined) {
      throw new UsageError(
        `${where} line ${f.line(['upstream'])}: upstream and rules/proxies in one file: drop upstream and end the rules with MATCH,<proxy>`,
      );
    }
    raw.routing = clash.routing;
  }
  return raw;
}

/** Clash keys that are twins of ours. */
const CLASH_TWINS: Readonly<Record<string, string>> = { 'external-controller': 'controller', 'external-ui': 'ui' };

function str(v: unknown, key: string): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return String(v);
  throw new UsageError(`${key}: expected a string`);
}
function list(v: unknown, key: string): string[] {
  if (v === undefined) return [];
  if (Array.isArray(v)) return v.map((x) => str(x, key));
  return [str(v, key)];
}
function int(v: unknown, key: string, min: number, max: number): number {
  const n = typeof v === 'number' ? v : Number(str(v, key));
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${key} ${v}: must be an integer ${min}-${max}`);
  return n;
}
function bool(v: unknown): boolean {
  return v === true || v === 'true' || v === '1' || v === 'yes';
}

/** Runs a parser; its FakeproxyError (bad syntax) becomes a UsageError with the same line. */
function asUsage(parse: () => unknown): void {
  try {
    parse();
  } catch (e) {
    if (e instanceof UsageError || !(e instanceof FakeproxyError)) throw e;
    throw new UsageError(e.message, { cause: e });
  }
}

/**
 * The Redis URL of `--redis` or `--redis-cluster` (which is
 * `redis+cluster://` + its value). They name one thing: both in one place is
 * a usage error, and either as a flag overrides either in the config file.
 */
function redisTarget(flags: RawStart, file: RawStart): string | undefined {
  const given = (r: RawStart) => r.redis !== undefined || r.redisCluster !== undefined;
  const src = given(flags) ? flags : file;
  if (src.redis !== undefined && src.redisCluster !== undefined) {
    throw new UsageError(
      '--redis and --redis-cluster both given: use one (--redis-cluster h:p,… is --redis redis+cluster://h:p,…)',
    );
  }
  if (src.redisCluster !== undefined) return `redis+cluster://${str(src.redisCluster, '--redis-cluster')}`;
  return src.redis === undefined ? undefined : str(src.redis, '--redis');
}

/** Merges file and flags (flags win) and validates everything once, at the edge. */
export function resolveStartConfig(flags: RawStart, file: RawStart = {}): StartConfig {
  const pick = (k: keyof typeof O) => (flags[k] !== undefined ? flags[k] : file[k]);
  const intOpt = (k: 'mtu' | 'queues' | 'tunTxqueuelen' | 'fakeIpTtl' | 'maxFlows') => {
    const o = O[k];
    return int(pick(k) ?? o.default, flagName(o), o.range[0], o.range[1]);
  };
  const strOpt = (k: 'cidr' | 'tun' | 'upstream' | 'stateDir') => str(pick(k) ?? O[k].default, flagName(O[k]));
  const boolOpt = (k: 'tunOffload' | 'dnsHijack' | 'redisSharedPool' | 'systemDns' | 'debug') =>
    pick(k) === undefined ? O[k].default : bool(pick(k));
  const cidr = parseCidr(strOpt('cidr'));
  const listenPort =
    pick('listenPort') === undefined
      ? O.listenPort.default
      : parsePort(str(pick('listenPort'), '--listen-port'), '--listen-port');
  const dnsListenRaw = list(pick('dnsListen'), '--dns-listen');
  const dnsListen = dnsListenRaw.length
    ? dnsListenRaw.map((t) => parseHostPort(t, 53, '--dns-listen'))
    : [{ host: cidr.gatewayIp, port: 53 }];
  const redis = redisTarget(flags, file);
  if (bool(pick('redisSharedPool')) && redis === undefined) {
    throw new UsageError('--redis-shared-pool needs --redis URL or --redis-cluster HOST:PORT,…');
  }
  if (boolOpt('systemDns')) {
    if (strOpt('stateDir') === '') {
      throw new UsageError(
        "--system-dns needs a --state-dir (not ''): the resolver it replaces is journaled there so a crash can be undone",
      );
    }
    if (!dnsListen.some((l) => l.port === 53)) {
      throw new UsageError(
        '--system-dns needs a --dns-listen address on port 53 (the system resolver asks port 53 only)',
      );
    }
  }
  const up = pick('dnsUpstream');
  const fakeIpFilter = list(pick('fakeIpFilter'), '--fake-ip-filter');
  const upstream = strOpt('upstream');
  // Parsed here only to reject bad input before the daemon creates anything
  // (the daemon parses them again with its runtime hooks).
  asUsage(() => new FakeIpFilter(fakeIpFilter));
  asUsage(() => parseUpstream(upstream));
  const nodeId = str(pick('nodeId') ?? hostname(), '--node-id');
  if (redis !== undefined) {
    parseRedisUrl(redis);
    checkNodeId(nodeId);
  }
  return {
    cidr,
    tun: strOpt('tun'),
    mtu: intOpt('mtu'),
    queues: intOpt('queues'),
    tunOffload: boolOpt('tunOffload'),
    tunTxqueuelen: intOpt('tunTxqueuelen'),
    tunCongestion: congestionName(str(pick('tunCongestion') ?? O.tunCongestion.default, flagName(O.tunCongestion))),
    listenPort,
    dnsListen,
    dnsUpstream: up === undefined ? undefined : parseHostPort(str(up, '--dns-upstream'), 53, '--dns-upstream'),
    fakeIpFilter,
    fakeIpTtl: intOpt('fakeIpTtl'),
    dnsHijack: boolOpt('dnsHijack'),
    upstream,
    redis,
    nodeId,
    redisSharedPool: boolOpt('redisSharedPool'),
    stateDir: strOpt('stateDir'),
    systemDns: boolOpt('systemDns'),
    maxFlows: intOpt('maxFlows'),
    relayThreads:
      pick('relayThreads') === undefined
        ? undefined
        : int(pick('relayThreads'), flagName(O.relayThreads), O.relayThreads.range[0], O.relayThreads.range[1]),
    natTimeouts: natTimeouts(pick('natTimeout')),
    lan: list(pick('lan'), '--lan').map((t) => parseSourceCidr(t)),
    ...globalMode(pick),
    debug: boolOpt('debug'),
    ...controllerConfig(pick('controller'), pick('secret'), pick('ui')),
    configPath: typeof file.configPath === 'string' ? file.configPath : undefined,
    ...routingConfig(flags, file, pick('geoipDb')),
  };
}

/**
 * `--tun-congestion`: a kernel congestion control name (TCP_CA_NAME_MAX is 16
 * with the NUL), or `kernel` (undefined: the system's). Whether this kernel
 * has it is only known at setsockopt (the Listener warns then).
 */
function congestionName(v: string): string | undefined {
  if (v === 'kernel') return undefined;
  if (!/^[a-z0-9_]{1,15}$/.test(v)) {
    throw new UsageError(
      `--tun-congestion '${v}': a congestion control name as in /proc/sys/net/ipv4/tcp_available_congestion_control (e.g. cubic, reno), or kernel`,
    );
  }
  return v;
}

/** `--mode` and the options of global mode. */
function globalMode(
  pick: (k: keyof typeof O) => unknown,
): Pick<
  StartConfig,
  | 'mode'
  | 'fwmark'
  | 'routeTable'
  | 'rulePriority'
  | 'exclude'
  | 'capture'
  | 'bypassUid'
  | 'onlyUid'
  | 'bypassCgroup'
  | 'onlyCgroup'
  | 'sniff'
  | 'sniffTimeout'
> {
  const mode = str(pick('mode') ?? O.mode.default, '--mode');
  if (mode !== 'fake-ip' && mode !== 'global') {
    throw new UsageError(`--mode ${JSON.stringify(mode)}: fake-ip or global`);
  }
  const sniff = str(pick('sniff') ?? O.sniff.default, '--sniff');
  if (sniff !== 'auto' && sniff !== 'on' && sniff !== 'off') {
    throw new UsageError(`--sniff ${JSON.stringify(sniff)}: auto (on in global mode), on or off`);
  }
  const num = (k: 'routeTable' | 'rulePriority' | 'sniffTimeout') =>
    int(pick(k) ?? O[k].default, flagName(O[k]), O[k].range[0], O[k].range[1]);
  return {
    mode,
    fwmark: parseFwmark(pick('fwmark') ?? O.fwmark.default),
    routeTable: num('routeTable'),
    rulePriority: num('rulePriority'),
    exclude: list(pick('exclude'), '--exclude').map((t) => parseSourceCidr(t, '--exclude')),
    capture: parseCapture(list(pick('capture'), '--capture')),
    bypassUid: list(pick('bypassUid'), '--bypass-uid').map((u) => parseUidRange(u, '--bypass-uid')),
    onlyUid: list(pick('onlyUid'), '--only-uid').map((u) => parseUidRange(u, '--only-uid')),
    ...cgroups(mode, pick),
    sniff,
    sniffTimeout: num('sniffTimeout'),
  };
}

/** `--bypass-cgroup` / `--only-cgroup`: syntax here, the cgroups themselves at start (prepareCgroupRules). */
function cgroups(
  mode: StartConfig['mode'],
  pick: (k: keyof typeof O) => unknown,
): Pick<StartConfig, 'bypassCgroup' | 'onlyCgroup'> {
  const bypassCgroup = list(pick('bypassCgroup'), '--bypass-cgroup').map((p) => parseCgroupPath(p, '--bypass-cgroup'));
  const onlyCgroup = list(pick('onlyCgroup'), '--only-cgroup').map((p) => parseCgroupPath(p, '--only-cgroup'));
  if (mode !== 'global' && (bypassCgroup.length || onlyCgroup.length)) {
    const flag = bypassCgroup.length ? '--bypass-cgroup' : '--only-cgroup';
    throw new UsageError(
      `${flag} works in global mode only (--mode global): in fake-ip mode only named traffic is captured`,
    );
  }
  return { bypassCgroup, onlyCgroup };
}

/**
 * `--controller ADDR:PORT` (`off` disables), `--secret`, `--ui DIR`. A
 * controller reachable from other hosts without a secret would let anyone on
 * the network steer the proxy: a usage error.
 */
function controllerConfig(
  c: unknown,
  secretRaw: unknown,
  uiRaw: unknown,
): { controller?: { host: string; port: number }; secret: string; ui?: string } {
  const text = c === undefined ? O.controller.default : str(c, '--controller');
  const secret = secretRaw === undefined || secretRaw === null ? '' : str(secretRaw, '--secret');
  const out: { controller?: { host: string; port: number }; secret: string; ui?: string } = { secret };
  if (uiRaw !== undefined && uiRaw !== null && uiRaw !== '') {
    const ui = str(uiRaw, '--ui');
    let isDir = false;
    try {
      isDir = statSync(ui).isDirectory();
    } catch {
      // reported below
    }
    if (!isDir)
      throw new UsageError(`--ui ${ui}: not a directory (give the folder of a built dashboard, e.g. metacubexd)`);
    out.ui = ui;
  }
  if (text === 'off' || text === '') return out;
  // Clash's `:9090` means every address.
  const hp = parseHostPort(text.startsWith(':') ? `0.0.0.0${text}` : text, 9090, '--controller');
  if (secret === '' && !hp.host.startsWith('127.')) {
    throw new UsageError(
      `--controller ${text} without --secret: anyone who reaches ${hp.host} could steer the proxy; set --secret TOKEN or bind to 127.0.0.1`,
    );
  }
  out.controller = hp;
  return out;
}

/** `--upstream` on the command line beats the file's rules (all traffic through it), with a warning. */
function routingConfig(
  flags: RawStart,
  file: RawStart,
  geoipDb: unknown,
): { routing?: Routing; geoipDb?: string; configWarnings: string[] } {
  const routing = file.routing as Routing | undefined;
  const db = geoipDb === undefined ? undefined : str(geoipDb, '--geoip-db');
  const configWarnings = Array.isArray(file.configWarnings) ? [...(file.configWarnings as string[])] : [];
  const base = db === undefined ? { configWarnings } : { geoipDb: db, configWarnings };
  if (!routing) return base;
  if (flags.upstream !== undefined) {
    configWarnings.push(
      `--upstream ${String(flags.upstream)} given: the rules of ${String(file.configPath)} are not used`,
    );
    return base;
  }
  if (routing.usesGeoIp && db === undefined) {
    throw new UsageError(
      `--config ${String(file.configPath)} line ${routing.geoIpLine}: GEOIP rules need a MaxMind database: --geoip-db FILE.mmdb`,
    );
  }
  return { ...base, routing };
}
