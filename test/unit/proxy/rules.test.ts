import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import { CompiledRules, type MatchInput, matchLinear, parseRule } from '../../../src/proxy/rules.js';

const conds = (rules: string[]) => rules.map((r) => parseRule(r).cond);
const input = (m: Partial<MatchInput>): MatchInput => ({ ip: '198.18.0.5', port: 443, proto: 'tcp', ...m });

describe('parseRule', () => {
  it.each([
    ['DOMAIN,Example.COM.,P', 'DOMAIN', 'P'],
    ['DOMAIN-SUFFIX,+.example.com,P', 'DOMAIN-SUFFIX', 'P'],
    ['domain-keyword,ADS,REJECT', 'DOMAIN-KEYWORD', 'REJECT'],
    ['DOMAIN-REGEX,^ad[0-9]+\\.,REJECT', 'DOMAIN-REGEX', 'REJECT'],
    ['IP-CIDR,10.0.0.0/8,DIRECT,no-resolve', 'IP-CIDR', 'DIRECT'],
    ['IP-CIDR6,fd00::/8,DIRECT', 'IP-CIDR', 'DIRECT'],
    ['SRC-IP-CIDR,192.168.1.0/24,DIRECT', 'SRC-IP-CIDR', 'DIRECT'],
    ['DST-PORT,80/443/8000-9000,P', 'DST-PORT', 'P'],
    ['SRC-PORT,1024-65535,P', 'SRC-PORT', 'P'],
    ['NETWORK,UDP,P', 'NETWORK', 'P'],
    ['GEOIP,cn,DIRECT', 'GEOIP', 'DIRECT'],
    ['AND,((DOMAIN,a.com),(NETWORK,udp)),P', 'AND', 'P'],
    ['OR,((DST-PORT,22),(DOMAIN-SUFFIX,ssh.example)),P', 'OR', 'P'],
    ['NOT,((DOMAIN-SUFFIX,lan)),P', 'NOT', 'P'],
    ['MATCH,P', 'MATCH', 'P'],
  ])('%s → %s to %s', (text, type, target) => {
    const r = parseRule(text, 7);
    expect(r.cond.type).toBe(type);
    expect(r.target).toBe(target);
    expect(r.line).toBe(7);
    expect(r.text).toBe(text);
  });

  it.each([
    ['FOO,bar,P', /unknown rule type 'FOO'/],
    ['DOMAIN,a.com', /has no target/],
    ['DOMAIN,,P', /DOMAIN needs a value/],
    ['IP-CIDR,10.0.0/8,P', /'10\.0\.0\/8' is not a CIDR/],
    ['IP-CIDR,10.0.0.0/33,P', /is not a CIDR/],
    ['IP-CIDR,300.0.0.0/8,P', /is not a CIDR/],
    ['SRC-IP-CIDR,fd00::/129,P', /is not a CIDR/],
    ['DST-PORT,70000,P', /is not a port/],
    ['DST-PORT,90-80,P', /is not a port/],
    ['NETWORK,icmp,P', /tcp or udp/],
    ['DOMAIN-REGEX,(,P', /not a regular expression/],
    ['AND,(DOMAIN,a),P', /must be \(TYPE,VALUE\)/],
    ['NOT,((DOMAIN,a),(DOMAIN,b)),P', /exactly one/],
    ['DOMAIN,a.com,P,resolve-please', /unknown rule option/],
  ])('%s is a usage error naming the cause', (text, re) => {
    expect(() => parseRule(text, 3, 'rules line 3')).toThrow(UsageError);
    expect(() => parseRule(text, 3, 'rules line 3')).toThrow(re);
    expect(() => parseRule(text, 3, 'rules line 3')).toThrow(/^rules line 3: /);
  });
});

describe('CompiledRules', () => {
  const rules = [
    'DOMAIN,exact.example,R0',
    'DOMAIN-SUFFIX,corp.example,R1',
    'DOMAIN-KEYWORD,ads,R2',
    'DOMAIN-REGEX,^cdn[0-9]+\\.,R3',
    'IP-CIDR,10.0.0.0/8,R4',
    'IP-CIDR,10.1.0.0/16,R5',
    'IP-CIDR6,fd00::/8,R6',
    'SRC-IP-CIDR,192.168.7.0/24,R7',
    'AND,((NETWORK,udp),(DST-PORT,443)),R8',
    'DST-PORT,22,R9',
    'SRC-PORT,5000-5001,R10',
    'NOT,((DOMAIN-SUFFIX,example)),R11',
    'GEOIP,ZZ,R12',
    'MATCH,R13',
  ];
  const geo = (ip: string) => (ip.startsWith('203.0.113.') ? 'ZZ' : undefined);
  const c = new CompiledRules(conds(rules), geo);
  it.each([
    ['exact name', input({ name: 'exact.example' }), 0],
    ['exact does not cover subdomains', input({ name: 'a.exact.example' }), 13],
    ['suffix: itself', input({ name: 'corp.example' }), 1],
    ['suffix: subdomain', input({ name: 'git.corp.example' }), 1],
    ['suffix: not at a label boundary', input({ name: 'evilcorp.example' }), 13],
    ['keyword beats later rules', input({ name: 'x.ads.example' }), 2],
    ['regex', input({ name: 'cdn12.example' }), 3],
    ['cidr: first of two containing wins', input({ ip: '10.1.2.3' }), 4],
    ['cidr v6', input({ ip: 'fd12::1' }), 6],
    ['cidr never matches a named flow', input({ name: 'x.example', ip: '10.1.2.3' }), 13],
    ['src cidr', input({ name: 'x.example', srcIp: '192.168.7.9' }), 7],
    ['and: udp 443', input({ name: 'x.example', proto: 'udp' }), 8],
    ['and: tcp 443 does not', input({ name: 'x.example' }), 13],
    ['dst port', input({ name: 'x.example', port: 22 }), 9],
    ['src port', input({ name: 'x.example', srcPort: 5001 }), 10],
    ['not', input({ name: 'x.other' }), 11],
    ['geoip by address', input({ ip: '203.0.113.9' }), 11],
    ['match', input({ name: 'y.example' }), 13],
  ])('%s', (_n, m, want) => {
    expect(c.match(m)).toBe(want);
    expect(matchLinear(conds(rules), m, geo)).toBe(want);
  });

  it('keywords are literal text, not patterns', () => {
    const k = new CompiledRules(conds(['DOMAIN-KEYWORD,a.b,K', 'DOMAIN-KEYWORD,(x),K2']));
    expect(k.match(input({ name: 'xa.by.example' }))).toBe(0);
    expect(k.match(input({ name: 'axb.example' }))).toBe(-1);
    expect(k.match(input({ name: 'x.example' }))).toBe(-1);
  });

  it('no rule matches → -1', () => {
    expect(new CompiledRules(conds(['DOMAIN,a.example,P'])).match(input({ name: 'b.example' }))).toBe(-1);
  });

  it('agrees with a linear scan on random rule lists and connections (first match wins)', () => {
    const label = fc.constantFrom('a', 'b', 'c', 'ads', 'cdn1', 'x');
    const name = fc.array(label, { minLength: 1, maxLength: 4 }).map((l) => l.join('.'));
    const ip = fc
      .tuple(fc.constantFrom(10, 172, 192, 203), fc.nat(255), fc.nat(255), fc.nat(255))
      .map((p) => p.join('.'));
    const rule = fc.oneof(
      name.map((n) => `DOMAIN,${n},T`),
      name.map((n) => `DOMAIN-SUFFIX,${n},T`),
      label.map((k) => `DOMAIN-KEYWORD,${k},T`),
      fc.tuple(ip, fc.integer({ min: 0, max: 32 })).map(([a, l]) => `IP-CIDR,${a}/${l},T`),
      fc.tuple(ip, fc.integer({ min: 8, max: 32 })).map(([a, l]) => `SRC-IP-CIDR,${a}/${l},T`),
      fc.integer({ min: 1, max: 30 }).map((p) => `DST-PORT,${p}-${p + 5},T`),
      fc.constantFrom('NETWORK,udp,T', 'NETWORK,tcp,T'),
      name.map((n) => `NOT,((DOMAIN-SUFFIX,${n})),T`),
      fc.tuple(name, fc.constantFrom('tcp', 'udp')).map(([n, p]) => `AND,((DOMAIN-SUFFIX,${n}),(NETWORK,${p})),T`),
      fc.tuple(name, fc.integer({ min: 1, max: 30 })).map(([n, p]) => `AND,((DST-PORT,${p}),(DOMAIN,${n})),T`),
      label.map((k) => `DOMAIN-REGEX,^${k}\\.,T`),
      label.map((k) => `DOMAIN-KEYWORD,${k}.${k.slice(0, 2)},T`),
    );
    const conn = fc.record({
      name: fc.option(name, { nil: undefined }),
      ip,
      port: fc.integer({ min: 1, max: 40 }),
      proto: fc.constantFrom('tcp' as const, 'udp' as const),
      srcIp: ip,
    });
    fc.assert(
      fc.property(fc.array(rule, { maxLength: 40 }), fc.array(conn, { minLength: 1, maxLength: 20 }), (rs, cs) => {
        const cd = conds(rs);
        const compiled = new CompiledRules(cd);
        for (const m of cs) expect(compiled.match(m)).toBe(matchLinear(cd, m));
      }),
      { numRuns: 500 },
    );
  });
});

describe('a sniffed name on a real address (realIp)', () => {
  const rules = ['DOMAIN-SUFFIX,named.example,A', 'IP-CIDR,203.0.113.0/24,B', 'MATCH,C'];
  const c = new CompiledRules(conds(rules));
  const m = (name: string | undefined, realIp: boolean): MatchInput => ({
    name,
    realIp,
    ip: '203.0.113.7',
    port: 443,
    proto: 'tcp',
  });

  it('domain rules see the name, IP rules still see the address; a fake-address name hides it', () => {
    for (const [input, want] of [
      [m('www.named.example', true), 0],
      [m('other.example', true), 1],
      [m('other.example', false), 2],
      [m(undefined, false), 1],
    ] as const) {
      expect(c.match(input)).toBe(want);
      expect(matchLinear(conds(rules), input)).toBe(want);
    }
  });
});
