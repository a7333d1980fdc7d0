import { describe, expect, it } from 'vitest';
import { APP, FAKE, fromListener, makeEngine, one, T0 } from './fixture.js';
import { F, ICMP, ipChecksumOk, l4ChecksumOk, parse, TCP, tcpPacket, udpPacket } from './packets.js';

describe('full table', () => {
  it('answers a new TCP flow with RST (RFC 9293), existing flows unharmed', () => {
    const e = makeEngine({ maxFlows: 2 });
    const a = parse(one(e, tcpPacket({ src: APP, dst: FAKE, sport: 1, dport: 80, flags: F.SYN })));
    // Established (a half-open flow would make room for the new one: see abuse.test.ts).
    one(e, tcpPacket({ ...fromListener(a), flags: F.SYN | F.ACK, ack: 1 }));
    one(e, tcpPacket({ src: APP, dst: FAKE, sport: 1, dport: 80, flags: F.ACK }));
    one(e, udpPacket({ src: APP, dst: FAKE, sport: 2, dport: 80 }));
    const syn = tcpPacket({
      src: APP,
      dst: FAKE,
      sport: 3,
      dport: 80,
      flags: F.SYN,
      seq: 5000,
      payload: Buffer.from('xy'),
    });
    const rst = one(e, syn);
    const p = parse(rst);
    expect(p).toMatchObject({
      src: FAKE,
      dst: APP,
      sport: 80,
      dport: 3,
      proto: TCP,
      flags: F.RST | F.ACK,
      seq: 0,
      ack: 5003,
      totalLen: 40,
    });
    expect(ipChecksumOk(rst) && l4ChecksumOk(rst)).toBe(true);
    expect(e.stats()).toMatchObject({ flowsRefused: 1, rstSent: 1, flowsActive: 2 });
    // The existing flow still forwards.
    const again = parse(one(e, tcpPacket({ src: APP, dst: FAKE, sport: 1, dport: 80, flags: F.ACK })));
    expect([again.src, again.sport]).toEqual([a.src, a.sport]);
  });

  it('answers a new UDP flow with ICMP port unreachable quoting the datagram', () => {
    const e = makeEngine({ maxFlows: 1 });
    one(e, udpPacket({ src: APP, dst: FAKE, sport: 1, dport: 80 }));
    const q = udpPacket({ src: APP, dst: FAKE, sport: 9, dport: 443, payload: Buffer.alloc(1000, 7) });
    const out = one(e, q);
    const p = parse(out);
    expect(p).toMatchObject({ src: FAKE, dst: APP, proto: ICMP, icmpType: 3, icmpCode: 3 });
    expect(out.length).toBe(576); // RFC 1812: as much as fits in 576 bytes
    expect(p.payload.equals(q.subarray(0, 576 - 28))).toBe(true);
    expect(ipChecksumOk(out) && l4ChecksumOk(out)).toBe(true);
    expect(e.stats()).toMatchObject({ flowsRefused: 1, icmpUnreachSent: 1, flowsActive: 1 });
  });

  it('accepts new flows again once old ones expire', () => {
    const e = makeEngine({ maxFlows: 1 });
    one(e, udpPacket({ src: APP, dst: FAKE, sport: 1, dport: 80 }));
    e.expire(T0 + 60_000);
    const out = parse(one(e, udpPacket({ src: APP, dst: FAKE, sport: 2, dport: 80 }), T0 + 60_000));
    expect(out.proto).toBe(17);
    expect(e.stats().flowsActive).toBe(1);
  });
});
