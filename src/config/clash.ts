/**
 * The Clash/mihomo part of `--config FILE` (DESIGN.md "Configuration"):
 * `proxies`, `proxy-groups`, `rules` and the fake-IP keys of `dns`. What we
 * honour is validated here once, with the line of every mistake; what we do
 * not honour is ignored with one warning per key; what we cannot honour
 * safely (a rule sending traffic to a proxy type we do not speak) is an
 * error. fakeproxy's own camelCase keys may sit in the same file.
 */
import { isMap, isScalar, LineCounter, type Node, parseDocument, type YAMLMap } from 'yaml';
import { UsageError } from '../errors.js';
import { type GroupSpec, type GroupType, HEALTH_DEFAULTS } from '../proxy/groups.js';
import { type Cond, type ParsedRule, parseRule, usesGeoIp } from '../proxy/rules.js';

export interface ProxySpec {
  name: string;
  /** Clash `type`; built-ins are `direct`, `reject`, `reject-drop`. */
  type: string;
  server?: string;
  port?: number;
  username?: string;
  password?: string;
  /** socks5: carry UDP (UDP ASSOCIATE). Clash's default is false. */
  udp?: boolean;
  /** Why we cannot use it (unsupported type or option); undefined when we can. */
  unsupported?: string;
  line: number;
}

export interface Routing {
  proxies: ProxySpec[];
  groups: GroupSpec[];
  rules: ParsedRule[];
  /** Whether any rule (also inside AND/OR/NOT) is a GEOIP rule. */
  usesGeoIp: boolean;
  /** Line of the first GEOIP rule (for the error when no database is given). */
  geoIpLine: number;
}

export interface ClashPart {
  /** fakeproxy keys derived from Clash keys (`dns.fake-ip-range` → cidr, …). */
  derived: Record<string, unknown>;
  routing?: Routing;
  warnings: string[];
}

/** Names Clash defines without a `proxies` entry. */
export const BUILTINS: Record<string, string> = { DIRECT: 'direct', REJECT: 'reject', 'REJECT-DROP': 'reject-drop' };

const SUPPORTED_PROXY_KEYS: Record<string, Set<string>> = {
  socks5: new Set(['name', 'type', 'server', 'port', 'username', 'password', 'udp', 'tls', 'skip-cert-verify']),
  http: new Set(['name', 'type', 'server', 'port', 'username', 'password', 'tls', 'skip-cert-verify']),
};
const GROUP_KEYS = new Set(['name', 'type', 'proxies', 'url', 'interval', 'timeout', 'tolerance', 'strategy', 'lazy']);
const GROUP_TYPES = new Set<string>(['select', 'fallback', 'url-test', 'load-balance']);
const DNS_KEYS = new Set(['enable', 'enhanced-mode', 'fake-ip-range', 'fake-ip-filter', 'nameserver', 'listen']);
/** Top-level keys read here; everything else not a fakeproxy key is warned about. */
export const CLASH_KEYS = new Set(['proxies', 'proxy-groups', 'rules', 'dns']);

export interface ParsedFile {
  doc: Record<string, unknown>;
  /** 1-based line of a node path (['rules', 3]) or of the top-level key. */
  line(path: (string | number)[]): number;
}

/** YAML text → plain object with line lookup; malformed YAML is a UsageError naming the line. */
export function parseYamlFile(path: string, text: string): ParsedFile {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false });
  const err = doc.errors[0];
  if (err) {
    const l = err.linePos?.[0]?.line ?? lc.linePos(err.pos[0]).line;
    throw new UsageError(`--config ${path} line ${l}: not valid YAML (${err.message.split('\n')[0]})`);
  }
  const js = doc.toJS({ maxAliasCount: 1000 }) as unknown;
  if (js === null || js === undefined) return { doc: {}, line: () => 0 };
  if (typeof js !== 'object' || Array.isArray(js)) throw new UsageError(`--config ${path}: must be a YAML mapping`);
  const line = (p: (string | number)[]): number => {
    // A top-level key: the line of the key itself (its value may start below it).
    if (p.length === 1) {
      const top = doc.contents as YAMLMap | null;
      const pair = isMap(top) ? top.items.find((it) => isScalar(it.key) && it.key.value === p[0]) : undefined;
      if (pair && isScalar(pair.key) && pair.key.range) return lc.linePos(pair.key.range[0]).line;
    }
    // Else the deepest node that exists on the path.
    for (let n = p.length; n > 0; n--) {
      const node = doc.getIn(p.slice(0, n), true) as Node | undefined;
      if (node && typeof node === 'object' && 'range' in node && node.range) return lc.linePos(node.range[0]).line;
    }
    return 0;
  };
  return { doc: js as Record<string, unknown>, line };
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Reads the Clash keys of a parsed file. `where` is `--config PATH`.
 * Throws UsageError (one line, with the line number) on what cannot be honoured.
 */
export function readClash(where: string, f: ParsedFile): ClashPart {
  const warnings: string[] = [];
  const warned = new Set<string>();
  const warn = (key: string, why: string) => {
    if (warned.has(key)) return;
    warned.add(key);
    warnings.push(`${where}: ${key} (line ${f.line(key.split('.'))}) ${why}`);
  };
  const fail = (path: (string | number)[], msg: string): never => {
    const key = path.filter((p) => typeof p === 'string').join('.');
    throw new UsageError(`${where} line ${f.line(path)}: ${key}: ${msg}`);
  };
  const derived: Record<string, unknown> = {};
  const d = f.doc;

  // dns: the fake-IP part maps onto our own keys.
  if (d.dns !== undefined) {
    if (!isObj(d.dns)) fail(['dns'], 'must be a mapping');
    const dns = d.dns as Record<string, unknown>;
    for (const k of Object.keys(dns)) {
      if (!DNS_KEYS.has(k)) warn(`dns.${k}`, 'is not supported by fakeproxy: ignored');
    }
    if (dns.enable === false) warn('dns.enable', 'false: fakeproxy always serves fake-IP DNS: ignored');
    const mode = dns['enhanced-mode'];
    if (mode !== undefined && mode !== 'fake-ip') {
      fail(['dns', 'enhanced-mode'], `'${String(mode)}' is not supported: fakeproxy works in fake-ip mode only`);
    }
    if (dns['fake-ip-range'] !== undefined) derived.cidr = dns['fake-ip-range'];
    if (dns['fake-ip-filter'] !== undefined) derived.fakeIpFilter = dns['fake-ip-filter'];
    if (dns.listen !== undefined) {
      // Clash writes `0.0.0.0:53` or `:53`; an empty host means every address, which we spell 0.0.0.0.
      const l = String(dns.listen);
      derived.dnsListen = l.startsWith(':') ? `0.0.0.0${l}` : l;
    }
    if (dns.nameserver !== undefined) {
      const list = Array.isArray(dns.nameserver) ? dns.nameserver.map(String) : [String(dns.nameserver)];
      // Plain UDP resolvers only; encrypted ones (tls://, https://, quic://) are not spoken here.
      const plain = list.map((s) => s.replace(/^udp:\/\//, '')).find((s) => !s.includes('://'));
      if (plain === undefined) {
        fail(['dns', 'nameserver'], `none of ${list.join(', ')} is a plain resolver (ADDRESS[:PORT]); add one`);
      }
      derived.dnsUpstream = plain;
      if (list.length > 1)
        warn('dns.nameserver', `lists ${list.length} resolvers: fakeproxy uses the first plain one (${plain})`);
    }
  }

  const hasRouting = d.proxies !== undefined || d['proxy-groups'] !== undefined || d.rules !== undefined;
  if (!hasRouting) return { derived, warnings };

  // proxies
  const proxies: ProxySpec[] = [];
  const byName = new Map<string, { kind: 'proxy' | 'group'; line: number }>();
  for (const b of Object.keys(BUILTINS)) byName.set(b, { kind: 'proxy', line: 0 });
  const rawProxies = d.proxies ?? [];
  if (!Array.isArray(rawProxies)) fail(['proxies'], 'must be a list');
  /** A proxy's or group's mapping and its name, claimed in the one namespace both share (and the built-ins). */
  const claimName = (path: (string | number)[], v: unknown, kind: 'proxy' | 'group', notMapping: string) => {
    if (!isObj(v)) fail(path, notMapping);
    const q = v as Record<string, unknown>;
    const line = f.line(path);
    if (typeof q.name !== 'string' || q.name === '') fail([...path, 'name'], `every ${kind} needs a name`);
    const name = q.name as string;
    const prev = byName.get(name);
    if (prev) {
      fail(
        path,
        prev.line === 0 ? `'${name}' is a built-in name` : `duplicate name '${name}' (first at line ${prev.line})`,
      );
    }
    byName.set(name, { kind, line });
    return { q, line, name };
  };
  (rawProxies as unknown[]).forEach((p, i) => {
    const path = ['proxies', i];
    const { q, line, name } = claimName(path, p, 'proxy', 'each proxy must be a mapping with name, type, server, port');
    const type = String(q.type ?? '');
    const spec: ProxySpec = { name, type, line };
    const keys = SUPPORTED_PROXY_KEYS[type];
    if (!keys) {
      spec.unsupported = `type '${type}' is not supported (fakeproxy speaks socks5 and http)`;
    } else {
      for (const k of Object.keys(q)) if (!keys.has(k)) warn(`proxies.${k}`, 'is not supported by fakeproxy: ignored');
      if (q.tls === true) spec.unsupported = `type '${type}' with tls: true is not supported`;
      if (typeof q.server !== 'string' || q.server === '') fail([...path, 'server'], `proxy '${name}' needs a server`);
      const port = Number(q.port);
      if (!Number.isInteger(port) || port < 1 || port > 65535) {
        fail([...path, 'port'], `proxy '${name}' port must be 1-65535, not ${JSON.stringify(q.port)}`);
      }
      spec.server = q.server as string;
      spec.port = port;
      if (q.username !== undefined) spec.username = String(q.username);
      if (q.password !== undefined) spec.password = String(q.password);
      if (type === 'socks5') spec.udp = q.udp === true;
    }
    proxies.push(spec);
  });

  // proxy-groups
  const groups: GroupSpec[] = [];
  const rawGroups = d['proxy-groups'] ?? [];
  if (!Array.isArray(rawGroups)) fail(['proxy-groups'], 'must be a list');
  const unsupportedGroups = new Map<string, string>();
  (rawGroups as unknown[]).forEach((g, i) => {
    const path = ['proxy-groups', i];
    const { q, line, name } = claimName(path, g, 'group', 'each group must be a mapping with name, type, proxies');
    const type = String(q.type ?? '');
    for (const k of Object.keys(q))
      if (!GROUP_KEYS.has(k)) warn(`proxy-groups.${k}`, 'is not supported by fakeproxy: ignored');
    if (!GROUP_TYPES.has(type)) {
      unsupportedGroups.set(name, `group type '${type}' is not supported (select, fallback, url-test, load-balance)`);
    }
    const members = q.proxies;
    if (!Array.isArray(members) || members.length === 0) {
      fail(
        [...path, 'proxies'],
        `group '${name}' needs a non-empty proxies list (proxy-providers / use: are not supported)`,
      );
    }
    const spec: GroupSpec = { name, type: type as GroupType, members: (members as unknown[]).map(String), line };
    if (type === 'fallback' || type === 'url-test' || type === 'load-balance') {
      const num = (k: string, dflt: number, min: number): number => {
        const v = q[k] === undefined ? dflt : Number(q[k]);
        if (!Number.isFinite(v) || v < min)
          fail([...path, k], `must be a number ≥ ${min}, not ${JSON.stringify(q[k])}`);
        return v;
      };
      const url = q.url === undefined ? 'https://www.gstatic.com/generate_204' : String(q.url);
      if (!/^https?:\/\/[^/]+/.test(url)) fail([...path, 'url'], `'${url}' is not an http:// or https:// URL`);
      spec.health = {
        url,
        intervalSec: num('interval', HEALTH_DEFAULTS.intervalSec, 1),
        timeoutMs: num('timeout', HEALTH_DEFAULTS.timeoutMs, 1),
      };
      if (type === 'url-test') spec.tolerance = num('tolerance', HEALTH_DEFAULTS.tolerance, 0);
      if (type === 'load-balance' && q.strategy !== undefined) {
        if (q.strategy !== 'consistent-hashing' && q.strategy !== 'round-robin') {
          fail([...path, 'strategy'], `'${String(q.strategy)}' is not supported (consistent-hashing, round-robin)`);
        }
        spec.strategy = q.strategy as 'consistent-hashing' | 'round-robin';
      }
    }
    groups.push(spec);
  });
  // Members must exist; groups must not contain themselves through others.
  const groupByName = new Map(groups.map((g) => [g.name, g]));
  groups.forEach((g, i) => {
    g.members.forEach((m, j) => {
      if (!byName.has(m))
        fail(['proxy-groups', i, 'proxies', j], `group '${g.name}' names '${m}', which is neither a proxy nor a group`);
    });
  });
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (g: GroupSpec, trail: string[]) => {
    if (state.get(g.name) === 'done') return;
    if (state.get(g.name) === 'visiting') {
      const cyc = [...trail.slice(trail.indexOf(g.name)), g.name];
      throw new UsageError(`${where} line ${g.line}: proxy-groups: cycle between groups ${cyc.join(' → ')}`);
    }
    state.set(g.name, 'visiting');
    for (const m of g.members) {
      const sub = groupByName.get(m);
      if (sub) visit(sub, [...trail, g.name]);
    }
    state.set(g.name, 'done');
  };
  for (const g of groups) visit(g, []);

  // rules
  const rules: ParsedRule[] = [];
  const rawRules = d.rules ?? [];
  if (!Array.isArray(rawRules)) fail(['rules'], 'must be a list');
  let geoIpLine = 0;
  (rawRules as unknown[]).forEach((r, i) => {
    const line = f.line(['rules', i]);
    if (typeof r !== 'string')
      throw new UsageError(`${where} line ${line}: rules: each rule is a string TYPE,VALUE,TARGET`);
    const pr = parseRule(r, line, `${where} line ${line}: rules`);
    if (!byName.has(pr.target)) {
      throw new UsageError(
        `${where} line ${line}: rules: ${JSON.stringify(r)} sends to '${pr.target}', which is neither a proxy nor a proxy-group`,
      );
    }
    if (usesGeoIp(pr.cond as Cond) && geoIpLine === 0) geoIpLine = line;
    rules.push(pr);
  });

  // What rules reach (directly or through groups) must be something we speak.
  const used = new Set<string>();
  const mark = (n: string) => {
    if (used.has(n)) return;
    used.add(n);
    for (const m of groupByName.get(n)?.members ?? []) mark(m);
  };
  for (const r of rules) mark(r.target);
  for (const g of groups) mark(g.name);
  for (const p of proxies) {
    if (!p.unsupported) continue;
    if (used.has(p.name)) {
      throw new UsageError(
        `${where} line ${p.line}: proxies: '${p.name}': ${p.unsupported}, and a rule or group uses it`,
      );
    }
    warn(`proxies.${p.name}`, `${p.unsupported}: ignored (no rule or group uses it)`);
  }
  for (const g of groups) {
    const why = unsupportedGroups.get(g.name);
    if (why) throw new UsageError(`${where} line ${g.line}: proxy-groups: '${g.name}': ${why}`);
  }
  return {
    derived,
    routing: { proxies: proxies.filter((p) => !p.unsupported), groups, rules, usesGeoIp: geoIpLine > 0, geoIpLine },
    warnings,
  };
}
