import { describe, expect, it } from 'vitest';
import { APP, FAKE, fromListener, GW, makeEngine, one, T0 } from './fixture.js';
import { F, ICMP, icmpPacket, ipChecksumOk, l4ChecksumOk, parse, tcpPacket, udpPacket } from './packets.js';

describe('ICMP', () => {
  it.each(['198.18.2.2', '198.18.255.254', '198.18.0.2'])('answers an echo request to %s itself', (dst) => {
    const e = makeEngine();
    const payload = Buffer.from('0123456789abcdefghijklmnopqrstuvwxyz');
    const req = icmpPacket({ src: APP, dst, type: 8, rest: (0x4242 << 16) | 7, payload, ttl: 3, id: 0x5555 });
    const rep = one(e, req);
    const p = parse(rep);
    expect(p).toMatchObject({
      src: dst,
      dst: APP,
      proto: ICMP,
      icmpType: 0,
      icmpCode: 0,
      ttl: 64,
      totalLen: req.length,
    });
    expect(rep.readUInt32BE(24)).toBe((0x4242 << 16) | 7); // id + seq echoed
    expect(p.payload.equals(payload)).toBe(true);
    expect(ipChecksumOk(rep)).toBe(true);
    expect(l4ChecksumOk(rep)).toBe(true);
    expect(e.stats()).toMatchObject({ echoReplies: 1, flowsActive: 0 });
  });

  it('drops an echo request to the broadcast address of the range', () => {
    const e = makeEngine();
    expect(e.processPacket(icmpPacket({ src: APP, dst: '198.18.255.255', type: 8 }), T0)).toEqual([]);
    expect(e.stats().dropBadAddress).toBe(1);
  });

  it('translates a port unreachable from the kernel about a NATed UDP flow back to the app', () => {
    const e = makeEngine();
    const q = udpPacket({ src: APP, dst: FAKE, sport: 5555, dport: 6666, payload: Buffer.from('ping') });
    const fwd = one(e, q);
    const f = parse(fwd);
    // What the kernel sends when nothing listens on gateway:1313/udp: quotes our rewritten datagram.
    const err = icmpPacket({ src: GW, dst: f.src, type: 3, code: 3, payload: fwd });
    const out = one(e, err);
    const p = parse(out);
    expect(p).toMatchObject({ src: FAKE, dst: APP, icmpType: 3, icmpCode: 3 });
    expect(ipChecksumOk(out) && l4ChecksumOk(out)).toBe(true);
    // The quoted datagram is the app's original one, byte for byte.
    expect(p.payload.equals(q)).toBe(true);
    expect(e.stats().icmpErrorsTranslated).toBe(1);
  });

  it('translates an error from the app host about a reply back to the Listener side', () => {
    const e = makeEngine();
    const q = udpPacket({ src: APP, dst: FAKE, sport: 5555, dport: 6666 });
    const f = parse(one(e, q));
    const reply = udpPacket({ ...fromListener(f), payload: Buffer.from('pong') });
    const delivered = one(e, reply);
    const err = icmpPacket({ src: APP, dst: FAKE, type: 3, code: 3, payload: delivered });
    const out = one(e, err);
    const p = parse(out);
    expect(p).toMatchObject({ src: f.src, dst: GW, icmpType: 3 });
    expect(p.payload.equals(reply)).toBe(true);
    expect(ipChecksumOk(out) && l4ChecksumOk(out)).toBe(true);
  });

  it('translates an error about a TCP segment quoting only 8 bytes of it', () => {
    const e = makeEngine();
    const syn = tcpPacket({ src: APP, dst: FAKE, sport: 1000, dport: 80, flags: F.SYN });
    const fwd = one(e, syn);
    const f = parse(fwd);
    const out = one(e, icmpPacket({ src: GW, dst: f.src, type: 11, payload: fwd.subarray(0, 28) }));
    const p = parse(out);
    expect(p.payload.readUInt16BE(20)).toBe(1000);
    expect(p.payload.readUInt16BE(22)).toBe(80);
    // The quoted IP header is the app's original one, checksum included.
    expect(p.payload.subarray(0, 20).equals(syn.subarray(0, 20))).toBe(true);
    expect(ipChecksumOk(out) && l4ChecksumOk(out)).toBe(true);
  });
});
