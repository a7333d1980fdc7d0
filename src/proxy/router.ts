/**
 * Picks the outbound per connection. Rules are tried in order, first match
 * wins, else `final`. Today the daemon builds a Router with no rules and the
 * `--upstream` outbound as `final`; the rule seam is here so config-file
 * rules need no Listener change.
 */
import * as net from 'node:net';
import { UsageError } from '../errors.js';
import type { Outbound } from './outbound.js';

export interface RouteContext {
  /** The name the app asked for, when the destination was a fake address. */
  name?: string | undefined;
  /** The original destination address (the fake IP when `name` is set). */
  ip: string;
  port: number;
  proto: 'tcp' | 'udp';
}

export type RuleSpec =
  /** `example.com` matches example.com and *.example.com, not badexample.com. */
  | { domainSuffix: string; outbound: Outbound; proto?: 'tcp' | 'udp' }
  /** Substring of the name. */
  | { domainKeyword: string; outbound: Outbound; proto?: 'tcp' | 'udp' }
  /** The exact name. */
  | { domain: string; outbound: Outbound; proto?: 'tcp' | 'udp' }
  /**
   * Destination address in the CIDR (IPv4 or IPv6). Matches only connections
   * without a name: with a name, `ip` is a fake address that says nothing
   * about where the name lives (mihomo's `no-resolve` behaviour).
   */
  | { ipCidr: string; outbound: Outbound; proto?: 'tcp' | 'udp' };

type Match = (ctx: RouteContext, name: string | undefined) => boolean;

interface CompiledRule {
  match: Match;
  outbound: Outbound;
  proto?: 'tcp' | 'udp' | undefined;
}

/** Lowercase, no trailing dot: DNS names compare case-insensitively (RFC 4343). */
function normName(n: string): string {
  const l = n.toLowerCase();
  return l.endsWith('.') ? l.slice(0, -1) : l;
}

function compile(r: RuleSpec): CompiledRule {
  if ('domainSuffix' in r) {
    const s = normName(r.domainSuffix.replace(/^\*?\./, ''));
    if (s === '') throw new UsageError('routing rule domain-suffix is empty');
    const dotted = `.${s}`;
    return {
      outbound: r.outbound,
      proto: r.proto,
      match: (_c, n) => n !== undefined && (n === s || n.endsWith(dotted)),
    };
  }
  if ('domainKeyword' in r) {
    const k = r.domainKeyword.toLowerCase();
    if (k === '') throw new UsageError('routing rule domain-keyword is empty');
    return { outbound: r.outbound, proto: r.proto, match: (_c, n) => n?.includes(k) === true };
  }
  if ('domain' in r) {
    const d = normName(r.domain);
    return { outbound: r.outbound, proto: r.proto, match: (_c, n) => n === d };
  }
  const bl = new net.BlockList();
  const [addr, len, extra] = r.ipCidr.split('/');
  const family = net.isIP(addr ?? '');
  const prefix = Number(len);
  if (
    family === 0 ||
    extra !== undefined ||
    len === undefined ||
    !/^\d+$/.test(len) ||
    prefix > (family === 4 ? 32 : 128)
  ) {
    throw new UsageError(`routing rule ip-cidr "${r.ipCidr}" is not a CIDR; write e.g. 10.0.0.0/8 or fd00::/8`);
  }
  const type = family === 4 ? 'ipv4' : 'ipv6';
  bl.addSubnet(addr as string, prefix, type);
  return {
    outbound: r.outbound,
    proto: r.proto,
    match: (c, n) => n === undefined && net.isIP(c.ip) === family && bl.check(c.ip, type),
  };
}

export interface RouterOptions {
  /** Used when no rule matches (the `--upstream` outbound). */
  final: Outbound;
  /** @default [] */
  rules?: RuleSpec[];
}

export class Router {
  readonly final: Outbound;
  readonly #rules: CompiledRule[];

  constructor(opts: RouterOptions) {
    this.final = opts.final;
    this.#rules = (opts.rules ?? []).map(compile);
  }

  route(ctx: RouteContext): Outbound {
    const name = ctx.name === undefined ? undefined : normName(ctx.name);
    for (const r of this.#rules) {
      if (r.proto !== undefined && r.proto !== ctx.proto) continue;
      if (r.match(ctx, name)) return r.outbound;
    }
    return this.final;
  }
}
