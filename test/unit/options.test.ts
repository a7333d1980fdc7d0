import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfigFile, resolveStartConfig } from '../../src/config.js';
import { UsageError } from '../../src/errors.js';
import { DEFAULT_TIMEOUTS } from '../../src/nat/NatManager.js';
import {
  durationText,
  flagName,
  NAT_TIMEOUTS,
  OPTIONS_BEGIN,
  OPTIONS_END,
  optionsMarkdown,
  START_OPTIONS,
  type StartOption,
} from '../../src/options.js';

const ROOT = join(import.meta.dirname, '..', '..');

describe('src/options.ts, the one table of `fakeproxy start` options', () => {
  it('README.md holds the tables generated from it (fix: npm run docs:options)', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const a = readme.indexOf(OPTIONS_BEGIN);
    const b = readme.indexOf(OPTIONS_END);
    expect(a, `README.md lacks the marker ${OPTIONS_BEGIN}`).toBeGreaterThan(0);
    expect(b).toBeGreaterThan(a);
    const inReadme = readme.slice(a + OPTIONS_BEGIN.length, b).trim();
    expect(inReadme, 'README options tables are stale: run `npm run docs:options`').toBe(optionsMarkdown());
  });

  it('README lists every flag and every --nat-timeout name once', () => {
    const md = optionsMarkdown();
    for (const o of Object.values(START_OPTIONS) as StartOption[]) {
      const rows = md.split('\n').filter((l) => /^\| `([^ `]+)/.exec(l)?.[1] === flagName(o));
      expect(rows.length, flagName(o)).toBe(1);
    }
    for (const name of Object.keys(NAT_TIMEOUTS)) expect(md).toContain(`| \`${name}\` |`);
  });

  it('a config file may hold every option but config itself, and nothing else', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fp-options-'));
    const keys = Object.keys(START_OPTIONS).filter((k) => k !== 'config');
    const file = join(dir, 'all.yaml');
    writeFileSync(file, keys.map((k) => `${k}: null`).join('\n'));
    const loaded = loadConfigFile(file);
    for (const k of keys) expect(loaded, k).toHaveProperty(k);
    writeFileSync(file, 'config: other.yaml\n');
    expect(() => loadConfigFile(file)).toThrow(/unknown key 'config'/);
  });

  it('without flags or file, resolveStartConfig applies each default of the table', () => {
    const c = resolveStartConfig({}) as unknown as Record<string, unknown>;
    for (const [key, o] of Object.entries(START_OPTIONS) as [string, StartOption][]) {
      if (o.default === undefined) continue;
      const hp = c.controller as { host: string; port: number };
      const got =
        key === 'cidr' ? (c.cidr as { text: string }).text : key === 'controller' ? `${hp.host}:${hp.port}` : c[key];
      expect(got, key).toBe(o.default);
    }
  });

  // Each bound is enforced where the config is validated, from the table.
  const ranged = (Object.entries(START_OPTIONS) as [string, StartOption][]).filter(([, o]) => o.range);
  it.each(ranged)('%s: its range is enforced at both ends', (key, o) => {
    const [lo, hi] = o.range as [number, number];
    expect(() => resolveStartConfig({ [key]: String(lo - 1) })).toThrow(UsageError);
    expect(() => resolveStartConfig({ [key]: String(hi + 1) })).toThrow(UsageError);
    expect(() => resolveStartConfig({ [key]: String(lo - 1) })).toThrow(flagName(o));
    expect((resolveStartConfig({ [key]: String(lo) }) as unknown as Record<string, unknown>)[key]).toBe(lo);
    expect((resolveStartConfig({ [key]: String(hi) }) as unknown as Record<string, unknown>)[key]).toBe(hi);
  });

  it('NatManager uses the NAT_TIMEOUTS defaults, keyed by the engine field names', () => {
    expect(Object.keys(DEFAULT_TIMEOUTS).sort()).toEqual(
      ['tcpClosedMs', 'tcpEstablishedMs', 'tcpFinMs', 'tcpSynMs', 'udpDnsMs', 'udpMs'].sort(),
    );
    for (const [name, t] of Object.entries(NAT_TIMEOUTS)) {
      expect(DEFAULT_TIMEOUTS[t.key], name).toBe(t.defaultMs);
      // --nat-timeout NAME=SECONDS reaches the same field.
      expect(resolveStartConfig({ natTimeout: [`${name}=7`] }).natTimeouts).toEqual({ [t.key]: 7000 });
    }
  });

  it.each([
    [60_000, '60 s'],
    [10_000, '10 s'],
    [7_440_000, '2 h 4 min'],
    [7_200_000, '2 h'],
  ])('durationText(%i) = %s', (ms, text) => expect(durationText(ms)).toBe(text));
});
