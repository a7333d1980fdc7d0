/**
 * Abuse resistance of the real engine (issue 16), driven packet by packet
 * through processPacket: early drop of half-open flows when the table is
 * full, the per-source half-open cap, the source filter ("who may use it")
 * and spoofed NAT addresses.
 */
import { describe, expect, it } from 'vitest';
import type { NativeEngine } from '../../../src/native.js';
import { APP, FAKE, fromListener, LISTEN, makeEngine, one, T0 } from './fixture.js';
import { F, ICMP, icmpPacket, parse, tcpPacket, UDP, udpPacket } from './packets.js';

/** Full handshake of app:sport → FAKE:80 through the engine; returns the NAT pair. */
function handshake(e: NativeEngine, sport: number, src = APP, now = T0): { natIp: string; natPort: number } {
  const fwd = parse(one(e, tcpPacket({ src, dst: FAKE, sport, dport: 80, flags: F.SYN, seq: 1 }), now));
  one(e, tcpPacket({ ...fromListener(fwd), flags: F.SYN | F.ACK, seq: 9, ack: 2 }), now);
  one(e, tcpPacket({ src, dst: FAKE, sport, dport: 80, flags: F.ACK, seq: 2, ack: 10 }), now);
  return { natIp: fwd.src, natPort: fwd.sport };
}

/** A spoofed SYN from `src` (random-source flood): returns what the engine wrote back. */
function floodSyn(e: NativeEngine, src: string, sport: number, now = T0): Buffer[] {
  return e.processPacket(tcpPacket({ src, dst: FAKE, sport, dport: 80, flags: F.SYN }), now);
}
const floodSrc = (i: number) => `10.${(i >> 14) & 255}.${(i >> 7) & 127}.${(i & 127) + 1}`;

describe('early drop of half-open flows (SYN flood)', () => {
  it('a full table of half-open flows still admits new connections, evicting the oldest half-open one', () => {
    const e = makeEngine({ maxFlows: 64 });
    const flood = Array.from({ length: 64 }, (_, i) => parse(floodSyn(e, floodSrc(i), 1000 + i, T0 + i)[0]));
    expect(flood.every((p) => p.dport === LISTEN)).toBe(true);
    expect(e.stats()).toMatchObject({ flowsActive: 64, halfOpenFlows: 64, flowsEarlyDropped: 0 });
    // A second later (the flood's flows have had their grace), a legitimate connection gets in at its
    // first SYN; the oldest flood entry made room.
    const { natIp, natPort } = handshake(e, 40000, APP, T0 + 1100);
    expect(e.lookup(6, natIp, natPort)).toMatchObject({ srcIp: APP, srcPort: 40000, state: 'established' });
    const s = e.stats();
    expect(s).toMatchObject({ flowsActive: 64, halfOpenFlows: 63, flowsEarlyDropped: 1, flowsRefused: 0 });
    // The first flood flow (least recently seen) is the one that went; the second is still there.
    expect(e.lookup(6, flood[0].src, flood[0].sport)).toBeUndefined();
    expect(e.lookup(6, flood[1].src, flood[1].sport)).toMatchObject({ srcIp: floodSrc(1), state: 'syn' });
    // JS heard of the one connection only: the flood's half-open flows came and went without an event.
    expect(e.drainEvents().map((ev) => [ev.type, ev.flow.srcPort])).toEqual([['open', 40000]]);
  });

  it('an evicted flow whose app already got a SYN-ACK is reset towards the app once it is 2 s gone unrevived (bounded)', () => {
    const e = makeEngine({ maxFlows: 16 });
    // 16 half-open flows; the Listener answered the first 15 (the app may think it is connected).
    const nat = Array.from({ length: 16 }, (_, i) => parse(floodSyn(e, floodSrc(i), 1000 + i, T0 + i)[0]));
    for (const [i, n] of nat.entries()) {
      if (i === 15) break;
      one(e, tcpPacket({ ...fromListener(n), flags: F.SYN | F.ACK, seq: 7000 + i, ack: 1 }));
    }
    // 16 new SYNs evict all 16: 15 of them had seen a SYN-ACK.
    for (let i = 0; i < 16; i++) floodSyn(e, floodSrc(100 + i), 2000 + i, T0 + 1100);
    expect(e.stats()).toMatchObject({ flowsEarlyDropped: 16 });
    // Its app may still answer (see the revival case below): not before 2 s.
    expect(e.expire(T0 + 1100 + 1999)).toEqual([]);
    const rsts = e.expire(T0 + 1100 + 2000).map((b) => parse(b));
    expect(rsts).toHaveLength(15);
    expect(rsts[0]).toMatchObject({ src: FAKE, dst: floodSrc(0), sport: 80, dport: 1000, seq: 7001, flags: F.RST });
    expect(e.stats()).toMatchObject({ rstOnEvict: 15, rstOnExpiry: 0 });
    expect(e.expire(T0 + 6000)).toEqual([]); // handed out once

    // A flood evicting more than 64 answered flows in one round resets 64 of them.
    const big = makeEngine({ maxFlows: 128 });
    for (let i = 0; i < 128; i++) {
      const n = parse(floodSyn(big, floodSrc(i), 1000 + i, T0)[0]);
      one(big, tcpPacket({ ...fromListener(n), flags: F.SYN | F.ACK, seq: 1, ack: 1 }));
    }
    for (let i = 0; i < 128; i++) floodSyn(big, floodSrc(1000 + i), 3000 + i, T0 + 1001);
    expect(big.expire(T0 + 1001 + 2000)).toHaveLength(64);
    expect(big.stats()).toMatchObject({ flowsEarlyDropped: 128, rstOnEvict: 64 });
  });

  it('an app whose ACK comes after its half-open flow was dropped gets the flow back on the same NAT pair', () => {
    const e = makeEngine({ maxFlows: 16 });
    const app = { src: APP, dst: FAKE, sport: 40000, dport: 80 };
    const syn = parse(one(e, tcpPacket({ ...app, flags: F.SYN, seq: 100 }), T0));
    const lis = fromListener(syn);
    expect(parse(one(e, tcpPacket({ ...lis, flags: F.SYN | F.ACK, seq: 9000, ack: 101 }), T0 + 1)).dst).toBe(APP);
    // While the SYN-ACK travels to the app and its ACK back, a flood turns the table over twice.
    // (A second on: the half-open flows have had their grace against first SYNs.)
    for (let i = 0; i < 32; i++) floodSyn(e, floodSrc(i), 1000 + i, T0 + 1002);
    expect(e.lookup(6, syn.src, syn.sport)).toBeUndefined();
    e.expire(T0 + 1003);
    // The app's ACK and its first data: the flow is back, on the NAT pair the Listener knows, and completes.
    const ack = parse(one(e, tcpPacket({ ...app, flags: F.ACK, seq: 101, ack: 9001 }), T0 + 1500));
    expect([ack.src, ack.sport, ack.dport]).toEqual([syn.src, syn.sport, LISTEN]);
    expect(e.lookup(6, syn.src, syn.sport)).toMatchObject({ srcPort: 40000, state: 'established' });
    one(e, tcpPacket({ ...app, flags: F.ACK | F.PSH, seq: 101, ack: 9001, payload: Buffer.from('GET /') }), T0 + 1501);
    expect(e.stats()).toMatchObject({ flowsRevived: 1, flowsActive: 16, dropTcpNoFlow: 0 });
    // Its ghost is gone: no reset for it later.
    expect(e.expire(T0 + 10_000).map((b) => parse(b).dst)).not.toContain(APP);
    expect(e.stats().rstOnEvict).toBe(0);
  });

  it('a dropped half-open flow is not revived by a SYN, a RST, or an ACK after 2 s: those go the usual way', () => {
    const e = makeEngine({ maxFlows: 4 });
    const app = { src: APP, dst: FAKE, sport: 40001, dport: 80 };
    const syn = parse(one(e, tcpPacket({ ...app, flags: F.SYN, seq: 100 }), T0));
    one(e, tcpPacket({ ...fromListener(syn), flags: F.SYN | F.ACK, ack: 101 }), T0);
    for (let i = 0; i < 8; i++) floodSyn(e, floodSrc(i), 1000 + i, T0 + 1001);
    expect(e.processPacket(tcpPacket({ ...app, flags: F.RST, seq: 101 }), T0 + 1002)).toEqual([]);
    const late = parse(one(e, tcpPacket({ ...app, flags: F.ACK, seq: 101, ack: 1 }), T0 + 1001 + 2000));
    expect(late.flags & F.RST).toBe(F.RST);
    expect(e.stats()).toMatchObject({ flowsRevived: 0, dropTcpNoFlow: 2 });
  });

  it('never evicts an established flow for a half-open one: with no half-open flow left, a SYN gets a RST', () => {
    const e = makeEngine({ maxFlows: 16 });
    const pairs = Array.from({ length: 16 }, (_, i) => handshake(e, 2000 + i));
    const out = floodSyn(e, floodSrc(1), 5555);
    expect(out).toHaveLength(1);
    expect(parse(out[0]).flags & F.RST).toBe(F.RST);
    expect(e.stats()).toMatchObject({ flowsActive: 16, flowsEarlyDropped: 0, flowsRefused: 1, halfOpenFlows: 0 });
    for (const p of pairs) expect(e.lookup(6, p.natIp, p.natPort)?.state).toBe('established');
  });

  it('a slow flood 20x the table size keeps every established flow and admits each new handshake at its first SYN', () => {
    const e = makeEngine({ maxFlows: 256 });
    const est = Array.from({ length: 128 }, (_, i) => handshake(e, 3000 + i));
    let legit = 0;
    // 100 SYNs a second: the flood's ~120 half-open flows turn over in over a second: each has had its grace.
    for (let i = 0; i < 256 * 20; i++) {
      floodSyn(e, floodSrc(i), 1024 + (i % 60000), T0 + 10 * i);
      if (i % 500 === 499) {
        const p = handshake(e, 10000 + i, APP, T0 + 10 * i);
        if (e.lookup(6, p.natIp, p.natPort)?.state === 'established') legit++;
      }
    }
    expect(legit).toBe(10);
    for (const p of est) expect(e.lookup(6, p.natIp, p.natPort)?.state).toBe('established');
    const s = e.stats();
    expect(s.flowsActive).toBe(256);
    expect(s.flowsEarlyDropped).toBeGreaterThanOrEqual(256 * 20 - 128 - 10);
    expect(s).toMatchObject({ flowsRefused: 0, firstSynDropped: 0 });
  });

  it('a fast flood meets a first-SYN drop: only retransmitted SYNs take the slot of a young half-open flow', () => {
    const e = makeEngine({ maxFlows: 256 });
    const est = Array.from({ length: 128 }, (_, i) => handshake(e, 3000 + i));
    let legit = 0;
    let heldOut = 0;
    // 20 SYNs a millisecond (20 000/s) for 2 s: the table would turn over every 6 ms.
    for (let i = 0; i < 40_000; i++) {
      const now = T0 + Math.floor(i / 20);
      heldOut += floodSyn(e, floodSrc(i), 1024 + (i % 60000), now).length === 0 ? 1 : 0;
      if (i % 4000 === 3999) {
        // A real client: its first SYN vanishes (nothing back: no RST), its retransmission 1 s later gets in.
        const sport = 10000 + i;
        expect(floodSyn(e, APP, sport, now)).toEqual([]);
        const p = handshake(e, sport, APP, now + 1000);
        if (e.lookup(6, p.natIp, p.natPort)?.state === 'established') legit++;
      }
    }
    expect(legit).toBe(10);
    for (const p of est) expect(e.lookup(6, p.natIp, p.natPort)?.state).toBe('established');
    const s = e.stats();
    expect(s.flowsActive).toBe(256);
    // The flood's SYNs cost a lookup each; the table turned over only as each half-open flow's second
    // ran out (~128 a second) and for the 10 retransmissions.
    expect(s.firstSynDropped).toBe(heldOut + 10);
    expect(heldOut).toBeGreaterThan(40_000 - 128 - 4 * 128);
    expect(s.flowsEarlyDropped).toBeLessThan(4 * 128 + 10);
    expect(s.flowsRefused).toBe(0);
  });

  it('a first SYN is remembered by its whole 4-tuple for 8 s; another port or a later retry starts over', () => {
    const e = makeEngine({ maxFlows: 4 });
    for (let i = 0; i < 4; i++) floodSyn(e, floodSrc(i), 1000 + i, T0);
    expect(floodSyn(e, APP, 40000, T0 + 1)).toEqual([]);
    expect(floodSyn(e, APP, 40001, T0 + 2)).toEqual([]); // another source port: another first SYN
    expect(e.stats()).toMatchObject({ firstSynDropped: 2, flowsEarlyDropped: 0, flowsActive: 4 });
    // The retransmission (same 4-tuple) within the grace gets in, evicting the oldest half-open flow.
    expect(
      parse(one(e, tcpPacket({ src: APP, dst: FAKE, sport: 40000, dport: 80, flags: F.SYN }), T0 + 500)).dport,
    ).toBe(LISTEN);
    expect(e.stats()).toMatchObject({ firstSynDropped: 2, flowsEarlyDropped: 1 });
    // Refill the table with young flows, then a retry of 40001 after 8 s and more is a first SYN again.
    const late = T0 + 2 + 8000;
    for (let i = 0; i < 4; i++) floodSyn(e, floodSrc(10 + i), 2000 + i, late - 10 + i);
    expect(floodSyn(e, APP, 40001, late)).toEqual([]);
    expect(e.stats().firstSynDropped).toBe(3);
  });

  it('a flood from a real address (its kernel resets each SYN-ACK) fills the table with closed flows: those go first', () => {
    const e = makeEngine({ maxFlows: 8 });
    const atk = '10.9.9.9';
    const est = handshake(e, 4100);
    const spoofed = parse(floodSyn(e, floodSrc(1), 1, T0)[0]); // one spoofed half-open flow, older than the closed ones
    const closed = [];
    for (let i = 0; i < 6; i++) {
      const fwd = parse(floodSyn(e, atk, 2000 + i, T0 + 1 + i)[0]);
      closed.push(fwd);
      const synAck = tcpPacket({
        ...fromListener(fwd),
        flags: F.SYN | F.ACK,
        seq: 9,
        ack: 1001,
      });
      one(e, synAck, T0 + 1 + i);
      // Its kernel's RST carries the SYN-ACK's ack: exactly what the Listener expects.
      e.processPacket(
        tcpPacket({ src: atk, dst: FAKE, sport: 2000 + i, dport: 80, flags: F.RST, seq: 1001 }),
        T0 + 1 + i,
      );
    }
    expect(e.stats()).toMatchObject({ flowsActive: 8, halfOpenFlows: 1 });
    // Within a second of their creation the closed flows, too, turn a first SYN away.
    expect(floodSyn(e, APP, 40000, T0 + 100)).toEqual([]);
    expect(e.stats()).toMatchObject({ firstSynDropped: 1, flowsEarlyDropped: 0 });
    const p = handshake(e, 40000, APP, T0 + 1100);
    expect(e.lookup(6, p.natIp, p.natPort)?.state).toBe('established');
    expect(e.lookup(6, est.natIp, est.natPort)?.state).toBe('established');
    // The oldest closed flow made room; the half-open one and the other closed ones are still there.
    const closedPairs = closed.map((c) => e.lookup(6, c.src, c.sport));
    expect(closedPairs.map((f) => f?.srcPort)).toEqual([undefined, 2001, 2002, 2003, 2004, 2005]);
    expect(e.lookup(6, spoofed.src, spoofed.sport)).toMatchObject({ srcIp: floodSrc(1), state: 'syn' });
    expect(e.stats()).toMatchObject({ flowsActive: 8, halfOpenFlows: 1, flowsEarlyDropped: 1, flowsRefused: 0 });
  });

  it('UDP flows may also take the place of a half-open TCP flow, never of an established one', () => {
    const e = makeEngine({ maxFlows: 2 });
    handshake(e, 4000);
    floodSyn(e, floodSrc(7), 7);
    const out = parse(one(e, udpPacket({ src: APP, dst: FAKE, sport: 5, dport: 443 })));
    expect(out.proto).toBe(UDP);
    expect(out.dport).toBe(LISTEN);
    expect(e.stats()).toMatchObject({ flowsActive: 2, flowsEarlyDropped: 1, udpFlows: 1, tcpFlows: 1 });
  });
});

describe('per-source half-open cap', () => {
  it('refuses a source its next SYN beyond the cap (RST), others unaffected, and frees the slot on handshake', () => {
    const e = makeEngine({ maxHalfOpenPerSource: 3 });
    const a = '10.9.0.1';
    const nat = [0, 1, 2].map((i) => parse(floodSyn(e, a, 100 + i)[0]));
    const rst = parse(floodSyn(e, a, 200)[0]);
    expect(rst.flags & F.RST).toBe(F.RST);
    expect(rst.dst).toBe(a);
    expect(e.stats()).toMatchObject({ halfOpenCapped: 1, flowsRefused: 0, halfOpenFlows: 3 });
    // Another source is not affected.
    expect(parse(floodSyn(e, '10.9.0.2', 100)[0]).dport).toBe(LISTEN);
    // The first one completes its handshake: the source may open one more.
    one(e, tcpPacket({ ...fromListener(nat[0]), flags: F.SYN | F.ACK, ack: 1 }));
    one(e, tcpPacket({ src: a, dst: FAKE, sport: 100, dport: 80, flags: F.ACK }));
    expect(parse(floodSyn(e, a, 201)[0]).dport).toBe(LISTEN);
    expect(e.stats().halfOpenCapped).toBe(1);
  });

  it('expiry of half-open flows gives the source its quota back', () => {
    const e = makeEngine({ maxHalfOpenPerSource: 1 });
    floodSyn(e, '10.9.0.1', 1);
    expect(parse(floodSyn(e, '10.9.0.1', 2)[0]).flags & F.RST).toBe(F.RST);
    e.expire(T0 + 60_000);
    expect(parse(floodSyn(e, '10.9.0.1', 3, T0 + 60_000)[0]).dport).toBe(LISTEN);
  });
});

describe('who may use it: the source filter', () => {
  it('serves the gateway and the listed sources only; others are dropped and counted', () => {
    const e = makeEngine({ sources: ['192.168.1.0/24', '10.0.0.7'] });
    expect(parse(one(e, udpPacket({ src: APP, dst: FAKE, sport: 1, dport: 443 }))).dport).toBe(LISTEN);
    expect(parse(one(e, udpPacket({ src: '192.168.1.50', dst: FAKE, sport: 1, dport: 443 }))).dport).toBe(LISTEN);
    expect(parse(one(e, udpPacket({ src: '10.0.0.7', dst: FAKE, sport: 1, dport: 443 }))).dport).toBe(LISTEN);
    expect(e.processPacket(udpPacket({ src: '192.168.2.50', dst: FAKE, sport: 1, dport: 443 }), T0)).toEqual([]);
    expect(e.processPacket(tcpPacket({ src: '10.0.0.8', dst: FAKE, sport: 1, dport: 80, flags: F.SYN }), T0)).toEqual(
      [],
    );
    // DNS hijack and ping obey the same rule.
    expect(e.processPacket(udpPacket({ src: '10.0.0.8', dst: '8.8.8.8', sport: 1, dport: 53 }), T0)).toEqual([]);
    expect(e.processPacket(icmpPacket({ src: '10.0.0.8', dst: FAKE, type: 8, code: 0 }), T0)).toEqual([]);
    expect(parse(one(e, icmpPacket({ src: '192.168.1.9', dst: FAKE, type: 8, code: 0 }))).proto).toBe(ICMP);
    expect(e.stats()).toMatchObject({ dropForeignSource: 4, flowsActive: 3 });
  });

  it('setSources replaces the list at run time (the host gained an address)', () => {
    const e = makeEngine({ sources: [] });
    const q = udpPacket({ src: '172.16.5.5', dst: FAKE, sport: 9, dport: 443 });
    expect(e.processPacket(q, T0)).toEqual([]);
    e.setSources(['172.16.5.5']);
    expect(parse(one(e, q)).dport).toBe(LISTEN);
    e.setSources([]);
    expect(e.processPacket(udpPacket({ src: '172.16.5.5', dst: FAKE, sport: 10, dport: 443 }), T0)).toEqual([]);
    expect(e.stats().dropForeignSource).toBe(2);
  });

  it('rejects malformed source lists with a message naming the format', () => {
    expect(() => makeEngine({ sources: ['192.168.1.0/33'] })).toThrow(/IPv4 addresses or CIDRs/);
    expect(() => makeEngine({ sources: ['lan'] })).toThrow(/IPv4 addresses or CIDRs/);
    const e = makeEngine();
    expect(() => e.setSources(['1.2.3.4/x'])).toThrow(/setSources/);
  });
});

describe('the fake range is never a forward source', () => {
  it('drops a forward packet claiming a live NAT address (filter on or off)', () => {
    for (const sources of [undefined, ['0.0.0.0/0']]) {
      const e = makeEngine(sources ? { sources } : {});
      const { natIp, natPort } = handshake(e, 6000);
      expect(
        e.processPacket(tcpPacket({ src: natIp, dst: FAKE, sport: natPort, dport: 80, flags: F.SYN }), T0),
      ).toEqual([]);
      expect(e.processPacket(udpPacket({ src: natIp, dst: FAKE, sport: natPort, dport: 53 }), T0)).toEqual([]);
      expect(e.stats()).toMatchObject({ dropNatSource: 2, flowsActive: 1 });
    }
  });
});
