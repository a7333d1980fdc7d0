import { describe, expect, it } from 'vitest';
import { APP, DNS, FAKE, fromListener, GW, LISTEN, makeEngine, one, T0 } from './fixture.js';
import { F, ipChecksumOk, l4ChecksumOk, parse, rewritten, TCP, tcpPacket, UDP, udpPacket } from './packets.js';

describe('engine rewrite', () => {
  it('forwards a SYN to the Listener, records the flow first, and restores the reply', () => {
    const e = makeEngine();
    const syn = tcpPacket({ src: APP, dst: FAKE, sport: 34567, dport: 80, flags: F.SYN, seq: 111 });
    const fwd = parse(one(e, syn));
    expect(fwd.dst).toBe(GW);
    expect(fwd.dport).toBe(LISTEN);
    expect(fwd.src).not.toBe(GW);
    expect(fwd.src.startsWith('198.18.')).toBe(true);
    expect(fwd.sport).toBeGreaterThanOrEqual(1024);
    expect(fwd.seq).toBe(111);
    expect(fwd.flags).toBe(F.SYN);

    // The Listener's lookup by its peer address finds the original pair.
    const flow = e.lookup(6, fwd.src, fwd.sport);
    expect(flow).toMatchObject({ proto: 6, srcIp: APP, srcPort: 34567, dstIp: FAKE, dstPort: 80, state: 'syn' });
    expect(flow?.natIp).toBe(fwd.src);
    expect(flow?.natPort).toBe(fwd.sport);

    // The Listener's SYN-ACK comes back as if from the fake destination.
    const synack = tcpPacket({
      ...fromListener(fwd),
      flags: F.SYN | F.ACK,
      seq: 999,
      ack: 112,
    });
    const back = one(e, synack);
    const expected = rewritten(synack, FAKE, 80, APP, 34567);
    expect(back.equals(expected)).toBe(true);
    expect(ipChecksumOk(back) && l4ChecksumOk(back)).toBe(true);

    // The app's ACK establishes the flow.
    one(e, tcpPacket({ src: APP, dst: FAKE, sport: 34567, dport: 80, flags: F.ACK, seq: 112, ack: 1000 }));
    expect(e.lookup(6, fwd.src, fwd.sport)?.state).toBe('established');

    const s = e.stats();
    expect(s.forwarded).toBe(2);
    expect(s.reversed).toBe(1);
    expect(s.flowsCreated).toBe(1);
    expect(s.flowsActive).toBe(1);
  });

  it('rewrite then reverse is the identity on the app side (UDP, both ways, counters)', () => {
    const e = makeEngine();
    const q = udpPacket({ src: '10.0.0.5', dst: FAKE, sport: 5000, dport: 443, payload: Buffer.from('hello') });
    const fwd = parse(one(e, q));
    expect(fwd.dport).toBe(LISTEN);
    const reply = udpPacket({ ...fromListener(fwd), payload: Buffer.from('world!') });
    const back = one(e, reply, T0 + 5);
    expect(back.equals(rewritten(reply, FAKE, 443, '10.0.0.5', 5000))).toBe(true);
    const f = e.lookup(17, fwd.src, fwd.sport);
    expect(f).toMatchObject({
      state: 'udp',
      pktsOut: 1,
      pktsIn: 1,
      bytesOut: q.length,
      bytesIn: reply.length,
      lastSeenMs: T0 + 5,
    });
  });

  it.each([
    ['UDP', UDP],
    ['TCP', TCP],
  ])('hijacks %s port 53 to the DNS port on the gateway', (_n, proto) => {
    const e = makeEngine({ dnsPort: 5353 });
    const pkt =
      proto === UDP
        ? udpPacket({ src: APP, dst: '8.8.8.8', sport: 40000, dport: 53 })
        : tcpPacket({ src: APP, dst: '8.8.8.8', sport: 40000, dport: 53, flags: F.SYN });
    const fwd = parse(one(e, pkt));
    expect(fwd.dst).toBe(GW);
    expect(fwd.dport).toBe(5353);
    // A reply from the Listener port (not the DNS port) must not match this flow.
    const wrong = udpPacket(fromListener(fwd));
    if (proto === UDP) {
      expect(e.processPacket(wrong, T0)).toEqual([]);
      expect(e.stats().dropReverseNoFlow).toBe(1);
      const ok = parse(one(e, udpPacket({ src: GW, dst: fwd.src, sport: 5353, dport: fwd.sport })));
      expect([ok.src, ok.sport, ok.dst, ok.dport]).toEqual(['8.8.8.8', 53, APP, 40000]);
    }
  });

  it('sends port 53 to the Listener when dnsHijack is off', () => {
    const e = makeEngine({ dnsHijack: false });
    const fwd = parse(one(e, udpPacket({ src: APP, dst: '8.8.8.8', sport: 40000, dport: 53 })));
    expect(fwd.dport).toBe(LISTEN);
    expect(DNS).toBe(53);
  });

  it('gives distinct flows distinct NAT pairs and keeps per-flow state', () => {
    const e = makeEngine();
    const a = parse(one(e, tcpPacket({ src: APP, dst: FAKE, sport: 1111, dport: 80, flags: F.SYN })));
    const b = parse(one(e, tcpPacket({ src: APP, dst: FAKE, sport: 2222, dport: 80, flags: F.SYN })));
    const a2 = parse(one(e, tcpPacket({ src: APP, dst: FAKE, sport: 1111, dport: 80, flags: F.SYN })));
    expect(`${a.src}:${a.sport}`).not.toBe(`${b.src}:${b.sport}`);
    expect(`${a2.src}:${a2.sport}`).toBe(`${a.src}:${a.sport}`);
    expect(e.entries()).toHaveLength(2);
  });

  it('follows TCP flags: FIN both ways -> closed (reason fin), new SYN on the 4-tuple gets a fresh pair', () => {
    const e = makeEngine();
    const app = { src: APP, dst: FAKE, sport: 3333, dport: 80 };
    const fwd = parse(one(e, tcpPacket({ ...app, flags: F.SYN })));
    const lis = fromListener(fwd);
    one(e, tcpPacket({ ...lis, flags: F.SYN | F.ACK }));
    one(e, tcpPacket({ ...app, flags: F.ACK }));
    one(e, tcpPacket({ ...app, flags: F.FIN | F.ACK }));
    expect(e.lookup(6, fwd.src, fwd.sport)?.state).toBe('fin');
    one(e, tcpPacket({ ...lis, flags: F.FIN | F.ACK }));
    expect(e.lookup(6, fwd.src, fwd.sport)?.state).toBe('closed');
    one(e, tcpPacket({ ...app, flags: F.ACK })); // last ACK still passes during the linger
    e.drainEvents();
    const again = parse(one(e, tcpPacket({ ...app, flags: F.SYN })));
    expect(`${again.src}:${again.sport}`).not.toBe(`${fwd.src}:${fwd.sport}`);
    // The new flow is reported once its own handshake completes.
    expect(e.drainEvents().map((x) => [x.type, x.reason])).toEqual([['close', 'fin']]);
    one(e, tcpPacket({ ...fromListener(again), flags: F.SYN | F.ACK }));
    one(e, tcpPacket({ ...app, flags: F.ACK }));
    const ev = e.drainEvents();
    expect(ev.map((x) => [x.type, x.flow.natPort, x.flow.state])).toEqual([['open', again.sport, 'established']]);
    expect(e.lookup(6, fwd.src, fwd.sport)).toBeUndefined();
  });

  it('a Listener RST closes the flow with reason rst; a half-open flow reset goes without events', () => {
    const e = makeEngine();
    const app = { src: APP, dst: FAKE, sport: 4444, dport: 80 };
    const fwd = parse(one(e, tcpPacket({ ...app, flags: F.SYN })));
    one(e, tcpPacket({ ...fromListener(fwd), flags: F.SYN | F.ACK }));
    one(e, tcpPacket({ ...app, flags: F.ACK }));
    one(e, tcpPacket({ ...fromListener(fwd), flags: F.RST | F.ACK }));
    expect(e.lookup(6, fwd.src, fwd.sport)?.state).toBe('closed');
    // Refused at once: never reported open, so no close either.
    const half = parse(one(e, tcpPacket({ ...app, sport: 4445, flags: F.SYN })));
    one(e, tcpPacket({ ...fromListener(half), flags: F.RST | F.ACK }));
    expect(e.lookup(6, half.src, half.sport)?.state).toBe('closed');
    e.expire(T0 + 10_001);
    const ev = e.drainEvents();
    expect(ev.map((x) => [x.type, x.flow.srcPort, x.reason])).toEqual([
      ['open', 4444, undefined],
      ['close', 4444, 'rst'],
    ]);
    expect(e.stats().flowsClosed).toBe(2);
  });

  it('emits open events carrying the flow, once per flow; TCP once its handshake completes', () => {
    const e = makeEngine();
    one(e, udpPacket({ src: APP, dst: FAKE, sport: 7000, dport: 9 }));
    one(e, udpPacket({ src: APP, dst: FAKE, sport: 7000, dport: 9 }));
    const ev = e.drainEvents();
    expect(ev).toHaveLength(1);
    expect(ev[0]).toMatchObject({ type: 'open', flow: { proto: 17, srcPort: 7000, dstIp: FAKE, dstPort: 9 } });
    expect(e.drainEvents()).toEqual([]);
    // A SYN (and its SYN-ACK) is no connection yet; the app's ACK completing the handshake is.
    const app = { src: APP, dst: FAKE, sport: 7001, dport: 80 };
    const fwd = parse(one(e, tcpPacket({ ...app, flags: F.SYN })));
    one(e, tcpPacket({ ...fromListener(fwd), flags: F.SYN | F.ACK }));
    expect(e.drainEvents()).toEqual([]);
    one(e, tcpPacket({ ...app, flags: F.ACK }));
    one(e, tcpPacket({ ...app, flags: F.PSH | F.ACK, payload: Buffer.from('x') }));
    expect(e.drainEvents()).toMatchObject([{ type: 'open', flow: { proto: 6, srcPort: 7001, state: 'established' } }]);
  });
});
