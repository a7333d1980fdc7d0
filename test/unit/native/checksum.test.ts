import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { fromListener, GW, LISTEN, makeEngine, one, T0 } from './fixture.js';
import {
  F,
  ipChecksumOk,
  ipStr,
  l4ChecksumOk,
  parse,
  rewritten,
  sameModuloChecksumZero,
  tcpPacket,
  udpPacket,
} from './packets.js';

// Sources: anywhere routable but not the gateway's Listener/DNS port pair.
const srcIp = fc.oneof(
  fc.constant(GW),
  fc
    .tuple(fc.integer({ min: 1, max: 223 }), fc.nat(255), fc.nat(255), fc.integer({ min: 1, max: 254 }))
    .map((p) => p.join('.')),
);
// Destinations: host addresses of the range other than the gateway.
const dstIp = fc.integer({ min: 2, max: 65534 }).map((n) => ipStr((198 << 24) | (18 << 16) | n));
const port = fc.integer({ min: 1, max: 65535 }).filter((p) => p !== LISTEN && p !== 53);
const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));
/** An app's 4-tuple towards a fake destination. */
const app = fc.record({ src: srcIp, dst: dstIp, sport: port, dport: port });
const tcpOpts = fc
  .integer({ min: 0, max: 10 })
  .chain((n) => fc.uint8Array({ minLength: n * 4, maxLength: n * 4 }))
  .map((a) => Buffer.from(a));

/** `out` is `sent` with only its addresses and ports replaced, checksums as a full recomputation gives them. */
function isRewriteOf(out: Buffer, sent: Buffer, src: string, sport: number, dst: string, dport: number): boolean {
  return sameModuloChecksumZero(out, rewritten(sent, src, sport, dst, dport));
}

describe('checksums: incremental update (RFC 1624) vs full recomputation (RFC 1071)', () => {
  it('TCP: forward and reverse rewrites equal a full recomputation, on random packets', () => {
    fc.assert(
      fc.property(
        app,
        fc.nat(0xffffffff),
        fc.nat(0xffffffff),
        tcpOpts,
        bytes(1400),
        fc.nat(255),
        fc.nat(0xffff),
        (a, seq, ack, opts, payload, tos, id) => {
          const e = makeEngine();
          const syn = tcpPacket({ ...a, flags: F.SYN, seq, ack, tcpOptions: opts, payload, tos, id });
          const out = one(e, syn);
          const p = parse(out);
          expect(ipChecksumOk(out)).toBe(true);
          expect(l4ChecksumOk(out)).toBe(true);
          expect(isRewriteOf(out, syn, p.src, p.sport, GW, LISTEN)).toBe(true);
          const reply = tcpPacket({
            ...fromListener(p),
            flags: F.ACK | F.PSH,
            seq: ack,
            ack: seq,
            payload,
            tcpOptions: opts,
          });
          const back = one(e, reply, T0 + 1);
          expect(ipChecksumOk(back) && l4ChecksumOk(back)).toBe(true);
          expect(isRewriteOf(back, reply, a.dst, a.dport, a.src, a.sport)).toBe(true);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('UDP: same property, and a packet without checksum (0) stays without', () => {
    fc.assert(
      fc.property(app, bytes(1400), fc.boolean(), (a, payload, noChecksum) => {
        const e = makeEngine();
        const q = udpPacket({ ...a, payload, noChecksum });
        const out = one(e, q);
        const p = parse(out);
        if (noChecksum) expect(p.l4Checksum).toBe(0);
        else expect(p.l4Checksum).not.toBe(0);
        expect(ipChecksumOk(out) && l4ChecksumOk(out)).toBe(true);
        expect(isRewriteOf(out, q, p.src, p.sport, GW, LISTEN)).toBe(true);
        const r = udpPacket({ ...fromListener(p), payload, noChecksum });
        const back = one(e, r, T0 + 1);
        expect(parse(back).l4Checksum === 0).toBe(noChecksum);
        expect(isRewriteOf(back, r, a.dst, a.dport, a.src, a.sport)).toBe(true);
      }),
      { numRuns: 300 },
    );
  });
});
