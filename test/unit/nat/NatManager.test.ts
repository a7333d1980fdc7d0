import { describe, expect, it } from 'vitest';
import { NatManager } from '../../../src/nat/NatManager.js';
import type { CloseReason, FlowEntry, FlowEvent, PackedFlow } from '../../../src/nat/types.js';
import {
  CLOSE_REASONS,
  FLOW_EVENT,
  FLOW_EVENT_FIELDS,
  PACKED_FLOW,
  PACKED_FLOW_LEN,
  PACKED_STATES,
} from '../../../src/native.js';
import { NAT_TIMEOUTS, START_OPTIONS } from '../../../src/options.js';
import { dottedToU32, intToIp, ipToInt } from '../../../src/util/cidr.js';
import { resourceAlarm } from '../../../src/util/exhaustion.js';
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

/** The app's SYN 198.18.0.1:34567 → 198.18.2.2:80 through the engine, as rewritten onto the Listener. */
const firstSyn = (m: NatManager) =>
  parse(
    m.engine.processPacket(
      tcpPacket({ src: '198.18.0.1', dst: '198.18.2.2', sport: 34567, dport: 80, flags: F.SYN }),
      T0,
    )[0],
  );

describe('NatManager', () => {
  it('without options the engine runs the start defaults: Listener port, DNS hijack, table size, timeouts', () => {
    const { m, closed } = manager();
    // A SYN to a fake address is rewritten onto the Listener at gateway:--listen-port.
    const syn = firstSyn(m);
    expect([syn.dst, syn.dport]).toEqual(['198.18.0.1', START_OPTIONS.listenPort.default]);
    // DNS hijack is on: port 53 to any resolver lands on the DNS server at gateway:53.
    const q = parse(
      m.engine.processPacket(udpPacket({ src: '198.18.0.1', dst: '9.9.9.9', sport: 5353, dport: 53 }), T0)[0],
    );
    expect([q.dst, q.dport]).toEqual(['198.18.0.1', 53]);
    expect(m.stats().maxFlows).toBe(START_OPTIONS.maxFlows.default);
    // A UDP flow lives exactly the udp timeout of NAT_TIMEOUTS.
    m.engine.processPacket(udpPacket({ src: '198.18.0.1', dst: '198.18.3.3', sport: 4000, dport: 443 }), T0);
    m.engine.expire(T0 + NAT_TIMEOUTS.udp.defaultMs - 1);
    m.flushEvents();
    expect(closed.filter(([f]) => f.dstPort === 443)).toEqual([]);
    m.engine.expire(T0 + NAT_TIMEOUTS.udp.defaultMs);
    m.flushEvents();
    expect(closed.filter(([f]) => f.dstPort === 443).map(([, r]) => r)).toEqual(['timeout']);
  });

  it('events arrive as the engine queued them (packed numbers decoded): every field of open and close, the close reason', () => {
    // A twin engine fed the same packets hands its queue over as objects (drainEvents): the reference.
    const a = manager();
    const b = manager();
    const feed = (m: NatManager) => {
      const udp = (sport: number, at: number) =>
        m.engine.processPacket(udpPacket({ src: '198.18.0.1', dst: '198.18.3.3', sport, dport: 443 }), at);
      m.engine.ensureFlow(6, '198.18.0.9', 40001, '203.0.113.5', 80, T0);
      udp(4000, T0);
      udp(4001, T0 + 3);
      // The UDP flows time out; one opened after that lives until clear() (shutdown), with the TCP one.
      const later = T0 + NAT_TIMEOUTS.udp.defaultMs + 10;
      m.engine.expire(later);
      udp(4002, later);
      m.engine.clear(later + 10);
    };
    feed(a.m);
    feed(b.m);
    a.m.flushEvents();
    const want = b.m.engine.drainEvents().map((e) => ({
      type: e.type,
      flow: { ...e.flow, proto: e.flow.proto === 6 ? 'tcp' : 'udp' },
      ...(e.type === 'close' ? { reason: e.reason } : {}),
    }));
    expect(new Set(want.map((e) => ('reason' in e ? e.reason : 'open')))).toEqual(
      new Set(['open', 'timeout', 'shutdown']),
    );
    // NAT pairs are drawn at random per engine: compared apart, an open's pair is its close's.
    const noNat = (e: FlowEvent) => ({ ...e, flow: { ...e.flow, natIp: '', natPort: 0 } });
    const got = a.batches.flat();
    expect(got.map(noNat)).toEqual(want.map((e) => noNat(e as FlowEvent)));
    const pairs = new Map(
      got.filter((e) => e.type === 'open').map((e) => [e.flow.id, `${e.flow.natIp}:${e.flow.natPort}`]),
    );
    for (const e of got) {
      expect(e.flow.natIp).toMatch(/^198\.1[89]\.\d+\.\d+$/);
      expect(e.flow.natPort).toBeGreaterThan(0);
      expect(`${e.flow.natIp}:${e.flow.natPort}`).toBe(pairs.get(e.flow.id));
    }
  });

  it("'packed' comes first with the same batch as numbers, and without listeners for the objects too", () => {
    const { m, batches } = manager();
    const packed: number[][] = [];
    m.on('packed', (r) => {
      for (let i = 0; i < r.length; i += FLOW_EVENT_FIELDS)
        packed.push([
          r[i + FLOW_EVENT.kind],
          r[i + FLOW_EVENT.id],
          r[i + FLOW_EVENT.dstIp],
          r[i + FLOW_EVENT.dstPort],
        ] as number[]);
      // Before the objects of the same batch.
      expect(batches.flat().length).toBe(packed.length - r.length / FLOW_EVENT_FIELDS);
    });
    m.ensureFlow('udp', '198.18.0.9', 40001, '203.0.113.5', 80);
    m.engine.clear(T0 + 5);
    m.flushEvents();
    const objs = batches.flat();
    expect(packed).toEqual(
      objs.map((e) => [
        e.type === 'open' ? 0 : 1 + CLOSE_REASONS.indexOf(e.reason),
        e.flow.id,
        ipToInt(e.flow.dstIp),
        e.flow.dstPort,
      ]),
    );
    expect(packed.map((p) => p[0])).toEqual([0, 1 + CLOSE_REASONS.indexOf('shutdown')]);
    // No listener for objects: the numbers still come.
    m.removeAllListeners('events').removeAllListeners('open').removeAllListeners('close');
    m.ensureFlow('udp', '198.18.0.9', 40002, '203.0.113.5', 80);
    m.flushEvents();
    expect(packed.at(-1)?.[0]).toBe(0);
    expect(packed).toHaveLength(3);
  });

  it("'udpClose' reports UDP flows leaving the table, with or without listeners for the other events", () => {
    for (const withEvents of [false, true]) {
      const m = new NatManager({ clock: () => T0 });
      if (withEvents) m.on('close', () => {});
      const got: Array<[string, number, CloseReason]> = [];
      m.on('udpClose', (f, why) => got.push([f.proto, f.srcPort, why]));
      const u = m.ensureFlow('udp', '198.18.0.9', 40001, '203.0.113.5', 53);
      m.engine.clear(T0 + 5);
      m.flushEvents();
      expect(got).toEqual([['udp', 40001, 'shutdown']]);
      expect(u.srcPort).toBe(40001);
    }
  });

  it('derives the gateway from the range: the Listener is reached at its first host', () => {
    const { m } = manager({ range: '10.7.0.0/24' });
    const syn = parse(
      m.engine.processPacket(
        tcpPacket({ src: '10.7.0.1', dst: '10.7.0.9', sport: 34567, dport: 80, flags: F.SYN }),
        T0,
      )[0],
    );
    expect(syn.dst).toBe('10.7.0.1');
    expect(syn.src.startsWith('10.7.0.')).toBe(true);
  });

  it('rejects a bad range with a usage error', () => {
    expect(() => new NatManager({ range: '10.0.0.0/31' })).toThrow(/between \/8 and \/30/);
  });

  it('lookup(tcp|udp) returns the flow the Listener needs, with string protocols', () => {
    const { m } = manager();
    const out = firstSyn(m);
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

  it("lookupPacked answers the same flow as lookup, as numbers, into the caller's reused object", () => {
    const { m } = manager();
    const out = firstSyn(m);
    const u = m.ensureFlow('udp', '198.18.0.9', 5000, '203.0.113.1', 3478);
    const full = m.lookup('tcp', out.src, out.sport) as FlowEntry;
    const p: PackedFlow = { id: -1, srcIp: -1, srcPort: -1, dstIp: -1, dstPort: -1 };
    expect(m.lookupPacked('tcp', dottedToU32(out.src), out.sport, p)).toBe(true);
    expect(p).toEqual({
      id: full.id,
      srcIp: dottedToU32('198.18.0.1'),
      srcPort: 34567,
      dstIp: dottedToU32('198.18.2.2'),
      dstPort: 80,
    });
    expect(intToIp(p.dstIp)).toBe(full.dstIp);
    // The same object again, for the UDP flow: every field overwritten.
    expect(m.lookupPacked('udp', dottedToU32(u.natIp), u.natPort, p)).toBe(true);
    expect(p).toEqual({ id: u.id, srcIp: dottedToU32('198.18.0.9'), srcPort: 5000, dstIp: 0xcb007101, dstPort: 3478 });
    // Misses leave `out` alone and say false: wrong protocol, wrong port, wrong address.
    const before = { ...p };
    expect(m.lookupPacked('udp', dottedToU32(out.src), out.sport, p)).toBe(false);
    expect(m.lookupPacked('tcp', dottedToU32(out.src), (out.sport + 1) & 0xffff, p)).toBe(false);
    expect(m.lookupPacked('tcp', dottedToU32('198.18.0.1'), out.sport, p)).toBe(false);
    expect(p).toEqual(before);
    // After expiry the pair is no longer a live NAT address.
    m.engine.expire(T0 + NAT_TIMEOUTS['tcp-syn'].defaultMs + 1);
    expect(m.lookupPacked('tcp', dottedToU32(out.src), out.sport, p)).toBe(false);
  });

  it('engine.lookupPacked fills the documented Float64Array slots and refuses bad arguments', () => {
    const { m } = manager();
    const f = m.ensureFlow('tcp', '198.18.0.1', 40000, '198.18.7.7', 443);
    const a = new Float64Array(PACKED_FLOW_LEN);
    expect(m.engine.lookupPacked(6, dottedToU32(f.natIp), f.natPort, a)).toBe(true);
    expect(a[PACKED_FLOW.id]).toBe(f.id);
    expect(intToIp(a[PACKED_FLOW.srcIp] as number)).toBe('198.18.0.1');
    expect(a[PACKED_FLOW.srcPort]).toBe(40000);
    expect(intToIp(a[PACKED_FLOW.dstIp] as number)).toBe('198.18.7.7');
    expect(a[PACKED_FLOW.dstPort]).toBe(443);
    expect(PACKED_STATES[a[PACKED_FLOW.state] as number]).toBe(f.state);
    expect(a[PACKED_FLOW.createdMs]).toBe(f.createdMs);
    expect(a[PACKED_FLOW.lastSeenMs]).toBe(f.lastSeenMs);
    const ip = dottedToU32(f.natIp);
    expect(() => m.engine.lookupPacked(6, ip, f.natPort, new Float64Array(3))).toThrow(/Float64Array\(8\)/);
    expect(() => m.engine.lookupPacked(6, ip, f.natPort, new Uint32Array(8) as never)).toThrow(/Float64Array/);
    expect(() => m.engine.lookupPacked(6, -1, f.natPort, a)).toThrow(/unsigned 32-bit/);
    expect(() => m.engine.lookupPacked(6, 2 ** 32, f.natPort, a)).toThrow(/unsigned 32-bit/);
    expect(() => m.engine.lookupPacked(6, ip, 70000, a)).toThrow(/natPort/);
    expect(() => m.engine.lookupPacked(1 as 6, ip, f.natPort, a)).toThrow(/proto/);
  });

  it('dottedToU32 reads exactly four decimal octets, from an offset (IPv4-mapped peers)', () => {
    expect(dottedToU32('198.18.0.1')).toBe(0xc6120001);
    expect(dottedToU32('255.255.255.255')).toBe(0xffffffff);
    expect(dottedToU32('0.0.0.0')).toBe(0);
    expect(dottedToU32('::ffff:10.1.2.3', 7)).toBe(0x0a010203);
    for (const bad of [
      '',
      '1.2.3',
      '1.2.3.4.5',
      '1.2.3.256',
      '1..2.3',
      '1.2.3.',
      '.1.2.3',
      'a.b.c.d',
      '1.2.3.4 ',
      '::1',
      '1.2.3.0004',
    ])
      expect(dottedToU32(bad), bad).toBe(-1);
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
    // A table of UDP flows (early drop evicts only half-open TCP ones): the SYNs are refused.
    for (let p = 1; p <= 2; p++)
      m.engine.processPacket(udpPacket({ src: '198.18.0.1', dst: '198.18.2.2', sport: p, dport: 443 }), T0);
    for (let p = 3; p <= 5; p++) m.engine.processPacket(syn(p), T0); // 3 refused
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

  it('serves this machine and --lan only; re-reads the local addresses and logs refused sources', () => {
    let local = ['127.0.0.1', '10.50.0.2'];
    const { m, logs, advance } = manager({ lan: ['192.168.7.0/24'], localAddresses: () => local });
    const q = (src: string, sport: number) =>
      m.engine.processPacket(udpPacket({ src, dst: '198.18.2.2', sport, dport: 443 }), T0);
    expect(q('10.50.0.2', 1)).toHaveLength(1);
    expect(q('192.168.7.20', 2)).toHaveLength(1);
    expect(q('10.60.0.9', 3)).toHaveLength(0);
    m.checkCounters();
    expect(logs.join('\n')).toMatch(
      /dropped 1 packet from sources this daemon does not serve.*192\.168\.7\.0\/24.*--lan/,
    );
    // The host gains an address: served once the list is re-read.
    local = [...local, '10.60.0.9'];
    m.refreshSources();
    expect(q('10.60.0.9', 4)).toHaveLength(1);
    advance(10_000);
    m.checkCounters();
    expect(logs).toHaveLength(1);
    expect(m.stats()).toMatchObject({ dropForeignSource: 1, flowsActive: 3 });
  });

  it('out of fds while re-reading the host addresses: keeps the sources it has, counts EMFILE, does not throw', () => {
    let fail: Error | undefined;
    const { m } = manager({
      lan: ['192.168.7.0/24'],
      localAddresses: () => {
        if (fail) throw fail;
        return ['10.50.0.2'];
      },
    });
    const q = (src: string, sport: number) =>
      m.engine.processPacket(udpPacket({ src, dst: '198.18.2.2', sport, dport: 443 }), T0);
    const before = resourceAlarm.totals().EMFILE ?? 0;
    fail = Object.assign(new Error('uv_interface_addresses returned EMFILE'), { code: 'EMFILE' });
    expect(() => m.refreshSources()).not.toThrow();
    expect(resourceAlarm.totals().EMFILE).toBe(before + 1);
    expect(q('10.50.0.2', 1)).toHaveLength(1);
    expect(q('10.60.0.9', 2)).toHaveLength(0);
    // Any other failure is a bug and surfaces.
    fail = new TypeError('boom');
    expect(() => m.refreshSources()).toThrow('boom');
  });

  it('dnsClient: a hijacked query from a NAT address maps to its app; spoofed NAT, foreign sources are refused', () => {
    const n = (ip: string) => ipToInt(ip);
    const { m } = manager({ lan: ['192.168.7.0/24'], localAddresses: () => ['10.50.0.2'] });
    const [out] = m.engine.processPacket(udpPacket({ src: '10.50.0.2', dst: '8.8.8.8', sport: 3333, dport: 53 }), T0);
    const p = parse(out);
    expect(p.dport).toBe(53);
    expect(m.dnsClient(n(p.src), p.sport, 'udp')).toBe(n('10.50.0.2'));
    expect(m.dnsClient(n(p.src), p.sport + 1, 'udp')).toBe(-1); // a NAT address with no flow: spoofed
    expect(m.dnsClient(n('198.18.0.1'), 40000, 'udp')).toBe(n('198.18.0.1'));
    expect(m.dnsClient(n('127.0.0.1'), 40000, 'tcp')).toBe(n('127.0.0.1'));
    expect(m.dnsClient(n('192.168.7.9'), 40000, 'tcp')).toBe(n('192.168.7.9'));
    expect(m.dnsClient(n('192.168.8.9'), 40000, 'udp')).toBe(-1);
    expect(m.isLocal(n('10.50.0.2'))).toBe(true);
    expect(m.isLocal(n('192.168.7.9'))).toBe(false);
  });

  it('anySource serves every source (engines driven by benches)', () => {
    const { m } = manager({ anySource: true });
    const out = m.engine.processPacket(udpPacket({ src: '10.60.0.9', dst: '198.18.2.2', sport: 1, dport: 443 }), T0);
    expect(out).toHaveLength(1);
  });

  it('logs SYN-flood early drops once per interval with counts', () => {
    const { m, logs } = manager({ maxFlows: 4 });
    // Six SYNs at once (the last two find only young half-open flows: first SYNs, dropped), four a second later.
    for (let p = 1; p <= 10; p++)
      m.engine.processPacket(
        tcpPacket({ src: '198.18.0.1', dst: '198.18.2.2', sport: p, dport: 80, flags: F.SYN }),
        p <= 6 ? T0 : T0 + 1000,
      );
    m.checkCounters();
    expect(logs).toEqual([
      expect.stringMatching(
        /\(4\/4 flows half-open\): evicted 4 closed or half-open flows to admit new ones, dropped 2 first SYNs until retransmitted/,
      ),
    ]);
  });

  it('stop() closes every flow with reason shutdown and is idempotent', () => {
    const { m, closed } = manager();
    m.ensureFlow('udp', '198.18.0.1', 5000, '203.0.113.1', 3478);
    m.ensureFlow('udp', '198.18.0.1', 5001, '203.0.113.1', 3478);
    // Half-open (never reported open): it goes without a close event.
    m.ensureFlow('tcp', '198.18.0.1', 5002, '203.0.113.1', 80);
    m.stop();
    m.stop();
    expect(closed.map(([f, r]) => [f.srcPort, r])).toEqual([
      [5000, 'shutdown'],
      [5001, 'shutdown'],
    ]);
    expect(m.entries()).toEqual([]);
  });

  it('start() validates its fds through the native engine', () => {
    const { m } = manager();
    expect(() => m.start([])).toThrow(/at least one fd/);
    m.stop();
  });
});
