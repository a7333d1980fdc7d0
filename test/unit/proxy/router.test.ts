import { describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import { DirectOutbound } from '../../../src/proxy/outbounds/direct.js';
import { RejectOutbound } from '../../../src/proxy/outbounds/reject.js';
import { Socks5Outbound } from '../../../src/proxy/outbounds/socks5.js';
import { type RouteContext, Router } from '../../../src/proxy/router.js';

const proxy = new Socks5Outbound({ host: '127.0.0.1', port: 1080 });
const direct = new DirectOutbound();
const reject = new RejectOutbound();

const router = new Router({
  final: proxy,
  rules: [
    { domain: 'exact.example', outbound: reject },
    { domainSuffix: 'corp.example', outbound: direct },
    { domainKeyword: 'ads', outbound: reject },
    { ipCidr: '10.0.0.0/8', outbound: direct },
    { ipCidr: 'fd00::/8', outbound: direct },
    { domainSuffix: 'udp-only.example', outbound: reject, proto: 'udp' },
  ],
});

const ctx = (c: Partial<RouteContext>): RouteContext => ({ ip: '198.18.2.2', port: 443, proto: 'tcp', ...c });

describe('Router', () => {
  it.each([
    ['exact domain', ctx({ name: 'exact.example' }), reject],
    ['exact domain only', ctx({ name: 'sub.exact.example' }), proxy],
    ['suffix: the domain itself', ctx({ name: 'corp.example' }), direct],
    ['suffix: subdomain, any case, trailing dot', ctx({ name: 'Git.CORP.example.' }), direct],
    ['suffix: not a label boundary', ctx({ name: 'evilcorp.example' }), proxy],
    ['keyword', ctx({ name: 'cdn.adserver.net' }), reject],
    ['cidr v4, real destination', ctx({ ip: '10.1.2.3' }), direct],
    ['cidr v4 outside', ctx({ ip: '11.1.2.3' }), proxy],
    ['cidr v6', ctx({ ip: 'fd12::1' }), direct],
    ['cidr ignores the fake IP of a named flow', ctx({ name: 'x.test', ip: '10.1.2.3' }), proxy],
    ['proto filter: tcp skips a udp rule', ctx({ name: 'a.udp-only.example' }), proxy],
    ['proto filter: udp matches', ctx({ name: 'a.udp-only.example', proto: 'udp' }), reject],
    ['nothing matches → final', ctx({ name: 'example.org' }), proxy],
  ])('%s', (_n, c, want) => {
    expect(router.route(c)).toBe(want);
  });

  it('first match wins', () => {
    const r = new Router({
      final: proxy,
      rules: [
        { domainSuffix: 'a.example', outbound: direct },
        { domainSuffix: 'example', outbound: reject },
      ],
    });
    expect(r.route(ctx({ name: 'x.a.example' }))).toBe(direct);
    expect(r.route(ctx({ name: 'b.example' }))).toBe(reject);
  });

  it('no rules: everything goes to final', () => {
    expect(new Router({ final: proxy }).route(ctx({}))).toBe(proxy);
  });

  it.each(['10.0.0.0', '10.0.0.0/33', 'ten/8', '10.0.0.0/8/1', 'fd00::/129', '10.0.0.0/x'])(
    'bad CIDR %s → UsageError',
    (cidr) => {
      expect(() => new Router({ final: proxy, rules: [{ ipCidr: cidr, outbound: direct }] })).toThrow(UsageError);
    },
  );
});
