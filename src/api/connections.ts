/**
 * Live connections for the controller API, kept by the daemon itself (no
 * Redis): one record per TCP session the Listener opened and per UDP
 * association the UdpListener opened, with what the Router decided at the
 * first packet (rule, payload, chain). Byte counts are read from the relay
 * (native or JS) when a snapshot is taken, so they grow while a transfer
 * runs; closing one resets the app's TCP connection, or ends the UDP
 * association (its upstream socket and relay state).
 */
import { randomUUID } from 'node:crypto';
import type { SessionEvent } from '../proxy/listener.js';
import type { UdpSessionEvent } from '../proxy/udp/udpListener.js';

type Bytes = { bytesUp: number; bytesDown: number };

/** What the tracker needs of either Listener, whose session events are E. */
interface SessionEvents<E> {
  on(event: 'session', cb: (e: E) => void): unknown;
  off(event: 'session', cb: (e: E) => void): unknown;
  /** Live bytes of the session `key` names (a NAT flow id for TCP, UdpSessionEvent.id for UDP). */
  sessionBytes(key: number): Bytes | undefined;
  /** Bytes moved so far, ended sessions included. */
  stats(): Bytes;
}

/** What the tracker needs of the TCP Listener. */
export interface SessionSource extends SessionEvents<SessionEvent> {
  /** Reset the session behind `flowId` (RST to the app and the upstream). */
  closeFlow(flowId: number): boolean;
}

/** What the tracker needs of the UdpListener: sessions are keyed by UdpSessionEvent.id. */
export interface UdpSessionSource extends SessionEvents<UdpSessionEvent> {
  closeSession(id: number): boolean;
}

interface Tracked {
  id: string;
  network: 'tcp' | 'udp';
  /** The TCP session's NAT flow id, or the UDP session's id. */
  key: number;
  name: string | undefined;
  /** `name` came from the app's first bytes (TLS SNI, HTTP Host), not from a fake address. */
  sniffed: boolean;
  ip: string;
  port: number;
  srcIp: string;
  srcPort: number;
  ruleType: string;
  rulePayload: string;
  start: string;
  /** mihomo's `chains`: the proxy first, the rule's target last. */
  chains: string[];
}

/** mihomo's tunnel/statistic TrackerInfo as JSON (the fields dashboards read). */
export interface ConnectionJson {
  id: string;
  metadata: Record<string, unknown>;
  upload: number;
  download: number;
  start: string;
  chains: string[];
  rule: string;
  rulePayload: string;
}

export interface Snapshot {
  downloadTotal: number;
  uploadTotal: number;
  connections: ConnectionJson[];
  memory: number;
}

export class ConnectionTracker {
  readonly #byId = new Map<string, Tracked>();
  readonly #byFlow = new Map<number, Tracked>();
  readonly #byUdp = new Map<number, Tracked>();
  readonly #src: SessionSource;
  readonly #udp: UdpSessionSource | undefined;
  readonly #onSession = (e: SessionEvent) => this.#session(e);
  readonly #onUdp = (e: UdpSessionEvent) => this.#udpSession(e);
  readonly #memory: () => number;

  constructor(src: SessionSource, o: { udp?: UdpSessionSource | undefined; memory?: () => number } = {}) {
    this.#src = src;
    this.#udp = o.udp;
    this.#memory = o.memory ?? (() => process.memoryUsage.rss());
    src.on('session', this.#onSession);
    o.udp?.on('session', this.#onUdp);
  }

  detach(): void {
    this.#src.off('session', this.#onSession);
    this.#udp?.off('session', this.#onUdp);
  }

  get size(): number {
    return this.#byId.size;
  }

  #session(e: SessionEvent): void {
    if (e.phase === 'open') {
      this.#add(this.#byFlow, {
        id: randomUUID(),
        network: 'tcp',
        key: e.flowId,
        name: e.name,
        sniffed: e.sniffed !== undefined,
        ip: e.ip,
        port: e.port,
        srcIp: e.srcIp ?? '',
        srcPort: e.srcPort ?? 0,
        ruleType: e.ruleType ?? 'Match',
        rulePayload: e.rulePayload ?? '',
        start: new Date(e.startMs ?? Date.now()).toISOString(),
        chains: e.chains ? [...e.chains].reverse() : [e.outbound],
      });
    } else this.#remove(this.#byFlow, e.flowId);
  }

  #udpSession(e: UdpSessionEvent): void {
    if (e.phase === 'open') {
      const [srcIp, srcPort] = splitHostPort(e.app);
      this.#add(this.#byUdp, {
        id: randomUUID(),
        network: 'udp',
        key: e.id,
        name: e.name,
        sniffed: false,
        ip: e.ip,
        port: e.port,
        srcIp,
        srcPort,
        ruleType: e.ruleType || 'Match',
        rulePayload: e.rulePayload,
        start: new Date(e.startMs).toISOString(),
        chains: e.chains.length > 0 ? [...e.chains].reverse() : [e.outbound],
      });
    } else this.#remove(this.#byUdp, e.id);
  }

  #add(by: Map<number, Tracked>, t: Tracked): void {
    this.#byId.set(t.id, t);
    by.set(t.key, t);
  }

  #remove(by: Map<number, Tracked>, key: number): void {
    const t = by.get(key);
    if (!t) return;
    by.delete(key);
    this.#byId.delete(t.id);
  }

  #close(t: Tracked): boolean {
    return t.network === 'tcp' ? this.#src.closeFlow(t.key) : (this.#udp?.closeSession(t.key) ?? false);
  }

  /** Reset one connection (end one UDP association); false when no live connection has that id. */
  close(id: string): boolean {
    const t = this.#byId.get(id);
    return t ? this.#close(t) : false;
  }

  /** Reset every connection; returns how many. */
  closeAll(): number {
    let n = 0;
    for (const t of [...this.#byId.values()]) if (this.#close(t)) n++;
    return n;
  }

  /** Bytes moved so far, TCP and UDP (ended connections included): /traffic's source. */
  snapshotTotals(): { bytesUp: number; bytesDown: number } {
    const t = this.#src.stats();
    const u = this.#udp?.stats();
    return u ? { bytesUp: t.bytesUp + u.bytesUp, bytesDown: t.bytesDown + u.bytesDown } : t;
  }

  /** GET /connections (mihomo's statistic.Snapshot). */
  snapshot(): Snapshot {
    const totals = this.snapshotTotals();
    const connections: ConnectionJson[] = [];
    for (const t of this.#byId.values()) connections.push(this.#json(t));
    return { downloadTotal: totals.bytesDown, uploadTotal: totals.bytesUp, connections, memory: this.#memory() };
  }

  #json(t: Tracked): ConnectionJson {
    const b = t.network === 'tcp' ? this.#src.sessionBytes(t.key) : this.#udp?.sessionBytes(t.key);
    return {
      id: t.id,
      metadata: {
        network: t.network,
        type: 'Tun',
        sourceIP: t.srcIp,
        destinationIP: t.ip,
        sourceGeoIP: null,
        destinationGeoIP: null,
        sourceIPASN: '',
        destinationIPASN: '',
        sourcePort: String(t.srcPort),
        destinationPort: String(t.port),
        inboundIP: '',
        inboundPort: '0',
        inboundName: 'DEFAULT-TUN',
        inboundUser: '',
        host: t.name ?? '',
        // A sniffed name came with a real address: no fake IP was involved.
        dnsMode: t.name === undefined || t.sniffed ? 'normal' : 'fake-ip',
        uid: 0,
        process: '',
        processPath: '',
        specialProxy: '',
        specialRules: '',
        remoteDestination: '',
        dscp: 0,
        // mihomo fills it when its sniffer recovered the name (and shows it as host too).
        sniffHost: t.sniffed ? (t.name ?? '') : '',
      },
      upload: b?.bytesUp ?? 0,
      download: b?.bytesDown ?? 0,
      start: t.start,
      chains: t.chains,
      rule: t.ruleType,
      rulePayload: t.rulePayload,
    };
  }
}

/** `1.2.3.4:5` or `[::1]:5` (hostPort's forms) → address and port. */
function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(':');
  const host = s.slice(0, i);
  return [host.startsWith('[') ? host.slice(1, -1) : host, Number(s.slice(i + 1))];
}
