import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv } from 'ajv';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfigFile, resolveStartConfig } from '../../../src/config.js';
import { UsageError } from '../../../src/errors.js';
import { buildRouteTable, explainRoute } from '../../../src/proxy/routing.js';

const FIXTURES = join(import.meta.dirname, '..', '..', 'fixtures', 'clash');
const REAL = ['home.yaml', 'office.yaml'];
const dir = mkdtempSync(join(tmpdir(), 'fp-clash-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const file = (text: string) => {
  const p = join(dir, `c${n++}.yaml`);
  writeFileSync(p, text);
  return p;
};

describe('our test configs are real Clash Meta configs (meta-json-schema)', () => {
  const require = createRequire(import.meta.url);
  const schema = require('meta-json-schema/schemas/meta-json-schema.json') as object;
  // The schema writes case-insensitive patterns Go-style, `(?i)…`; JavaScript spells that as a flag.
  const goRegExp = (pattern: string, flags: string) =>
    pattern.includes('(?i)') ? new RegExp(pattern.replaceAll('(?i)', ''), `${flags}i`) : new RegExp(pattern, flags);
  goRegExp.code = 'goRegExp';
  const ajv = new Ajv({ strict: false, allErrors: true, code: { regExp: goRegExp } });
  const validate = ajv.compile(schema);
  it.each(REAL)('%s validates', (name) => {
    const doc = parse(readFileSync(join(FIXTURES, name), 'utf8'));
    const ok = validate(doc);
    expect(validate.errors ?? []).toEqual([]);
    expect(ok).toBe(true);
  });
  it('the schema is not a yes-machine: a rule that is not a string fails it', () => {
    expect(validate({ rules: [42], proxies: [{ name: 'x', type: 'socks5' }] })).toBe(false);
  });
});

describe('realistic Clash configs load', () => {
  it.each([
    ['home.yaml', 321, 4, 3],
    ['office.yaml', 451, 4, 3],
  ])('%s: %i rules, %i groups, %i proxies we speak', (name, rules, groups, proxies) => {
    const raw = loadConfigFile(join(FIXTURES, name));
    const c = resolveStartConfig({ dnsListen: '198.18.0.1:53' }, raw);
    expect(c.routing?.rules).toHaveLength(rules);
    expect(c.routing?.groups).toHaveLength(groups);
    expect(c.routing?.proxies).toHaveLength(proxies);
    // The dns section maps onto our keys.
    expect(c.cidr.text).toBe('198.18.0.0/16');
    expect(c.dnsUpstream?.host).toMatch(/^10\./);
    const t = buildRouteTable(c);
    expect(t.rules).toHaveLength(rules);
  });

  it('home.yaml: one warning per ignored key, naming it and its line', () => {
    const c = resolveStartConfig({}, loadConfigFile(join(FIXTURES, 'home.yaml')));
    const keys = c.configWarnings.map((w) => /: ([\w.-]+) \(line \d+\)/.exec(w)?.[1]);
    expect(keys).toEqual(
      expect.arrayContaining([
        'mixed-port',
        'allow-lan',
        'sniffer',
        'profile',
        'dns.ipv6',
        'dns.default-nameserver',
        'dns.nameserver',
        'proxies.spare-ss',
      ]),
    );
    expect(new Set(keys).size).toBe(keys.length);
    // The controller's Clash keys are read, not ignored.
    expect(keys).not.toContain('external-controller');
    expect(c.controller).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(c.configWarnings.find((w) => w.includes('spare-ss'))).toMatch(
      /type 'ss' is not supported.*no rule or group uses it/,
    );
  });

  it.each([
    ['lan printer', 'printer.lan', {}, 'DOMAIN-SUFFIX,lan,DIRECT', ['DIRECT']],
    ['ads', 'ad7.acme.com', {}, 'DOMAIN-REGEX,^ad[0-9]*\\.,REJECT', ['REJECT']],
    ['LAN client', 'x.unknown', { src: '192.168.50.7' }, 'SRC-IP-CIDR,192.168.50.0/24,DIRECT', ['DIRECT']],
    ['QUIC', 'x.unknown', { udp: true }, 'AND,((NETWORK,udp),(DST-PORT,443)),REJECT', ['REJECT']],
    ['the rest', 'x.unknown', {}, 'MATCH,Proxy', ['Proxy', 'auto', 'hk-1']],
  ])('home.yaml routes %s', (_n, name, q, rule, chain) => {
    const t = buildRouteTable(resolveStartConfig({}, loadConfigFile(join(FIXTURES, 'home.yaml'))));
    const a = explainRoute(t, { name, port: 443, udp: false, ...q });
    expect(a.rule).toBe(rule);
    expect(a.chain).toEqual(chain);
  });
});

describe('Clash config: bad input is a one-line usage error naming the key and line', () => {
  it.each([
    ['malformed YAML', 'rules:\n  - DOMAIN,a,DIRECT\n  - [oops\n', /line \d+: not valid YAML/],
    [
      'unknown rule type',
      'rules:\n  - DOMAIN,a,DIRECT\n  - FOO,bar,DIRECT\n',
      /line 3: rules: "FOO,bar,DIRECT": unknown rule type 'FOO'/,
    ],
    [
      'rule to an unknown group',
      'rules:\n  - DOMAIN,b,Nope\n',
      /line 2: rules: "DOMAIN,b,Nope" sends to 'Nope', which is neither/,
    ],
    [
      'cycle between groups',
      'proxy-groups:\n  - {name: A, type: select, proxies: [B]}\n  - {name: B, type: fallback, proxies: [C]}\n  - {name: C, type: select, proxies: [A, DIRECT]}\n',
      /line 2: proxy-groups: cycle between groups A → B → C → A/,
    ],
    [
      'duplicate proxy names',
      'proxies:\n  - {name: p, type: socks5, server: 10.0.0.1, port: 1}\n  - {name: p, type: http, server: 10.0.0.1, port: 2}\n',
      /line 3: proxies: duplicate name 'p' \(first at line 2\)/,
    ],
    [
      'a proxy named like a built-in',
      'proxies:\n  - {name: DIRECT, type: socks5, server: 10.0.0.1, port: 1}\n',
      /line 2: proxies: 'DIRECT' is a built-in name/,
    ],
    [
      'bad CIDR in a rule',
      'rules:\n  - IP-CIDR,10.0.0/8,DIRECT\n',
      /line 2: rules: "IP-CIDR,10\.0\.0\/8,DIRECT": '10\.0\.0\/8' is not a CIDR/,
    ],
    [
      'a rule to an unsupported proxy type',
      'proxies:\n  - {name: v, type: vmess, server: 10.0.0.1, port: 1, uuid: x}\nrules:\n  - MATCH,v\n',
      /line 2: proxies: 'v': type 'vmess' is not supported .*a rule or group uses it/,
    ],
    [
      'a group with an unknown member',
      'proxy-groups:\n  - name: G\n    type: select\n    proxies:\n      - DIRECT\n      - ghost\n',
      /line 6: proxy-groups.proxies: group 'G' names 'ghost'/,
    ],
    [
      'a proxy without a port',
      'proxies:\n  - {name: p, type: socks5, server: 10.0.0.1}\n',
      /line 2: proxies.port: proxy 'p' port must be 1-65535/,
    ],
    [
      'redir-host mode',
      'dns:\n  enhanced-mode: redir-host\n',
      /line 2: dns.enhanced-mode: 'redir-host' is not supported/,
    ],
    [
      'GEOIP without a database',
      'rules:\n  - DOMAIN,a,DIRECT\n  - GEOIP,CN,DIRECT\n',
      /line 3: GEOIP rules need a MaxMind database: --geoip-db/,
    ],
    ['unknown non-Clash key', 'bogusKey: 1\n', /line 1: unknown key 'bogusKey'/],
    ['upstream beside rules', 'upstream: direct\nrules:\n  - MATCH,DIRECT\n', /line 1: upstream and rules/],
  ])('%s', (_n, text, re) => {
    const p = file(text);
    let err: unknown;
    try {
      resolveStartConfig({}, loadConfigFile(p));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    const msg = (err as Error).message;
    expect(msg).toMatch(re);
    expect(msg.startsWith(`--config ${p}`)).toBe(true);
    expect(msg).not.toContain('\n');
  });

  it("Clash's tun: mapping is ignored with a warning, ours (a device name) still works", () => {
    const clash = resolveStartConfig({}, loadConfigFile(file('tun:\n  enable: true\n')));
    expect(clash.tun).toBe('fp0');
    expect(clash.configWarnings.join('\n')).toMatch(/tun \(line 1\) is not supported by fakeproxy: ignored/);
    expect(resolveStartConfig({}, loadConfigFile(file('tun: fpx\n'))).tun).toBe('fpx');
  });

  it('a flag beats the file: --upstream on the command line replaces the rules, with a warning', () => {
    const raw = loadConfigFile(file('rules:\n  - MATCH,REJECT\n'));
    const c = resolveStartConfig({ upstream: 'direct' }, raw);
    expect(c.routing).toBeUndefined();
    expect(c.configWarnings.join('\n')).toMatch(/--upstream direct given: the rules of .* are not used/);
    const fromFile = resolveStartConfig(
      { cidr: '198.19.0.0/16' },
      loadConfigFile(file('dns:\n  fake-ip-range: 198.20.0.0/16\n')),
    );
    expect(fromFile.cidr.text).toBe('198.19.0.0/16');
  });
});
