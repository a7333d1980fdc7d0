/**
 * Picks the outbound per connection: a compiled rule list (./rules.ts), first
 * match wins, else `final`; the rule's target is a proxy or a group, and a
 * group is followed (./groups.ts) until it names a proxy. The answer carries
 * the rule and the chain so logs, session events and `fakeproxy route` can
 * say why. The Listener holds one Router for its lifetime; SIGHUP swaps the
 * RouteTable inside it (`replace`), so connections already made keep their
 * outbound and new ones take the new rules.
 */
import { UsageError } from '../errors.js';
import { Group, type GroupDeps, type GroupSpec } from './groups.js';
import type { Outbound } from './outbound.js';
import {
  CompiledRules,
  type Cond,
  type GeoIpLookup,
  normName,
  type ParsedRule,
  parseCidrRule,
  ruleApiView,
} from './rules.js';

export interface RouteContext {
  /** The name the app asked for, when the destination was a fake address. */
  name?: string | undefined;
  /** The original destination address (the fake IP when `name` is set, unless `realIp`). */
  ip: string;
  /** `ip` is the real destination although `name` is set (a sniffed name): IP rules see it too. */
  realIp?: boolean | undefined;
  port: number;
  proto: 'tcp' | 'udp';
  /** The app's address (for SRC-IP-CIDR / SRC-PORT rules). */
  srcIp?: string | undefined;
  srcPort?: number | undefined;
}

export interface Decision {
  outbound: Outbound;
  /** The rule that matched as written (`DOMAIN-SUFFIX,example.com,Proxy`), or `MATCH (final)` when none did. */
  rule: string;
  /** Config line of the rule (0: none / not from a file). */
  line: number;
  /** Names from the rule's target to the proxy: `['Proxy', 'auto', 'hk-1']`. */
  chain: string[];
  /** The rule as the controller API reports it: mihomo's type (`DomainSuffix`, `Match`) and payload (`example.com`). */
  ruleType: string;
  rulePayload: string;
}

/** Legacy programmatic rules (tests, --upstream mode). */
export type RuleSpec =
  /** `example.com` matches example.com and *.example.com, not badexample.com. */
  | { domainSuffix: string; outbound: Outbound; proto?: 'tcp' | 'udp' }
  /** Substring of the name. */
  | { domainKeyword: string; outbound: Outbound; proto?: 'tcp' | 'udp' }
  /** The exact name. */
  | { domain: string; outbound: Outbound; proto?: 'tcp' | 'udp' }
  /** Destination address in the CIDR (IPv4 or IPv6); matches only connections without a name. */
  | { ipCidr: string; outbound: Outbound; proto?: 'tcp' | 'udp' };

export interface RouteTableOptions {
  /** Proxies by name (DIRECT, REJECT, … included). */
  outbounds: ReadonlyMap<string, Outbound>;
  groups?: readonly GroupSpec[];
  rules?: readonly ParsedRule[];
  /** Target when no rule matches. */
  final: string;
  geoip?: GeoIpLookup | undefined;
  log?: ((line: string) => void) | undefined;
  probe?: GroupDeps['probe'];
}

const MAX_DEPTH = 32;
const FINAL_API = { type: 'Match', payload: '' } as const;

export class RouteTable {
  readonly outbounds: ReadonlyMap<string, Outbound>;
  readonly groups = new Map<string, Group>();
  readonly rules: readonly ParsedRule[];
  readonly final: string;
  /** Per rule, computed once: what the controller API shows (no work per connection). */
  readonly apiRules: readonly { type: string; payload: string }[];
  readonly #compiled: CompiledRules;
  /** The rule text when none matched, made once (not per connection). */
  readonly #finalRule: string;

  constructor(o: RouteTableOptions) {
    this.outbounds = o.outbounds;
    this.rules = o.rules ?? [];
    this.final = o.final;
    this.#finalRule = `MATCH (final),${o.final}`;
    this.apiRules = this.rules.map(ruleApiView);
    const deps: GroupDeps = { leaf: (m) => this.leaf(m), log: o.log, probe: o.probe };
    for (const g of o.groups ?? []) this.groups.set(g.name, new Group(g, deps));
    for (const t of [o.final, ...this.rules.map((r) => r.target)]) {
      if (!this.outbounds.has(t) && !this.groups.has(t)) throw new UsageError(`routing target '${t}' is not defined`);
    }
    this.#compiled = new CompiledRules(
      this.rules.map((r) => r.cond),
      o.geoip,
    );
  }

  /** The proxy a member stands for right now (groups followed by their current pick). */
  leaf(name: string): Outbound | undefined {
    let n = name;
    for (let i = 0; i < MAX_DEPTH; i++) {
      const g = this.groups.get(n);
      if (!g) return this.outbounds.get(n);
      n = g.pick(n);
    }
    return undefined;
  }

  decide(ctx: RouteContext): Decision {
    const name = ctx.name === undefined ? undefined : normName(ctx.name);
    // Names are mostly normalized already (the fake DNS stores them so): no copy of ctx then.
    const i = this.#compiled.match(name === ctx.name ? ctx : { ...ctx, name });
    const r = i < 0 ? undefined : this.rules[i];
    const { chain, outbound } = this.follow(r ? r.target : this.final, name ?? ctx.ip);
    const api = r ? (this.apiRules[i] as { type: string; payload: string }) : FINAL_API;
    return {
      outbound,
      rule: r ? r.text : this.#finalRule,
      line: r ? r.line : 0,
      chain,
      ruleType: api.type,
      rulePayload: api.payload,
    };
  }

  /** From a target through its groups' picks (for `key`) to a proxy; `chain` starts with `target`. */
  follow(target: string, key: string, chain: string[] = []): { chain: string[]; outbound: Outbound } {
    let n = target;
    for (let d = 0; d < MAX_DEPTH; d++) {
      chain.push(n);
      const g = this.groups.get(n);
      if (!g) break;
      n = g.pick(key);
    }
    return { chain, outbound: this.outbounds.get(n) as Outbound };
  }

  /**
   * A connection routed along `chain` (a Decision's) could not reach its
   * proxy: the group that picked it marks it dead (Group.reportFailure).
   */
  reportFailure(chain: readonly string[], why: string): void {
    const leaf = chain.at(-1);
    const g = chain.length > 1 ? this.groups.get(chain.at(-2) as string) : undefined;
    if (leaf !== undefined && g && !this.groups.has(leaf)) g.reportFailure(leaf, why);
  }

  /** Health checks on. */
  start(): void {
    for (const g of this.groups.values()) g.start();
  }

  stop(): void {
    for (const g of this.groups.values()) g.stop();
  }
}

export interface RouterOptions {
  /** A compiled table (from the config); or `final` + `rules` below. */
  table?: RouteTable;
  /** Used when no rule matches (the `--upstream` outbound). */
  final?: Outbound;
  /** @default [] */
  rules?: RuleSpec[];
}

function legacyTable(opts: RouterOptions & { final: Outbound }): RouteTable {
  const outbounds = new Map<string, Outbound>([[opts.final.label, opts.final]]);
  const rules: ParsedRule[] = (opts.rules ?? []).map((r, i) => {
    let cond: Cond;
    let value: string;
    if ('domainSuffix' in r) {
      const v = normName(r.domainSuffix.replace(/^\*?\./, ''));
      if (v === '') throw new UsageError('routing rule domain-suffix is empty');
      cond = { type: 'DOMAIN-SUFFIX', value: v };
      value = v;
    } else if ('domainKeyword' in r) {
      if (r.domainKeyword === '') throw new UsageError('routing rule domain-keyword is empty');
      value = r.domainKeyword.toLowerCase();
      cond = { type: 'DOMAIN-KEYWORD', value };
    } else if ('domain' in r) {
      value = normName(r.domain);
      cond = { type: 'DOMAIN', value };
    } else {
      const c = parseCidrRule(r.ipCidr);
      if (!c) {
        throw new UsageError(`routing rule ip-cidr "${r.ipCidr}" is not a CIDR; write e.g. 10.0.0.0/8 or fd00::/8`);
      }
      cond = { type: 'IP-CIDR', value: c };
      value = r.ipCidr;
    }
    const type = cond.type;
    if (r.proto) cond = { type: 'AND', value: [cond, { type: 'NETWORK', value: r.proto }] };
    if (!outbounds.has(r.outbound.label) || outbounds.get(r.outbound.label) === r.outbound) {
      outbounds.set(r.outbound.label, r.outbound);
    }
    const target = outbounds.get(r.outbound.label) === r.outbound ? r.outbound.label : `${r.outbound.label}#${i}`;
    outbounds.set(target, r.outbound);
    return { cond, target, text: `${type},${value},${target}${r.proto ? ` (${r.proto})` : ''}`, line: 0 };
  });
  return new RouteTable({ outbounds, rules, final: opts.final.label });
}

/**
 * mihomo's tunnel mode (PATCH /configs `mode`): `rule` routes by the table;
 * `global` sends everything to what the GLOBAL selector picks; `direct`
 * sends everything DIRECT. Not fakeproxy's --mode (what enters the TUN).
 */
export const TUNNEL_MODES = ['rule', 'global', 'direct'] as const;
export type TunnelMode = (typeof TUNNEL_MODES)[number];

export class Router {
  #table: RouteTable;
  #mode: TunnelMode = 'rule';
  /** GLOBAL's pick by name (kept across reloads while the name exists). */
  #globalPick: string | undefined;

  constructor(opts: RouterOptions) {
    if (opts.table) this.#table = opts.table;
    else if (opts.final) this.#table = legacyTable({ ...opts, final: opts.final });
    else throw new TypeError('Router needs a table or a final outbound');
  }

  get table(): RouteTable {
    return this.#table;
  }

  /** The outbound of the final target (for start-up lines). */
  get final(): Outbound {
    return this.#table.leaf(this.#table.final) as Outbound;
  }

  /** Swap in a new table (SIGHUP); returns the old one so the caller can stop its health checks. */
  replace(table: RouteTable): RouteTable {
    const old = this.#table;
    this.#table = table;
    return old;
  }

  get mode(): TunnelMode {
    return this.#mode;
  }

  /** Why `mode` cannot be set with this table, or undefined. */
  refuseMode(mode: TunnelMode): string | undefined {
    if (mode === 'direct' && !this.#table.outbounds.has('DIRECT')) {
      return `mode direct needs a config with proxies (--config): everything already goes via ${this.final.label}`;
    }
    return undefined;
  }

  /** Applies to new connections; live ones keep their outbound (as mihomo). Check refuseMode first. */
  setMode(mode: TunnelMode): void {
    this.#mode = mode;
  }

  /** The GLOBAL selector's members as the API lists them: every group, then every proxy. */
  globalMembers(): string[] {
    return [...this.#table.groups.keys(), ...this.#table.outbounds.keys()];
  }

  /** What GLOBAL picks now: the selected member while it exists, else the table's final target. */
  globalNow(): string {
    const p = this.#globalPick;
    return p !== undefined && (this.#table.groups.has(p) || this.#table.outbounds.has(p)) ? p : this.#table.final;
  }

  /** PUT /proxies/GLOBAL; false when `name` is no member. */
  selectGlobal(name: string): boolean {
    if (!this.#table.groups.has(name) && !this.#table.outbounds.has(name)) return false;
    this.#globalPick = name;
    return true;
  }

  decide(ctx: RouteContext): Decision {
    const t = this.#table;
    // A reload may have brought a table without DIRECT (--upstream): rules then.
    if (this.#mode === 'rule' || (this.#mode === 'direct' && !t.outbounds.has('DIRECT'))) return t.decide(ctx);
    // No rule decided (mihomo shows an empty rule): the mode did.
    const { chain, outbound } =
      this.#mode === 'direct'
        ? t.follow('DIRECT', '')
        : t.follow(this.globalNow(), ctx.name === undefined ? ctx.ip : normName(ctx.name), ['GLOBAL']);
    return { outbound, rule: `mode ${this.#mode}`, line: 0, chain, ruleType: '', rulePayload: '' };
  }

  route(ctx: RouteContext): Outbound {
    return this.decide(ctx).outbound;
  }

  reportFailure(chain: readonly string[], why: string): void {
    this.#table.reportFailure(chain, why);
  }
}
