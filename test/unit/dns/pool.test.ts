import { describe, expect, it } from 'vitest';
import { FakeIpPool, FakeRange, intToIp, ipToInt, normalizeName } from '../../../src/dns/index.js';

function pool(cidr: string) {
  let now = 1000;
  const events: string[] = [];
  const p = new FakeIpPool(
    new FakeRange(cidr),
    () => now,
    (ev, name, ip) => events.push(`${ev} ${name} ${intToIp(ip)}`),
  );
  return { p, events, tick: (ms = 1) => (now += ms) };
}
const ip = (s: string) => ipToInt(s) as number;

describe('FakeRange', () => {
  it.each([
    ['198.18.0.0/16', '198.18.0.1', '198.18.0.2', '198.18.255.254', 65533],
    ['10.0.0.0/30', '10.0.0.1', '10.0.0.2', '10.0.0.2', 1],
    ['10.0.0.0/29', '10.0.0.1', '10.0.0.2', '10.0.0.6', 5],
    ['10.0.0.5/24', '10.0.0.1', '10.0.0.2', '10.0.0.254', 253],
  ])('%s: gateway %s, pool %s–%s (%i addresses)', (cidr, gw, first, last, size) => {
    const r = new FakeRange(cidr);
    expect(intToIp(r.gateway)).toBe(gw);
    expect(intToIp(r.first)).toBe(first);
    expect(intToIp(r.last)).toBe(last);
    expect(r.size).toBe(size);
    expect(r.contains(r.gateway)).toBe(false);
    expect(r.contains(r.network)).toBe(false);
    expect(r.contains(r.broadcast)).toBe(false);
  });

  it.each(['198.18.0.0/31', '198.18.0.0/32', '10.0.0.0/7', 'nonsense', '198.18.0.0', '2001:db8::/64', '300.1.1.1/16'])(
    'rejects %s with EBADCIDR',
    (cidr) => {
      expect(() => new FakeRange(cidr)).toThrow(expect.objectContaining({ code: 'EBADCIDR' }));
    },
  );

  it.each([
    ['1.2.3.4', 0x01020304],
    ['255.255.255.255', 0xffffffff],
    ['0.0.0.0', 0],
    ['1.2.3', undefined],
    ['1.2.3.4.5', undefined],
    ['1.2.3.256', undefined],
    ['1..3.4', undefined],
    ['a.b.c.d', undefined],
    ['1.2.3.1234', undefined],
  ])('ipToInt(%s) = %s', (s, n) => {
    expect(ipToInt(s)).toBe(n);
    if (n !== undefined) expect(intToIp(n)).toBe(s);
  });
});

describe('FakeIpPool', () => {
  it('same name → same address; normalised names share one', () => {
    const { p } = pool('198.18.0.0/16');
    const a = p.allocate('example.com');
    expect(p.allocate('example.com')).toBe(a);
    expect(p.allocate(normalizeName('EXAMPLE.com.'))).toBe(a);
    expect(p.allocate('other.com')).not.toBe(a);
    expect(p.reverse(a as number)).toBe('example.com');
    expect(p.lookup('example.com')).toBe(a);
  });

  it('never hands out the gateway, network or broadcast; /30 has exactly one address', () => {
    const { p } = pool('10.0.0.0/30');
    expect(p.allocate('a')).toBe(ip('10.0.0.2'));
    expect(p.allocate('b')).toBe(ip('10.0.0.2')); // recycled: the only address
    expect(p.reverse(ip('10.0.0.2'))).toBe('b');
    expect(p.lookup('a')).toBeUndefined();
  });

  it('uses every address of a /16 before recycling any', () => {
    const { p } = pool('198.18.0.0/16');
    const seen = new Set<number>();
    for (let i = 0; i < p.capacity; i++) seen.add(p.allocate(`n${i}`) as number);
    expect(seen.size).toBe(65533);
    expect(seen.has(ip('198.18.0.1'))).toBe(false);
    expect(seen.has(ip('198.18.0.0'))).toBe(false);
    expect(seen.has(ip('198.18.255.255'))).toBe(false);
    expect(p.mapped).toBe(65533);
    // the next one recycles the least recently used: n0
    expect(p.allocate('new')).toBe(p.lookup('new'));
    expect(p.lookup('n0')).toBeUndefined();
    expect(p.mapped).toBe(65533);
  });

  it('recycles in LRU order; a DNS hit and a touch count as use', () => {
    const { p, events, tick } = pool('10.0.0.0/29'); // 5 addresses
    const ips = ['a', 'b', 'c', 'd', 'e'].map((n) => {
      tick();
      return p.allocate(n) as number;
    });
    tick();
    p.allocate('a'); // a is now most recent
    tick();
    p.touch(ips[1] as number); // b too
    events.length = 0;
    expect(p.allocate('f')).toBe(ips[2]); // c was least recently used
    expect(p.allocate('g')).toBe(ips[3]); // then d
    expect(p.allocate('h')).toBe(ips[4]); // then e
    expect(p.allocate('i')).toBe(ips[0]); // then a
    expect(events.slice(0, 2)).toEqual(['unmapped c 10.0.0.4', 'mapped f 10.0.0.4']);
  });

  it('never recycles an address with live flows; all pinned → undefined', () => {
    const { p } = pool('10.0.0.0/29');
    const ips = ['a', 'b', 'c', 'd', 'e'].map((n) => p.allocate(n) as number);
    for (const x of ips) p.acquire(x);
    p.acquire(ips[0] as number); // two flows on a
    expect(p.pinned).toBe(5);
    expect(p.allocate('f')).toBeUndefined();
    p.release(ips[0] as number);
    expect(p.allocate('f')).toBeUndefined(); // a still has one flow
    p.release(ips[3] as number);
    expect(p.allocate('f')).toBe(ips[3]);
    expect(p.lookup('d')).toBeUndefined();
    p.release(ips[0] as number); // a's last flow ends now: it is the most recently used
    expect(p.allocate('g')).toBe(ips[3]); // f (answered before a's flow ended) goes first
    expect(p.allocate('h')).toBe(ips[0]);
  });

  it('ignores an unbalanced release', () => {
    const { p } = pool('10.0.0.0/29');
    const a = p.allocate('a') as number;
    p.release(a);
    p.acquire(a);
    expect(p.pinned).toBe(1);
    p.release(a);
    expect(p.pinned).toBe(0);
    expect([...p.entries()][0]?.flows).toBe(0);
  });

  it('keeps an address with flows but no mapping (orphan) out of allocation until released', () => {
    const { p } = pool('10.0.0.0/29');
    p.acquire(ip('10.0.0.2')); // e.g. an app still using an address from before a restart
    expect(p.allocate('a')).toBe(ip('10.0.0.3'));
    p.release(ip('10.0.0.2'));
    for (const n of ['b', 'c', 'd']) p.allocate(n);
    expect(p.allocate('e')).toBe(ip('10.0.0.2')); // freed, handed out before any recycling
    expect(p.lookup('a')).toBe(ip('10.0.0.3'));
  });

  it('remove frees the address for the next name; restore refuses taken or out-of-range addresses', () => {
    const { p } = pool('10.0.0.0/29');
    expect(p.restore('x', ip('10.0.0.4'), 5)).toBe(true);
    expect(p.restore('y', ip('10.0.0.4'), 5)).toBe(false);
    expect(p.restore('x', ip('10.0.0.5'), 5)).toBe(false);
    expect(p.restore('z', ip('10.0.0.1'), 5)).toBe(false); // gateway
    expect(p.restore('z', ip('10.0.1.9'), 5)).toBe(false);
    const got = ['a', 'b', 'c', 'd'].map((n) => p.allocate(n));
    expect(got).not.toContain(ip('10.0.0.4')); // cursor skips the restored one
    expect(p.remove('b')).toBe(true);
    expect(p.remove('b')).toBe(false);
    expect(p.allocate('e')).toBe(got[1]);
  });

  it('entries list unpinned in LRU order then pinned, with flow counts', () => {
    const { p, tick } = pool('10.0.0.0/29');
    for (const n of ['a', 'b', 'c']) {
      tick();
      p.allocate(n);
    }
    p.acquire(p.lookup('a') as number);
    expect([...p.entries()].map((e) => [e.name, e.flows])).toEqual([
      ['b', 0],
      ['c', 0],
      ['a', 1],
    ]);
  });

  it.each([
    ['Example.COM.', 'example.com'],
    ['a.b.', 'a.b'],
    ['x', 'x'],
  ])('normalizeName(%s) = %s', (a, b) => {
    expect(normalizeName(a)).toBe(b);
  });
});

describe('FakeIpPool.flushUnpinned (the controller’s fake-IP flush)', () => {
  it('drops every mapping no flow pins, keeps the pinned; a dropped name gets a fresh address', () => {
    const { p, events, tick } = pool('10.0.0.0/28'); // 13 addresses: .2–.14
    const a = p.allocate('a.test') as number;
    tick();
    const b = p.allocate('b.test') as number;
    tick();
    const c = p.allocate('c.test') as number;
    p.acquire(b);
    events.length = 0;
    expect(p.flushUnpinned()).toBe(2);
    expect(events).toEqual([`unmapped a.test ${intToIp(a)}`, `unmapped c.test ${intToIp(c)}`]);
    expect([p.reverse(a), p.reverse(b), p.reverse(c)]).toEqual([undefined, 'b.test', undefined]);
    expect(p.mapped).toBe(1);
    expect(p.pinned).toBe(1);
    // A fresh address, never the one an app may still have cached.
    const a2 = p.allocate('a.test') as number;
    expect([a, b, c]).not.toContain(a2);
    // The pinned one still unpins normally and is flushable then.
    p.release(b);
    expect(p.flushUnpinned()).toBe(2);
    expect(p.mapped).toBe(0);
  });

  it('re-hands dropped addresses only once never-used ones are gone, oldest first, before recycling a live mapping', () => {
    const { p, tick } = pool('10.0.0.0/29'); // 5 addresses: .2–.6
    const old = ['x', 'y'].map((n) => {
      tick();
      return p.allocate(`${n}.test`) as number;
    });
    expect(p.flushUnpinned()).toBe(2);
    // Three never-used addresses first.
    const fresh = ['p', 'q', 'r'].map((n) => {
      tick();
      return p.allocate(`${n}.test`) as number;
    });
    expect(fresh.filter((f) => old.includes(f))).toEqual([]);
    // Then the flushed ones, least recently used first, while p, q, r stay mapped.
    expect(p.allocate('s.test')).toBe(old[0]);
    expect(p.allocate('t.test')).toBe(old[1]);
    expect(['p', 'q', 'r'].map((n) => p.lookup(`${n}.test`))).toEqual(fresh);
    // Only now does recycling take the least recently used live mapping.
    expect(p.allocate('u.test')).toBe(fresh[0]);
    expect(p.lookup('p.test')).toBeUndefined();
  });

  it('an app that connects to a dropped address does not make it reusable sooner', () => {
    const { p } = pool('10.0.0.0/29');
    const a = p.allocate('a.test') as number;
    p.flushUnpinned();
    p.acquire(a); // an orphan flow: the app had the address cached
    expect(p.reverse(a)).toBeUndefined();
    p.release(a);
    const next = ['b', 'c', 'd', 'e'].map((n) => p.allocate(`${n}.test`));
    expect(next).not.toContain(a);
    expect(p.allocate('f.test')).toBe(a);
  });
});
