/**
 * `/configs` as mihomo serves it (hub/route/configs.go): GET returns the
 * general settings in force; PATCH changes what fakeproxy can change live
 * and answers 400 naming every key it cannot, applying nothing then (never
 * a silent ignore). A key sent with the value in force is accepted as is:
 * dashboards send back what GET gave them.
 *
 * Live: `mode` (rule | global | direct, mihomo's tunnel mode), `log-level`,
 * `sniffing`. Everything else is a start flag (the TUN, LAN clients) or
 * something fakeproxy does not have (HTTP/SOCKS inbounds, IPv6).
 */
import { isDeepStrictEqual } from 'node:util';
import { TUNNEL_MODES, type TunnelMode } from '../proxy/router.js';
import { isLogLevel, LOG_LEVELS, type LogLevel } from './logs.js';

/** What PATCH can change without a restart. */
export interface LiveSettings {
  mode: TunnelMode;
  logLevel: LogLevel;
  sniffing: boolean;
}

/** The start-time facts GET /configs reports (from StartConfig). */
export interface FixedSettings {
  lan: readonly string[];
  tun: string;
  mtu: number;
  dnsHijack: boolean;
  cidr: string;
  gateway: string;
  prefixLen: number;
  /** fwmark of the daemon's own sockets (global mode), else 0. */
  routingMark: number;
}

/** GET /configs: mihomo's executor.GetGeneral fields, with fakeproxy's real values. */
export function generalConfig(f: FixedSettings, l: LiveSettings): Record<string, unknown> {
  return {
    port: 0,
    'socks-port': 0,
    'redir-port': 0,
    'tproxy-port': 0,
    'mixed-port': 0,
    'allow-lan': f.lan.length > 0,
    'lan-allowed-ips': [...f.lan],
    'lan-disallowed-ips': [],
    'skip-auth-prefixes': [],
    'bind-address': '*',
    mode: l.mode,
    'log-level': l.logLevel,
    ipv6: false,
    sniffing: l.sniffing,
    'tcp-concurrent': false,
    'find-process-mode': 'off',
    'interface-name': '',
    'routing-mark': f.routingMark,
    tun: {
      enable: true,
      device: f.tun,
      stack: 'system',
      'dns-hijack': f.dnsHijack ? ['any:53'] : [],
      'auto-route': true,
      'auto-detect-interface': false,
      mtu: f.mtu,
      'inet4-address': [`${f.gateway}/${f.prefixLen}`],
      'file-descriptor': 0,
    },
    'fake-ip-range': f.cidr,
  };
}

const NO_INBOUND = 'fakeproxy has no HTTP/SOCKS/redir/tproxy inbound: the TUN is its one inbound';
const LAN = 'LAN clients are named at start: --lan CIDR';
/** Why a key other than the live ones cannot change at run time. */
const FIXED_WHY: Readonly<Record<string, string>> = {
  port: NO_INBOUND,
  'socks-port': NO_INBOUND,
  'redir-port': NO_INBOUND,
  'tproxy-port': NO_INBOUND,
  'mixed-port': NO_INBOUND,
  'allow-lan': LAN,
  'lan-allowed-ips': LAN,
  'lan-disallowed-ips': LAN,
  'skip-auth-prefixes': 'fakeproxy has no inbound with authentication',
  'bind-address': NO_INBOUND,
  ipv6: 'the fake range and the TUN are IPv4 only',
  'tcp-concurrent': 'not supported by fakeproxy (one dial per connection)',
  'find-process-mode': 'not supported by fakeproxy (no PROCESS-NAME rules)',
  'interface-name': 'not supported by fakeproxy (outbound sockets follow the routing table)',
  'routing-mark': 'set at start: --fwmark',
  'fake-ip-range': 'set at start: --cidr (addresses apps hold would change)',
  tun: 'the TUN is fakeproxy itself: its settings are start flags (--tun, --mtu, --dns-hijack)',
};

export interface PatchPlan {
  set: Partial<LiveSettings>;
  /** `key (why)` per key that cannot be applied; non-empty → apply nothing. */
  refused: string[];
}

/**
 * What a PATCH body asks, checked against the settings in force (`now` is
 * generalConfig's answer). `refuseMode` says why a mode cannot be used here.
 */
export function planPatch(
  body: Record<string, unknown>,
  now: Record<string, unknown>,
  refuseMode: (m: TunnelMode) => string | undefined = () => undefined,
): PatchPlan {
  const set: Partial<LiveSettings> = {};
  const refused: string[] = [];
  for (const [k, v] of Object.entries(body)) {
    if (k === 'mode') {
      // mihomo reads the mode case-insensitively.
      const m = typeof v === 'string' ? v.toLowerCase() : '';
      if (!(TUNNEL_MODES as readonly string[]).includes(m)) {
        refused.push(`mode (${JSON.stringify(v)}: one of ${TUNNEL_MODES.join(', ')})`);
        continue;
      }
      const why = refuseMode(m as TunnelMode);
      if (why) refused.push(`mode (${why})`);
      else set.mode = m as TunnelMode;
    } else if (k === 'log-level') {
      if (typeof v === 'string' && isLogLevel(v)) set.logLevel = v;
      else refused.push(`log-level (${JSON.stringify(v)}: one of ${LOG_LEVELS.join(', ')})`);
    } else if (k === 'sniffing') {
      if (typeof v === 'boolean') set.sniffing = v;
      else refused.push(`sniffing (${JSON.stringify(v)}: true or false)`);
    } else if (k === 'tun' && v !== null && typeof v === 'object' && !Array.isArray(v)) {
      const cur = now.tun as Record<string, unknown>;
      for (const [tk, tv] of Object.entries(v as Record<string, unknown>)) {
        if (!(tk in cur)) refused.push(`tun.${tk} (unknown key)`);
        else if (!isDeepStrictEqual(tv, cur[tk])) refused.push(`tun.${tk} (${FIXED_WHY.tun})`);
      }
    } else if (!(k in FIXED_WHY)) {
      refused.push(`${k} (unknown key)`);
    } else if (!isDeepStrictEqual(v, now[k])) {
      refused.push(`${k} (${FIXED_WHY[k]})`);
    }
  }
  return { set, refused };
}
