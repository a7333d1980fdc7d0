/**
 * The NAT contract shared by native/, src/nat, src/proxy and the Redis mirror.
 * Addresses are strings (dotted quad for IPv4; IPv6 text later) so the seam
 * stays address-family generic.
 */
export type Proto = 'tcp' | 'udp';

/** TCP states from flags (DESIGN.md "NAT table"); UDP flows are always 'udp'. */
export type FlowState = 'syn' | 'established' | 'fin' | 'closed' | 'udp';

export interface FlowEntry {
  /** Engine-unique id of this flow (never reused while the process lives). */
  id: number;
  proto: Proto;
  /** The app side: who sent the first packet. */
  srcIp: string;
  srcPort: number;
  /** The original destination (usually a fake IP). */
  dstIp: string;
  dstPort: number;
  /** The address the Listener sees as its peer. */
  natIp: string;
  natPort: number;
  state: FlowState;
  /** Milliseconds since the Unix epoch. */
  createdMs: number;
  lastSeenMs: number;
  /** app → Listener */
  pktsOut: number;
  bytesOut: number;
  /** Listener → app */
  pktsIn: number;
  bytesIn: number;
}

export type CloseReason = 'fin' | 'rst' | 'timeout' | 'evicted' | 'shutdown';

export interface FlowOpenEvent {
  type: 'open';
  flow: FlowEntry;
}
export interface FlowCloseEvent {
  type: 'close';
  flow: FlowEntry;
  reason: CloseReason;
}
export type FlowEvent = FlowOpenEvent | FlowCloseEvent;

/**
 * The facts the Listener needs per accepted connection, as numbers: what
 * `NatLookup.lookupPacked` fills. IPv4 addresses are unsigned 32-bit integers.
 */
export interface PackedFlow {
  id: number;
  srcIp: number;
  srcPort: number;
  dstIp: number;
  dstPort: number;
}

/** What the Listener needs from the NAT: synchronous, cheap, once per accepted connection / datagram source. */
export interface NatLookup {
  /** The whole entry (inspection, UDP sessions): builds an object and address strings per call. */
  lookup(proto: Proto, natIp: string, natPort: number): FlowEntry | undefined;
  /**
   * The per-connection path: `natIp` as an unsigned 32-bit integer; on a hit
   * writes the flow's facts into `out` (reused by the caller, no allocation)
   * and returns true. Optional so small test NATs may offer `lookup` only.
   */
  lookupPacked?(proto: Proto, natIp: number, natPort: number, out: PackedFlow): boolean;
}
