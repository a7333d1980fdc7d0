/**
 * One app socket's UDP association as the listener sees it: the upstream
 * UdpAssociation (direct socket or SOCKS5 ASSOCIATE) for one
 * (app ip:port, outbound) pair, the NAT flows the app opened through it (one
 * per remote it sent to), a bounded queue while the upstream is being set
 * up, and the mapping of replies back to NAT addresses.
 */
import * as net from 'node:net';
import type { FlowEntry, Proto } from '../../nat/types.js';
import type { Destination, Outbound, UdpAssociation } from '../outbound.js';
import { hpKey } from './drops.js';

/**
 * What the UDP listener needs from the NAT. `ensureFlow` (NatManager, over
 * the engine's `ensureFlow`) allocates — or finds — the entry for
 * (app, remote) from the listener side; it may throw (table full), which
 * counts as "no flow".
 */
export interface UdpNat {
  lookup(proto: Proto, natIp: string, natPort: number): FlowEntry | undefined;
  ensureFlow?(proto: 'udp', srcIp: string, srcPort: number, dstIp: string, dstPort: number): FlowEntry | undefined;
  /**
   * Optional: UDP flows leaving the table (NatManager's 'udpClose' event:
   * its 'close' for UDP flows only, so the TCP flows of every connection
   * build no objects for it). A NAT
   * that reports them lets the listener cache what it learnt per flow (the
   * entry, its name and outbound) and skip the per-datagram lookup both ways:
   * a NAT pair is not handed to another flow for reuseDelayMs (60 s) after
   * its flow closed, so until the close event arrives (≤ one event batch,
   * ~20 ms) a cached entry can only be its own flow's. Without it every
   * datagram and every reply is looked up.
   */
  on?(event: 'udpClose', cb: (flow: FlowEntry) => void): unknown;
  off?(event: 'udpClose', cb: (flow: FlowEntry) => void): unknown;
}

/** Drops the listener counts itself (the upstream association counts its own, see UdpDropReason). */
export type UdpListenerDropReason =
  /** The outbound cannot carry UDP (http, reject). */
  | 'no-udp'
  /** The upstream association could not be set up (or is in its retry hold). */
  | 'setup-failed'
  /** A reply from a remote the app never sent to, not delivered (fullCone off, no ensureFlow, a name, other family). */
  | 'unknown-remote'
  /** A reply whose NAT flow is gone and could not be re-created. */
  | 'no-flow'
  /** Sent by one of our own upstream sockets and routed back into the TUN (see ownPorts.ts). */
  | 'loop';

export type UdpSessionEnd = 'idle' | 'evicted' | 'upstream-closed' | 'connect-failed' | 'closed';

/** The parts of the listener an association calls back into. */
export interface AssociationHost {
  readonly nat: UdpNat;
  /** True when `flowId` was seen live and has not closed since (only with a NAT that reports closes). */
  isLive(flowId: number): boolean;
  /** Record a flow the NAT just confirmed (lookup or ensureFlow). */
  markLive(flow: FlowEntry): void;
  readonly fullCone: boolean;
  readonly maxQueue: number;
  readonly clock: () => number;
  log(line: string): void;
  drop(reason: UdpListenerDropReason | 'queue-full' | 'closed', n?: number): void;
  sendToApp(payload: Buffer, natIp: string, natPort: number): void;
}

interface FlowRef {
  flowId: number;
  /** The source the app must see on replies: the address it sent to (fake IP) or, for an unknown remote, the remote's real one. */
  appSeesIp: string;
  appSeesPort: number;
  /** Where the listener sends so the engine delivers it: '' until ensureFlow gave one. */
  natIp: string;
  natPort: number;
  /** For 'no-udp': this flow's one log line was written. */
  logged?: boolean;
}

/**
 * Remotes remembered per association for mapping replies.
 * @default 1024 — see direct-udp.ts MAX_DESTINATIONS; past it the oldest is
 * forgotten and its replies are treated as an unknown remote's.
 */
const MAX_FLOWS = 1024;

export type AssociationState = 'connecting' | 'open' | 'no-udp' | 'closed';

export class AppAssociation {
  readonly key: string;
  readonly appIp: string;
  readonly appPort: number;
  readonly outbound: Outbound;
  readonly first: { flowId: number; name: string | undefined; ip: string; port: number };
  readonly abort = new AbortController();
  state: AssociationState;
  up: UdpAssociation | undefined;
  lastActiveMs: number;
  /** Every remote so far was port 53: the shorter DNS idle timeout applies. Only ever turns false (the timeout grows). */
  dnsOnly: boolean;
  timer: NodeJS.Timeout | undefined;
  datagramsUp = 0;
  datagramsDown = 0;
  bytesUp = 0;
  bytesDown = 0;
  readonly #host: AssociationHost;
  readonly #flows = new Map<string, FlowRef>();
  #queue: Array<{ dst: Destination; payload: Buffer }> = [];

  constructor(host: AssociationHost, key: string, flow: FlowEntry, name: string | undefined, outbound: Outbound) {
    this.#host = host;
    this.key = key;
    this.appIp = flow.srcIp;
    this.appPort = flow.srcPort;
    this.outbound = outbound;
    this.first = { flowId: flow.id, name, ip: flow.dstIp, port: flow.dstPort };
    this.state = outbound.udpAssociate ? 'connecting' : 'no-udp';
    this.dnsOnly = flow.dstPort === 53;
    this.lastActiveMs = host.clock();
  }

  /** A datagram from the app (through the engine) for `flow`'s destination. */
  fromApp(flow: FlowEntry, name: string | undefined, payload: Buffer): void {
    this.lastActiveMs = this.#host.clock();
    this.datagramsUp++;
    this.bytesUp += payload.length;
    if (flow.dstPort !== 53) this.dnsOnly = false;
    const dst: Destination = { host: name ?? flow.dstIp, port: flow.dstPort };
    const k = hpKey(dst.host, dst.port);
    let ref = this.#flows.get(k);
    if (ref === undefined || ref.flowId !== flow.id) {
      ref = {
        flowId: flow.id,
        appSeesIp: flow.dstIp,
        appSeesPort: flow.dstPort,
        natIp: flow.natIp,
        natPort: flow.natPort,
      };
      this.#flows.delete(k);
      this.#flows.set(k, ref);
      if (this.#flows.size > MAX_FLOWS) this.#flows.delete(this.#flows.keys().next().value as string);
    }
    switch (this.state) {
      case 'open':
        this.up?.send(dst, payload);
        return;
      case 'connecting':
        if (this.#queue.length >= this.#host.maxQueue) {
          this.#queue.shift();
          this.#host.drop('queue-full');
        }
        this.#queue.push({ dst, payload });
        return;
      case 'no-udp':
        this.#host.drop('no-udp');
        // One line per flow, not per datagram: a chatty app must not flood the log.
        if (!ref.logged) {
          ref.logged = true;
          this.#host.log(
            `udp ${dst.host}:${dst.port} via ${this.outbound.label}: dropped: the ${this.outbound.kind} outbound cannot carry UDP (route UDP to direct or socks5)`,
          );
        }
        return;
      case 'closed':
        this.#host.drop('closed');
    }
  }

  /** The upstream is ready: wire replies, flush what queued meanwhile. */
  attach(up: UdpAssociation): void {
    this.up = up;
    this.state = 'open';
    up.onMessage((src, payload) => this.#fromRemote(src, payload));
    const q = this.#queue;
    this.#queue = [];
    for (const { dst, payload } of q) up.send(dst, payload);
  }

  /** Close the upstream and drop what is queued; returns how many were queued. */
  shutdown(): number {
    this.state = 'closed';
    this.abort.abort();
    if (this.timer) clearTimeout(this.timer);
    this.up?.close();
    const n = this.#queue.length;
    this.#queue = [];
    return n;
  }

  #fromRemote(src: Destination, payload: Buffer): void {
    if (this.state !== 'open') return;
    this.lastActiveMs = this.#host.clock();
    const k = hpKey(src.host, src.port);
    let ref = this.#flows.get(k);
    if (ref === undefined) {
      // A reply from a remote the app never sent to (on this association).
      //
      // Decision: deliver it (true full cone, like sing-box's
      // endpoint-independent NAT), through a NAT entry made with
      // nat.ensureFlow(app, remote) so the app sees the remote's *real*
      // address as the source — there is no fake IP for it, and inventing
      // one would hide who is talking. Why deliver: STUN/ICE, games and
      // other P2P protocols depend on endpoint-independent filtering (RFC
      // 4787 §5, REQ-8 recommends it for application transparency); the app
      // opted in by sending first from this socket; a connected app socket
      // still filters by source in its own kernel. The app's answer goes to
      // that real address: through the TUN (and back into this association,
      // same app socket) only when such addresses are routed into the TUN
      // (global mode); with only the fake range routed, it leaves directly.
      // The listener side needs the engine to accept a real-IP source on
      // the TUN: strict rp_filter on the device drops it (set it to 2).
      // `fullCone: false` (or a NAT without ensureFlow) drops them, counted.
      const h = this.#host;
      if (!h.fullCone || h.nat.ensureFlow === undefined || net.isIP(src.host) !== net.isIP(this.appIp)) {
        h.drop('unknown-remote');
        return;
      }
      ref = { flowId: -1, appSeesIp: src.host, appSeesPort: src.port, natIp: '', natPort: 0 };
      this.#flows.set(k, ref);
      if (this.#flows.size > MAX_FLOWS) this.#flows.delete(this.#flows.keys().next().value as string);
    }
    this.#deliver(ref, payload);
  }

  #deliver(ref: FlowRef, payload: Buffer): void {
    const nat = this.#host.nat;
    // A flow confirmed live whose close has not been reported: its NAT pair
    // is still its own (see UdpNat.on), no lookup needed.
    if (ref.natIp !== '' && this.#host.isLive(ref.flowId)) {
      this.datagramsDown++;
      this.bytesDown += payload.length;
      this.#host.sendToApp(payload, ref.natIp, ref.natPort);
      return;
    }
    // Check the NAT entry is still this flow before sending: an expired
    // entry's address may already belong to another app's flow, and a
    // reply sent there would reach the wrong app.
    let e = ref.natIp === '' ? undefined : nat.lookup('udp', ref.natIp, ref.natPort);
    if (
      e === undefined ||
      e.srcIp !== this.appIp ||
      e.srcPort !== this.appPort ||
      e.dstIp !== ref.appSeesIp ||
      e.dstPort !== ref.appSeesPort
    ) {
      // Gone (the app was quiet longer than the engine's UDP timeout while
      // the remote kept talking): make it again from our side.
      e = this.#ensure(ref.appSeesIp, ref.appSeesPort);
      if (e === undefined) {
        this.#host.drop('no-flow');
        return;
      }
      ref.flowId = e.id;
      ref.natIp = e.natIp;
      ref.natPort = e.natPort;
    }
    this.#host.markLive(e);
    this.datagramsDown++;
    this.bytesDown += payload.length;
    this.#host.sendToApp(payload, ref.natIp, ref.natPort);
  }

  #ensure(ip: string, port: number): FlowEntry | undefined {
    const nat = this.#host.nat;
    if (nat.ensureFlow === undefined) return undefined;
    try {
      return nat.ensureFlow('udp', this.appIp, this.appPort, ip, port);
    } catch {
      // Table full or engine stopped: the engine counts and logs it.
      return undefined;
    }
  }
}
