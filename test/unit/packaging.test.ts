/**
 * packaging/fakeproxy.service: `systemd-analyze verify` must accept it with
 * no complaint (it exits 0 even for a line it ignores, so any output fails
 * the test), and systemd's own reading of it (`security --offline`) must
 * show every capability dropped but CAP_NET_ADMIN and CAP_NET_BIND_SERVICE.
 * The installed binary (/usr/local/bin/fakeproxy) does not exist here, and
 * verify checks that ExecStart is executable: the copy verified points at a
 * stand-in script; nothing else is changed.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const UNIT = join(import.meta.dirname, '../../packaging/fakeproxy.service');
const text = readFileSync(UNIT, 'utf8');
const dir = mkdtempSync(join(tmpdir(), 'fp-unit-'));
const copy = join(dir, 'fakeproxy.service');
writeFileSync(join(dir, 'fakeproxy'), '#!/bin/sh\n');
chmodSync(join(dir, 'fakeproxy'), 0o755);
writeFileSync(copy, text.replaceAll('/usr/local/bin/fakeproxy', join(dir, 'fakeproxy')));

describe('packaging/fakeproxy.service', () => {
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('systemd-analyze verify accepts it without a word', () => {
    const r = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8', cwd: dir });
    expect(r.error, 'systemd-analyze missing: scripts/install-test-deps.sh installs systemd').toBeUndefined();
    expect(`${r.stdout}${r.stderr}`).toBe('');
    expect(r.status).toBe(0);
  });

  it('least privilege as systemd reads it: only CAP_NET_ADMIN and CAP_NET_BIND_SERVICE survive', () => {
    const out = execFileSync('systemd-analyze', ['security', '--offline=true', '--json=short', copy], {
      encoding: 'utf8',
      cwd: dir,
    });
    const caps = (JSON.parse(out) as { name: string; set: boolean | null }[]).filter((c) =>
      c.name.startsWith('CapabilityBoundingSet=~'),
    );
    expect(caps.length).toBeGreaterThan(10);
    const kept = caps.filter((c) => c.set !== true).map((c) => c.name);
    expect(kept).toEqual(
      expect.arrayContaining([
        'CapabilityBoundingSet=~CAP_NET_ADMIN',
        'CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)',
      ]),
    );
    expect(kept).toHaveLength(2);
  });

  it('state in StateDirectory=, restarted on failure, ambient capabilities the same two', () => {
    const keys = (k: string) => [...text.matchAll(new RegExp(`^${k}=(.*)$`, 'gm'))].map((m) => m[1]);
    expect(keys('StateDirectory')).toEqual(['fakeproxy']);
    expect(keys('Restart')).toEqual(['on-failure']);
    expect(keys('AmbientCapabilities')).toEqual(['CAP_NET_ADMIN CAP_NET_BIND_SERVICE']);
    expect(keys('ExecStart')[0]).toMatch(/ start --system-dns --state-dir \$\{STATE_DIRECTORY\}/);
    expect(keys('ExecStopPost')[0]).toMatch(/ cleanup --state-dir \$\{STATE_DIRECTORY\}$/);
  });
});
