/**
 * PATCH /configs as mihomo's dashboards send it: the live keys apply, a key
 * sent back with the value in force is accepted, and every other key is
 * refused by name with the reason, all or nothing. The Router's tunnel
 * modes: rule (the table), global (GLOBAL's pick), direct.
 */
import { describe, expect, it } from 'vitest';
import { type FixedSettings, generalConfig, type LiveSettings, planPatch } from '../../../src/api/configs.js';
import { DirectOutbound } from '../../../src/proxy/outbounds/direct.js';
import { RejectOutbound } from '../../../src/proxy/outbounds/reject.js';
import { Socks5Outbound } from '../../../src/proxy/outbounds/socks5.js';
import { Router, RouteTable } from '../../../src/proxy/router.js';
import { parseRule } from '../../../src/proxy/rules.js';

const fixed: FixedSettings = {
  lan: [],
  tun: 'fp0',
  mtu: 9000,
  dnsHijack: true,
  cidr: '198.18.0.0/16',
  gateway: '198.18.0.1',
  prefixLen: 16,
  routingMark: 0,
};
const live: LiveSettings = { mode: 'rule', logLevel: 'info', sniffing: false };
const now = generalConfig(fixed, live);

describe('planPatch', () => {
  it.each([
    [{ mode: 'Global' }, { mode: 'global' }],
    [
      { mode: 'direct', 'log-level': 'debug', sniffing: true },
      { mode: 'direct', logLevel: 'debug', sniffing: true },
    ],
    // What a dashboard sends back unchanged: accepted, nothing to apply.
    [{ port: 0, 'mixed-port': 0, ipv6: false, 'allow-lan': false, 'bind-address': '*' }, {}],
    [{ tun: { enable: true, stack: 'system', mtu: 9000 } }, {}],
    [{ 'tcp-concurrent': false, 'interface-name': '', 'find-process-mode': 'off' }, {}],
  ])('%j applies %j', (body, set) => {
    expect(planPatch(body, now)).toEqual({ set, refused: [] });
  });

  it.each([
    [{ ipv6: true }, 'ipv6 (the fake range and the TUN are IPv4 only)'],
    [{ 'allow-lan': true }, 'allow-lan (LAN clients are named at start: --lan CIDR)'],
    [{ 'mixed-port': 7890 }, 'mixed-port (fakeproxy has no HTTP/SOCKS/redir/tproxy inbound'],
    [{ tun: { enable: false } }, 'tun.enable (the TUN is fakeproxy itself'],
    [{ tun: { mtu: 1500 } }, 'tun.mtu (the TUN is fakeproxy itself'],
    [{ tun: { gso: true } }, 'tun.gso (unknown key)'],
    [{ mode: 'script' }, 'mode ("script": one of rule, global, direct)'],
    [{ 'log-level': 'loud' }, 'log-level ("loud": one of debug, info, warning, error, silent)'],
    [{ sniffing: 'yes' }, 'sniffing ("yes": true or false)'],
    [{ 'no-such-key': 1 }, 'no-such-key (unknown key)'],
  ])('%j is refused: %s', (body, why) => {
    const p = planPatch(body, now);
    expect(p.refused).toHaveLength(1);
    expect(p.refused[0]).toContain(why);
  });

  it('refuses all or nothing: a live key beside a refused one is named with it, the caller applies nothing', () => {
    const p = planPatch({ mode: 'global', ipv6: true, port: 8080 }, now);
    expect(p.refused.map((r) => r.split(' ')[0])).toEqual(['ipv6', 'port']);
  });

  it('a mode the router cannot take is refused with its reason', () => {
    expect(planPatch({ mode: 'direct' }, now, () => 'no DIRECT here').refused).toEqual(['mode (no DIRECT here)']);
  });

  it('GET reports the real values', () => {
    const g = generalConfig({ ...fixed, lan: ['192.168.1.0/24'], routingMark: 0x1f }, { ...live, mode: 'global' });
    expect(g).toMatchObject({
      'allow-lan': true,
      'lan-allowed-ips': ['192.168.1.0/24'],
      mode: 'global',
      'routing-mark': 0x1f,
    });
  });
});

describe('Router tunnel modes', () => {
  const table = () =>
    new RouteTable({
      outbounds: new Map<string, ConstructorParameters<typeof Router>[0]['final'] & object>([
        ['DIRECT', new DirectOutbound()],
        ['REJECT', new RejectOutbound()],
        ['a', new Socks5Outbound({ host: '127.0.0.1', port: 1 })],
        ['b', new Socks5Outbound({ host: '127.0.0.1', port: 2 })],
      ]),
      groups: [{ name: 'pick', type: 'select', members: ['a', 'b'], line: 2 }],
      rules: [parseRule('DOMAIN-SUFFIX,example.com,pick', 1)],
      final: 'REJECT',
    });
  const ctx = { name: 'www.example.com', ip: '198.18.0.9', port: 443, proto: 'tcp' as const };

  it('rule → the table; global → GLOBAL’s pick (groups followed); direct → DIRECT; back to rule', () => {
    const r = new Router({ table: table() });
    expect(r.decide(ctx)).toMatchObject({ chain: ['pick', 'a'], ruleType: 'DomainSuffix' });
    r.setMode('global');
    // GLOBAL defaults to the final target.
    expect(r.globalNow()).toBe('REJECT');
    expect(r.decide(ctx)).toMatchObject({ chain: ['GLOBAL', 'REJECT'], ruleType: '', rule: 'mode global' });
    expect(r.selectGlobal('nope')).toBe(false);
    expect(r.selectGlobal('pick')).toBe(true);
    r.table.groups.get('pick')?.select('b');
    expect(r.decide({ ...ctx, name: 'other.test' })).toMatchObject({ chain: ['GLOBAL', 'pick', 'b'] });
    r.setMode('direct');
    expect(r.decide(ctx)).toMatchObject({ chain: ['DIRECT'], rule: 'mode direct', ruleType: '' });
    expect(r.decide(ctx).outbound.kind).toBe('direct');
    r.setMode('rule');
    expect(r.decide(ctx)).toMatchObject({ chain: ['pick', 'b'] });
  });

  it('the mode and GLOBAL’s pick survive a reload while the name exists', () => {
    const r = new Router({ table: table() });
    r.setMode('global');
    r.selectGlobal('b');
    r.replace(table());
    expect(r.decide(ctx).chain).toEqual(['GLOBAL', 'b']);
  });

  it('a table without DIRECT (--upstream) refuses mode direct', () => {
    const r = new Router({ final: new Socks5Outbound({ host: '127.0.0.1', port: 1 }) });
    expect(r.refuseMode('direct')).toMatch(/mode direct needs a config with proxies \(--config\)/);
    expect(r.refuseMode('global')).toBeUndefined();
  });
});
