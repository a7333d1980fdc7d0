import { describe, expect, it } from 'vitest';
import { native } from '../../../src/native.js';
import { engineOptions, GW, LISTEN, makeEngine, one, T0 } from './fixture.js';
import { parse, udpPacket } from './packets.js';

describe('ensureFlow (Listener side)', () => {
  it('creates a flow for a reply from a remote the app never sent to; the reply then reaches the app', () => {
    const e = makeEngine();
    // The app talked to 198.18.2.2:3478; a reply arrives upstream from 203.0.113.9:3478.
    const f = e.ensureFlow(17, '198.18.0.1', 40000, '203.0.113.9', 3478, T0);
    expect(f).toMatchObject({
      proto: 17,
      srcIp: '198.18.0.1',
      srcPort: 40000,
      dstIp: '203.0.113.9',
      dstPort: 3478,
      state: 'udp',
      createdMs: T0,
    });
    const out = parse(
      one(e, udpPacket({ src: GW, dst: f.natIp, sport: LISTEN, dport: f.natPort, payload: Buffer.from('x') })),
    );
    expect([out.src, out.sport, out.dst, out.dport]).toEqual(['203.0.113.9', 3478, '198.18.0.1', 40000]);
    // Idempotent: the same key gives the same flow.
    expect(e.ensureFlow(17, '198.18.0.1', 40000, '203.0.113.9', 3478, T0 + 1).id).toBe(f.id);
    expect(e.drainEvents().filter((x) => x.type === 'open')).toHaveLength(1);
  });

  it('throws ENOSPC naming the fix when the table is full', () => {
    const e = makeEngine({ maxFlows: 1 });
    e.ensureFlow(17, '10.0.0.1', 1, '10.0.0.2', 2, T0);
    expect(() => e.ensureFlow(17, '10.0.0.1', 3, '10.0.0.2', 2, T0)).toThrow(
      expect.objectContaining({ code: 'ENOSPC', message: expect.stringMatching(/max-flows/) }),
    );
  });

  it('rejects bad arguments with a typed error', () => {
    const e = makeEngine();
    expect(() => e.ensureFlow(1 as 6, '10.0.0.1', 1, '10.0.0.2', 2, T0)).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG' }),
    );
    expect(() => e.lookup(6, 'not-an-ip', 1)).toThrow(TypeError);
  });
});

describe('Engine options', () => {
  it.each([
    [{ prefixLen: 31 }, /between \/8 and \/30/],
    [{ network: '198.18.0.1' }, /use 198\.18\.0\.0\/16/],
    [{ gateway: '10.0.0.1' }, /gateway 10\.0\.0\.1 must be a host address inside/],
    [{ gateway: '198.18.255.255' }, /not the network or broadcast/],
    [{ maxFlows: 0 }, /maxFlows/],
  ])('rejects %o with a message that names the fix', (over, msg) => {
    expect(() => new (native().Engine)(engineOptions(over))).toThrow(msg);
  });

  it('starts and stops idempotently and refuses a second start', () => {
    const e = makeEngine();
    e.stop();
    expect(() => e.start([], () => {})).toThrow(/at least one fd/);
    expect(e.stats().threadsRunning).toBe(0);
  });
});
