/**
 * The real NatManager and FakeDns as the Redis mirror's sources, root-free:
 * the engine is driven with processPacket/expire (no TUN, no thread), and
 * names are mapped through FakeDns.handleQuery (no socket). Each test sees
 * the events, counters and ids the daemon's mirror would.
 */
import dnsPacket from 'dns-packet';
import { FakeDns } from '../../../src/dns/index.js';
import { DEFAULT_TIMEOUTS, NatManager, type NatTimeouts } from '../../../src/nat/NatManager.js';
import type { FlowEntry } from '../../../src/nat/types.js';
import { F, parse, tcpPacket, udpPacket } from '../native/packets.js';

export const GW = '198.18.0.1';
export const LISTEN_PORT = 1313;
/** TCP payload per packet in traffic(). */
export const MAX_SEGMENT = 60_000;

export interface OpenOptions {
  proto?: 'tcp' | 'udp';
  src?: string;
  sport?: number;
  dst?: string;
  dport?: number;
  /** When the first packet is seen (ms since epoch). @default the driver's clock */
  at?: number;
  /** Leave the open event queued in the engine (as if its batch were still in flight). */
  silent?: boolean;
}

/** A NatManager whose packets the test writes. */
export class LiveNat {
  readonly nat: NatManager;
  /** The engine's clock (ms since epoch). */
  now = Date.now();
  private nextPort = 30_000;
  private readonly sides = new Map<number, { app: { src: string; dst: string; sport: number; dport: number } }>();

  constructor(opts: { timeouts?: Partial<NatTimeouts> } = {}) {
    this.nat = new NatManager({ logger: () => {}, clock: () => this.now, timeouts: opts.timeouts });
  }

  /** A new flow from the app side (a whole TCP handshake, or a UDP datagram); returns the table's entry. */
  open(o: OpenOptions = {}): FlowEntry {
    const proto = o.proto ?? 'tcp';
    const app = {
      src: o.src ?? GW,
      dst: o.dst ?? '198.18.2.2',
      sport: o.sport ?? this.nextPort++,
      dport: o.dport ?? 80,
    };
    const pkt = proto === 'tcp' ? tcpPacket({ ...app, flags: F.SYN }) : udpPacket({ ...app, payload: Buffer.alloc(4) });
    const out = this.nat.engine.processPacket(pkt, o.at ?? this.now);
    if (out.length !== 1) throw new Error(`the engine did not forward the first packet of ${JSON.stringify(app)}`);
    const nat = parse(out[0]);
    let entry = this.nat.lookup(proto, nat.src, nat.sport);
    if (!entry) throw new Error('flow not in the table');
    this.sides.set(entry.id, { app });
    // The engine reports a TCP flow once its handshake completes (a half-open one is no connection yet).
    if (proto === 'tcp') {
      this.establish(entry, o.at ?? this.now);
      entry = this.entry(entry);
    }
    if (!o.silent) this.nat.flushEvents();
    return entry;
  }

  /** Deliver the open events left queued by open({ silent: true }). */
  flush(): void {
    this.nat.flushEvents();
  }

  /**
   * Data both ways (no event; only entries() shows it, like the engine's
   * counters). A TCP flow still in 'syn' completes its handshake first.
   */
  traffic(f: FlowEntry, outPayload: number, inPayload: number, at = this.now): FlowEntry {
    const side = this.side(f);
    const lis = this.listenerSide(f);
    if (f.proto === 'tcp') {
      this.establish(f, at);
      for (const [pkt, n] of [
        [side.app, outPayload],
        [lis, inPayload],
      ] as const) {
        // One segment per MAX_SEGMENT bytes (an IPv4 packet holds at most 64 KiB).
        for (let left = n; left > 0; left -= MAX_SEGMENT) {
          const payload = Buffer.alloc(Math.min(left, MAX_SEGMENT));
          this.nat.engine.processPacket(tcpPacket({ ...pkt, flags: F.PSH | F.ACK, payload }), at);
        }
      }
    } else {
      if (outPayload > 0)
        this.nat.engine.processPacket(udpPacket({ ...side.app, payload: Buffer.alloc(outPayload) }), at);
      if (inPayload > 0) this.nat.engine.processPacket(udpPacket({ ...lis, payload: Buffer.alloc(inPayload) }), at);
    }
    return this.entry(f);
  }

  /** Complete the handshake of a TCP flow still in 'syn' (the Listener's SYN-ACK, the app's ACK). */
  establish(f: FlowEntry, at = this.now): void {
    if (this.entry(f).state !== 'syn') return;
    this.nat.engine.processPacket(tcpPacket({ ...this.listenerSide(f), flags: F.SYN | F.ACK }), at);
    this.nat.engine.processPacket(tcpPacket({ ...this.side(f).app, flags: F.ACK }), at);
  }

  /** The flow as the table has it now. */
  entry(f: FlowEntry): FlowEntry {
    const e = this.nat.lookup(f.proto, f.natIp, f.natPort);
    if (!e) throw new Error(`flow ${f.id} is not in the table`);
    return e;
  }

  /**
   * End a flow: 'rst' (the app resets an established connection; closed
   * once the engine's linger is over) or 'timeout' (the engine idles out
   * every flow); the close event is delivered.
   */
  close(f: FlowEntry, how: 'rst' | 'timeout' = 'rst', at = this.now): void {
    if (how === 'rst') {
      if (f.proto !== 'tcp') throw new Error('rst needs a TCP flow');
      this.establish(f, at);
      // At the sequence the Listener expects next (RFC 5961: the engine ignores any other): the SYN's
      // 1000 + 1, which nothing here moves (the SYN-ACK acknowledges nothing, data repeats seq 1000).
      this.nat.engine.processPacket(tcpPacket({ ...this.side(f).app, flags: F.RST, seq: 1001 }), at);
      // The engine keeps a reset flow for its closed-state linger, then closes it (reason 'rst').
      this.nat.engine.expire(at + (this.nat.engineOptions.timeouts.tcpClosedMs ?? DEFAULT_TIMEOUTS.tcpClosedMs));
    } else {
      this.nat.engine.expire(at + 24 * 3600_000);
    }
    this.nat.flushEvents();
    if (this.nat.lookup(f.proto, f.natIp, f.natPort)) throw new Error(`flow ${f.id} did not close`);
    this.sides.delete(f.id);
  }

  private listenerSide(f: FlowEntry) {
    return { src: GW, dst: f.natIp, sport: LISTEN_PORT, dport: f.natPort };
  }

  private side(f: FlowEntry) {
    const s = this.sides.get(f.id);
    if (!s) throw new Error(`flow ${f.id} was not opened here`);
    return s;
  }
}

/** A real FakeDns (no socket: queries go through handleQuery) whose names the test maps. */
export class LiveDns {
  readonly dns: FakeDns;
  private id = 1;

  constructor(cidr = '198.18.0.0/16') {
    // The upstream is never asked: only A queries for names outside the filter are sent.
    this.dns = new FakeDns({ cidr, listen: [], upstream: { host: '127.0.0.1', port: 9 }, logger: () => {} });
  }

  /** Resolve `name` as an app would; returns the fake address answered. */
  async resolve(name: string): Promise<string> {
    const q = dnsPacket.encode({
      type: 'query',
      id: this.id++,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ type: 'A', name }],
    });
    const reply = await this.dns.handleQuery(q, 'udp');
    if (!reply) throw new Error(`no answer for ${name}`);
    const a = dnsPacket.decode(reply).answers?.[0];
    if (a?.type !== 'A') throw new Error(`no A record for ${name}`);
    return a.data;
  }
}
