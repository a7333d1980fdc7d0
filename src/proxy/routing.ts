/**
 * Builds the RouteTable the Router uses from the resolved configuration:
 * `--upstream` alone (one outbound for everything), or the Clash proxies,
 * groups and rules of `--config`.
 */
import { readFileSync } from 'node:fs';
import { type CountryResponse, Reader } from 'mmdb-lib';
import type { ProxySpec } from '../config/clash.js';
import type { StartConfig } from '../config.js';
import { UsageError } from '../errors.js';
import type { GroupDeps } from './groups.js';
import { type Outbound, parseUpstream, type UpstreamDeps } from './outbound.js';
import { DirectOutbound } from './outbounds/direct.js';
import { HttpOutbound } from './outbounds/http.js';
import { RejectOutbound } from './outbounds/reject.js';
import { RejectDropOutbound } from './outbounds/reject-drop.js';
import { Socks5Outbound } from './outbounds/socks5.js';
import { RouteTable } from './router.js';
import { type GeoIpLookup, ipWords } from './rules.js';

export interface RoutingDeps extends UpstreamDeps {
  log?: ((line: string) => void) | undefined;
  probe?: GroupDeps['probe'];
}

/** Opens a MaxMind-format database; GEOIP rules compare its `country.iso_code`. */
export function openGeoIp(path: string): GeoIpLookup {
  let reader: Reader<CountryResponse>;
  try {
    reader = new Reader(readFileSync(path));
  } catch (e) {
    throw new UsageError(`--geoip-db ${path}: not a readable MaxMind database (${(e as Error).message})`);
  }
  return (ip) => {
    try {
      const r = reader.get(ip);
      return (r?.country?.iso_code ?? r?.registered_country?.iso_code)?.toUpperCase();
    } catch {
      return undefined;
    }
  };
}

function proxyOutbound(p: ProxySpec, deps: RoutingDeps): Outbound {
  const auth =
    p.username !== undefined || p.password !== undefined
      ? { username: p.username ?? '', password: p.password ?? '' }
      : undefined;
  const host = p.server as string;
  const port = p.port as number;
  if (p.type === 'http') return new HttpOutbound({ host, port, auth, resolve: deps.resolve });
  const s = new Socks5Outbound({ host, port, auth, resolve: deps.resolve });
  if (p.udp) return s;
  // Clash's `udp: false` (its default): this proxy carries TCP only.
  return { kind: s.kind, label: s.label, connect: (dst, o) => s.connect(dst, o) };
}

export function buildRouteTable(
  c: Pick<StartConfig, 'routing' | 'upstream' | 'geoipDb'>,
  deps: RoutingDeps = {},
): RouteTable {
  const r = c.routing;
  if (!r) {
    const ob = parseUpstream(c.upstream, deps);
    return new RouteTable({ outbounds: new Map([[ob.label, ob]]), final: ob.label });
  }
  const outbounds = new Map<string, Outbound>([
    ['DIRECT', new DirectOutbound({ resolve: deps.resolve, loopGuard: deps.loopGuard })],
    ['REJECT', new RejectOutbound()],
    ['REJECT-DROP', new RejectDropOutbound()],
  ]);
  for (const p of r.proxies) outbounds.set(p.name, proxyOutbound(p, deps));
  const geoip = c.geoipDb !== undefined ? openGeoIp(c.geoipDb) : undefined;
  // No MATCH rule: what nothing matched goes DIRECT, as in Clash.
  return new RouteTable({
    outbounds,
    groups: r.groups,
    rules: r.rules,
    final: 'DIRECT',
    geoip,
    log: deps.log,
    probe: deps.probe,
  });
}

export interface RouteQuery {
  /** A name or an IP literal. */
  name: string;
  port: number;
  udp: boolean;
  src?: string | undefined;
  srcPort?: number | undefined;
}

export interface RouteAnswer {
  rule: string;
  line: number;
  chain: string[];
  outbound: string;
}

/** What `fakeproxy route` prints: the rule and chain a new connection to `q` takes now. */
export function explainRoute(table: RouteTable, q: RouteQuery): RouteAnswer {
  const isIp = ipWords(q.name) !== undefined;
  const d = table.decide({
    name: isIp ? undefined : q.name,
    ip: isIp ? q.name : '0.0.0.0',
    port: q.port,
    proto: q.udp ? 'udp' : 'tcp',
    srcIp: q.src,
    srcPort: q.srcPort,
  });
  return { rule: d.rule, line: d.line, chain: d.chain, outbound: d.outbound.label };
}
