import { describe, expect, it } from 'vitest';
import { makeEngine, one, T0 } from './fixture.js';
import { F, ip4, parse, tcpPacket, udpPacket } from './packets.js';

describe('NAT allocation', () => {
  it('never repeats a live pair and never hands out the gateway, network or broadcast (/29)', () => {
    // /29: .0 network, .7 broadcast, gateway .3 in the middle -> hosts .1 .2 .4 .5 .6
    const e = makeEngine({ network: '10.9.0.0', prefixLen: 29, gateway: '10.9.0.3', maxFlows: 20_000 });
    const seen = new Set<string>();
    const addrs = new Set<string>();
    let minPort = 65536;
    const n = 12_000;
    for (let i = 0; i < n; i++) {
      const src = `172.16.${(i >> 8) & 255}.${i & 255}`;
      const out = one(e, tcpPacket({ src, dst: '203.0.113.7', sport: 40000, dport: 443, flags: F.SYN }));
      const ip = `${out[12]}.${out[13]}.${out[14]}.${out[15]}`;
      seen.add(`${ip}:${out.readUInt16BE(20)}`);
      addrs.add(ip);
      minPort = Math.min(minPort, out.readUInt16BE(20));
    }
    expect(seen.size).toBe(n);
    expect(minPort).toBeGreaterThanOrEqual(1024);
    expect([...addrs].sort()).toEqual(['10.9.0.1', '10.9.0.2', '10.9.0.4', '10.9.0.5', '10.9.0.6']);
    expect(e.stats().flowsActive).toBe(12_000);
  });

  it('a new engine starts at a random point of the space (a restarted daemon must not reuse its predecessor TIME_WAIT pairs)', () => {
    const firsts = new Set<string>();
    for (let i = 0; i < 4; i++) {
      const out = parse(one(makeEngine(), udpPacket({ src: '198.18.0.1', dst: '198.18.5.5', sport: 1, dport: 2 })));
      firsts.add(`${out.src}:${out.sport}`);
    }
    // ~4·10⁹ pairs in a /16: four engines landing on fewer than four distinct pairs means a fixed start.
    expect(firsts.size).toBe(4);
  });

  it('spreads consecutive flows over addresses (cursor walks host-first)', () => {
    const e = makeEngine();
    const a = parse(one(e, udpPacket({ src: '198.18.0.1', dst: '198.18.5.5', sport: 1, dport: 2 })));
    const b = parse(one(e, udpPacket({ src: '198.18.0.1', dst: '198.18.5.5', sport: 3, dport: 2 })));
    expect(a.src).not.toBe(b.src);
    expect(Math.abs(ip4(a.src) - ip4(b.src))).toBeLessThan(3);
  });

  it('does not hand a freed pair out again before reuseDelayMs (TIME_WAIT), then does', () => {
    // /30 has exactly one NAT host: 64512 pairs, so the cursor laps quickly.
    const e = makeEngine({
      network: '10.9.0.0',
      prefixLen: 30,
      gateway: '10.9.0.1',
      maxFlows: 70_000,
      reuseDelayMs: 60_000,
    });
    // seq 1000 for the SYN, 1001 for the RST: exactly the sequence the Listener expects next.
    const pkt = (i: number, flags: number = F.SYN) =>
      tcpPacket({
        src: `172.17.${i >> 8}.${i & 255}`,
        dst: '203.0.113.7',
        sport: 1000,
        dport: 80,
        flags,
        seq: flags & F.SYN ? 1000 : 1001,
      });
    const first = parse(one(e, pkt(0)));
    expect(first.src).toBe('10.9.0.2');
    // Close flow 0 by RST; after its 10 s linger it is freed at T0+10s.
    one(e, pkt(0, F.RST | F.ACK), T0);
    e.expire(T0 + 10_000);
    expect(e.stats().flowsActive).toBe(0);
    // Walk the whole space: every other pair is handed out, never the freed one.
    const pairs = new Set<number>();
    for (let i = 1; i < 64_512; i++) {
      const out = e.processPacket(pkt(i), T0 + 20_000);
      if (out.length === 1 && out[0][33] === F.SYN) pairs.add(out[0].readUInt16BE(20));
    }
    expect(pairs.has(first.sport)).toBe(false);
    expect(pairs.size).toBe(64_511);
    // Space used up except the cooling pair: refused (RST), counted.
    const refused = parse(one(e, pkt(64_600), T0 + 30_000));
    expect(refused.flags & F.RST).toBe(F.RST);
    expect(e.stats().natExhausted).toBeGreaterThan(0);
    // After reuseDelayMs since the free, the pair comes back.
    const later = parse(one(e, pkt(64_601), T0 + 10_000 + 60_000));
    expect(later.flags).toBe(F.SYN);
    expect(later.sport).toBe(first.sport);
  });
});
