import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolveStartConfig } from '../../src/config.js';
import {
  pointSystemDns,
  RESOLVED_STUB,
  resolvConfFor,
  type SystemDnsProbe,
  systemDnsMode,
} from '../../src/daemon/systemDns.js';
import { type Runner, TeardownJournal } from '../../src/daemon/teardown.js';

describe('--system-dns', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'fp-sysdns-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it.each([
    ['a plain file', '/etc/resolv.conf', true, 'file'],
    ["resolved's stub, resolved running here", RESOLVED_STUB, true, 'resolved'],
    ["resolved's stub, resolved not serving this namespace", RESOLVED_STUB, false, 'file'],
    ["resolved's uplink list (no stub)", '/run/systemd/resolve/resolv.conf', true, 'file'],
  ] as const)('mode: %s', (_what, target, running, mode) => {
    const probe: SystemDnsProbe = { resolvConfTarget: () => target, resolvedRunning: () => running };
    expect(systemDnsMode('/etc/resolv.conf', probe)).toBe(mode);
  });

  it('the file names only us and keeps search/domain/options', () => {
    const old =
      '# dhcp\nnameserver 10.0.0.1\nnameserver 10.0.0.2\nsearch a.lan b.lan\n  options edns0 trust-ad\ndomain a.lan';
    expect(resolvConfFor('198.18.0.1', old, 42).split('\n').slice(1)).toEqual([
      'nameserver 198.18.0.1',
      'search a.lan b.lan',
      'options edns0 trust-ad',
      'domain a.lan',
      '',
    ]);
  });

  it('file mode restores the exact bytes; resolved mode sets the link and reverts it', () => {
    const file = join(dir, 'resolv.conf');
    const original = 'nameserver 10.0.0.1\r\noptions rotate';
    writeFileSync(file, original);
    const calls: string[][] = [];
    const run: Runner = (argv) => {
      calls.push([...argv]);
      return { status: 0, stderr: '' };
    };
    const td = TeardownJournal.open({ stateDir: dir, tun: 'fp0', log: () => {}, run });
    const f = pointSystemDns({ teardown: td, tun: 'fp0', server: '198.18.0.1', mode: 'file', resolvConf: file });
    expect(f.line).toBe(`system dns: ${file} names 198.18.0.1 (restored on exit)`);
    expect(readFileSync(file, 'utf8')).toMatch(/^nameserver 198\.18\.0\.1\noptions rotate\n$/m);
    const r = pointSystemDns({ teardown: td, tun: 'fp0', server: '198.18.0.1', mode: 'resolved' });
    expect(r.line).toBe('system dns: systemd-resolved sends every name to 198.18.0.1 (link fp0)');
    expect(calls).toEqual([
      ['resolvectl', 'dns', 'fp0', '198.18.0.1'],
      ['resolvectl', 'domain', 'fp0', '~.'],
      ['resolvectl', 'default-route', 'fp0', 'yes'],
    ]);
    td.undoAll();
    expect(calls.at(-1)).toEqual(['resolvectl', 'revert', 'fp0']);
    expect(readFileSync(file, 'utf8')).toBe(original);
  });

  it.each([
    [{ systemDns: true, stateDir: '' }, /--system-dns needs a --state-dir/],
    [{ systemDns: true, dnsListen: ['198.18.0.1:5353'] }, /--system-dns needs a --dns-listen address on port 53/],
  ])('usage error %#', (flags, re) => {
    expect(() => resolveStartConfig(flags)).toThrow(re);
  });

  it('config twin: systemDns: true in the file', () => {
    expect(resolveStartConfig({}, { systemDns: true }).systemDns).toBe(true);
    expect(resolveStartConfig({}).systemDns).toBe(false);
  });
});
