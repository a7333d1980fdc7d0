import { describe, expect, it } from 'vitest';
import { APP, FAKE, fromListener, makeEngine, one, T0, TIMEOUTS } from './fixture.js';
import { F, ipChecksumOk, l4ChecksumOk, parse, tcpPacket, udpPacket } from './packets.js';

function tcpFlow(e: ReturnType<typeof makeEngine>, sport: number, to: 'syn' | 'established' | 'fin' | 'closed') {
  const app = { src: APP, dst: FAKE, sport, dport: 80 };
  const f = parse(one(e, tcpPacket({ ...app, flags: F.SYN })));
  const lis = fromListener(f);
  if (to !== 'syn') {
    one(e, tcpPacket({ ...lis, flags: F.SYN | F.ACK }));
    one(e, tcpPacket({ ...app, flags: F.ACK }));
  }
  if (to === 'fin' || to === 'closed') one(e, tcpPacket({ ...app, flags: F.FIN | F.ACK }));
  if (to === 'closed') one(e, tcpPacket({ ...lis, flags: F.FIN | F.ACK }));
  expect(e.lookup(6, f.src, f.sport)?.state).toBe(to);
  return f;
}

describe('expiry by state (fake clock)', () => {
  it.each([
    ['syn', TIMEOUTS.tcpSynMs, 'timeout'],
    ['established', TIMEOUTS.tcpEstablishedMs, 'timeout'],
    ['fin', TIMEOUTS.tcpFinMs, 'timeout'],
    ['closed', TIMEOUTS.tcpClosedMs, 'fin'],
  ] as const)('TCP %s lives exactly its timeout (%d ms)', (state, timeout, reason) => {
    const e = makeEngine();
    const f = tcpFlow(e, 1000, state);
    e.drainEvents();
    e.expire(T0 + timeout - 1);
    expect(e.lookup(6, f.src, f.sport)).toBeDefined();
    e.expire(T0 + timeout);
    expect(e.lookup(6, f.src, f.sport)).toBeUndefined();
    const ev = e.drainEvents();
    if (state === 'syn') {
      // Never reported open (JS hears of a TCP flow once its handshake completes): it goes silently.
      expect(ev).toEqual([]);
    } else {
      expect(ev).toHaveLength(1);
      expect(ev[0]).toMatchObject({ type: 'close', reason, flow: { srcPort: 1000, state } });
    }
    expect(e.stats()[reason === 'timeout' ? 'flowsExpired' : 'flowsClosed']).toBe(1);
  });

  it.each([
    [443, TIMEOUTS.udpMs],
    [53, TIMEOUTS.udpDnsMs],
  ])('UDP to port %d idles out after %d ms; traffic keeps it alive', (dport, timeout) => {
    const e = makeEngine();
    const q = udpPacket({ src: APP, dst: FAKE, sport: 2000, dport });
    const f = parse(one(e, q));
    // Packets at T0 + timeout/2 keep it alive past the first deadline.
    one(e, q, T0 + timeout / 2);
    e.expire(T0 + timeout);
    expect(e.lookup(17, f.src, f.sport)).toBeDefined();
    e.expire(T0 + timeout / 2 + timeout - 1);
    expect(e.lookup(17, f.src, f.sport)).toBeDefined();
    // Never early, at most 1 s late (expiry lists are relinked at 1 s granularity).
    e.expire(T0 + timeout / 2 + timeout + 1000);
    expect(e.lookup(17, f.src, f.sport)).toBeUndefined();
  });

  it('expires many flows in last-seen order without touching the live ones', () => {
    const e = makeEngine({ maxFlows: 10_000 });
    for (let i = 0; i < 5000; i++)
      one(e, udpPacket({ src: APP, dst: FAKE, sport: 10_000 + i, dport: 443 }), T0 + i * 10);
    e.drainEvents();
    // At T0 + 60 000 + 25 000 flows seen before T0 + 25 000 are gone (2500 of them, give or take the 1 s granularity).
    e.expire(T0 + 60_000 + 25_000);
    const left = e.stats().flowsActive;
    expect(left).toBeGreaterThanOrEqual(2400);
    expect(left).toBeLessThanOrEqual(2500);
    const closed = e.drainEvents();
    expect(closed.every((x) => x.type === 'close' && x.reason === 'timeout' && x.flow.lastSeenMs <= T0 + 25_000)).toBe(
      true,
    );
    for (const f of e.entries()) expect(f.lastSeenMs).toBeGreaterThanOrEqual(T0 + 24_000);
  });
});

describe('a TCP flow that times out while open resets the app (issue 15)', () => {
  const app = { src: APP, dst: FAKE, sport: 3000, dport: 80 };
  function established(e: ReturnType<typeof makeEngine>) {
    const f = parse(one(e, tcpPacket({ ...app, flags: F.SYN, seq: 1000 })));
    const lis = fromListener(f);
    one(e, tcpPacket({ ...lis, flags: F.SYN | F.ACK, seq: 5000, ack: 1001 }));
    one(e, tcpPacket({ ...app, flags: F.ACK, seq: 1001, ack: 5001 }));
    return { f, lis };
  }

  it('expire() yields a RST from the original destination with the sequence the app expects next', () => {
    const e = makeEngine();
    const { lis } = established(e);
    // The Listener sent 100 bytes the app has not acknowledged yet: the app expects 5101.
    one(e, tcpPacket({ ...lis, flags: F.ACK | F.PSH, seq: 5001, ack: 1001, payload: Buffer.alloc(100, 1) }));
    expect(e.expire(T0 + TIMEOUTS.tcpEstablishedMs - 1)).toEqual([]);
    const rsts = e.expire(T0 + TIMEOUTS.tcpEstablishedMs);
    expect(rsts).toHaveLength(1);
    const r = parse(rsts[0] as Buffer);
    expect(r).toMatchObject({ src: FAKE, dst: APP, sport: 80, dport: 3000, seq: 5101, flags: F.RST });
    expect(ipChecksumOk(rsts[0] as Buffer)).toBe(true);
    expect(l4ChecksumOk(rsts[0] as Buffer)).toBe(true);
    expect(e.stats()).toMatchObject({ rstOnExpiry: 1 });
  });

  it('uses the app acknowledgement when it is the later one (serial order across the 2^32 wrap)', () => {
    const e = makeEngine();
    const f = parse(one(e, tcpPacket({ ...app, sport: 3001, flags: F.SYN, seq: 1 })));
    const lis = fromListener(f);
    one(e, tcpPacket({ ...lis, flags: F.SYN | F.ACK, seq: 0xfffffff0, ack: 2 }));
    one(e, tcpPacket({ ...app, sport: 3001, flags: F.ACK, seq: 2, ack: 0x00000010 }));
    const r = parse(e.expire(T0 + TIMEOUTS.tcpEstablishedMs)[0] as Buffer);
    expect(r.seq).toBe(0x10);
  });

  it('closed flows and UDP associations expire quietly', () => {
    const e = makeEngine();
    tcpFlow(e, 1000, 'closed');
    one(e, udpPacket({ src: APP, dst: FAKE, sport: 2000, dport: 443 }));
    expect(e.expire(T0 + 24 * 3600_000)).toEqual([]);
    expect(e.stats()).toMatchObject({ rstOnExpiry: 0, flowsActive: 0 });
  });
});
