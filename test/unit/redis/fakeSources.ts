/** Plain EventEmitters standing in for NatManager and FakeDns (the real ones need a TUN). */
import { EventEmitter } from 'node:events';
import type { CloseReason, FlowEntry } from '../../../src/nat/types.js';

export class FakeNat extends EventEmitter {
  readonly table = new Map<number, FlowEntry>();
  private nextId = 1;
  private nextPort = 40001;

  entries(): FlowEntry[] {
    return [...this.table.values()].map((e) => ({ ...e }));
  }

  /** Add a flow to the table; emits its open event unless `silent` (as if the batch were still in flight). */
  open(over: Partial<FlowEntry> = {}, silent = false): FlowEntry {
    const now = Date.now();
    const e: FlowEntry = {
      id: this.nextId++,
      proto: 'tcp',
      srcIp: '198.18.0.1',
      srcPort: 30000 + this.nextId,
      dstIp: '198.18.2.2',
      dstPort: 80,
      natIp: '198.18.7.9',
      natPort: this.nextPort++,
      state: 'syn',
      createdMs: now,
      lastSeenMs: now,
      pktsOut: 1,
      bytesOut: 60,
      pktsIn: 0,
      bytesIn: 0,
      ...over,
    };
    this.table.set(e.id, e);
    if (!silent) this.emit('events', [{ type: 'open', flow: { ...e } }]);
    return e;
  }

  /** Traffic without events: only entries() shows it (like the engine's counters). */
  traffic(id: number, bytesOut: number, bytesIn: number): void {
    const e = this.table.get(id);
    if (!e) throw new Error(`no flow ${id}`);
    e.bytesOut += bytesOut;
    e.bytesIn += bytesIn;
    e.pktsOut++;
    e.pktsIn++;
    e.state = 'established';
    e.lastSeenMs = Date.now();
  }

  close(id: number, reason: CloseReason = 'fin'): void {
    const e = this.table.get(id);
    if (!e) throw new Error(`no flow ${id}`);
    this.table.delete(id);
    this.emit('events', [{ type: 'close', flow: { ...e, state: 'closed' }, reason }]);
  }
}

export class FakeDnsSource extends EventEmitter {
  readonly map = new Map<string, string>();
  entries(): { name: string; ip: string }[] {
    return [...this.map].map(([name, ip]) => ({ name, ip }));
  }
  mapName(name: string, ip: string): void {
    this.map.set(name, ip);
    this.emit('mapped', name, ip);
  }
  unmap(name: string): void {
    const ip = this.map.get(name);
    if (ip === undefined) return;
    this.map.delete(name);
    this.emit('unmapped', name, ip);
  }
}
