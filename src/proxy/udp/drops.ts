/** Counter records keyed by drop reason, all keys present (stats stay a fixed shape for dashboards). */
import type { UdpDropReason } from '../outbound.js';

// Kept here, not in outbound.ts: outbound.ts imports the outbounds, which import this (no value cycle).
export const UDP_DROP_REASONS: readonly UdpDropReason[] = [
  'resolve-failed',
  'queue-full',
  'send-error',
  'oversized',
  'truncated',
  'fragment',
  'bad-atyp',
  'foreign-source',
  'closed',
];

export function dropCounters(): Record<UdpDropReason, number> {
  const r = {} as Record<UdpDropReason, number>;
  for (const k of UDP_DROP_REASONS) r[k] = 0;
  return r;
}

/** `::ffff:1.2.3.4` → `1.2.3.4` (a dual-stack socket reports IPv4 peers mapped). */
export function unmapV4(ip: string): string {
  return ip.startsWith('::ffff:') && ip.includes('.') ? ip.slice(7) : ip;
}

/** Key for a (host, port) pair in maps; `|` cannot occur in a host name or address. */
export function hpKey(host: string, port: number): string {
  return `${host}|${port}`;
}

/** SO_RCVBUF of an association's upstream socket unless UdpAssociateOptions.recvBufferBytes says otherwise (see there). */
export const DEFAULT_UPSTREAM_RCVBUF = 1 << 20;
