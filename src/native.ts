/**
 * The one file that loads the compiled addon (build/Release/fakeproxy.node)
 * and declares its surface as interfaces (modelled on serialport's
 * lib/poller.ts). Everything else imports from here, never the .node file.
 *
 * Native errors are JS errors with Node-style `code` (errno name), `errno`
 * and `syscall`, and a message that names the fix.
 */

import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { OUR_UDP_PAYLOAD } from './dns/wire.js';
import type { FlowEntry } from './nat/types.js';

// ---- TUN device (native/tun.cc) ----
export interface TunOpenOptions {
  /** Interface name, at most 15 bytes (IFNAMSIZ-1). */
  name: string;
  mtu: number;
  /** Gateway address assigned to the device (dotted quad). */
  address: string;
  /** Prefix length of the range; the kernel adds the prefix route. */
  prefixLen: number;
  /** Number of queues (IFF_MULTI_QUEUE when > 1); one fd per queue. */
  queues: number;
  /**
   * TUN offloads: IFF_VNET_HDR + TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 |
   * TUN_F_TSO6). The kernel hands the engine TSO super-packets (up to 64 KiB)
   * with partial checksums and takes GSO packets back: one read and one write
   * per 64 KiB instead of per MTU. When the kernel refuses, the device opens
   * without them (TunHandle.offload false, offloadError says why).
   * @default true
   */
  offload?: boolean;
  /** Kernel transmit queue length (SIOCSIFTXQLEN); undefined keeps the kernel's 500. Why: START_OPTIONS.tunTxqueuelen. */
  txQueueLen?: number;
}
export interface TunHandle {
  name: string;
  ifindex: number;
  /** Non-blocking fds, one per queue. */
  fds: number[];
  /** Offloads on: every read/write on the fds starts with a 10-byte virtio_net_hdr. */
  offload: boolean;
  /** Why offload was asked for but is off (the ioctl and errno text). */
  offloadError?: string;
}
// ---- Packet engine (native/engine*.cc) ----
export interface EngineTimeouts {
  tcpSynMs: number;
  tcpEstablishedMs: number;
  tcpFinMs: number;
  /** Linger after both FINs or a RST (default 10 000, conntrack's CLOSE); the NAT pair then cools for reuseDelayMs. */
  tcpClosedMs?: number;
  udpMs: number;
  udpDnsMs: number;
}
export interface EngineOptions {
  /** Network address of the range and its prefix length. */
  network: string;
  prefixLen: number;
  /** Gateway (TUN address). Never used as a NAT address. */
  gateway: string;
  /** Listener port on the gateway (TCP and UDP). */
  listenPort: number;
  /** DNS port on the gateway; packets to any-address:53 are NATed here when dnsHijack. */
  dnsPort: number;
  dnsHijack: boolean;
  maxFlows: number;
  timeouts: EngineTimeouts;
  /** How long a freed NAT pair is not handed out again (TIME_WAIT is 60 s). */
  reuseDelayMs: number;
  /**
   * Most half-open TCP flows (SYN seen, handshake not complete) one source
   * address may hold; a SYN beyond it gets a RST (counter halfOpenCapped).
   * 0 or absent: no cap.
   */
  maxHalfOpenPerSource?: number;
  /**
   * Serve only packets whose source is the gateway or inside one of these
   * (IPv4 addresses or CIDRs); others are dropped (dropForeignSource).
   * Absent: every source is served. Replace later with setSources().
   */
  sources?: string[];
}
/** A flow as the engine reports it: FlowEntry (src/nat/types.ts) with the IP protocol number. */
export interface NativeFlow extends Omit<FlowEntry, 'proto'> {
  proto: 6 | 17;
}
/** Slots of the Float64Array `lookupPacked` fills (native/engine_addon.cc LookupPacked writes them in this order). */
export const PACKED_FLOW = Object.freeze({
  id: 0,
  /** App address, IPv4 as an unsigned 32-bit integer. */
  srcIp: 1,
  srcPort: 2,
  /** Original destination, IPv4 as an unsigned 32-bit integer. */
  dstIp: 3,
  dstPort: 4,
  /** Index into PACKED_STATES. */
  state: 5,
  createdMs: 6,
  lastSeenMs: 7,
});
export const PACKED_FLOW_LEN = 8;
/** fp::FlowState order (native/flow_table.h). */
export const PACKED_STATES = Object.freeze(['syn', 'established', 'fin', 'closed', 'udp'] as const);

/**
 * Slots of one flow event in the Float64Array that start()'s callback and
 * drainEventsPacked() hand over (native/engine_addon.cc EventsToPacked), FLOW_EVENT_FIELDS per event.
 */
export const FLOW_EVENT = Object.freeze({
  /** 0: open; 1 + an index into CLOSE_REASONS: close. */
  kind: 0,
  id: 1,
  proto: 2,
  /** IPv4 addresses as unsigned 32-bit integers. */
  srcIp: 3,
  srcPort: 4,
  dstIp: 5,
  dstPort: 6,
  natIp: 7,
  natPort: 8,
  /** Index into PACKED_STATES. */
  state: 9,
  createdMs: 10,
  lastSeenMs: 11,
  pktsOut: 12,
  bytesOut: 13,
  pktsIn: 14,
  bytesIn: 15,
});
export const FLOW_EVENT_FIELDS = 16;
/** fp::CloseReason order (native/flow_table.h). */
export const CLOSE_REASONS = Object.freeze(['fin', 'rst', 'timeout', 'evicted', 'shutdown'] as const);

export interface NativeFlowEvent {
  type: 'open' | 'close';
  flow: NativeFlow;
  reason?: 'fin' | 'rst' | 'timeout' | 'evicted' | 'shutdown';
}
export interface EngineStats {
  [counter: string]: number;
}
export interface NativeEngine {
  /**
   * Start one engine thread per fd; events are delivered to JS in batches.
   * `vnetHdr[i]`: fd i carries a virtio_net_hdr (TUN offloads); when omitted
   * the engine asks the kernel (TUNGETIFF) per fd.
   */
  start(
    fds: number[],
    /** Events as numbers, FLOW_EVENT_FIELDS each (layout FLOW_EVENT). */
    onEvents: (events: Float64Array) => void,
    vnetHdr?: boolean[],
    /** A thread ended on an error (errno > 0) — not on stop(); called on the JS thread. */
    onThreadExit?: (errno: number, queue: number) => void,
  ): void;
  /** Stop and join the threads. Idempotent. */
  stop(): void;
  lookup(proto: 6 | 17, natIp: string, natPort: number): NativeFlow | undefined;
  /**
   * The per-connection lookup: `natIp` as an unsigned 32-bit integer; on a
   * hit fills `out` (a Float64Array of PACKED_FLOW_LEN, layout PACKED_FLOW)
   * and returns true. Builds no object and no address text.
   */
  lookupPacked(proto: 6 | 17, natIp: number, natPort: number, out: Float64Array): boolean;
  entries(): NativeFlow[];
  stats(): EngineStats;
  /**
   * Test/bench seam: run one packet through the same classify+rewrite code
   * the thread uses, without a TUN. Returns the packet(s) the engine would
   * write to the TUN (rewritten packet, RST, ICMP reply/error) or none (drop).
   * `vnetHdr`: the packet (and every packet returned) starts with the 10-byte
   * virtio_net_hdr of a TUN with offloads, as the engine thread sees it then.
   */
  processPacket(packet: Buffer, nowMs: number, vnetHdr?: boolean): Buffer[];
  /**
   * Test seam: run expiry as the thread would at time nowMs. Returns the RSTs
   * the thread would write into the TUN towards apps whose TCP flow timed
   * out while open (IPv4 packets, no virtio_net_hdr).
   */
  expire(nowMs: number): Buffer[];
  /** Allocate (or find) a flow from the Listener side, for UDP replies from a remote the app never sent to. */
  ensureFlow(proto: 6 | 17, srcIp: string, srcPort: number, dstIp: string, dstPort: number, nowMs: number): NativeFlow;
  /**
   * Take the queued open/close events now (the same queue the thread's batched
   * callback drains). For tests and for engines driven by processPacket only.
   */
  drainEvents(): NativeFlowEvent[];
  /** The same as start()'s callback gets them: FLOW_EVENT_FIELDS numbers per event. */
  drainEventsPacked(): Float64Array;
  /** Remove every flow; each gets a close event with reason 'shutdown'. */
  clear(nowMs?: number): void;
  /** Turn the source filter on with this list (see EngineOptions.sources). */
  setSources(cidrs: string[]): void;
}

// ---- Batched UDP socket (native/dgram_batch*.cc) ----
export interface DgramSocketOptions {
  /** IPv4 or IPv6 literal to bind. */
  host: string;
  /** 0 picks a free port. */
  port: number;
  /** Datagrams per recvmmsg (1 … 1024). @default 64 */
  batch?: number;
  /** recvmmsg batches per event-loop wake-up before yielding to other work. @default 4 */
  rounds?: number;
  /** Largest datagram received whole; bigger ones are dropped and counted (truncated). @default 65535 */
  maxDatagram?: number;
  /** SO_RCVBUF / SO_SNDBUF (capped by the kernel at rmem_max / wmem_max); 0 keeps the default. */
  recvBufferBytes?: number;
  sendBufferBytes?: number;
}
export interface DgramSocketStats {
  received: number;
  recvCalls: number;
  /** Datagrams larger than maxDatagram, dropped. */
  truncated: number;
  /** Datagrams the kernel dropped because the receive buffer was full (SO_RXQ_OVFL). */
  kernelDrops: number;
  sent: number;
  sendCalls: number;
  /** Datagrams the kernel refused (send buffer full, per-datagram errors): dropped. */
  sendDropped: number;
  wakeups: number;
  /** Queries answered by the attached FakeAnswers table without a call into JS. */
  fastAnswered: number;
  /** errno name of the last refused send, '' if none. */
  lastSendError: string;
}
/** Words of `meta` per datagram in a NativeDgramSocket batch (native/dgram_batch.h kDgramMetaWords). */
export const DGRAM_META_WORDS = 8;
/**
 * A UDP socket polled on the event loop that receives with recvmmsg and sends
 * with sendmmsg. Layout of `meta` (both ways): DGRAM_META_WORDS per datagram — offset
 * and length in `bytes`, family (4|6), peer port, peer address (IPv4: one
 * host-order word; IPv6: four big-endian words). See src/util/dgramBatch.ts.
 */
export interface NativeDgramSocket {
  start(onBatch: (bytes: Buffer, meta: Uint32Array, count: number) => void): void;
  send(bytes: Buffer, meta: Uint32Array, count: number): number;
  address(): { address: string; port: number; family: 'IPv4' | 'IPv6' };
  stats(): DgramSocketStats;
  /** Answer what `answers` can on the socket's own wake-up (native/fake_answers.h); null detaches. */
  setFastPath(answers: NativeFakeAnswers | null): void;
  close(): void;
}

/**
 * The DNS fast path's table (native/fake_answers.h): fake A answers for names
 * that already hold an address, made by the DNS sockets it is attached to.
 * A cache the owner of the fake-IP map keeps current, never the map itself.
 */
export interface NativeFakeAnswers {
  /** name: lower-case presentation form, no trailing dot; ip: host-order IPv4. */
  set(name: string, ip: number): void;
  delete(name: string): void;
  clear(): void;
  /** IPv4 sources (host order) the fast path serves: all, or `addrs` (and 127/8 with `loopback`); others reach JS. None until called. */
  setTrusted(addrs: number[], loopback: boolean, all: boolean): void;
  /** What a socket would send to `source` for `query`; undefined when JS must answer (tests). */
  answer(query: Buffer, source: number): Buffer | undefined;
  /** Names answered since the last call, each once (for the pool's LRU). */
  takeHits(): string[];
  stats(): { entries: number; answered: number };
}

// ---- Native TCP relay (native/relay*.cc) ----
export interface NativeRelayOptions {
  /** Epoll worker threads; pairs are spread over them round-robin. */
  threads: number;
  /** F_SETPIPE_SZ of each direction's pipe: the most bytes in flight per direction. */
  pipeSize?: number;
  /** No byte either way for this long closes the pair (plain close). 0 disables. */
  idleTimeoutMs: number;
}
export interface NativeRelayTotals {
  active: number;
  /** Bytes written so far, ended pairs included. */
  bytesUp: number;
  bytesDown: number;
  /** Pipes open now (in use + pooled). */
  pipes: number;
}
/** Fields per record in the Float64Array handed to onEnd / returned by stop(). */
export const RELAY_RECORD_FIELDS = 6;
export interface NativeRelay {
  /**
   * Relay appFd ⇄ upFd under `id`; both fds are dup'd (the caller still
   * closes its own). preUp/preDown are written first to the upstream / the
   * app. Throws (code EBADF, ENOTSOCK, EPROTOTYPE, EEXIST, ESHUTDOWN) on bad
   * input.
   */
  add(id: number, appFd: number, upFd: number, preUp?: Buffer | null, preDown?: Buffer | null): void;
  /**
   * Like add(), but the upstream is a new TCP socket the relay connects to
   * addr:port itself (addr: IPv4 as an unsigned 32-bit number, or an IPv4/IPv6
   * literal), with SO_MARK `mark` unless 0. A connect that fails or takes
   * longer than connectTimeoutMs resets the app and ends the pair with how
   * `connect-failed` and its errno. Throws (code as add(), or the errno of
   * socket/setsockopt: EMFILE, EPERM) when it fails at once; connect(2) runs on the relay thread
   * unless `local` is given.
   */
  dial(
    id: number,
    appFd: number,
    addr: number | string,
    port: number,
    mark: number,
    connectTimeoutMs: number,
    preUp?: Buffer | null,
    /** appFd is handed over (not dup'd): an fd from TcpAcceptor; reset and closed when dial throws. */
    own?: boolean,
    /**
     * Connect on this thread, before dial returns, and write the bound local
     * [IPv4 as a u32, port] here (port 0: not IPv4, or the connect failed at
     * once): the loop guard's 4-tuple (src/proxy/ownTcp.ts).
     */
    local?: Float64Array | null,
    /**
     * addr:port is a SOCKS5 proxy: after the greeting the relay sends this
     * CONNECT request (and socks5Auth, an RFC 1929 request, if the proxy
     * picks username/password), reads exactly the reply, then relays. A
     * failure ends the pair `connect-failed` with the record's handshake
     * field set (native/relay.h HsFail).
     */
    proxyRequest?: Buffer | null,
    socks5Auth?: Buffer | null,
    /**
     * Given: addr:port is an HTTP proxy and proxyRequest its CONNECT request
     * head; the relay reads the response head (at most this many bytes, and
     * nothing past it) and relays on a well-formed 2xx. Any other head ends
     * the pair `connect-failed` (HsFail kHttpHead) and reaches onEnd's
     * `heads`.
     */
    httpMaxHead?: number,
  ): void;
  /** End pair `id` now (RST both ways when `reset`, else FIN); false when it is not live. */
  close(id: number, reset: boolean): boolean;
  /** Live byte counts into out[0] (up) and out[1] (down); false when the pair is not live. */
  bytes(id: number, out: Float64Array): boolean;
  totals(): NativeRelayTotals;
  /** Close every pair (FIN), join the threads; returns the records not yet delivered. Idempotent. */
  stop(): Float64Array;
}

// ---- Native UDP relay (native/udp_relay*.cc) ----
export interface NativeUdpRelayOptions {
  /** Listener address (IPv4 as an unsigned 32-bit integer) and port (0 picks one). */
  ip: number;
  port: number;
  /** SO_RCVBUF of the listener socket (the kernel caps it at net.core.rmem_max). */
  recvBufferBytes: number;
  /** SO_MARK of the listener socket; 0 = none. */
  mark: number;
  /** Largest payload relayed either way; bigger ones are dropped (counted). */
  maxPayloadBytes: number;
  /** Datagrams per recvmmsg. */
  batch: number;
  /** The TUN's name: datagrams to the listener that arrived on any other interface are dropped ('foreign-ingress'). */
  device?: string;
}
/** Fields per datagram in the first Float64Array onEvents gets: [assoc, natIp, natPort, off, len, keyOff, keyLen]. */
export const UDP_RELAY_DGRAM_FIELDS = 7;
/**
 * How a relay ended, the first thing that ended it; native end codes
 * (native/relay.h RelayHow) index this list:
 * - done: both directions finished with FIN
 * - idle: idle timeout
 * - app-reset: the app side failed (RST or other error); upstream was reset
 * - upstream-reset: the upstream side failed; the app was reset
 * - closed: close() was called (shutdown)
 * - connect-failed: SpliceRelay.dial only: the upstream never connected; the app was reset
 */
export const RELAY_ENDS = Object.freeze([
  'done',
  'idle',
  'app-reset',
  'upstream-reset',
  'closed',
  'connect-failed',
] as const);
export type RelayEnd = (typeof RELAY_ENDS)[number];

/** Fields per ended association: [id, how (index into UDP_RELAY_ENDS), dgramsUp, bytesUp, dgramsDown, bytesDown]. */
export const UDP_RELAY_END_FIELDS = 6;
/** fp::UdpEnd order (native/udp_relay.h). */
export const UDP_RELAY_ENDS = Object.freeze(['idle', 'closed', 'upstream-closed'] as const);
/** fp::UdpDrop order (native/udp_relay.h): the index of each count in totals().drops. */
export const UDP_RELAY_DROPS = Object.freeze([
  'oversized',
  'send-error',
  'truncated',
  'fragment',
  'bad-atyp',
  'foreign-source',
  'queue-full',
  'rcvbuf',
  'foreign-ingress',
] as const);
export interface NativeUdpRelayTotals {
  datagramsUp: number;
  bytesUp: number;
  datagramsDown: number;
  bytesDown: number;
  associations: number;
  bindings: number;
  /** Datagrams handed to JS because their NAT address had no binding yet. */
  misses: number;
  /** Replies handed to JS because their remote mapped to no NAT address. */
  unknownRemotes: number;
  /** Counts indexed like UDP_RELAY_DROPS. */
  drops: Float64Array;
  /** UDP GSO use (fp::UdpGsoTotals): up = towards upstreams, down = from the listener towards apps. */
  gso: { up: UdpGsoCounts; down: UdpGsoCounts };
  /** Listener receives that held several datagrams (UDP_GRO: the engine wrote a run of one flow as one GSO packet), and the datagrams in them. */
  gro: { receives: number; segments: number };
}
export interface UdpGsoCounts {
  /** Sends the kernel took as one UDP_SEGMENT super-datagram, and the datagrams they carried. */
  sends: number;
  segments: number;
  /** Sockets on which GSO was turned off because the kernel refused it (EIO: an IPsec route, or before Linux 6.11 no checksum offload on it, e.g. --no-tun-offload; ENOPROTOOPT: no UDP_SEGMENT). */
  disabled: number;
  /** Segment-size limits learned from EINVAL (a segment over the path MTU). */
  limited: number;
}
export interface NativeUdpRelay {
  /** The listener's bound port. */
  port(): number;
  /**
   * New association `id` (≥ 1) with its own upstream socket bound to
   * bindIp:0; kind 0 direct, 1 SOCKS5. Returns the local port. idleMs
   * applies once a non-DNS destination is bound, dnsIdleMs before; 0 disables.
   */
  open(
    id: number,
    kind: 0 | 1,
    bindIp: number,
    mark: number,
    recvBufferBytes: number,
    idleMs: number,
    dnsIdleMs: number,
  ): number;
  setSocksRelay(id: number, ip: number, port: number): boolean;
  /**
   * Datagrams from natIp:natPort go out on association `id` (direct: to
   * dstIp:dstPort, dstIp an IPv4 integer or the 16 bytes of an IPv6 address;
   * SOCKS5: with the header for socksAddr, a SOCKS5 address); replies keyed
   * remoteKey (a SOCKS5 address) come back to natIp:natPort.
   */
  bind(
    natIp: number,
    natPort: number,
    id: number,
    dstIp: number | Buffer,
    dstPort: number,
    socksAddr: Buffer | undefined,
    remoteKey: Buffer | undefined,
    dns: boolean,
  ): boolean;
  addRemote(id: number, remoteKey: Buffer, natIp: number, natPort: number): boolean;
  unbind(natIp: number, natPort: number): void;
  /** Through natIp:natPort's binding; false when it has none. */
  sendUp(natIp: number, natPort: number, payload: Uint8Array): boolean;
  /** From the listener socket to an app's NAT address. */
  sendDown(natIp: number, natPort: number, payload: Uint8Array): boolean;
  /** End association `id` (an ended record follows); false when not live. */
  close(id: number): boolean;
  /** Monotonic ms of the association's last datagram; -1 when not live. */
  lastActive(id: number): number;
  /** Live counts of association `id` into out: [dgramsUp, bytesUp, dgramsDown, bytesDown]; false when not live. */
  counts(id: number, out: Float64Array): boolean;
  totals(): NativeUdpRelayTotals;
  /** Close everything, join the thread; returns ended records not yet delivered. Idempotent. */
  stop(): Float64Array;
}

// ---- The Listener's accept socket (native/accept_addon.cc) ----
/** Fields per accepted connection in TcpAcceptor's batches: [fd, peerIpU32, peerPort]. */
export const ACCEPT_RECORD_FIELDS = 3;
export interface NativeTcpAcceptor {
  /**
   * Poll on the event loop; every wake-up accepts until EAGAIN (≤ 256) and
   * calls onBatch once. fd < 0 is -errno of a failed accept (EMFILE: the
   * connection was reset through a reserve fd). `records` is the same array
   * every call, overwritten by the next batch: read it before returning.
   */
  start(onBatch: (records: Float64Array, n: number) => void): void;
  port(): number;
  /** Close an accepted fd with RST. */
  reset(fd: number): void;
  /**
   * Segments the `device` filter dropped (arrived on another interface: a
   * spoofed NAT address), on the listener and every accepted socket; -1 when
   * not counted (no `device`, or no eBPF here: a classic filter drops them uncounted).
   */
  filterDrops(): number;
  /** 0, or the errno setsockopt(TCP_CONGESTION) failed with for the `congestion` option. */
  congestionErrno(): number;
  close(): void;
}

export interface NativeBinding {
  /** Record sizes and enum lengths shared with this file (checked when loaded: checkLayout). */
  layout: NativeLayout;
  tunOpen(opts: TunOpenOptions): TunHandle;
  /** Close the fds (the non-persistent device disappears with the last one). */
  tunClose(fds: number[]): void;
  /** Test-only: write one raw packet into the device (with its virtio_net_hdr when the device has offloads). */
  tunWritePacketForTest(fd: number, packet: Buffer): number;
  /** Test-only: read one raw IP packet (non-blocking; undefined when none within timeoutMs). */
  tunReadPacketForTest(fd: number, timeoutMs: number): Buffer | undefined;
  /** Test-only: a non-blocking SOCK_SEQPACKET socketpair [engineSide, testSide] standing in for a TUN fd; close with tunClose. */
  socketpairForTest(): [number, number];
  /** A non-blocking TCP socket (AF_INET for 4, AF_INET6 for 6) carrying SO_MARK `mark`, unconnected; EPERM without CAP_NET_ADMIN. */
  markedTcpSocket(family: 4 | 6, mark: number): number;
  /** setsockopt(SO_MARK) on an existing socket. */
  setSocketMark(fd: number, mark: number): void;
  /** The socket's SO_MARK (0 = none). */
  socketMark(fd: number): number;
  /** V8's LowMemoryNotification: full collections that also give the young generation's and freed pages back (src/util/quietGc.ts). */
  lowMemoryNotification(): void;
  Engine: new (opts: EngineOptions) => NativeEngine;
  DgramSocket: new (opts: DgramSocketOptions) => NativeDgramSocket;
  FakeAnswers: new (opts: { ttl: number }) => NativeFakeAnswers;
  /**
   * `onEnd` gets ended pairs in batches: [id, bytesUp, bytesDown, how, errno]
   * × n, `how` indexing RELAY_ENDS.
   */
  Relay: new (
    opts: NativeRelayOptions,
    /** heads: [id, response head, …] of HTTP CONNECTs that failed on their head (only when there are some). */
    onEnd: (records: Float64Array, heads?: Array<number | Buffer>) => void,
  ) => NativeRelay;
  /** `onEvents` gets batches (layouts: UDP_RELAY_DGRAM_FIELDS, UDP_RELAY_END_FIELDS). */
  UdpRelay: new (
    opts: NativeUdpRelayOptions,
    onEvents: (dgrams: Float64Array, bytes: Buffer, ended: Float64Array) => void,
  ) => NativeUdpRelay;
  /** Bound and listening on host:port (host an IPv4 u32), or throws (EADDRINUSE, EADDRNOTAVAIL). */
  TcpAcceptor: new (opts: {
    host: number;
    port: number;
    backlog: number;
    /** The TUN's name: segments that arrived on any other interface are dropped silently (a BPF socket filter on the ingress ifindex). */
    device?: string;
    /** TCP_CONGESTION of the listening socket (accepted sockets inherit it); a refusal is kept for congestionErrno(). */
    congestion?: string;
  }) => NativeTcpAcceptor;
}

function findAddon(): string {
  // dist/src/native.js and src/native.ts (vitest) both sit two levels below the root, or one.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    for (const sub of ['build/Release/fakeproxy.node', 'build/Debug/fakeproxy.node']) {
      const p = join(dir, sub);
      if (existsSync(p)) return p;
    }
    dir = dirname(dir);
  }
  throw Object.assign(new Error('native addon not built: run `npm run build:native` (needs g++, make, python3)'), {
    code: 'ENOADDON',
  });
}

/**
 * What the addon reports of the records and enums it shares with this file
 * (native/napi_args.h SetLayout): record sizes and enum lengths.
 */
export interface NativeLayout {
  packedFlowLen: number;
  flowStates: number;
  flowEventFields: number;
  closeReasons: number;
  acceptRecordFields: number;
  relayRecordFields: number;
  relayEnds: number;
  udpRelayDgramFields: number;
  udpRelayEndFields: number;
  udpRelayEnds: number;
  udpRelayDrops: number;
  dgramMetaWords: number;
  /** The OPT payload size the DNS fast path advertises (native/fake_answers.h). */
  dnsUdpPayload: number;
}

/** The layout this JavaScript reads records with (the constants above). */
export function expectedLayout(): NativeLayout {
  return {
    packedFlowLen: PACKED_FLOW_LEN,
    flowStates: PACKED_STATES.length,
    flowEventFields: FLOW_EVENT_FIELDS,
    closeReasons: CLOSE_REASONS.length,
    acceptRecordFields: ACCEPT_RECORD_FIELDS,
    relayRecordFields: RELAY_RECORD_FIELDS,
    relayEnds: RELAY_ENDS.length,
    udpRelayDgramFields: UDP_RELAY_DGRAM_FIELDS,
    udpRelayEndFields: UDP_RELAY_END_FIELDS,
    udpRelayEnds: UDP_RELAY_ENDS.length,
    udpRelayDrops: UDP_RELAY_DROPS.length,
    dgramMetaWords: DGRAM_META_WORDS,
    dnsUdpPayload: OUR_UDP_PAYLOAD,
  };
}

/**
 * Throws (code EADDONSTALE) unless the addon's layout is ours: an addon built
 * from other sources than this JavaScript (an upgrade without a rebuild) would
 * otherwise misread every record it hands over.
 */
export function checkLayout(actual: Partial<NativeLayout> | undefined): void {
  for (const [key, want] of Object.entries(expectedLayout())) {
    const got = actual?.[key as keyof NativeLayout];
    if (got !== want)
      throw Object.assign(
        new Error(
          `native addon was built from other sources than this JavaScript (${key}: addon ${got ?? 'missing'}, expected ${want}): rebuild with \`npm run build\``,
        ),
        { code: 'EADDONSTALE' },
      );
  }
}

let cached: NativeBinding | undefined;
export function native(): NativeBinding {
  if (!cached) {
    const require = createRequire(import.meta.url);
    const b = require(findAddon()) as NativeBinding;
    checkLayout(b.layout);
    cached = b;
  }
  return cached;
}
