/** The inspection commands the CLI registers (`nat ls|watch`, `dns ls|lookup`). */
export { dnsLookup, dnsLs, type DnsLookupOptions, type DnsRow } from './dns.js';
export { natLs, natWatch, type NatLsOptions, type NatLsRow, type NatWatchOptions } from './nat.js';
export type { InspectOptions } from './common.js';
export type { Out } from './format.js';
