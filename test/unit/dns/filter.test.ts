import { describe, expect, it } from 'vitest';
import { FakeIpFilter } from '../../../src/dns/index.js';

const table: [string, string, boolean][] = [
  ['example.com', 'example.com', true],
  ['example.com', 'EXAMPLE.com.', true],
  ['example.com', 'www.example.com', false],
  ['example.com', 'com', false],
  ['+.lan', 'lan', true],
  ['+.lan', 'router.lan', true],
  ['+.lan', 'a.b.router.lan', true],
  ['+.lan', 'lan.com', false],
  ['+.lan', 'xlan', false],
  ['.lan', 'lan', false],
  ['.lan', 'router.lan', true],
  ['*.local', 'printer.local', true],
  ['*.local', 'local', false],
  ['*.local', 'a.printer.local', false],
  ['time.*.com', 'time.apple.com', true],
  ['time.*.com', 'time.a.b.com', false],
  ['time.*.com', 'time.com', false],
  ['stun.*', 'stun.x', true],
  ['stun.*', 'stun.l.google.com', false],
  ['stun.*.*', 'stun.l.google', true],
  ['+.stun.*.*', 'stun.l.google', true],
  ['+.stun.*.*', 'a.stun.l.google', true],
  ['+.stun.*.*', 'stun.google', false],
  ['*', 'anything', true],
  ['*', 'a.b', false],
  ['_dns.resolver.arpa', '_dns.resolver.arpa', true],
];

describe('FakeIpFilter', () => {
  it.each(table)('pattern %s vs %s → %s', (pattern, name, want) => {
    expect(new FakeIpFilter([pattern]).matches(name)).toBe(want);
  });

  it('combines patterns; exact and wildcard siblings both tried', () => {
    const f = new FakeIpFilter(['a.example.com', '*.*.com', 'x.b.example.com']);
    expect(f.matches('a.example.com')).toBe(true);
    expect(f.matches('z.example.com')).toBe(true); // via *.*.com after the exact branch fails
    expect(f.matches('x.b.example.com')).toBe(true);
    expect(f.matches('y.b.example.com')).toBe(false);
    expect(f.matches('example.org')).toBe(false);
  });

  it('an empty filter matches nothing', () => {
    expect(new FakeIpFilter().matches('lan')).toBe(false);
  });

  it('matching cost does not grow with the number of patterns (10 000 patterns)', () => {
    const f = new FakeIpFilter(Array.from({ length: 10_000 }, (_, i) => `+.host${i}.example.com`));
    expect(f.size).toBe(10_000);
    expect(f.matches('a.host9999.example.com')).toBe(true);
    expect(f.matches('a.host10000.example.com')).toBe(false);
  });

  it.each(['', '+.', '.', 'a..b', '-bad.com', 'bad-.com', 'sp ace.com', '*x.com', `${'a'.repeat(64)}.com`, 'a.+.b'])(
    'rejects %j with EBADFILTER naming the flag',
    (p) => {
      expect(() => new FakeIpFilter([p])).toThrow(
        expect.objectContaining({ code: 'EBADFILTER', message: expect.stringContaining('--fake-ip-filter') }),
      );
    },
  );
});
