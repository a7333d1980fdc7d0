import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultUpstream } from '../../../src/dns/index.js';
import { findUpstream, REAL_RESOLVER_FILE } from '../../../src/dns/resolvconf.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'resolv-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const gw = [{ host: '198.18.0.1', port: 53 }];

describe('defaultUpstream', () => {
  it.each([
    ['first nameserver', 'nameserver 10.0.0.53\nnameserver 10.0.0.54\n', gw, '10.0.0.53'],
    ['skips our own listen address', 'nameserver 198.18.0.1\nnameserver 10.0.0.54\n', gw, '10.0.0.54'],
    [
      'skips comments and junk',
      '# nameserver 1.1.1.1\nsearch lan\nnameserver bogus\nnameserver 10.0.0.9 # ok\n',
      gw,
      '10.0.0.9',
    ],
    ['keeps 127.0.0.53 when we do not listen there', 'nameserver 127.0.0.53\n', gw, '127.0.0.53'],
    [
      'skips 127.0.0.53 when we listen there',
      'nameserver 127.0.0.53\nnameserver 10.0.0.1\n',
      [{ host: '127.0.0.53', port: 53 }],
      '10.0.0.1',
    ],
    [
      'a listener on another port is not us',
      'nameserver 127.0.0.1\n',
      [{ host: '127.0.0.1', port: 5353 }],
      '127.0.0.1',
    ],
    [
      'wildcard listener covers loopback',
      'nameserver 127.0.0.1\nnameserver 10.0.0.2\n',
      [{ host: '0.0.0.0', port: 53 }],
      '10.0.0.2',
    ],
    ['IPv6 with zone id', 'nameserver fe80::1%eth0\n', gw, 'fe80::1'],
  ])('%s', async (_n, text, listen, want) => {
    const f = join(dir, `r${Math.random()}`);
    await writeFile(f, text);
    expect(defaultUpstream(listen, f)).toEqual({ host: want, port: 53 });
  });

  it.each([
    ['only ourselves', 'nameserver 198.18.0.1\n', /198\.18\.0\.1.*--dns-upstream/],
    ['no nameserver', 'search lan\n', /lists no nameserver.*--dns-upstream/],
  ])('throws ENOUPSTREAM naming --dns-upstream: %s', async (_n, text, re) => {
    const f = join(dir, `r${Math.random()}`);
    await writeFile(f, text);
    expect(() => defaultUpstream(gw, f)).toThrow(
      expect.objectContaining({ code: 'ENOUPSTREAM', message: expect.stringMatching(re) }),
    );
  });

  it('throws ENOUPSTREAM when the file is missing', () => {
    expect(() => defaultUpstream(gw, join(dir, 'missing'))).toThrow(expect.objectContaining({ code: 'ENOUPSTREAM' }));
  });
});

describe('findUpstream: remembers the real resolver in the state dir', () => {
  const lines: string[] = [];
  const log = (l: string) => lines.push(l);
  it('remembers what resolv.conf names and falls back to it once resolv.conf names only the daemon', async () => {
    const state = join(dir, `state${Math.random()}`);
    const f = join(dir, `rc${Math.random()}`);
    await writeFile(f, 'nameserver 10.9.8.7\n');
    expect(findUpstream(gw, state, log, f)).toEqual({ host: '10.9.8.7', port: 53 });
    expect(JSON.parse(readFileSync(join(state, REAL_RESOLVER_FILE), 'utf8'))).toEqual({ host: '10.9.8.7', port: 53 });
    await writeFile(f, 'nameserver 198.18.0.1\n');
    lines.length = 0;
    expect(findUpstream(gw, state, log, f)).toEqual({ host: '10.9.8.7', port: 53 });
    expect(lines.join('\n')).toMatch(/using 10\.9\.8\.7:53 remembered in/);
    // A new real resolver replaces the remembered one.
    await writeFile(f, 'nameserver 10.1.1.1\n');
    expect(findUpstream(gw, state, log, f)).toEqual({ host: '10.1.1.1', port: 53 });
    await writeFile(f, 'nameserver 198.18.0.1\n');
    expect(findUpstream(gw, state, log, f)).toEqual({ host: '10.1.1.1', port: 53 });
  });
  it('nothing remembered (or no state dir): ENOUPSTREAM naming --dns-upstream', async () => {
    const f = join(dir, `rc${Math.random()}`);
    await writeFile(f, 'nameserver 198.18.0.1\n');
    expect(() => findUpstream(gw, join(dir, 'empty-state'), log, f)).toThrow(
      expect.objectContaining({
        code: 'ENOUPSTREAM',
        message: expect.stringMatching(/--dns-upstream.*none remembered/),
      }),
    );
    expect(() => findUpstream(gw, null, log, f)).toThrow(expect.objectContaining({ code: 'ENOUPSTREAM' }));
  });
  it('a corrupt remembered file is ignored with a log line', async () => {
    const state = join(dir, `state${Math.random()}`);
    mkdirSync(state);
    writeFileSync(join(state, REAL_RESOLVER_FILE), '{nope');
    const f = join(dir, `rc${Math.random()}`);
    await writeFile(f, 'nameserver 198.18.0.1\n');
    lines.length = 0;
    expect(() => findUpstream(gw, state, log, f)).toThrow(expect.objectContaining({ code: 'ENOUPSTREAM' }));
    expect(lines.join('\n')).toMatch(/not a remembered resolver/);
  });
});
