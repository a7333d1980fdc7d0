import { Address4 } from 'ip-address';
import { UsageError } from '../errors.js';

/** An IPv4 range as integers, validated once at the edge (CLI/config). */
export interface Ipv4Range {
  /** Canonical text, e.g. '198.18.0.0/16'. */
  text: string;
  network: number;
  prefixLen: number;
  /** First host: the TUN address, DNS server and Listener. */
  gateway: number;
  broadcast: number;
  networkIp: string;
  gatewayIp: string;
}

export function ipToInt(ip: string): number {
  const p = ip.split('.');
  return ((+p[0] << 24) | (+p[1] << 16) | (+p[2] << 8) | +p[3]) >>> 0;
}

/**
 * Dotted quad at `text[from..]` → unsigned 32-bit integer, or -1 when it is
 * not exactly four decimal octets. No split, no substrings: the Listener runs
 * it once per accepted connection on the peer address Node reports.
 */
export function dottedToU32(text: string, from = 0): number {
  let n = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || dots === 3) return -1;
      n = n * 256 + octet;
      octet = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57 && digits < 3) {
      octet = octet * 10 + (c - 48);
      if (octet > 255) return -1;
      digits++;
    } else return -1;
  }
  if (digits === 0 || dots !== 3) return -1;
  return n * 256 + octet;
}

/** Dotted quad → uint32, or undefined when it is not exactly four decimal octets. */
export function parseIpv4(text: string): number | undefined {
  const n = dottedToU32(text);
  return n < 0 ? undefined : n;
}

export function intToIp(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

export function isIpv4(text: string): boolean {
  return Address4.isValid(text) && !text.includes('/');
}

/**
 * Parses 'a.b.c.d/len'. Host bits are cleared (198.18.0.1/16 means the
 * 198.18.0.0/16 range, as mihomo and sing-box accept it). The prefix must leave
 * at least two host addresses besides the gateway: /30 is the smallest range.
 */
export function parseCidr(text: string, flag = '--cidr'): Ipv4Range {
  if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(text) || !Address4.isValid(text)) {
    throw new UsageError(`${flag} ${JSON.stringify(text)} is not an IPv4 CIDR such as 198.18.0.0/16`);
  }
  const a = new Address4(text);
  const prefixLen = a.subnetMask;
  if (prefixLen > 30 || prefixLen < 8) {
    throw new UsageError(`${flag} ${text}: the prefix must be between /8 and /30 (a /30 leaves one fake address)`);
  }
  const mask = prefixLen === 0 ? 0 : (0xffffffff << (32 - prefixLen)) >>> 0;
  const network = (ipToInt(a.startAddress().correctForm()) & mask) >>> 0;
  const broadcast = (network | (~mask >>> 0)) >>> 0;
  const gateway = network + 1;
  return {
    text: `${intToIp(network)}/${prefixLen}`,
    network,
    prefixLen,
    gateway,
    broadcast,
    networkIp: intToIp(network),
    gatewayIp: intToIp(gateway),
  };
}

export function rangeContains(r: Ipv4Range, ip: number): boolean {
  return ip >= r.network && ip <= r.broadcast;
}

export function rangesOverlap(a: { network: number; broadcast: number }, b: { network: number; broadcast: number }) {
  return a.network <= b.broadcast && b.network <= a.broadcast;
}

// Special-purpose IPv4 blocks (RFC 6890 and its updates): a fake range inside
// one of them hides no real host on the Internet.
const SPECIAL = [
  '0.0.0.0/8',
  '10.0.0.0/8',
  '100.64.0.0/10',
  '127.0.0.0/8',
  '169.254.0.0/16',
  '172.16.0.0/12',
  '192.0.0.0/24',
  '192.0.2.0/24',
  '192.168.0.0/16',
  '198.18.0.0/15',
  '198.51.100.0/24',
  '203.0.113.0/24',
  '240.0.0.0/4',
].map((c) => {
  const [ip, len] = c.split('/');
  const mask = (0xffffffff << (32 - +len)) >>> 0;
  const network = ipToInt(ip) & mask;
  return { network: network >>> 0, broadcast: (network | (~mask >>> 0)) >>> 0 };
});

/** True when the range lies (even partly) outside special-purpose space, i.e. real hosts may live there. */
export function isPublicSpace(r: Ipv4Range): boolean {
  return !SPECIAL.some((s) => r.network >= s.network && r.broadcast <= s.broadcast);
}

export function parseHostPort(text: string, defaultPort: number, flag: string): { host: string; port: number } {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(text);
  if (!m || !isIpv4(m[1])) {
    throw new UsageError(
      `${flag} ${JSON.stringify(text)} is not ADDRESS[:PORT] with an IPv4 address, e.g. 127.0.0.1:53`,
    );
  }
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UsageError(`${flag} ${text}: port must be 1-65535`);
  }
  return { host: m[1], port };
}

export function parsePort(text: string, flag: string): number {
  const port = Number(text);
  if (!/^\d+$/.test(text) || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw new UsageError(`${flag} ${JSON.stringify(text)}: port must be an integer 1-65535`);
  }
  return port;
}

/**
 * Parses a source network for `--lan`: 'a.b.c.d/len' (0..32, host bits
 * cleared) or a bare address (/32). Returns the canonical text.
 */
export function parseSourceCidr(text: string, flag = '--lan'): string {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?$/.exec(text);
  const len = m?.[2] === undefined ? 32 : Number(m[2]);
  if (!m || !isIpv4(m[1]) || len > 32) {
    throw new UsageError(
      `${flag} ${JSON.stringify(text)} is not an IPv4 network such as 192.168.1.0/24 (or an address)`,
    );
  }
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  return `${intToIp((ipToInt(m[1]) & mask) >>> 0)}/${len}`;
}

/** A set of IPv4 networks (canonical 'a.b.c.d/len' text) asked by address. */
export class CidrSet {
  readonly #nets: [number, number][];
  constructor(cidrs: readonly string[]) {
    this.#nets = cidrs.map((c) => {
      const [ip, len] = c.split('/');
      const mask = Number(len) === 0 ? 0 : (0xffffffff << (32 - Number(len))) >>> 0;
      return [(ipToInt(ip) & mask) >>> 0, mask];
    });
  }
  has(ip: string): boolean {
    if (!isIpv4(ip)) return false;
    const a = ipToInt(ip);
    for (const [net, mask] of this.#nets) if ((a & mask) >>> 0 === net) return true;
    return false;
  }
}
