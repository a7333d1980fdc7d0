/**
 * The mirror's in-memory view and the key schema, without Redis: the real
 * engine (LiveNat) and FakeDns feed MirrorView, and each batch is checked
 * for exactly the rows, deletes and events a writer must send.
 */
import { describe, expect, it } from 'vitest';
import {
  checkNodeId,
  decodeEvent,
  decodeFlow,
  encodeFlow,
  FLOW_FIELDS,
  type FlowEventMessage,
  flowKeyOf,
  nodeIdOfKey,
  nodeKeys,
  poolKeys,
} from '../../../src/redis/schema.js';
import { MirrorView } from '../../../src/redis/view.js';
import { LiveDns, LiveNat } from './liveNat.js';

function setup() {
  const live = new LiveNat();
  const keys = nodeKeys('gw-view');
  const view = new MirrorView('gw-view', keys);
  live.nat.on('events', (evs) => view.onFlowEvents(evs, live.now));
  return { live, view, keys };
}

const fieldsOf = (flat: string[]) => Object.fromEntries(flat.flatMap((v, i) => (i % 2 ? [] : [[v, flat[i + 1]]])));
const events = (raw: string[]) => raw.map((r) => decodeEvent(r) as FlowEventMessage);

describe('MirrorView', () => {
  it('turns an open event into one row write with a TTL, and later changes into writes without one', () => {
    const { live, view, keys } = setup();
    const f = live.open({ sport: 40_000 });
    view.annotate(
      f.id,
      { name: 'example.com', outbound: 'direct', rule: 'DOMAIN-SUFFIX,example.com,DIRECT', chain: 'DIRECT' },
      live.now,
    );
    const b1 = view.takeBatch(live.now);
    expect(b1.writes).toHaveLength(1);
    const w = b1.writes[0];
    expect(w).toMatchObject({ key: `fakeproxy:{gw-view}:flow:tcp:${f.id}`, member: `tcp:${f.id}`, withTtl: true });
    expect(w.key).toBe(flowKeyOf(keys, w.member));
    expect(fieldsOf(encodeFlow(w.row))).toEqual({
      id: String(f.id),
      proto: 'tcp',
      app: `198.18.0.1:40000`,
      dst: '198.18.2.2:80',
      name: 'example.com',
      nat: `${f.natIp}:${f.natPort}`,
      outbound: 'direct',
      rule: 'DOMAIN-SUFFIX,example.com,DIRECT',
      chain: 'DIRECT',
      state: 'established',
      createdMs: String(live.now),
      lastSeenMs: String(live.now),
      // The open event is the engine's snapshot as the handshake completes: the SYN and the SYN-ACK
      // counted, not yet the app's ACK; polls bring the counters.
      bytesOut: '40',
      bytesIn: '40',
      pktsOut: '1',
      pktsIn: '1',
    });
    expect(events(b1.events).map((e) => [e.type, e.node, e.flow.id, e.flow.outbound, e.flow.rule])).toEqual([
      ['open', 'gw-view', f.id, 'direct', 'DOMAIN-SUFFIX,example.com,DIRECT'],
    ]);
    expect(view.pendingCount()).toBe(0);

    // The first poll writes the handshake's counters (SYN + ACK); one without change writes nothing;
    // traffic makes the next poll write the row again, without a new TTL.
    view.poll(live.nat.entries(), live.now);
    expect(view.takeBatch(live.now).writes.map((x) => [fieldsOf(encodeFlow(x.row)).bytesOut, x.withTtl])).toEqual([
      ['80', false],
    ]);
    view.poll(live.nat.entries(), live.now);
    expect(view.takeBatch(live.now).writes).toEqual([]);
    live.traffic(f, 100, 200, live.now + 5);
    view.poll(live.nat.entries(), live.now + 5);
    const b2 = view.takeBatch(live.now + 5);
    expect(b2.writes.map((x) => [x.key, x.withTtl, x.score])).toEqual([[w.key, false, live.now + 5]]);
    expect(fieldsOf(encodeFlow(b2.writes[0].row))).toMatchObject({ state: 'established', bytesIn: String(40 + 240) });
  });

  it('a flow opened and closed within one batch: both events, no write, no delete', () => {
    const { live, view } = setup();
    const f = live.open();
    live.close(f);
    const b = view.takeBatch(live.now);
    expect(b.writes).toEqual([]);
    expect(b.deleteKeys).toEqual([]);
    expect(events(b.events).map((e) => [e.type, e.reason])).toEqual([
      ['open', undefined],
      ['close', 'rst'],
    ]);
  });

  it('deletes a written flow on close, and one whose close event was lost after two polls', () => {
    const { live, view, keys } = setup();
    const a = live.open();
    const b = live.open();
    view.takeBatch(live.now);
    live.close(a);
    const batch = view.takeBatch(live.now);
    expect(batch.deleteKeys).toEqual([flowKeyOf(keys, `tcp:${a.id}`)]);
    expect(batch.deleteMembers).toEqual([`tcp:${a.id}`]);
    // b missing from the table without a close event (lost): deleted after the second poll that misses it.
    const withoutB = live.nat.entries().filter((e) => e.id !== b.id);
    view.poll(withoutB, live.now);
    expect(view.takeBatch(live.now).deleteKeys).toEqual([]);
    view.poll(withoutB, live.now);
    expect(view.takeBatch(live.now).deleteMembers).toEqual([`tcp:${b.id}`]);
    expect(view.flowCount).toBe(0);
  });

  it('applies an annotation that arrives before the open event, and forgets unclaimed ones after 10 s', () => {
    const { live, view } = setup();
    const f = live.open({ silent: true });
    view.annotate(f.id, { name: 'early.example', outbound: 'socks5' }, live.now);
    view.annotate(999_999, { outbound: 'never' }, live.now);
    live.flush();
    const row = decodeFlow(fieldsOf(encodeFlow(view.takeBatch(live.now).writes[0].row)));
    expect(row).toMatchObject({ id: f.id, name: 'early.example', outbound: 'socks5' });
    view.expireAnnotations(live.now + 10_001);
    view.addEntries([{ ...live.entry(f), id: 999_999 }], live.now);
    expect(decodeFlow(fieldsOf(encodeFlow(view.takeBatch(live.now).writes[0].row)))?.outbound).toBe('');
  });

  it('names a flow after the fake IP it was opened to, and mirrors recycled names', async () => {
    const live = new LiveNat();
    const dns = new LiveDns('10.9.0.8/29');
    const view = new MirrorView('gw-view', nodeKeys('gw-view'));
    live.nat.on('events', (evs) => view.onFlowEvents(evs, live.now));
    dns.dns.on('mapped', (n: string, ip: string) => view.onMapped(n, ip));
    dns.dns.on('unmapped', (n: string, ip: string) => view.onUnmapped(n, ip));
    const ips = [];
    for (let i = 1; i <= 5; i++) ips.push(await dns.resolve(`n${i}.example`));
    const f = live.open({ dst: ips[1], dport: 443 });
    const b1 = view.takeBatch(live.now);
    expect(fieldsOf(encodeFlow(b1.writes[0].row)).name).toBe('n2.example');
    expect(b1.names).toHaveLength(5);
    expect(await dns.resolve('n6.example')).toBe(ips[0]);
    const b2 = view.takeBatch(live.now);
    expect(new Map(b2.names)).toEqual(
      new Map([
        ['n1.example', undefined],
        ['n6.example', ips[0]],
      ]),
    );
    expect(new Map(b2.ips)).toEqual(new Map([[ips[0], 'n6.example']]));
    expect(view.nameCount).toBe(5);
    expect(f.dstIp).toBe(ips[1]);
  });

  it('drops pending work as a command count, and bounds the event queue', () => {
    const { live, view } = setup();
    for (let i = 0; i < 3; i++) live.open();
    view.onMapped('a.example', '198.18.0.2');
    // 3 flows × (HSET + ZADD) + 3 open events + 1 name + 1 ip.
    expect(view.dropPending()).toBe(11);
    expect(view.pendingCount()).toBe(0);
    expect(view.flowCount).toBe(3);
    for (let i = 0; i < 5_100; i++) live.close(live.open());
    expect(view.pendingCount()).toBe(10_000);
    expect(view.overflowed).toBe(200);
  });

  it('resync: every live flow is rewritten with a TTL; one closed meanwhile is deleted, not rewritten', () => {
    const { live, view } = setup();
    const a = live.open();
    const b = live.open();
    const liveFlows = view.beginResync();
    expect(liveFlows.map((t) => t.entry.id)).toEqual([a.id, b.id]);
    live.close(a);
    expect(liveFlows.filter((t) => view.isLive(t)).map((t) => view.writeOf(t, live.now, true).member)).toEqual([
      `tcp:${b.id}`,
    ]);
    expect(view.takeBatch(live.now).deleteMembers).toEqual([`tcp:${a.id}`]);
    expect(view.ttlDue(live.now + 20_000, 60_000)).toEqual([`fakeproxy:{gw-view}:flow:tcp:${b.id}`]);
    expect(view.ttlDue(live.now + 20_001, 60_000)).toEqual([]);
  });
});

describe('key schema', () => {
  it('spells every key of a node under fakeproxy:{<node>}: (one hash tag) and finds the node back', () => {
    const k = nodeKeys('gw1');
    expect(k).toMatchObject({
      flows: 'fakeproxy:{gw1}:flows',
      dnsName: 'fakeproxy:{gw1}:dns:name',
      dnsIp: 'fakeproxy:{gw1}:dns:ip',
      info: 'fakeproxy:{gw1}:info',
      events: 'fakeproxy:{gw1}:events',
      flowPattern: 'fakeproxy:{gw1}:flow:*',
    });
    expect(nodeIdOfKey(k.flows, 'flows')).toBe('gw1');
    expect(nodeIdOfKey('fakeproxy:pool:flows', 'flows')).toBeUndefined();
    expect(nodeIdOfKey('fakeproxy:{a:b}:flows', 'flows')).toBeUndefined();
    expect(nodeIdOfKey('fakeproxy:gw1:flows', 'flows')).toBeUndefined();
    expect(() => checkNodeId('a:b')).toThrow(/invalid node id/);
    expect(() => checkNodeId('pool')).toThrow(/not "pool"/);
  });

  it('puts every key of the shared pool in one hash tag (one Cluster slot)', () => {
    const keys = Object.values(poolKeys('198.18.0.0/16'));
    for (const k of keys) expect(k).toMatch(/^fakeproxy:pool:\{198\.18\.0\.0\/16\}:[a-z0-9]+$/);
    expect(new Set(keys).size).toBe(keys.length);
  });

  it('encodes every field of a row and decodes it back; a row missing newer fields decodes with zero values', () => {
    const row = decodeFlow(fieldsOf(FLOW_FIELDS.flatMap((f) => [f.name, f.type === 'number' ? '7' : 'x'])));
    expect(row && decodeFlow(fieldsOf(encodeFlow(row)))).toEqual(row);
    expect(decodeFlow({ id: '1', proto: 'udp' })).toMatchObject({ id: 1, proto: 'udp', name: '', bytesIn: 0 });
    expect(decodeFlow({})).toBeUndefined();
    expect(decodeEvent('{"probe":true}')).toBeUndefined();
    expect(decodeEvent('not json')).toBeUndefined();
  });
});
