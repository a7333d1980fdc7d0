import { describe, expect, it } from 'vitest';
import { fromListener, GW, LISTEN, makeEngine, one, T0 } from './fixture.js';
import { F, parse, tcpPacket } from './packets.js';

const APP = '10.1.0.2';
const FAKE = '198.18.2.2';

/**
 * A RST from the app side ends a flow only at exactly the sequence the
 * Listener expects next (RFC 5961 3.2): a blind or stale one is counted
 * (rstIgnored) and passed on unchanged for the Listener's kernel to answer
 * with a challenge ACK.
 */
describe('RST sequence check (RFC 5961 3.2)', () => {
  const app = { src: APP, dst: FAKE, sport: 3000, dport: 80 };
  /** Handshake with app ISN `isn` and Listener ISN 5000; returns the Listener's side of the flow. */
  function established(e: ReturnType<typeof makeEngine>, isn: number) {
    const f = parse(one(e, tcpPacket({ ...app, flags: F.SYN, seq: isn })));
    const lis = fromListener(f);
    one(e, tcpPacket({ ...lis, flags: F.SYN | F.ACK, seq: 5000, ack: (isn + 1) >>> 0 }));
    one(e, tcpPacket({ ...app, flags: F.ACK, seq: (isn + 1) >>> 0, ack: 5001 }));
    return { f, lis, state: () => e.lookup(6, f.src, f.sport)?.state };
  }
  const rst = (seq: number) => tcpPacket({ ...app, flags: F.RST, seq: seq >>> 0 });

  it('a blind or in-window RST leaves the flow open, is counted and still reaches the Listener', () => {
    const e = makeEngine();
    const { f, state } = established(e, 1000);
    // 100 bytes in flight: the Listener has acknowledged 1001, the app's data ends at 1101.
    one(e, tcpPacket({ ...app, flags: F.ACK | F.PSH, seq: 1001, ack: 5001, payload: Buffer.alloc(100, 7) }));
    for (const seq of [999_999, 1050, 1000, 1102]) {
      const out = parse(one(e, rst(seq)));
      expect(out).toMatchObject({ src: f.src, sport: f.sport, dst: GW, dport: LISTEN, seq, flags: F.RST });
    }
    expect(state()).toBe('established');
    expect(e.stats()).toMatchObject({ rstIgnored: 4, flowsClosed: 0 });
  });

  it.each([
    ['the Listener’s latest ACK', 1001],
    ['the end of the app’s data in flight', 1101],
  ])('a RST at %s (%d) closes the flow with reason rst', (_what, seq) => {
    const e = makeEngine();
    const { state } = established(e, 1000);
    one(e, tcpPacket({ ...app, flags: F.ACK | F.PSH, seq: 1001, ack: 5001, payload: Buffer.alloc(100, 7) }));
    one(e, rst(seq));
    expect(state()).toBe('closed');
    e.expire(T0 + 10_000);
    expect(e.drainEvents().at(-1)).toMatchObject({ type: 'close', reason: 'rst' });
    expect(e.stats().rstIgnored).toBe(0);
  });

  it('the Listener’s acknowledgement moves the exact sequence on; the old one is then stale', () => {
    const e = makeEngine();
    const { lis, state } = established(e, 1000);
    one(e, tcpPacket({ ...app, flags: F.ACK | F.PSH, seq: 1001, ack: 5001, payload: Buffer.alloc(100, 7) }));
    one(e, tcpPacket({ ...lis, flags: F.ACK, seq: 5001, ack: 1101 }));
    one(e, rst(1001));
    expect(state()).toBe('established');
    one(e, rst(1101));
    expect(state()).toBe('closed');
    expect(e.stats().rstIgnored).toBe(1);
  });

  it('a blind data segment cannot move the sequence a RST must carry', () => {
    const e = makeEngine();
    const { state } = established(e, 1000);
    // Out of order by 700 000: forwarded (the Listener judges it), not taken as the app's data end.
    one(e, tcpPacket({ ...app, flags: F.ACK | F.PSH, seq: 701_001, ack: 5001, payload: Buffer.alloc(10, 1) }));
    one(e, rst(701_011));
    expect(state()).toBe('established');
    expect(e.stats().rstIgnored).toBe(1);
  });

  it('data after a gap counts once the Listener has acknowledged the gap', () => {
    const e = makeEngine();
    const { lis, state } = established(e, 1000);
    // 1001..1100 never passed the engine (lost before it); 1101..1200 did, out of order.
    one(e, tcpPacket({ ...app, flags: F.ACK, seq: 1101, ack: 5001, payload: Buffer.alloc(100, 1) }));
    // The retransmission fills the gap; the Listener acknowledges everything.
    one(e, tcpPacket({ ...app, flags: F.ACK, seq: 1001, ack: 5001, payload: Buffer.alloc(100, 1) }));
    one(e, tcpPacket({ ...lis, flags: F.ACK, seq: 5001, ack: 1201 }));
    one(e, tcpPacket({ ...app, flags: F.ACK, seq: 1201, ack: 5001, payload: Buffer.alloc(50, 1) }));
    one(e, rst(1251));
    expect(state()).toBe('closed');
  });

  it('works across the 2^32 sequence wrap', () => {
    const e = makeEngine();
    const { state } = established(e, 0xffffffc0);
    // 0xffffffc1 + 100 wraps to 0x25.
    one(e, tcpPacket({ ...app, flags: F.ACK, seq: 0xffffffc1, ack: 5001, payload: Buffer.alloc(100, 1) }));
    one(e, rst(0x24));
    expect(state()).toBe('established');
    one(e, rst(0x25));
    expect(state()).toBe('closed');
  });

  it('a RST before the SYN-ACK must carry the SYN’s seq + 1', () => {
    const e = makeEngine();
    const f = parse(one(e, tcpPacket({ ...app, flags: F.SYN, seq: 77 })));
    one(e, rst(77));
    expect(e.lookup(6, f.src, f.sport)?.state).toBe('syn');
    one(e, rst(78));
    expect(e.lookup(6, f.src, f.sport)?.state).toBe('closed');
  });

  it('the Listener’s own RST closes the flow whatever its sequence (only this host sends from the gateway)', () => {
    const e = makeEngine();
    const { lis, state } = established(e, 1000);
    one(e, tcpPacket({ ...lis, flags: F.RST, seq: 123_456 }));
    expect(state()).toBe('closed');
    expect(e.stats().rstIgnored).toBe(0);
  });
});
