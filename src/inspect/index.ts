/** The inspection commands the CLI registers (`nat ls|watch`, `dns ls|lookup`). */

export type { InspectOptions } from './common.js';
export { type DnsLookupOptions, type DnsRow, dnsLookup, dnsLs } from './dns.js';
export type { Out } from './format.js';
export { type NatLsOptions, type NatLsRow, type NatWatchOptions, natLs, natWatch } from './nat.js';
