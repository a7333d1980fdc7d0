/**
 * The daemon's node flags live on cli.ts's #! line (src/util/nodeFlags.ts): the parser reads
 * every #! form we write, the compiled cli.js keeps the line, this node accepts the flags (a
 * typo would stop `fakeproxy start` with "bad option"), and the README's run-in-place command
 * passes the same flags.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cliNodeFlags, missingNodeFlags, shebangNodeFlags } from '../../../src/util/nodeFlags.js';

const ROOT = join(import.meta.dirname, '..', '..', '..');

describe('node flags on the #! line', () => {
  it('reads the flags of each #! form', () => {
    expect(shebangNodeFlags('#!/usr/bin/env node')).toEqual([]);
    expect(shebangNodeFlags('#!/usr/bin/env -S node --max-semi-space-size=1')).toEqual(['--max-semi-space-size=1']);
    expect(shebangNodeFlags('#!/usr/bin/env -S node  --a=1 --b \r')).toEqual(['--a=1', '--b']);
    expect(() => shebangNodeFlags('#!/bin/sh')).toThrow(/not a node #! line/);
    expect(() => shebangNodeFlags('import x from "y";')).toThrow(/not a node #! line/);
  });

  it('src/cli.ts and the built cli.js carry the same flags, and this node accepts them', () => {
    const flags = cliNodeFlags(join(ROOT, 'src', 'cli.ts'));
    expect(flags).toContain('--max-semi-space-size=1');
    expect(cliNodeFlags(join(ROOT, 'dist', 'src', 'cli.js'))).toEqual(flags);
    const r = spawnSync(process.execPath, [...flags, '-e', 'process.stdout.write("ok")'], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.stdout).toBe('ok');
  });

  it('the README runs the checkout with the same flags', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const flags = cliNodeFlags(join(ROOT, 'src', 'cli.ts')).join(' ');
    expect(readme).toContain(`sudo node ${flags} dist/src/cli.js start`);
  });

  it('names the flags a process lacks, by name, from its command line or NODE_OPTIONS', () => {
    const wanted = ['--max-semi-space-size=1'];
    expect(missingNodeFlags(wanted, [])).toEqual(wanted);
    expect(missingNodeFlags(wanted, ['--max-semi-space-size=1'])).toEqual([]);
    expect(missingNodeFlags(wanted, ['--max-semi-space-size=4'])).toEqual([]);
    expect(missingNodeFlags(wanted, [], '--inspect --max-semi-space-size=2')).toEqual([]);
    expect(missingNodeFlags(wanted, ['--max-old-space-size=1'], '--max-semi')).toEqual(wanted);
  });
});
