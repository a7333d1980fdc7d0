import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfigFile, resolveStartConfig } from '../../../src/config.js';
import { UsageError } from '../../../src/errors.js';
import { buildRouteTable, explainRoute, openGeoIp } from '../../../src/proxy/routing.js';
import { buildCountryMmdb } from './mmdb-writer.js';

const dir = mkdtempSync(join(tmpdir(), 'fp-geoip-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const db = join(dir, 'country.mmdb');
writeFileSync(db, buildCountryMmdb({ '203.0.113.0/24': 'ZZ', '198.51.100.0/25': 'YY', '192.0.2.128/25': 'ZZ' }));

describe('GEOIP against a MaxMind database the tests build', () => {
  it.each([
    ['203.0.113.9', 'ZZ'],
    ['198.51.100.1', 'YY'],
    ['198.51.100.200', undefined],
    ['192.0.2.200', 'ZZ'],
    ['192.0.2.1', undefined],
    ['8.8.8.8', undefined],
  ])('%s → %s', (ip, want) => {
    expect(openGeoIp(db)(ip)).toBe(want);
  });

  it('routes by country: IP literals only, first match wins', () => {
    const conf = join(dir, 'geo.yaml');
    writeFileSync(conf, 'rules:\n  - GEOIP,YY,DIRECT\n  - GEOIP,ZZ,REJECT\n  - MATCH,DIRECT\n');
    const t = buildRouteTable(resolveStartConfig({ geoipDb: db }, loadConfigFile(conf)));
    const q = (name: string) => explainRoute(t, { name, port: 443, udp: false });
    expect(q('203.0.113.77')).toMatchObject({ rule: 'GEOIP,ZZ,REJECT', line: 3, chain: ['REJECT'] });
    expect(q('198.51.100.5')).toMatchObject({ rule: 'GEOIP,YY,DIRECT', line: 2 });
    expect(q('8.8.8.8').rule).toBe('MATCH,DIRECT');
    // A name's destination is a fake address: no country, no guess.
    expect(q('zz.example').rule).toBe('MATCH,DIRECT');
  });

  it('a file that is not a MaxMind database is a usage error naming it', () => {
    const bad = join(dir, 'bad.mmdb');
    writeFileSync(bad, 'not a database');
    expect(() => openGeoIp(bad)).toThrow(UsageError);
    expect(() => openGeoIp(bad)).toThrow(/--geoip-db .*bad\.mmdb: not a readable MaxMind database/);
  });
});
