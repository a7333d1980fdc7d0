/**
 * One app socket's UDP association carried by the native relay
 * (native/udp_relay.h): the upstream socket, the datagrams and the replies
 * live there; this object only sets flows up. JavaScript sees
 * - the first datagram(s) of each NAT flow (a "miss"): it resolves the
 *   destination and binds the flow's NAT address to the association, after
 *   which the flow's datagrams never reach JavaScript;
 * - a reply from a remote that maps to no NAT address: full cone (see
 *   association.ts #fromRemote for the decision and why), or a remote whose
 *   flow expired while it kept talking — a NAT entry is made again with
 *   ensureFlow and the remote bound to it natively;
 * - the end (idle, socket error), with its counts, from the listener.
 * Semantics are those of AppAssociation with a direct upstream.
 */
import * as net from 'node:net';
import type { FlowEntry } from '../../nat/types.js';
import type { NativeUdpRelay } from '../../native.js';
import { intToIp, ipToInt } from '../../util/cidr.js';
import type { Outbound, UdpNativePlan } from '../outbound.js';
import type { AssociationHost } from './association.js';

/** What the native association needs from the listener besides AssociationHost. */
export interface NativeHost extends AssociationHost {
  readonly relay: NativeUdpRelay;
  readonly mark: number;
  readonly recvBufferBytes: number;
  readonly idleTimeoutMs: number;
  readonly dnsIdleTimeoutMs: number;
  /** Native drops counted by reason as JS drops ('resolve-failed', 'oversized'). */
  dropUp(reason: 'resolve-failed' | 'oversized', n?: number): void;
}

/** See direct-udp.ts NEGATIVE_TTL_MS. */
const NEGATIVE_TTL_MS = 1000;
/** Flows and remotes remembered per association (see association.ts MAX_FLOWS). */
const MAX_FLOWS = 1024;

interface FlowSetup {
  flow: FlowEntry;
  /** Payloads held until the flow is bound (its name resolving). */
  queue: Buffer[];
  bound: boolean;
}

interface NameState {
  addr?: string;
  failedAtMs?: number;
  waiting?: FlowSetup[];
  logged?: boolean;
}

/** SOCKS5 ATYP 1 address (RFC 1928 §5): the native relay's key for a direct reply's source. */
export function ipv4Key(ip: string, port: number): Buffer {
  const b = Buffer.allocUnsafe(7);
  b[0] = 1;
  b.writeUInt32BE(ipToInt(ip), 1);
  b.writeUInt16BE(port, 5);
  return b;
}

export class NativeAssociation {
  readonly native = true;
  readonly key: string;
  readonly id: number;
  readonly appIp: string;
  readonly appPort: number;
  readonly outbound: Outbound;
  readonly first: { flowId: number; name: string | undefined; ip: string; port: number };
  /** The upstream socket's local port (loop guard, tests). */
  readonly localPort: number;
  state: 'open' | 'closing' | 'closed' = 'open';
  readonly #host: NativeHost;
  readonly #plan: UdpNativePlan;
  readonly #flows = new Map<number, FlowSetup>();
  readonly #names = new Map<string, NameState>();
  /** Remote key (hex) → the address the app sent to (a fake IP for a name), for replies after the flow expired. */
  readonly #remotes = new Map<string, { ip: string; port: number }>();

  /** Throws (from the relay's open) when the upstream socket cannot be made. */
  constructor(
    host: NativeHost,
    id: number,
    key: string,
    flow: FlowEntry,
    name: string | undefined,
    outbound: Outbound,
    plan: UdpNativePlan,
  ) {
    this.#host = host;
    this.#plan = plan;
    this.id = id;
    this.key = key;
    this.appIp = flow.srcIp;
    this.appPort = flow.srcPort;
    this.outbound = outbound;
    this.first = { flowId: flow.id, name, ip: flow.dstIp, port: flow.dstPort };
    this.localPort = host.relay.open(
      id,
      0,
      0,
      host.mark,
      host.recvBufferBytes,
      host.idleTimeoutMs,
      host.dnsIdleTimeoutMs,
    );
  }

  /** How long ago (in host.clock ms) the last datagram passed either way; for eviction. */
  get lastActiveMs(): number {
    const last = this.#host.relay.lastActive(this.id);
    if (last < 0) return Number.NEGATIVE_INFINITY;
    // The relay's clock is CLOCK_MONOTONIC, like process.hrtime.
    const nowNative = Number(process.hrtime.bigint() / 1_000_000n);
    return this.#host.clock() - (nowNative - last);
  }

  /** A datagram of `flow` that reached JS: the flow is not bound yet (or its binding raced with a close). */
  fromApp(flow: FlowEntry, name: string | undefined, payload: Buffer): void {
    if (this.state !== 'open') {
      this.#host.drop('closed');
      return;
    }
    let f = this.#flows.get(flow.id);
    if (f?.bound && this.#host.relay.sendUp(ipToInt(flow.natIp), flow.natPort, payload)) return;
    if (f === undefined || f.bound) {
      f = { flow, queue: [], bound: false };
      this.#flows.set(flow.id, f);
      if (this.#flows.size > MAX_FLOWS) this.#flows.delete(this.#flows.keys().next().value as number);
      f.queue.push(payload);
      this.#setup(f, name);
      return;
    }
    if (f.queue.length >= this.#host.maxQueue) {
      f.queue.shift();
      this.#host.drop('queue-full');
    }
    f.queue.push(payload);
  }

  /** The flow left the NAT table (the relay already dropped its binding). */
  forgetFlow(flowId: number): void {
    this.#flows.delete(flowId);
  }

  /** A reply from a remote the relay could not map: `key` is its SOCKS5 address. */
  fromUnknownRemote(key: Buffer, payload: Buffer): void {
    if (this.state !== 'open') return;
    const h = this.#host;
    const hex = key.toString('hex');
    const real =
      key.length === 7 && key[0] === 1 ? { ip: intToIp(key.readUInt32BE(1)), port: key.readUInt16BE(5) } : undefined;
    const known = this.#remotes.get(hex);
    const appSees = known ?? (h.fullCone && real !== undefined && net.isIPv4(this.appIp) ? real : undefined);
    if (appSees === undefined || h.nat.ensureFlow === undefined || real === undefined) {
      h.drop('unknown-remote');
      return;
    }
    let e: FlowEntry | undefined;
    try {
      e = h.nat.ensureFlow('udp', this.appIp, this.appPort, appSees.ip, appSees.port);
    } catch {
      // Table full or engine stopped: the engine counts and logs it.
      e = undefined;
    }
    if (e === undefined) {
      h.drop('no-flow');
      return;
    }
    h.markLive(e);
    if (!known) this.#remember(hex, appSees);
    const nat = ipToInt(e.natIp);
    // Both ways from now on: replies to the app, and (global mode) the app's datagrams to the remote.
    h.relay.bind(nat, e.natPort, this.id, ipToInt(real.ip), real.port, undefined, key, appSees.port === 53);
    this.#flows.set(e.id, { flow: e, queue: [], bound: true });
    h.relay.sendDown(nat, e.natPort, payload);
  }

  /** Close the upstream (an ended record follows from the relay); returns how many datagrams were queued. */
  shutdown(): number {
    if (this.state === 'open') {
      this.state = 'closing';
      this.#host.relay.close(this.id);
    }
    let n = 0;
    for (const f of this.#flows.values()) n += f.queue.length;
    this.#flows.clear();
    return n;
  }

  #setup(f: FlowSetup, name: string | undefined): void {
    const { flow } = f;
    if (name === undefined || net.isIP(name) !== 0) {
      this.#bind(f, name ?? flow.dstIp);
      return;
    }
    let st = this.#names.get(name);
    if (st?.addr !== undefined) {
      this.#bind(f, st.addr);
      return;
    }
    if (st?.waiting) {
      st.waiting.push(f);
      return;
    }
    if (st?.failedAtMs !== undefined && this.#host.clock() - st.failedAtMs < NEGATIVE_TTL_MS) {
      this.#failFlow(f);
      return;
    }
    if (!st) {
      st = {};
      this.#names.set(name, st);
      if (this.#names.size > MAX_FLOWS) this.#names.delete(this.#names.keys().next().value as string);
    }
    this.#resolve(name, st, f);
  }

  #resolve(name: string, st: NameState, f: FlowSetup): void {
    const fail = (why: string) => {
      st.failedAtMs = this.#host.clock();
      for (const w of st.waiting ?? []) this.#failFlow(w);
      st.waiting = undefined;
      if (!st.logged) {
        st.logged = true;
        this.#host.log(`udp direct: ${why}`);
      }
    };
    st.waiting = [f];
    const resolve = this.#plan.resolve;
    if (resolve === undefined) {
      fail(
        `cannot resolve ${name}: no resolver configured (pass --dns-upstream; the system resolver is fakeproxy itself)`,
      );
      return;
    }
    resolve(name).then(
      (addrs) => {
        // IPv4 only: the relay's upstream sockets are IPv4 (UDP has no Happy Eyeballs to fall back with).
        const addr = addrs.find((a) => net.isIPv4(a));
        if (addr === undefined) {
          fail(`resolve ${name}: no IPv4 address`);
          return;
        }
        st.addr = addr;
        st.failedAtMs = undefined;
        const waiting = st.waiting ?? [];
        st.waiting = undefined;
        for (const w of waiting) this.#bind(w, addr);
      },
      (e: unknown) => fail(`resolve ${name}: ${(e as Error)?.message ?? String(e)}`),
    );
  }

  #failFlow(f: FlowSetup): void {
    this.#host.dropUp('resolve-failed', f.queue.length);
    f.queue = [];
    // Forget it: the next datagram (after the negative TTL) tries again.
    if (this.#flows.get(f.flow.id) === f) this.#flows.delete(f.flow.id);
  }

  #bind(f: FlowSetup, ip: string): void {
    const q = f.queue;
    f.queue = [];
    if (this.state !== 'open' || this.#flows.get(f.flow.id) !== f) {
      if (q.length > 0) this.#host.drop('closed', q.length);
      return;
    }
    const { flow } = f;
    const key = ipv4Key(ip, flow.dstPort);
    const nat = ipToInt(flow.natIp);
    if (
      !this.#host.relay.bind(nat, flow.natPort, this.id, ipToInt(ip), flow.dstPort, undefined, key, flow.dstPort === 53)
    ) {
      if (q.length > 0) this.#host.drop('closed', q.length);
      return;
    }
    f.bound = true;
    this.#remember(key.toString('hex'), { ip: flow.dstIp, port: flow.dstPort });
    for (const p of q) this.#host.relay.sendUp(nat, flow.natPort, p);
  }

  #remember(hex: string, appSees: { ip: string; port: number }): void {
    this.#remotes.delete(hex);
    this.#remotes.set(hex, appSees);
    if (this.#remotes.size > MAX_FLOWS) this.#remotes.delete(this.#remotes.keys().next().value as string);
  }
}
