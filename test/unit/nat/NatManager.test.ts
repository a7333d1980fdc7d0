import { describe, expect, it } from 'vitest';
import { DEFAULT_TIMEOUTS, NatManager } from '../../../src/nat/NatManager.js';
import type { CloseReason, FlowEntry, FlowEvent } from '../../../src/nat/types.js';
import { F, parse, tcpPacket, udpPacket } from '../native/packets.js';

const T0 = 1_700_000_000_000;

function manager(over: ConstructorParameters<typeof NatManager>[0] = {}) {
  const logs: string[] = [];
  let now = T0;
  const m = new NatManager({ logger: (l) => logs.push(l), clock: () => now, ...over });
  const batches: FlowEvent[][] = [];
  const opened: FlowEntry[] = [];
  const closed: Array<[FlowEntry, CloseReason]> = [];
  m.on('events', (b) => batches.push(b));
  m.on('open', (f) => opened.push(f));
  m.on('close', (f, r) => closed.push([f, r]));
  return { m, logs, batches, opened, closed, advance: (ms: number) => (now += ms), now: () => now };
}

describe('NatManager', () => {
  it('applies documented defaults', () => {
    const { m } = manager();
    expect(m.engineOptions).toMatchObject({
      network: '198.18.0.0',
      prefixLen: 16,
      gateway: '198.18.0.1',
      listenPort: 1313,
      dnsPort: 53,
      dnsHijack: true,
      maxFlows: 1_048_576,
      reuseDelayMs: 60_000,
      timeouts: DEFAULT_TIMEOUTS,
    });
    expect(new NatManager({ range: '10.7.0.0/24', logger: () => {} }).engineOptions).toMatchObject({
      network: '10.7.0.0',
      prefixLen: 24,
      gateway: '10.7.0.1',
    });
  });

  it('rejects a bad range with a usage error', () => {
    expect(() => new NatManager({ range: '10.0.0.0/31' })).toThrow(/between \/8 and \/30/);
  });

  it('lookup(tcp|udp) returns the flow the Listener needs, with string protocols', () => {
    const { m } = manager();
    const out = parse(
      m.engine.processPacket(
        tcpPacket({ src: '198.18.0.1', dst: '198.18.2.2', sport: 34567, dport: 80, flags: F.SYN }),
        T0,
      )[0],
    );
    const f = m.lookup('tcp', out.src, out.sport);
    expect(f).toMatchObject({
      proto: 'tcp',
      srcIp: '198.18.0.1',
      srcPort: 34567,
      dstIp: '198.18.2.2',
      dstPort: 80,
      natIp: out.src,
      natPort: out.sport,
    });
    expect(m.lookup('udp', out.src, out.sport)).toBeUndefined();
    expect(m.entries()).toEqual([f]);
  });

  it('emits one batched events call plus open/close per flow', () => {
    const { m, batches, opened, closed } = manager();
    for (let i = 0; i < 5; i++)
      m.engine.processPacket(udpPacket({ src: '198.18.0.1', dst: '198.18.3.3', sport: 1000 + i, dport: 443 }), T0);
    m.flushEvents();
    expect(batches).toHaveLength(1);
    expect(batches[0]).toHaveLength(5);
    expect(batches[0].every((e) => e.type === 'open' && e.flow.proto === 'udp')).toBe(true);
    expect(opened.map((f) => f.srcPort)).toEqual([1000, 1001, 1002, 1003, 1004]);
    m.engine.expire(T0 + 60_000);
    m.flushEvents();
    expect(closed).toHaveLength(5);
    expect(closed.every(([, r]) => r === 'timeout')).toBe(true);
  });

  it('ensureFlow creates from the Listener side and emits its open event', () => {
    const { m, opened } = manager();
    const f = m.ensureFlow('udp', '198.18.0.1', 5000, '203.0.113.1', 3478);
    expect(f).toMatchObject({ proto: 'udp', state: 'udp', createdMs: T0 });
    expect(m.lookup('udp', f.natIp, f.natPort)?.id).toBe(f.id);
    expect(opened.map((x) => x.id)).toEqual([f.id]);
  });

  it('logs table-full at most once per interval, with the count, and names the fix', () => {
    const { m, logs, advance } = manager({ maxFlows: 2 });
    const syn = (p: number) => tcpPacket({ src: '198.18.0.1', dst: '198.18.2.2', sport: p, dport: 80, flags: F.SYN });
    for (let p = 1; p <= 5; p++) m.engine.processPacket(syn(p), T0); // 2 created, 3 refused
    m.checkCounters();
    expect(logs).toHaveLength(1);
    expect(logs[0]).toMatch(/NAT table full \(2\/2 flows\): raise --max-flows.*refused 3 new flows/);
    m.engine.processPacket(syn(6), T0);
    m.checkCounters();
    expect(logs).toHaveLength(1);
    advance(10_000);
    m.engine.processPacket(syn(7), T0);
    m.checkCounters();
    expect(logs).toHaveLength(2);
    expect(logs[1]).toMatch(/refused 2 new flows/);
    expect(() => m.ensureFlow('tcp', '1.1.1.1', 1, '2.2.2.2', 2)).toThrow(expect.objectContaining({ code: 'ENOSPC' }));
    expect(m.stats().flowsRefused).toBe(6);
  });

  it('stop() closes every flow with reason shutdown and is idempotent', () => {
    const { m, closed } = manager();
    m.ensureFlow('udp', '198.18.0.1', 5000, '203.0.113.1', 3478);
    m.ensureFlow('tcp', '198.18.0.1', 5001, '203.0.113.1', 80);
    m.stop();
    m.stop();
    expect(closed.map(([, r]) => r)).toEqual(['shutdown', 'shutdown']);
    expect(m.entries()).toEqual([]);
  });

  it('start() validates its fds through the native engine', () => {
    const { m } = manager();
    expect(() => m.start([])).toThrow(/at least one fd/);
    m.stop();
  });
});
