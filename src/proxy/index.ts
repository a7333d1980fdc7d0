export { type ResolveName, upstreamResolver } from './dial.js';
export { ProxyError, type ProxyErrorCode } from './errors.js';
export {
  type NameLookup,
  type SessionEvent,
  TcpListener,
  type TcpListenerOptions,
  type TcpListenerStats,
} from './listener.js';
export {
  type ConnectOptions,
  type Destination,
  type Outbound,
  parseUpstream,
  type UdpAssociation,
  type UpstreamDeps,
} from './outbound.js';
export { DirectOutbound } from './outbounds/direct.js';
export { HttpOutbound } from './outbounds/http.js';
export { RejectOutbound } from './outbounds/reject.js';
export { Socks5Outbound } from './outbounds/socks5.js';
export { Relay, type RelayEnd, type RelayOptions, type RelayResult, relay } from './relay.js';
export { type RouteContext, Router, type RouterOptions, type RuleSpec } from './router.js';
