import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type Runner, TeardownJournal, teardownFile, undoLeftover } from '../../src/daemon/teardown.js';

/** A runner that records argv and, at each call, what the journal file held. */
function recorder(file: () => string | undefined) {
  const calls: { argv: string[]; journal: string }[] = [];
  const run: Runner = (argv) => {
    const f = file();
    calls.push({ argv: [...argv], journal: f && existsSync(f) ? readFileSync(f, 'utf8') : '' });
    return argv[0] === 'fail'
      ? { status: 1, stderr: 'RTNETLINK answers: No such file or directory\n' }
      : { status: 0, stderr: '' };
  };
  return { calls, run };
}

/** Make the journal look like a killed daemon's: its owner pid is a process that has exited. */
function orphan(file: string): number {
  const dead = spawnSync('true').pid as number;
  const lines = readFileSync(file, 'utf8').split('\n');
  const h = JSON.parse(lines[0] as string);
  lines[0] = JSON.stringify({ ...h, pid: dead });
  writeFileSync(file, lines.join('\n'));
  return dead;
}

describe('TeardownJournal', () => {
  let dir: string;
  let target: string;
  const logs: string[] = [];
  const log = (l: string) => logs.push(l);
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'fp-teardown-'));
    target = join(dir, 'resolv.conf');
    logs.length = 0;
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('journals each change before making it and undoes all in reverse, byte-identical, leaving no file', () => {
    const original = Buffer.from('# keep me\nnameserver 10.0.0.1\noptions edns0 \n\n');
    writeFileSync(target, original);
    const file = teardownFile(dir, 'fp0');
    const r = recorder(() => file);
    const td = TeardownJournal.open({ stateDir: dir, tun: 'fp0', log, run: r.run });
    expect(existsSync(file)).toBe(false); // nothing changed yet: no file
    td.exec(['ip', 'rule', 'add', 'pref', '100'], ['ip', 'rule', 'del', 'pref', '100'], 'ip rule 100');
    // The undo was on disk when the change ran.
    expect(r.calls[0]?.argv).toEqual(['ip', 'rule', 'add', 'pref', '100']);
    expect(r.calls[0]?.journal).toContain('"argv":["ip","rule","del","pref","100"]');
    td.writeFile(target, 'nameserver 198.18.0.1\n', 'system resolver');
    expect(readFileSync(target, 'utf8')).toBe('nameserver 198.18.0.1\n');
    td.exec(['nft', 'add', 'table', 'inet', 'fp'], ['nft', 'delete', 'table', 'inet', 'fp'], 'nft table');
    expect(td.changes.map((c) => c.step.what)).toEqual(['ip rule 100', 'system resolver', 'nft table']);
    td.undoAll();
    expect(readFileSync(target).equals(original)).toBe(true);
    expect(r.calls.slice(2).map((c) => c.argv[0])).toEqual(['nft', 'ip']); // newest first
    expect(existsSync(file)).toBe(false);
    td.undoAll(); // twice is harmless
    expect(r.calls).toHaveLength(4);
    expect(logs).toEqual([]);
  });

  it('a killed daemon’s journal is undone by the next open (or cleanup), torn tail skipped', () => {
    writeFileSync(target, 'nameserver 10.0.0.1\n');
    const file = teardownFile(dir, 'fp0');
    const r = recorder(() => file);
    const td = TeardownJournal.open({ stateDir: dir, tun: 'fp0', log, run: r.run });
    td.exec(['ip', 'route', 'add', 'x'], ['ip', 'route', 'del', 'x'], 'route x');
    td.writeFile(target, 'nameserver 198.18.0.1\n', 'system resolver');
    const early = td.exec(['a'], ['undo-a'], 'early');
    td.undo(early); // undone before the kill: not undone again
    // kill -9 here: no undoAll. A half-written record after the last complete one:
    writeFileSync(file, `${readFileSync(file, 'utf8')}{"id":9,"step":{"kind":"exec","argv":["never"`, { flag: 'w' });
    const pid = orphan(file);
    r.calls.length = 0;
    const again = TeardownJournal.open({ stateDir: dir, tun: 'fp0', log, run: r.run });
    expect(readFileSync(target, 'utf8')).toBe('nameserver 10.0.0.1\n');
    expect(r.calls.map((c) => c.argv)).toEqual([['ip', 'route', 'del', 'x']]);
    expect(existsSync(file)).toBe(false);
    expect(logs).toEqual([
      `teardown: undoing system resolver (left by fakeproxy pid ${pid})`,
      `teardown: undoing route x (left by fakeproxy pid ${pid})`,
    ]);
    expect(again.changes).toEqual([]);
    expect(undoLeftover({ stateDir: dir, tun: 'fp0', log, run: r.run })).toBe(0);
  });

  it('a file someone edited since is left alone; a failing undo command is one line and the rest still run', () => {
    writeFileSync(target, 'nameserver 10.0.0.1\n');
    const file = teardownFile(dir, 'fp0');
    const r = recorder(() => file);
    const td = TeardownJournal.open({ stateDir: dir, tun: 'fp0', log, run: r.run });
    td.exec(['true'], ['ip', 'rule', 'del', 'pref', '1'], 'rule 1');
    td.exec(['true'], ['fail', 'rule', 'del', 'pref', '2'], 'rule 2');
    td.writeFile(target, 'nameserver 198.18.0.1\n', 'system resolver');
    writeFileSync(target, 'nameserver 192.168.1.1\n'); // DHCP rewrote it meanwhile
    td.undoAll();
    expect(readFileSync(target, 'utf8')).toBe('nameserver 192.168.1.1\n');
    expect(r.calls.slice(2).map((c) => c.argv[0])).toEqual(['fail', 'ip']);
    expect(logs).toEqual([
      `teardown: ${target} was changed by something else since fakeproxy wrote it; left as it is (system resolver)`,
      'teardown: rule 2: fail rule del pref 2 failed: RTNETLINK answers: No such file or directory',
    ]);
  });

  it('a change that fails is undone at once and its error names the command', () => {
    const r = recorder(() => undefined);
    const td = TeardownJournal.open({ stateDir: null, tun: 'fp0', log, run: r.run });
    expect(() => td.exec(['fail', 'rule', 'add'], ['ip', 'rule', 'del'], 'rule')).toThrow(
      /rule: fail rule add failed: RTNETLINK answers/,
    );
    expect(r.calls.map((c) => c.argv[0])).toEqual(['fail', 'ip']);
    expect(td.changes).toEqual([]);
    // A file that did not exist is removed again.
    const fresh = join(dir, 'new.conf');
    td.writeFile(fresh, 'x\n', 'new file');
    td.undoAll();
    expect(existsSync(fresh)).toBe(false);
  });

  it('a journal whose owner still runs is not undone', async () => {
    writeFileSync(target, 'nameserver 10.0.0.1\n');
    const file = teardownFile(dir, 'fp0');
    const td = TeardownJournal.open({ stateDir: dir, tun: 'fp0', log, run: recorder(() => file).run });
    td.writeFile(target, 'nameserver 198.18.0.1\n', 'system resolver');
    const live = spawn('sleep', ['30']);
    await new Promise((r) => live.once('spawn', r));
    const start = readFileSync(`/proc/${live.pid}/stat`, 'utf8').split(') ')[1]?.split(' ')[19];
    const lines = readFileSync(file, 'utf8').split('\n');
    lines[0] = JSON.stringify({ ...JSON.parse(lines[0] as string), pid: live.pid, start });
    writeFileSync(file, lines.join('\n'));
    try {
      expect(() => undoLeftover({ stateDir: dir, tun: 'fp0', log })).toThrow(
        new RegExp(`belongs to fakeproxy pid ${live.pid}, which still runs: stop it first`),
      );
      expect(readFileSync(target, 'utf8')).toBe('nameserver 198.18.0.1\n');
      expect(existsSync(file)).toBe(true);
    } finally {
      live.kill('SIGKILL');
    }
  });
});
