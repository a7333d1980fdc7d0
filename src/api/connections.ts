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

/**
 * One live connection: the Listener's open event itself, kept as it came.
 * What only the API shows — the UUID (made the first time a snapshot lists
 * the connection), the start as ISO text, mihomo's reversed chain — is made
 * by snapshots, not per connection: with no dashboard open, tracking costs a
 * Map entry and no allocation (fewer young-generation collections on the
 * accept path, whose pauses are the tail of tcp-connect's latency, issue 11).
 */
type Tracked =
  | { network: 'tcp'; key: number; ev: SessionEvent; id: string | undefined }
  | { network: 'udp'; key: number; ev: UdpSessionEvent; id: string | undefined };

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
    return this.#byFlow.size + this.#byUdp.size;
  }

  #session(e: SessionEvent): void {
    if (e.phase === 'open') this.#byFlow.set(e.flowId, { network: 'tcp', key: e.flowId, ev: e, id: undefined });
    else this.#remove(this.#byFlow, e.flowId);
  }

  #udpSession(e: UdpSessionEvent): void {
    if (e.phase === 'open') this.#byUdp.set(e.id, { network: 'udp', key: e.id, ev: e, id: undefined });
    else this.#remove(this.#byUdp, e.id);
  }

  #remove(by: Map<number, Tracked>, key: number): void {
    const t = by.get(key);
    if (!t) return;
    by.delete(key);
    if (t.id !== undefined) this.#byId.delete(t.id);
  }

  /** The connection's API id, made (and indexed for close(id)) the first time a snapshot lists it. */
  #id(t: Tracked): string {
    if (t.id === undefined) {
      t.id = randomUUID();
      this.#byId.set(t.id, t);
    }
    return t.id;
  }

  #close(t: Tracked): boolean {
    return t.network === 'tcp' ? this.#src.closeFlow(t.key) : (this.#udp?.closeSession(t.key) ?? false);
  }

  /**
   * Reset one connection (end one UDP association); false when no live
   * connection has that id. Ids exist once a snapshot listed them, and a
   * client learns them only there.
   */
  close(id: string): boolean {
    const t = this.#byId.get(id);
    return t ? this.#close(t) : false;
  }

  /** Reset every connection; returns how many. */
  closeAll(): number {
    let n = 0;
    for (const t of [...this.#byFlow.values(), ...this.#byUdp.values()]) if (this.#close(t)) n++;
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
    for (const t of this.#byFlow.values()) connections.push(this.#json(t));
    for (const t of this.#byUdp.values()) connections.push(this.#json(t));
    return { downloadTotal: totals.bytesDown, uploadTotal: totals.bytesUp, connections, memory: this.#memory() };
  }

  #json(t: Tracked): ConnectionJson {
    const b = t.network === 'tcp' ? this.#src.sessionBytes(t.key) : this.#udp?.sessionBytes(t.key);
    const e = t.ev;
    let srcIp: string;
    let srcPort: number;
    let sniffed: boolean;
    let ruleType: string;
    let chains: readonly string[] | undefined;
    if (t.network === 'tcp') {
      srcIp = t.ev.srcIp ?? '';
      srcPort = t.ev.srcPort ?? 0;
      sniffed = t.ev.sniffed !== undefined;
      ruleType = t.ev.ruleType ?? 'Match';
      chains = t.ev.chains;
    } else {
      [srcIp, srcPort] = splitHostPort(t.ev.app);
      sniffed = false;
      ruleType = t.ev.ruleType || 'Match';
      chains = t.ev.chains.length > 0 ? t.ev.chains : undefined;
    }
    return {
      id: this.#id(t),
      metadata: {
        network: t.network,
        type: 'Tun',
        sourceIP: srcIp,
        destinationIP: e.ip,
        sourceGeoIP: null,
        destinationGeoIP: null,
        sourceIPASN: '',
        destinationIPASN: '',
        sourcePort: String(srcPort),
        destinationPort: String(e.port),
        inboundIP: '',
        inboundPort: '0',
        inboundName: 'DEFAULT-TUN',
        inboundUser: '',
        host: e.name ?? '',
        // A sniffed name came with a real address: no fake IP was involved.
        dnsMode: e.name === undefined || sniffed ? 'normal' : 'fake-ip',
        uid: 0,
        process: '',
        processPath: '',
        specialProxy: '',
        specialRules: '',
        remoteDestination: '',
        dscp: 0,
        // mihomo fills it when its sniffer recovered the name (and shows it as host too).
        sniffHost: sniffed ? (e.name ?? '') : '',
      },
      upload: b?.bytesUp ?? 0,
      download: b?.bytesDown ?? 0,
      // A source event without startMs (tests only; the Listeners set it) shows the snapshot's time.
      start: new Date(e.startMs ?? Date.now()).toISOString(),
      // mihomo's order: the proxy first, the rule's target last.
      chains: chains ? [...chains].reverse() : [e.outbound],
      rule: ruleType,
      rulePayload: e.rulePayload ?? '',
    };
  }
}

/** `1.2.3.4:5` or `[::1]:5` (hostPort's forms) → address and port. */
function splitHostPort(s: string): [string, number] {
  const i = s.lastIndexOf(':');
  const host = s.slice(0, i);
  return [host.startsWith('[') ? host.slice(1, -1) : host, Number(s.slice(i + 1))];
}
