export { FakeDns, type FakeDnsOptions } from './FakeDns.js';
export { FakeIpFilter } from './filter.js';
export { loadMap, MAP_FILE, type SavedEntry, saveMap } from './persist.js';
export {
  type FakeIpEntry,
  FakeIpPool,
  type FakeIpStore,
  normalizeName,
  type PoolEvent,
  type PoolListener,
} from './pool.js';
export { FakeRange, intToIp, ipToInt } from './range.js';
export { defaultUpstream } from './resolvconf.js';
export { DnsServer, type DnsServerOptions, type QueryHandler } from './server.js';
export { Upstream, UpstreamError, type UpstreamOptions } from './upstream.js';
