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
import { ipToInt } from '../../util/cidr.js';
import { ownMark } from '../../util/sockmark.js';
import { ProxyError } from '../errors.js';
import type { Outbound, UdpNativePlan } from '../outbound.js';
import { address, ipv6ToBytes } from '../socks5-codec.js';
import type { AssociationHost } from './association.js';
import { holdOwnPort, releaseOwnPort } from './ownPorts.js';

/** What the native association needs from the listener besides AssociationHost. */
export interface NativeHost extends AssociationHost {
  readonly relay: NativeUdpRelay;
  readonly mark: number;
  readonly recvBufferBytes: number;
  readonly idleTimeoutMs: number;
  readonly dnsIdleTimeoutMs: number;
  /** Native drops counted by reason as JS drops ('resolve-failed', 'oversized'). */
  dropUp(reason: 'resolve-failed' | 'oversized', n?: number): void;
  /** Budget for a SOCKS5 association's setup (dial + handshake). */
  readonly connectTimeoutMs: number;
  /** The SOCKS5 setup failed: the listener logs, holds retries and ends the association. */
  setupFailed(a: NativeAssociation, err: Error & { code?: string }): void;
  /** The SOCKS5 control connection ended: the association ends with it. */
  upstreamClosed(a: NativeAssociation, err: Error & { code?: string }): void;
}

/** See direct-udp.ts NEGATIVE_TTL_MS. */
const NEGATIVE_TTL_MS = 1000;
/** Flows and remotes remembered per association (see association.ts MAX_FLOWS). */
const MAX_FLOWS = 1024;

interface FlowSetup {
  flow: FlowEntry;
  name: string | undefined;
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

/** What the app sent to (a fake IP for a name) and, for SOCKS5, the address datagrams to it carry. */
interface AppSees {
  ip: string;
  port: number;
  socksAddr?: Buffer | undefined;
  /** The flow it was bound with: while that flow is live, its NAT address takes the replies. */
  flowId?: number;
}

/** SOCKS5 address (RFC 1928 §5, ATYP 1 or 4): the native relay's key for a direct reply's source. */
function sourceKey(ip: string, port: number): Buffer {
  return address.encode({ host: ip, port });
}

/** A direct destination as the relay's bind() takes it: an IPv4 integer or the 16 bytes of an IPv6 address. */
function relayIp(ip: string): number | Buffer {
  return net.isIPv4(ip) ? ipToInt(ip) : ipv6ToBytes(ip);
}

/** The real address in a direct reply's key (ATYP 1 or 4); undefined for a name (a SOCKS5 relay's ATYP 3). */
function keyAddress(key: Buffer): { ip: string; port: number } | undefined {
  if ((key.length !== 7 || key[0] !== 1) && (key.length !== 19 || key[0] !== 4)) return undefined;
  const a = address.decode(key);
  return { ip: a.host, port: a.port };
}

export class NativeAssociation {
  readonly native = true;
  readonly key: string;
  readonly id: number;
  readonly appIp: string;
  readonly appPort: number;
  readonly outbound: Outbound;
  readonly first: { flowId: number; name: string | undefined; ip: string; port: number };
  /** The upstream socket's local port (loop guard, tests); 0 until the relay made it. */
  localPort = 0;
  /**
   * connecting: SOCKS5 handshake running (flows queue); open; closing: JS
   * closed it, the relay's ended record is due; closed.
   */
  state: 'connecting' | 'open' | 'closing' | 'closed';
  readonly #host: NativeHost;
  readonly #plan: UdpNativePlan;
  readonly #flows = new Map<number, FlowSetup>();
  readonly #names = new Map<string, NameState>();
  /** Remote key (hex) → the address the app sent to (a fake IP for a name), for replies after the flow expired. */
  readonly #remotes = new Map<string, AppSees>();
  /** SOCKS5: names sent to whose relay-reported IP is not learned yet, by port (see socks5-udp.ts #source). */
  readonly #unbound = new Map<number, Set<string>>();
  readonly #abort = new AbortController();
  #ctrl: net.Socket | undefined;

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
    if (plan.kind === 'direct') {
      this.#open(0, 0);
      this.state = 'open';
    } else {
      this.state = 'connecting';
      this.#connect(plan);
    }
  }

  /** True once the relay holds this association (its ended record will come). */
  get opened(): boolean {
    return this.localPort !== 0;
  }

  #open(kind: 0 | 1, bindIp: number): number {
    const h = this.#host;
    // Global mode: the upstream socket carries --fwmark so its datagrams keep the main table (never re-enter the TUN).
    const mark = h.mark || ownMark();
    this.localPort = h.relay.open(this.id, kind, bindIp, mark, h.recvBufferBytes, h.idleTimeoutMs, h.dnsIdleTimeoutMs);
    holdOwnPort(this.localPort);
    return this.localPort;
  }

  #connect(plan: Extract<UdpNativePlan, { kind: 'socks5' }>): void {
    const h = this.#host;
    plan
      .control({ timeoutMs: h.connectTimeoutMs, signal: this.#abort.signal }, async (local) => {
        if (!net.isIPv4(local)) throw new ProxyError('ESOCKS5_PROTOCOL', 'the native UDP relay needs an IPv4 proxy');
        return this.#open(1, ipToInt(local));
      })
      .then(
        ({ ctrl, relay }) => {
          if (this.state !== 'connecting') {
            ctrl.destroy();
            return;
          }
          this.#ctrl = ctrl;
          h.relay.setSocksRelay(this.id, ipToInt(relay.host), relay.port);
          const lost = (why: string) => () =>
            h.upstreamClosed(
              this,
              new ProxyError(
                'EUPSTREAM_CLOSED',
                `udp associate via ${this.outbound.label}: the proxy ${why} the control connection (check its log)`,
              ),
            );
          // Nothing is expected on the control connection after the reply; read and discard so it cannot stall.
          ctrl.on('data', () => {});
          ctrl.on('end', lost('closed'));
          ctrl.on('close', lost('closed'));
          ctrl.on('error', (e) =>
            h.upstreamClosed(
              this,
              new ProxyError(
                'EUPSTREAM_CLOSED',
                `udp associate via ${this.outbound.label}: control connection: ${e.message}`,
                {
                  cause: e,
                },
              ),
            ),
          );
          // A proxy that vanished without FIN/RST must not keep the association alive forever.
          ctrl.setKeepAlive(true, 30_000);
          this.state = 'open';
          for (const f of [...this.#flows.values()]) if (!f.bound) this.#setup(f);
        },
        (err: Error & { code?: string }) => {
          if (this.state === 'connecting') h.setupFailed(this, err);
        },
      );
  }

  /** The relay's ended record arrived (or it never held the association): free what JS holds. */
  ended(): void {
    this.state = 'closed';
    if (this.localPort !== 0) releaseOwnPort(this.localPort);
    this.#ctrl?.destroy();
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
    if (this.state !== 'open' && this.state !== 'connecting') {
      this.#host.drop('closed');
      return;
    }
    let f = this.#flows.get(flow.id);
    if (f?.bound && this.#host.relay.sendUp(ipToInt(flow.natIp), flow.natPort, payload)) return;
    if (f === undefined || f.bound) {
      f = { flow, name, queue: [], bound: false };
      this.#flows.set(flow.id, f);
      if (this.#flows.size > MAX_FLOWS) this.#flows.delete(this.#flows.keys().next().value as number);
      f.queue.push(payload);
      if (this.state === 'open') this.#setup(f);
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
    const real = keyAddress(key);
    let known = this.#remotes.get(hex);
    if (known === undefined && real !== undefined) known = this.#learn(hex, real.port);
    const live = known?.flowId === undefined ? undefined : this.#flows.get(known.flowId);
    if (live?.bound) {
      // A remote of a live flow under another key (a SOCKS5 name's relay-side IP): replies only.
      const nat = ipToInt(live.flow.natIp);
      h.relay.addRemote(this.id, key, nat, live.flow.natPort);
      h.relay.sendDown(nat, live.flow.natPort, payload);
      return;
    }
    // Full cone for an IPv4 app: only an IPv4 remote can stand as the source of its datagrams.
    const appSees: AppSees | undefined =
      known ??
      (h.fullCone && real !== undefined && net.isIPv4(this.appIp) && net.isIPv4(real.ip)
        ? { ...real, socksAddr: key }
        : undefined);
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
    if (this.#flows.get(e.id)?.bound) {
      // The flow is bound (a SOCKS5 name whose relay-side IP we just learned): replies only.
      h.relay.addRemote(this.id, key, nat, e.natPort);
    } else {
      // Both ways from now on: replies to the app, and (global mode) the app's datagrams to the remote.
      h.relay.bind(nat, e.natPort, this.id, relayIp(real.ip), real.port, appSees.socksAddr, key, appSees.port === 53);
      this.#flows.set(e.id, { flow: e, name: undefined, queue: [], bound: true });
    }
    h.relay.sendDown(nat, e.natPort, payload);
  }

  /** Close the upstream (an ended record follows from the relay); returns how many datagrams were queued. */
  shutdown(): number {
    if (this.state === 'open' || this.state === 'connecting') {
      this.state = 'closing';
      this.#abort.abort();
      this.#ctrl?.destroy();
      this.#host.relay.close(this.id);
    }
    let n = 0;
    for (const f of this.#flows.values()) n += f.queue.length;
    this.#flows.clear();
    return n;
  }

  #setup(f: FlowSetup): void {
    const { flow, name } = f;
    if (this.#plan.kind === 'socks5') {
      this.#bindSocks(f);
      return;
    }
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
    const resolve = this.#plan.kind === 'direct' ? this.#plan.resolve : undefined;
    if (resolve === undefined) {
      fail(
        `cannot resolve ${name}: no resolver configured (pass --dns-upstream; the system resolver is fakeproxy itself)`,
      );
      return;
    }
    resolve(name).then(
      (addrs) => {
        // IPv4 first (UDP has no Happy Eyeballs to fall back with, and IPv4 is what every host here routes);
        // a name with only IPv6 addresses goes out on the association's dual-stack socket.
        const addr = addrs.find((a) => net.isIPv4(a)) ?? addrs.find((a) => net.isIPv6(a));
        if (addr === undefined) {
          fail(`resolve ${name}: no address`);
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
    const key = sourceKey(ip, flow.dstPort);
    const nat = ipToInt(flow.natIp);
    if (
      !this.#host.relay.bind(nat, flow.natPort, this.id, relayIp(ip), flow.dstPort, undefined, key, flow.dstPort === 53)
    ) {
      if (q.length > 0) this.#host.drop('closed', q.length);
      return;
    }
    f.bound = true;
    this.#remember(key.toString('hex'), { ip: flow.dstIp, port: flow.dstPort, flowId: flow.id });
    for (const p of q) this.#host.relay.sendUp(nat, flow.natPort, p);
  }

  /** SOCKS5: the relay carries the name (ATYP 3) and resolves it; replies keyed by the name, or learned (#learn). */
  #bindSocks(f: FlowSetup): void {
    const { flow } = f;
    const q = f.queue;
    f.queue = [];
    let socksAddr: Buffer;
    try {
      socksAddr = address.encode({ host: f.name ?? flow.dstIp, port: flow.dstPort });
    } catch {
      // A name longer than 255 bytes cannot be carried (ATYP 3 length is one byte).
      this.#host.dropUp('oversized', q.length);
      this.#flows.delete(flow.id);
      return;
    }
    const nat = ipToInt(flow.natIp);
    if (!this.#host.relay.bind(nat, flow.natPort, this.id, 0, 0, socksAddr, socksAddr, flow.dstPort === 53)) {
      if (q.length > 0) this.#host.drop('closed', q.length);
      return;
    }
    f.bound = true;
    const hex = socksAddr.toString('hex');
    this.#remember(hex, { ip: flow.dstIp, port: flow.dstPort, socksAddr, flowId: flow.id });
    if (f.name !== undefined && net.isIP(f.name) === 0) {
      let set = this.#unbound.get(flow.dstPort);
      if (!set) {
        set = new Set();
        this.#unbound.set(flow.dstPort, set);
      }
      set.add(hex);
    }
    for (const p of q) this.#host.relay.sendUp(nat, flow.natPort, p);
  }

  /**
   * SOCKS5: the relay resolves names itself and reports the IP it heard
   * from (dante: ATYP 1). The first reply from an unseen (ip, port) when
   * exactly one not-yet-learned name was sent to on that port is that
   * name's answer (the rule of socks5-udp.ts #source); otherwise undefined.
   */
  #learn(ipHex: string, port: number): AppSees | undefined {
    const names = this.#unbound.get(port);
    if (names?.size !== 1) return undefined;
    const nameHex = names.values().next().value as string;
    const s = this.#remotes.get(nameHex);
    this.#unbound.delete(port);
    if (s !== undefined) this.#remember(ipHex, s);
    return s;
  }

  #remember(hex: string, appSees: AppSees): void {
    this.#remotes.delete(hex);
    this.#remotes.set(hex, appSees);
    if (this.#remotes.size > MAX_FLOWS) this.#remotes.delete(this.#remotes.keys().next().value as string);
  }
}
