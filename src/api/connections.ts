/**
 * Live connections for the controller API, kept by the daemon itself (no
 * Redis): one record per TCP session the Listener opened, with what the
 * Router decided at accept time (rule, payload, chain). Byte counts are read
 * from the relay when a snapshot is taken, so they grow while a transfer
 * runs; closing one resets the app's connection through the Listener.
 */
import { randomUUID } from 'node:crypto';
import type { SessionEvent } from '../proxy/listener.js';

/** What the tracker needs of the TCP Listener. */
export interface SessionSource {
  on(event: 'session', cb: (e: SessionEvent) => void): unknown;
  off(event: 'session', cb: (e: SessionEvent) => void): unknown;
  /** Live bytes of the session behind NAT flow `flowId`. */
  sessionBytes(flowId: number): { bytesUp: number; bytesDown: number } | undefined;
  /** Reset the session behind `flowId` (RST to the app and the upstream). */
  closeFlow(flowId: number): boolean;
  /** Bytes moved so far, ended sessions included. */
  stats(): { bytesUp: number; bytesDown: number };
}

interface Tracked {
  id: string;
  e: SessionEvent;
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
  readonly #src: SessionSource;
  readonly #onSession = (e: SessionEvent) => this.#session(e);
  readonly #memory: () => number;

  constructor(src: SessionSource, memory: () => number = () => process.memoryUsage.rss()) {
    this.#src = src;
    this.#memory = memory;
    src.on('session', this.#onSession);
  }

  detach(): void {
    this.#src.off('session', this.#onSession);
  }

  get size(): number {
    return this.#byId.size;
  }

  #session(e: SessionEvent): void {
    if (e.phase === 'open') {
      const t: Tracked = {
        id: randomUUID(),
        e,
        start: new Date(e.startMs ?? Date.now()).toISOString(),
        chains: e.chains ? [...e.chains].reverse() : [e.outbound],
      };
      this.#byId.set(t.id, t);
      this.#byFlow.set(e.flowId, t);
      return;
    }
    const t = this.#byFlow.get(e.flowId);
    if (!t) return;
    this.#byFlow.delete(e.flowId);
    this.#byId.delete(t.id);
  }

  /** Reset one connection; false when no live connection has that id. */
  close(id: string): boolean {
    const t = this.#byId.get(id);
    return t ? this.#src.closeFlow(t.e.flowId) : false;
  }

  /** Reset every connection; returns how many. */
  closeAll(): number {
    let n = 0;
    for (const t of [...this.#byId.values()]) if (this.#src.closeFlow(t.e.flowId)) n++;
    return n;
  }

  /** Bytes moved so far (ended connections included): /traffic's source. */
  snapshotTotals(): { bytesUp: number; bytesDown: number } {
    return this.#src.stats();
  }

  /** GET /connections (mihomo's statistic.Snapshot). */
  snapshot(): Snapshot {
    const totals = this.#src.stats();
    const connections: ConnectionJson[] = [];
    for (const t of this.#byId.values()) connections.push(this.#json(t));
    return { downloadTotal: totals.bytesDown, uploadTotal: totals.bytesUp, connections, memory: this.#memory() };
  }

  #json(t: Tracked): ConnectionJson {
    const e = t.e;
    const b = this.#src.sessionBytes(e.flowId);
    return {
      id: t.id,
      metadata: {
        network: 'tcp',
        type: 'Tun',
        sourceIP: e.srcIp ?? '',
        destinationIP: e.ip,
        sourceGeoIP: null,
        destinationGeoIP: null,
        sourceIPASN: '',
        destinationIPASN: '',
        sourcePort: String(e.srcPort ?? 0),
        destinationPort: String(e.port),
        inboundIP: '',
        inboundPort: '0',
        inboundName: 'DEFAULT-TUN',
        inboundUser: '',
        host: e.name ?? '',
        dnsMode: e.name === undefined ? 'normal' : 'fake-ip',
        uid: 0,
        process: '',
        processPath: '',
        specialProxy: '',
        specialRules: '',
        remoteDestination: '',
        dscp: 0,
        sniffHost: '',
      },
      upload: b?.bytesUp ?? 0,
      download: b?.bytesDown ?? 0,
      start: t.start,
      chains: t.chains,
      rule: e.ruleType ?? 'Match',
      rulePayload: e.rulePayload ?? '',
    };
  }
}
