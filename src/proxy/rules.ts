/**
 * Clash/mihomo routing rules: the parser (`TYPE,PAYLOAD,TARGET[,no-resolve]`)
 * and the compiler. A compiled rule list answers "which is the first rule
 * that matches" without scanning: exact names in a Map, suffixes by walking
 * the name's label boundaries through a Map, CIDRs in a prefix table (one
 * Map per prefix length present), ports in a 64 Ki table, the network in two
 * slots. Each structure yields the smallest matching rule index; the answer
 * is the smallest of them. Keywords run through one Aho–Corasick automaton
 * (the name is read once); an AND rule that needs a DOMAIN/DOMAIN-SUFFIX
 * is looked at only for names that have it. Only the rest (DOMAIN-REGEX,
 * GEOIP, OR/NOT, other ANDs) is scanned, in rule order, up to the best index
 * found so far, and regexes only when their joint alternation matches.
 *
 * IP rules see the destination address only when the connection has no name
 * (an app that connected to an IP literal, or to a real address the fake-IP
 * filter handed out): with a name the destination is a fake address that
 * says nothing about where the name lives. A name sniffed off a connection
 * to a real address (`realIp`) leaves the address real: IP rules see both. We never resolve a name to
 * evaluate a rule, i.e. every IP rule behaves as mihomo's `no-resolve`.
 */
import { UsageError } from '../errors.js';

export type Proto = 'tcp' | 'udp';

/** What a rule is matched against. `name` must be normalised (normName). */
export interface MatchInput {
  name?: string | undefined;
  ip: string;
  /** `ip` is the real destination although `name` is set (a name sniffed off a connection to a real address). */
  realIp?: boolean | undefined;
  port: number;
  proto: Proto;
  srcIp?: string | undefined;
  srcPort?: number | undefined;
}

/** Country (ISO 3166 code, upper case) of an IP, from a GeoIP database; undefined when unknown. */
export type GeoIpLookup = (ip: string) => string | undefined;

export interface Cidr {
  family: 4 | 6;
  /** Address as 32-bit words (1 for IPv4, 4 for IPv6), host bits cleared. */
  words: number[];
  prefix: number;
  text: string;
}

export type Cond =
  | { type: 'DOMAIN'; value: string }
  | { type: 'DOMAIN-SUFFIX'; value: string }
  | { type: 'DOMAIN-KEYWORD'; value: string }
  | { type: 'DOMAIN-REGEX'; value: RegExp }
  | { type: 'IP-CIDR'; value: Cidr }
  | { type: 'SRC-IP-CIDR'; value: Cidr }
  | { type: 'DST-PORT'; value: [number, number][] }
  | { type: 'SRC-PORT'; value: [number, number][] }
  | { type: 'NETWORK'; value: Proto }
  | { type: 'GEOIP'; value: string }
  | { type: 'AND' | 'OR'; value: Cond[] }
  | { type: 'NOT'; value: Cond }
  | { type: 'MATCH' };

export interface ParsedRule {
  cond: Cond;
  /** Proxy or group name the rule sends to. */
  target: string;
  /** The rule as written, for logs and `fakeproxy route`. */
  text: string;
  /** 1-based line in the config file (0 when not from a file). */
  line: number;
}

export const RULE_TYPES = [
  'DOMAIN',
  'DOMAIN-SUFFIX',
  'DOMAIN-KEYWORD',
  'DOMAIN-REGEX',
  'IP-CIDR',
  'IP-CIDR6',
  'SRC-IP-CIDR',
  'DST-PORT',
  'SRC-PORT',
  'NETWORK',
  'GEOIP',
  'AND',
  'OR',
  'NOT',
  'MATCH',
] as const;

/** Clash rule keyword → the name mihomo's controller API reports (constant/rule.go `RuleType.String`). */
const API_RULE_TYPES: Readonly<Record<(typeof RULE_TYPES)[number] | 'FINAL', string>> = {
  DOMAIN: 'Domain',
  'DOMAIN-SUFFIX': 'DomainSuffix',
  'DOMAIN-KEYWORD': 'DomainKeyword',
  'DOMAIN-REGEX': 'DomainRegex',
  'IP-CIDR': 'IPCIDR',
  'IP-CIDR6': 'IPCIDR',
  'SRC-IP-CIDR': 'SrcIPCIDR',
  'DST-PORT': 'DstPort',
  'SRC-PORT': 'SrcPort',
  NETWORK: 'Network',
  GEOIP: 'GeoIP',
  AND: 'AND',
  OR: 'OR',
  NOT: 'NOT',
  MATCH: 'Match',
  FINAL: 'Match',
};

/** A rule as the controller API shows it: mihomo's type name and the payload as written (`example.com`). */
export function ruleApiView(r: Pick<ParsedRule, 'text'>): { type: string; payload: string } {
  const parts = splitTop(r.text);
  const kw = (parts[0] ?? '').toUpperCase() as keyof typeof API_RULE_TYPES;
  const type = API_RULE_TYPES[kw] ?? 'Unknown';
  return { type, payload: type === 'Match' ? '' : (parts[1] ?? '') };
}

/** Lowercase, no trailing dot: DNS names compare case-insensitively (RFC 4343). */
export function normName(n: string): string {
  const l = n.toLowerCase();
  return l.endsWith('.') ? l.slice(0, -1) : l;
}

/** IPv4/IPv6 text → 32-bit words, or undefined when it is not an address. */
export function ipWords(ip: string): number[] | undefined {
  if (ip.includes(':')) return ipv6Words(ip);
  const p = ip.split('.');
  if (p.length !== 4) return undefined;
  let n = 0;
  for (const s of p) {
    if (!/^\d{1,3}$/.test(s)) return undefined;
    const v = Number(s);
    if (v > 255) return undefined;
    n = n * 256 + v;
  }
  return [n >>> 0];
}

function ipv6Words(ip: string): number[] | undefined {
  let text = ip;
  const z = text.indexOf('%');
  if (z >= 0) text = text.slice(0, z);
  const groups: number[] = [];
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (part: string): number[] | undefined => {
    if (part === '') return [];
    const out: number[] = [];
    const items = part.split(':');
    for (let i = 0; i < items.length; i++) {
      const it = items[i] as string;
      if (i === items.length - 1 && it.includes('.')) {
        const v4 = ipWords(it);
        if (!v4) return undefined;
        out.push((v4[0] as number) >>> 16, (v4[0] as number) & 0xffff);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(it)) return undefined;
        out.push(Number.parseInt(it, 16));
      }
    }
    return out;
  };
  const head = parse(halves[0] as string);
  const tail = halves.length === 2 ? parse(halves[1] as string) : [];
  if (!head || !tail) return undefined;
  if (halves.length === 2) {
    const fill = 8 - head.length - tail.length;
    if (fill < 1) return undefined;
    groups.push(...head, ...new Array<number>(fill).fill(0), ...tail);
  } else {
    if (head.length !== 8) return undefined;
    groups.push(...head);
  }
  const words: number[] = [];
  for (let i = 0; i < 8; i += 2) words.push((((groups[i] as number) << 16) | (groups[i + 1] as number)) >>> 0);
  return words;
}

function maskWords(words: number[], prefix: number): number[] {
  return words.map((w, i) => {
    const bits = Math.max(0, Math.min(32, prefix - i * 32));
    return bits === 0 ? 0 : bits === 32 ? w : (w & (0xffffffff << (32 - bits))) >>> 0;
  });
}

export function parseCidrRule(text: string): Cidr | undefined {
  const [addr, len, extra] = text.split('/');
  if (extra !== undefined || addr === undefined || len === undefined || !/^\d{1,3}$/.test(len)) return undefined;
  const words = ipWords(addr);
  if (!words) return undefined;
  const family = words.length === 1 ? 4 : 6;
  const prefix = Number(len);
  if (prefix > (family === 4 ? 32 : 128)) return undefined;
  return { family, words: maskWords(words, prefix), prefix, text };
}

function parsePorts(text: string): [number, number][] | undefined {
  const out: [number, number][] = [];
  for (const part of text.split(/[/,]/)) {
    const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part.trim());
    if (!m) return undefined;
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (a > 65535 || b > 65535 || a > b) return undefined;
    out.push([a, b]);
  }
  return out;
}

/** Splits at commas that are not inside parentheses. */
function splitTop(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (c === ',' && depth === 0) {
      out.push(s.slice(start, i));
      start = i + 1;
    }
  }
  out.push(s.slice(start));
  return out.map((x) => x.trim());
}

class RuleSyntax extends Error {}

/** One condition `TYPE,PAYLOAD` (no target). Throws RuleSyntax with the reason. */
function parseCond(type: string, payload: string | undefined): Cond {
  const t = type.toUpperCase();
  const need = (): string => {
    if (payload === undefined || payload === '') throw new RuleSyntax(`${t} needs a value`);
    return payload;
  };
  switch (t) {
    case 'DOMAIN':
      return { type: t, value: normName(need()) };
    case 'DOMAIN-SUFFIX':
      return { type: t, value: normName(need().replace(/^\*?\./, '')) };
    case 'DOMAIN-KEYWORD':
      return { type: t, value: need().toLowerCase() };
    case 'DOMAIN-REGEX': {
      const src = need();
      try {
        return { type: t, value: new RegExp(src, 'i') };
      } catch (e) {
        throw new RuleSyntax(`'${src}' is not a regular expression (${(e as Error).message})`);
      }
    }
    case 'IP-CIDR':
    case 'IP-CIDR6':
    case 'SRC-IP-CIDR': {
      const c = parseCidrRule(need());
      if (!c) throw new RuleSyntax(`'${payload}' is not a CIDR; write e.g. 10.0.0.0/8 or fd00::/8`);
      return { type: t === 'SRC-IP-CIDR' ? t : 'IP-CIDR', value: c };
    }
    case 'DST-PORT':
    case 'SRC-PORT': {
      const p = parsePorts(need());
      if (!p) throw new RuleSyntax(`'${payload}' is not a port, range or list (80, 8000-9000, 80/443)`);
      return { type: t, value: p };
    }
    case 'NETWORK': {
      const v = need().toLowerCase();
      if (v !== 'tcp' && v !== 'udp') throw new RuleSyntax(`NETWORK is tcp or udp, not '${payload}'`);
      return { type: t, value: v };
    }
    case 'GEOIP':
      return { type: t, value: need().toUpperCase() };
    case 'AND':
    case 'OR':
    case 'NOT': {
      const p = need();
      if (!p.startsWith('(') || !p.endsWith(')')) throw new RuleSyntax(`${t} takes ((TYPE,VALUE),…)`);
      const subs = splitTop(p.slice(1, -1)).map((s) => {
        if (!s.startsWith('(') || !s.endsWith(')')) throw new RuleSyntax(`${t}: '${s}' must be (TYPE,VALUE)`);
        const parts = splitTop(s.slice(1, -1));
        const [st, ...rest] = parts;
        return parseCond(st ?? '', rest.length ? rest.join(',') : undefined);
      });
      if (t === 'NOT') {
        if (subs.length !== 1) throw new RuleSyntax('NOT takes exactly one condition: NOT,((TYPE,VALUE)),TARGET');
        return { type: t, value: subs[0] as Cond };
      }
      if (subs.length === 0) throw new RuleSyntax(`${t} needs at least one condition`);
      return { type: t, value: subs };
    }
    case 'MATCH':
      return { type: t };
    default:
      throw new RuleSyntax(`unknown rule type '${type}' (supported: ${RULE_TYPES.join(', ')})`);
  }
}

/**
 * Parses one rule line. `where` prefixes the error (`--config x.yaml: rules line 12`).
 * Options after the target: `no-resolve` (accepted; always in effect, see the top of this file).
 */
export function parseRule(text: string, line = 0, where = `rule ${JSON.stringify(text)}`): ParsedRule {
  try {
    const parts = splitTop(text);
    const type = (parts[0] ?? '').toUpperCase();
    let cond: Cond;
    let target: string | undefined;
    let opts: string[];
    if (type === 'MATCH' || type === 'FINAL') {
      cond = { type: 'MATCH' };
      target = parts[1];
      opts = parts.slice(2);
    } else {
      cond = parseCond(parts[0] ?? '', parts[1]);
      target = parts[2];
      opts = parts.slice(3);
    }
    if (target === undefined || target === '') throw new RuleSyntax('has no target proxy or group');
    for (const o of opts) {
      if (o !== 'no-resolve' && o !== 'src') throw new RuleSyntax(`unknown rule option '${o}'`);
    }
    return { cond, target, text, line };
  } catch (e) {
    if (e instanceof RuleSyntax) throw new UsageError(`${where}: ${JSON.stringify(text)}: ${e.message}`);
    throw e;
  }
}

/** The target names a condition tree could match; MATCH always does. */
function evalCond(c: Cond, m: MatchInput, words: () => number[] | undefined, geo: () => string | undefined): boolean {
  switch (c.type) {
    case 'DOMAIN':
      return m.name === c.value;
    case 'DOMAIN-SUFFIX':
      return m.name !== undefined && (m.name === c.value || m.name.endsWith(`.${c.value}`));
    case 'DOMAIN-KEYWORD':
      return m.name?.includes(c.value) === true;
    case 'DOMAIN-REGEX':
      return m.name !== undefined && c.value.test(m.name);
    case 'IP-CIDR': {
      if (m.name !== undefined && m.realIp !== true) return false;
      const w = words();
      return w !== undefined && cidrHas(c.value, w);
    }
    case 'SRC-IP-CIDR': {
      const w = m.srcIp === undefined ? undefined : ipWords(m.srcIp);
      return w !== undefined && cidrHas(c.value, w);
    }
    case 'DST-PORT':
      return c.value.some(([a, b]) => m.port >= a && m.port <= b);
    case 'SRC-PORT': {
      const sp = m.srcPort;
      return sp !== undefined && c.value.some(([a, b]) => sp >= a && sp <= b);
    }
    case 'NETWORK':
      return m.proto === c.value;
    case 'GEOIP':
      return (m.name === undefined || m.realIp === true) && geo() === c.value;
    case 'AND':
      return c.value.every((s) => evalCond(s, m, words, geo));
    case 'OR':
      return c.value.some((s) => evalCond(s, m, words, geo));
    case 'NOT':
      return !evalCond(c.value, m, words, geo);
    case 'MATCH':
      return true;
  }
}

function cidrHas(c: Cidr, w: number[]): boolean {
  if (w.length !== c.words.length) return false;
  const masked = maskWords(w, c.prefix);
  for (let i = 0; i < masked.length; i++) if (masked[i] !== c.words[i]) return false;
  return true;
}

/** Prefix table: one Map per prefix length present, longest first; values are the smallest rule index. */
class PrefixTable {
  readonly #v4 = new Map<number, Map<number, number>>();
  readonly #v6 = new Map<number, Map<string, number>>();
  #lens4: number[] = [];
  #lens6: number[] = [];

  add(c: Cidr, idx: number): void {
    if (c.family === 4) {
      const m = this.#v4.get(c.prefix) ?? new Map<number, number>();
      this.#v4.set(c.prefix, m);
      if (!m.has(c.words[0] as number)) m.set(c.words[0] as number, idx);
    } else {
      const m = this.#v6.get(c.prefix) ?? new Map<string, number>();
      this.#v6.set(c.prefix, m);
      const k = c.words.join(':');
      if (!m.has(k)) m.set(k, idx);
    }
    this.#lens4 = [...this.#v4.keys()];
    this.#lens6 = [...this.#v6.keys()];
  }

  get empty(): boolean {
    return this.#v4.size === 0 && this.#v6.size === 0;
  }

  /** Smallest index of a CIDR containing `w`, or `best` if none is smaller. */
  lookup(w: number[], best: number): number {
    if (w.length === 1) {
      const a = w[0] as number;
      for (const len of this.#lens4) {
        const key = len === 0 ? 0 : (a & (0xffffffff << (32 - len))) >>> 0;
        const i = (this.#v4.get(len) as Map<number, number>).get(key);
        if (i !== undefined && i < best) best = i;
      }
      return best;
    }
    for (const len of this.#lens6) {
      const i = (this.#v6.get(len) as Map<string, number>).get(maskWords(w, len).join(':'));
      if (i !== undefined && i < best) best = i;
    }
    return best;
  }
}

/** Ports → smallest rule index (0xffffffff: none). */
class PortTable {
  #t: Uint32Array | undefined;
  add(ranges: [number, number][], idx: number): void {
    if (!this.#t) this.#t = new Uint32Array(65536).fill(0xffffffff);
    for (const [a, b] of ranges) for (let p = a; p <= b; p++) if ((this.#t[p] as number) > idx) this.#t[p] = idx;
  }
  lookup(port: number | undefined, best: number): number {
    if (!this.#t || port === undefined) return best;
    const i = this.#t[port] as number;
    return i < best ? i : best;
  }
}

const NONE = 0x7fffffff;

/**
 * DOMAIN-KEYWORD: an Aho–Corasick automaton over the keywords, so a name is
 * read once whatever the number of keywords; each state knows the smallest
 * rule index of any keyword ending there (through its failure links too).
 */
class KeywordAutomaton {
  readonly #goto: Map<number, number>[] = [new Map()];
  readonly #fail: number[] = [0];
  readonly #out: number[] = [NONE];
  get empty(): boolean {
    return this.#goto.length === 1;
  }
  add(kw: string, idx: number): void {
    let s = 0;
    for (let i = 0; i < kw.length; i++) {
      const c = kw.charCodeAt(i);
      let n = (this.#goto[s] as Map<number, number>).get(c);
      if (n === undefined) {
        n = this.#goto.length;
        this.#goto.push(new Map());
        this.#fail.push(0);
        this.#out.push(NONE);
        (this.#goto[s] as Map<number, number>).set(c, n);
      }
      s = n;
    }
    if (idx < (this.#out[s] as number)) this.#out[s] = idx;
  }
  /** Failure links breadth first; `out` takes the minimum along them. */
  build(): void {
    const queue: number[] = [...(this.#goto[0] as Map<number, number>).values()];
    for (let q = 0; q < queue.length; q++) {
      const s = queue[q] as number;
      for (const [c, n] of this.#goto[s] as Map<number, number>) {
        let f = this.#fail[s] as number;
        while (f !== 0 && !(this.#goto[f] as Map<number, number>).has(c)) f = this.#fail[f] as number;
        const t = (this.#goto[f] as Map<number, number>).get(c);
        this.#fail[n] = t !== undefined && t !== n ? t : 0;
        this.#out[n] = Math.min(this.#out[n] as number, this.#out[this.#fail[n] as number] as number);
        queue.push(n);
      }
    }
  }
  lookup(name: string, best: number): number {
    let s = 0;
    for (let i = 0; i < name.length; i++) {
      const c = name.charCodeAt(i);
      let n = (this.#goto[s] as Map<number, number>).get(c);
      while (n === undefined && s !== 0) {
        s = this.#fail[s] as number;
        n = (this.#goto[s] as Map<number, number>).get(c);
      }
      s = n ?? 0;
      const o = this.#out[s] as number;
      if (o < best) best = o;
    }
    return best;
  }
}

/** The DOMAIN / DOMAIN-SUFFIX an AND rule requires, if any: the rule is then looked at only for names with it. */
function andGuard(c: Cond): { exact?: string; suffix?: string } | undefined {
  if (c.type !== 'AND') return undefined;
  for (const s of c.value) {
    if (s.type === 'DOMAIN') return { exact: s.value };
    if (s.type === 'DOMAIN-SUFFIX') return { suffix: s.value };
  }
  return undefined;
}

function pushTo<K>(m: Map<K, { idx: number; cond: Cond }[]>, k: K, v: { idx: number; cond: Cond }): void {
  const l = m.get(k);
  if (l) l.push(v);
  else m.set(k, [v]);
}

/**
 * A compiled rule list. `match` returns the index of the first rule (in the
 * given order) whose condition holds, or -1.
 */
export class CompiledRules {
  readonly #exact = new Map<string, number>();
  readonly #suffix = new Map<string, number>();
  readonly #dst = new PrefixTable();
  readonly #src = new PrefixTable();
  readonly #dstPort = new PortTable();
  readonly #srcPort = new PortTable();
  readonly #network: Record<Proto, number> = { tcp: NONE, udp: NONE };
  #matchAll = NONE;
  /** Conditions that cannot be indexed, in rule order. */
  readonly #scan: { idx: number; cond: Cond }[] = [];
  readonly #geo: GeoIpLookup | undefined;
  readonly #keywords = new KeywordAutomaton();
  /** All DOMAIN-REGEX rules as one alternation: most names match none, and then none is tried alone. */
  #anyRegex: RegExp | undefined;
  /** AND rules that need a DOMAIN / DOMAIN-SUFFIX, by that name: evaluated only when the name has it. */
  readonly #guardExact = new Map<string, { idx: number; cond: Cond }[]>();
  readonly #guardSuffix = new Map<string, { idx: number; cond: Cond }[]>();
  readonly size: number;

  constructor(conds: readonly Cond[], geo?: GeoIpLookup) {
    this.#geo = geo;
    this.size = conds.length;
    conds.forEach((c, idx) => {
      switch (c.type) {
        case 'DOMAIN':
          if (!this.#exact.has(c.value)) this.#exact.set(c.value, idx);
          break;
        case 'DOMAIN-SUFFIX':
          if (!this.#suffix.has(c.value)) this.#suffix.set(c.value, idx);
          break;
        case 'IP-CIDR':
          this.#dst.add(c.value, idx);
          break;
        case 'SRC-IP-CIDR':
          this.#src.add(c.value, idx);
          break;
        case 'DST-PORT':
          this.#dstPort.add(c.value, idx);
          break;
        case 'SRC-PORT':
          this.#srcPort.add(c.value, idx);
          break;
        case 'NETWORK':
          if (this.#network[c.value] === NONE) this.#network[c.value] = idx;
          break;
        case 'MATCH':
          if (this.#matchAll === NONE) this.#matchAll = idx;
          break;
        case 'DOMAIN-KEYWORD':
          this.#keywords.add(c.value, idx);
          break;
        default: {
          const g = andGuard(c);
          if (g?.exact !== undefined) pushTo(this.#guardExact, g.exact, { idx, cond: c });
          else if (g?.suffix !== undefined) pushTo(this.#guardSuffix, g.suffix, { idx, cond: c });
          else this.#scan.push({ idx, cond: c });
        }
      }
    });
    this.#keywords.build();
    const res = conds.flatMap((c) => (c.type === 'DOMAIN-REGEX' ? [c.value.source] : []));
    // Back-references and named groups would change meaning inside one alternation: then no prefilter.
    if (res.length > 0 && !res.some((r) => /\\[1-9k]|\(\?</.test(r))) {
      try {
        this.#anyRegex = new RegExp(res.map((r) => `(?:${r})`).join('|'), 'i');
      } catch {
        this.#anyRegex = undefined;
      }
    }
  }

  /** Guarded AND rules for one name key: the first (smallest index) that holds. */
  #guarded(
    list: { idx: number; cond: Cond }[] | undefined,
    m: MatchInput,
    best: number,
    words: () => number[] | undefined,
    geo: () => string | undefined,
  ): number {
    if (list === undefined) return best;
    for (const r of list) {
      if (r.idx >= best) break;
      if (evalCond(r.cond, m, words, geo)) return r.idx;
    }
    return best;
  }

  match(m: MatchInput): number {
    let best = this.#matchAll;
    const n = this.#network[m.proto];
    if (n < best) best = n;
    best = this.#dstPort.lookup(m.port, best);
    best = this.#srcPort.lookup(m.srcPort, best);
    const name = m.name;
    let words: number[] | undefined | null = null;
    const getWords = () => {
      if (words === null) words = ipWords(m.ip);
      return words;
    };
    let country: string | undefined | null = null;
    const getGeo = () => {
      if (country === null) country = this.#geo?.(m.ip);
      return country;
    };
    const guards = this.#guardExact.size + this.#guardSuffix.size > 0;
    if (name !== undefined) {
      const e = this.#exact.get(name);
      if (e !== undefined && e < best) best = e;
      if (guards) best = this.#guarded(this.#guardExact.get(name), m, best, getWords, getGeo);
      if (this.#suffix.size > 0 || this.#guardSuffix.size > 0) {
        // The name itself, then every suffix starting after a dot.
        let from = 0;
        for (;;) {
          const key = from === 0 ? name : name.slice(from);
          const s = this.#suffix.get(key);
          if (s !== undefined && s < best) best = s;
          if (guards) best = this.#guarded(this.#guardSuffix.get(key), m, best, getWords, getGeo);
          const dot = name.indexOf('.', from);
          if (dot < 0) break;
          from = dot + 1;
        }
      }
      if (!this.#keywords.empty) best = this.#keywords.lookup(name, best);
    }
    if ((name === undefined || m.realIp === true) && !this.#dst.empty) {
      const w = getWords();
      if (w) best = this.#dst.lookup(w, best);
    }
    if (!this.#src.empty && m.srcIp !== undefined) {
      const w = ipWords(m.srcIp);
      if (w) best = this.#src.lookup(w, best);
    }
    if (this.#scan.length > 0) {
      const rx = this.#anyRegex === undefined || (name !== undefined && this.#anyRegex.test(name));
      for (const r of this.#scan) {
        if (r.idx >= best) break;
        if (r.cond.type === 'DOMAIN-REGEX' && !rx) continue;
        if (evalCond(r.cond, m, getWords, getGeo)) {
          best = r.idx;
          break;
        }
      }
    }
    return best === NONE ? -1 : best;
  }
}

/** The reference: evaluate every rule in order (tests compare the compiled list against it). */
export function matchLinear(conds: readonly Cond[], m: MatchInput, geo?: GeoIpLookup): number {
  const words = () => ipWords(m.ip);
  const g = () => geo?.(m.ip);
  for (let i = 0; i < conds.length; i++) if (evalCond(conds[i] as Cond, m, words, g)) return i;
  return -1;
}

/** Every target a condition list names, for reference checks. */
export function usesGeoIp(c: Cond): boolean {
  if (c.type === 'GEOIP') return true;
  if (c.type === 'AND' || c.type === 'OR') return c.value.some(usesGeoIp);
  if (c.type === 'NOT') return usesGeoIp(c.value);
  return false;
}
