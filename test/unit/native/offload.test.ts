/**
 * TUN offloads (IFF_VNET_HDR): packets start with a 10-byte virtio_net_hdr;
 * with VIRTIO_NET_HDR_F_NEEDS_CSUM the TCP/UDP checksum field holds the folded
 * pseudo-header sum (not complemented), which the kernel completes later by
 * summing from csum_start. The engine must keep that sum right for the
 * rewritten addresses and leave the GSO metadata alone.
 *
 * "As Linux does" here: __tcp_v4_send_check / udp4_hwcsum store
 * ~csum_tcpudp_magic(saddr, daddr, len, proto, 0) = fold(pseudo-header sum);
 * skb_checksum_help completes it as ~fold(sum from csum_start to the end).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { APP, FAKE, GW, LISTEN, makeEngine, T0 } from './fixture.js';
import {
  F,
  finish,
  fold,
  ICMP,
  icmpPacket,
  ip4,
  ipChecksumOk,
  l4ChecksumOk,
  parse,
  rewritten,
  sum16,
  TCP,
  tcpPacket,
  UDP,
  udpPacket,
  withFreshChecksums,
} from './packets.js';

const NEEDS_CSUM = 1;
const DATA_VALID = 2;
const GSO_TCPV4 = 1;

interface Vnet {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

function vnetHdr(v: Vnet): Buffer {
  const h = Buffer.alloc(10);
  h[0] = v.flags ?? 0;
  h[1] = v.gsoType ?? 0;
  h.writeUInt16LE(v.hdrLen ?? 0, 2);
  h.writeUInt16LE(v.gsoSize ?? 0, 4);
  h.writeUInt16LE(v.csumStart ?? 0, 6);
  h.writeUInt16LE(v.csumOffset ?? 0, 8);
  return h;
}

const l4Off = (proto: number) => (proto === TCP ? 16 : 6);

/** The packet as Linux hands it out with CHECKSUM_PARTIAL: L4 field = fold(pseudo-header sum). */
function partialize(pkt: Buffer): Buffer {
  const c = Buffer.from(pkt);
  const hl = (c[0] & 15) * 4;
  const total = c.readUInt16BE(2);
  const src = c.readUInt32BE(12);
  const dst = c.readUInt32BE(16);
  const pseudo = (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + c[9] + (total - hl);
  c.writeUInt16BE(fold(pseudo), hl + l4Off(c[9]));
  return c;
}

/** What the kernel does with a NEEDS_CSUM packet: sum from csum_start (field included), complement. */
function complete(pkt: Buffer, csumStart: number, csumOffset: number): Buffer {
  const c = Buffer.from(pkt);
  const total = c.readUInt16BE(2);
  const v = finish(sum16(c, csumStart, total));
  c.writeUInt16BE(c[9] === UDP && v === 0 ? 0xffff : v, csumStart + csumOffset);
  return c;
}

function gsoHdr(pkt: Buffer, proto: number): Vnet {
  const hl = (pkt[0] & 15) * 4;
  const l4hl = proto === TCP ? (pkt[hl + 12] >> 4) * 4 : 8;
  return {
    flags: NEEDS_CSUM,
    gsoType: proto === TCP ? GSO_TCPV4 : 0,
    hdrLen: hl + l4hl,
    gsoSize: proto === TCP ? 8948 : 0,
    csumStart: hl,
    csumOffset: l4Off(proto),
  };
}

function oneV(e: ReturnType<typeof makeEngine>, hdr: Buffer, pkt: Buffer, now = T0): { hdr: Buffer; pkt: Buffer } {
  const out = e.processPacket(Buffer.concat([hdr, pkt]), now, true);
  if (out.length !== 1)
    throw new Error(`expected one packet out, got ${out.length}; stats ${JSON.stringify(e.stats())}`);
  return { hdr: out[0].subarray(0, 10), pkt: out[0].subarray(10) };
}

describe('TUN offload (virtio_net_hdr)', () => {
  it.each([
    ['TCP', TCP],
    ['UDP', UDP],
  ])('%s with NEEDS_CSUM: partial sum updated for the addresses only, GSO metadata kept, both ways', (_n, proto) => {
    const e = makeEngine();
    const payload = Buffer.alloc(proto === TCP ? 30_000 : 1400, 0xa5);
    const mk = (src: string, dst: string, sport: number, dport: number, flags: number, pl: Buffer) =>
      proto === TCP
        ? tcpPacket({ src, dst, sport, dport, flags, payload: pl, seq: 5 })
        : udpPacket({ src, dst, sport, dport, payload: pl });
    if (proto === TCP) {
      // Handshake through the non-vnet seam first.
      e.processPacket(tcpPacket({ src: APP, dst: FAKE, sport: 40000, dport: 80, flags: F.SYN }), T0);
    }
    const orig = partialize(mk(APP, FAKE, 40000, 80, F.ACK | F.PSH, payload));
    const vh = gsoHdr(orig, proto);
    const hdr = vnetHdr(vh);
    const out = oneV(e, hdr, orig);
    expect(out.hdr.equals(hdr)).toBe(true);
    const f = parse(out.pkt);
    expect(f).toMatchObject({ dst: GW, dport: LISTEN, proto });
    expect(ipChecksumOk(out.pkt)).toBe(true);
    // The field is now the partial sum of the new pseudo-header...
    expect(out.pkt.equals(partialize(out.pkt))).toBe(true);
    // ...and completing it as the kernel does gives the full checksum of the rewritten packet.
    const done = complete(out.pkt, vh.csumStart ?? 20, vh.csumOffset ?? 0);
    expect(done.equals(withFreshChecksums(out.pkt))).toBe(true);
    expect(l4ChecksumOk(done)).toBe(true);

    // Reverse: the Listener's reply with a partial checksum.
    const reply = partialize(mk(GW, f.src, LISTEN, f.sport, F.ACK, payload.subarray(0, 20_000)));
    const rh = gsoHdr(reply, proto);
    const back = oneV(e, vnetHdr(rh), reply);
    expect(back.hdr.equals(vnetHdr(rh))).toBe(true);
    expect(back.pkt.equals(partialize(rewritten(reply, FAKE, 80, APP, 40000)))).toBe(true);
    const backDone = complete(back.pkt, 20, l4Off(proto));
    expect(backDone.equals(rewritten(reply, FAKE, 80, APP, 40000))).toBe(true);
    expect(e.stats()).toMatchObject({ gsoIn: proto === TCP ? 2 : 0, csumCompleted: 0 });
  });

  it('property: partial update then kernel completion equals a full checksum of the rewritten packet', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(TCP, UDP),
        fc.integer({ min: 1, max: 0xfffffffe }),
        fc.integer({ min: 1, max: 65535 }),
        fc.integer({ min: 1, max: 65535 }),
        fc.uint8Array({ minLength: 0, maxLength: 3000 }),
        (proto, srcN, sport, dport, data) => {
          const e = makeEngine({ dnsHijack: false });
          const a = [srcN >>> 24, (srcN >>> 16) & 255, (srcN >>> 8) & 255, srcN & 255];
          // Keep the source a plausible unicast host (the engine drops 0/8 and multicast+).
          a[0] = 1 + (a[0] % 223);
          const src = a.join('.');
          const payload = Buffer.from(data);
          const pkt =
            proto === TCP
              ? tcpPacket({ src, dst: FAKE, sport, dport, flags: F.SYN, payload })
              : udpPacket({ src, dst: FAKE, sport, dport, payload });
          const p = partialize(pkt);
          const out = oneV(e, vnetHdr({ flags: NEEDS_CSUM, csumStart: 20, csumOffset: l4Off(proto) }), p);
          expect(out.hdr[0]).toBe(NEEDS_CSUM);
          const done = complete(out.pkt, 20, l4Off(proto));
          expect(done.equals(withFreshChecksums(out.pkt))).toBe(true);
          expect(ipChecksumOk(done) && l4ChecksumOk(done)).toBe(true);
          expect(ip4(parse(done).dst)).toBe(ip4(GW));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('a packet without NEEDS_CSUM (or with DATA_VALID) gets the full incremental update', () => {
    for (const pkt of [
      tcpPacket({ src: APP, dst: FAKE, sport: 1234, dport: 443, flags: F.SYN }),
      udpPacket({ src: APP, dst: FAKE, sport: 1234, dport: 443, payload: Buffer.from('x') }),
      udpPacket({ src: APP, dst: FAKE, sport: 1235, dport: 443, payload: Buffer.from('y'), noChecksum: true }),
    ]) {
      for (const flags of [0, DATA_VALID]) {
        const v = oneV(makeEngine(), vnetHdr({ flags }), pkt);
        expect(v.hdr.equals(Buffer.alloc(10))).toBe(true);
        expect(parse(v.pkt)).toMatchObject({ dst: GW, dport: LISTEN });
        // withFreshChecksums keeps a UDP 0 ("none") at 0.
        expect(v.pkt.equals(withFreshChecksums(v.pkt))).toBe(true);
        expect(ipChecksumOk(v.pkt) && l4ChecksumOk(v.pkt)).toBe(true);
      }
    }
    const none = oneV(
      makeEngine(),
      vnetHdr({}),
      udpPacket({ src: APP, dst: FAKE, sport: 9, dport: 9, noChecksum: true }),
    );
    expect(parse(none.pkt).l4Checksum).toBe(0);
  });

  it('packets the engine builds itself get a zeroed header (RST for a GSO segment without a flow)', () => {
    const e = makeEngine();
    const seg = partialize(
      tcpPacket({ src: APP, dst: FAKE, sport: 777, dport: 80, flags: F.ACK, payload: Buffer.alloc(20_000) }),
    );
    const out = oneV(e, vnetHdr(gsoHdr(seg, TCP)), seg);
    expect(out.hdr.equals(Buffer.alloc(10))).toBe(true);
    const r = parse(out.pkt);
    expect(r.flags & F.RST).toBe(F.RST);
    expect(out.pkt.length).toBe(40);
    expect(ipChecksumOk(out.pkt) && l4ChecksumOk(out.pkt)).toBe(true);
    expect(e.stats()).toMatchObject({ rstSent: 1, dropTcpNoFlow: 1 });
  });

  it('UDP table full: ICMP port unreachable with a zeroed header', () => {
    const e = makeEngine({ maxFlows: 1 });
    const u1 = partialize(udpPacket({ src: APP, dst: FAKE, sport: 1, dport: 2, payload: Buffer.from('a') }));
    const u2 = partialize(udpPacket({ src: APP, dst: FAKE, sport: 3, dport: 4, payload: Buffer.from('b') }));
    oneV(e, vnetHdr(gsoHdr(u1, UDP)), u1);
    const out = oneV(e, vnetHdr(gsoHdr(u2, UDP)), u2);
    expect(out.hdr.equals(Buffer.alloc(10))).toBe(true);
    expect(parse(out.pkt)).toMatchObject({ proto: ICMP, icmpType: 3, icmpCode: 3 });
    expect(ipChecksumOk(out.pkt) && l4ChecksumOk(out.pkt)).toBe(true);
    expect(e.stats().flowsRefused).toBe(1);
  });

  it('ICMP echo with a partial checksum is completed first, then answered', () => {
    const e = makeEngine();
    const req = icmpPacket({ src: APP, dst: FAKE, type: 8, rest: 0x10001, payload: Buffer.from('hello!') });
    const partial = Buffer.from(req);
    partial.writeUInt16BE(0, 22); // ICMP: no pseudo-header, so the partial sum is 0
    const out = oneV(e, vnetHdr({ flags: NEEDS_CSUM, csumStart: 20, csumOffset: 2 }), partial);
    expect(out.hdr.equals(Buffer.alloc(10))).toBe(true);
    expect(parse(out.pkt)).toMatchObject({ src: FAKE, dst: APP, icmpType: 0 });
    expect(ipChecksumOk(out.pkt) && l4ChecksumOk(out.pkt)).toBe(true);
    expect(e.stats()).toMatchObject({ echoReplies: 1, csumCompleted: 1 });
  });

  it('ICMP errors about a NATed flow are translated with a zeroed header', () => {
    const e = makeEngine();
    const q = udpPacket({ src: APP, dst: FAKE, sport: 5555, dport: 6666, payload: Buffer.from('ping') });
    const fwd = oneV(e, vnetHdr({}), q).pkt;
    const err = icmpPacket({ src: GW, dst: parse(fwd).src, type: 3, code: 3, payload: fwd });
    const out = oneV(e, vnetHdr({}), err);
    expect(out.hdr.equals(Buffer.alloc(10))).toBe(true);
    expect(parse(out.pkt)).toMatchObject({ src: FAKE, dst: APP, icmpType: 3 });
    expect(parse(out.pkt).payload.equals(q)).toBe(true);
    expect(e.stats().icmpErrorsTranslated).toBe(1);
  });

  it('a dropped partial packet does not leak its checksum mode into the next packet', () => {
    const e = makeEngine();
    // A RST without a flow is dropped (dropTcpNoFlow) after the partial checksum was recognised.
    const rst = partialize(tcpPacket({ src: APP, dst: FAKE, sport: 1, dport: 2, flags: F.RST }));
    expect(e.processPacket(Buffer.concat([vnetHdr(gsoHdr(rst, TCP)), rst]), T0, true)).toEqual([]);
    expect(e.stats().dropTcpNoFlow).toBe(1);
    const u = e.processPacket(udpPacket({ src: APP, dst: FAKE, sport: 3, dport: 4, payload: Buffer.from('z') }), T0);
    expect(u).toHaveLength(1);
    expect(u[0].equals(withFreshChecksums(u[0]))).toBe(true);
  });

  it('drops what cannot be parsed with the usual counters', () => {
    const e = makeEngine();
    expect(e.processPacket(Buffer.alloc(6), T0, true)).toEqual([]);
    expect(e.stats().dropTruncated).toBe(1);
    const v6 = Buffer.concat([
      vnetHdr({ flags: NEEDS_CSUM, csumStart: 40, csumOffset: 16 }),
      Buffer.from([0x60, 0, 0, 0]),
    ]);
    expect(e.processPacket(v6, T0, true)).toEqual([]);
    expect(e.stats().dropIpv6).toBe(1);
    // NEEDS_CSUM pointing past the packet: never from a sane kernel; dropped as a bad header.
    const icmp = icmpPacket({ src: APP, dst: FAKE, type: 8 });
    expect(
      e.processPacket(Buffer.concat([vnetHdr({ flags: NEEDS_CSUM, csumStart: 20, csumOffset: 200 }), icmp]), T0, true),
    ).toEqual([]);
    expect(e.stats().dropBadHeader).toBe(1);
  });
});
