import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { GW, LISTEN, makeEngine, T0 } from './fixture.js';
import { F, finish, ICMP, icmpPacket, ip4, sum16, tcpPacket, udpPacket } from './packets.js';

const A = '198.18.0.1';
const B = '198.18.2.2';

function fixIp(b: Buffer): Buffer {
  b.writeUInt16BE(0, 10);
  b.writeUInt16BE(finish(sum16(b, 0, (b[0] & 15) * 4)), 10);
  return b;
}
const syn = () => tcpPacket({ src: A, dst: B, sport: 1000, dport: 80, flags: F.SYN });
const udp = () => udpPacket({ src: A, dst: B, sport: 1000, dport: 80, payload: Buffer.from('abcd') });

/** `b` with the byte at `off` set to `v`. */
function withByte(b: Buffer, off: number, v: number): Buffer {
  b[off] = v;
  return b;
}
/** `b` with the 16-bit field at `off` set to `v`. */
function withU16(b: Buffer, off: number, v: number): Buffer {
  b.writeUInt16BE(v, off);
  return b;
}

const cases: Array<[string, string, () => Buffer]> = [
  ['empty buffer', 'dropTruncated', () => Buffer.alloc(0)],
  ['shorter than an IPv4 header', 'dropTruncated', () => syn().subarray(0, 19)],
  ['total length beyond the buffer', 'dropTruncated', () => syn().subarray(0, 30)],
  ['version 5', 'dropBadVersion', () => withByte(syn(), 0, 0x55)],
  ['IPv6', 'dropIpv6', () => withByte(Buffer.alloc(40), 0, 0x60)],
  ['IHL < 5', 'dropBadHeader', () => withByte(syn(), 0, 0x44)],
  ['total length < IHL', 'dropBadHeader', () => fixIp(withU16(syn(), 2, 12))],
  [
    'IP options',
    'dropIpOptions',
    () => tcpPacket({ src: A, dst: B, sport: 1, dport: 2, flags: F.SYN, options: Buffer.from([1, 1, 1, 0]) }),
  ],
  ['first fragment (MF)', 'dropFragment', () => udpPacket({ src: A, dst: B, sport: 1, dport: 2, flagsFrag: 0x2000 })],
  [
    'later fragment (offset)',
    'dropFragment',
    () => udpPacket({ src: A, dst: B, sport: 1, dport: 2, flagsFrag: 0x0010 }),
  ],
  ['other protocol (GRE)', 'dropProtocol', () => fixIp(withByte(udp(), 9, 47))],
  ['TCP header cut short', 'dropTruncated', () => fixIp(withU16(Buffer.from(syn().subarray(0, 30)), 2, 30))],
  ['TCP data offset < 5', 'dropBadHeader', () => withByte(syn(), 32, 0x40)],
  ['TCP data offset past the end', 'dropTruncated', () => withByte(syn(), 32, 0xf0)],
  ['UDP length past the end', 'dropTruncated', () => withU16(udp(), 24, 200)],
  ['UDP length < 8', 'dropBadHeader', () => withU16(udp(), 24, 4)],
  [
    'ICMP shorter than 8',
    'dropTruncated',
    () => fixIp(withU16(Buffer.from(icmpPacket({ src: A, dst: B, type: 8 }).subarray(0, 24)), 2, 24)),
  ],
  [
    'TCP to the gateway itself',
    'dropToGateway',
    () => tcpPacket({ src: '10.1.1.1', dst: GW, sport: 5, dport: 22, flags: F.SYN }),
  ],
  [
    'UDP to the range broadcast',
    'dropBadAddress',
    () => udpPacket({ src: A, dst: '198.18.255.255', sport: 5, dport: 9 }),
  ],
  ['UDP to the network address', 'dropBadAddress', () => udpPacket({ src: A, dst: '198.18.0.0', sport: 5, dport: 9 })],
  ['UDP to multicast', 'dropBadAddress', () => udpPacket({ src: A, dst: '224.0.0.251', sport: 5353, dport: 5353 })],
  [
    'Listener reply to an unknown NAT pair',
    'dropReverseNoFlow',
    () => udpPacket({ src: GW, dst: '198.18.9.9', sport: LISTEN, dport: 4000 }),
  ],
  ['TCP RST without a flow', 'dropTcpNoFlow', () => tcpPacket({ src: A, dst: B, sport: 1, dport: 2, flags: F.RST })],
  ['ICMP timestamp request', 'dropIcmpUnsupported', () => icmpPacket({ src: A, dst: B, type: 13 })],
  ['ICMP echo outside the range', 'dropIcmpUnsupported', () => icmpPacket({ src: A, dst: '1.1.1.1', type: 8 })],
  [
    'ICMP error about an unknown flow',
    'dropIcmpNoFlow',
    () =>
      icmpPacket({
        src: GW,
        dst: '198.18.3.3',
        type: 3,
        code: 3,
        payload: udpPacket({ src: '198.18.3.3', dst: GW, sport: 2000, dport: LISTEN }).subarray(0, 28),
      }),
  ],
  [
    'ICMP error quoting too little',
    'dropTruncated',
    () => icmpPacket({ src: GW, dst: '198.18.3.3', type: 3, code: 3, payload: Buffer.alloc(20, 0x45) }),
  ],
];

describe('malformed and unhandled packets are dropped with the right counter', () => {
  it.each(cases)('%s -> %s', (_name, counter, build) => {
    const e = makeEngine();
    const before = e.stats();
    expect(e.processPacket(build(), T0)).toEqual([]);
    const after = e.stats();
    expect(after[counter] - before[counter]).toBe(1);
    // No other drop counter moved, and nothing was created.
    for (const k of Object.keys(after)) if (k.startsWith('drop') && k !== counter) expect(after[k], k).toBe(before[k]);
    expect(after.flowsActive).toBe(0);
    expect(after.pktsOut).toBe(0);
  });

  it('a TCP segment without a flow (not a SYN) is answered with RST and counted', () => {
    const e = makeEngine();
    const out = e.processPacket(tcpPacket({ src: A, dst: B, sport: 1, dport: 2, flags: F.ACK, ack: 77 }), T0);
    expect(out).toHaveLength(1);
    expect(e.stats()).toMatchObject({ dropTcpNoFlow: 1, rstSent: 1, flowsActive: 0 });
  });

  it('never crashes on random bytes and only emits IPv4 packets whose length matches their header', () => {
    const e = makeEngine();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(3), (raw, shape) => {
        const b = Buffer.from(raw);
        // Bias towards IPv4-looking input so the deeper parsers are reached.
        if (b.length > 20 && shape > 0) {
          b[0] = 0x45;
          b.writeUInt16BE(b.length, 2);
          b[6] = 0;
          b[7] = 0;
          b[9] = [6, 17, ICMP][shape - 1];
          b.writeUInt32BE(ip4('198.18.0.1'), 12);
          if (b.length >= 24 && shape === 3) b[20] = [0, 3, 8, 11][raw[1] % 4];
        }
        for (const out of e.processPacket(b, T0)) {
          expect(out[0] >> 4).toBe(4);
          expect(out.readUInt16BE(2)).toBe(out.length);
        }
      }),
      { numRuns: 3000 },
    );
  });
});
