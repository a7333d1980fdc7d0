import { describe, expect, it } from 'vitest';
import { exhaustionCode, probeFd, ResourceAlarm } from '../../src/util/exhaustion.js';

const err = (code: string, cause?: unknown) => Object.assign(new Error(code), { code }, cause ? { cause } : {});

function alarm(probe: () => string | undefined = () => undefined) {
  const lines: string[] = [];
  let now = 1_000_000;
  const a = new ResourceAlarm({
    log: (l) => lines.push(l),
    clock: () => now,
    probe,
    fdLimit: () => '4096',
  });
  return { a, lines, advance: (ms: number) => (now += ms) };
}

describe('resource exhaustion', () => {
  it('finds EMFILE/ENFILE/ENOMEM/ENOBUFS in an error or its cause chain, nothing else', () => {
    expect(exhaustionCode(err('EMFILE'))).toBe('EMFILE');
    expect(exhaustionCode(err('ENOTFOUND', err('EUPSTREAM', err('ENFILE'))))).toBe('ENFILE');
    expect(exhaustionCode(err('ENOMEM'))).toBe('ENOMEM');
    expect(exhaustionCode(err('ENOBUFS'))).toBe('ENOBUFS');
    expect(exhaustionCode(err('ECONNREFUSED'))).toBeUndefined();
    expect(exhaustionCode(undefined)).toBeUndefined();
    expect(exhaustionCode('EMFILE')).toBeUndefined();
  });

  it('the probe opens a file for real (this process is not out of fds)', () => {
    expect(probeFd()).toBeUndefined();
  });

  it('logs the first failure at once, then one line per 10 s with counts by path and the limit', () => {
    const { a, lines, advance } = alarm();
    expect(a.check(err('EMFILE'), 'tcp accept')).toBe(true);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/out of file descriptors \(EMFILE: the open-file limit of this process, 4096\)/);
    expect(lines[0]).toMatch(/1 failure \(tcp accept 1\)/);
    for (let i = 0; i < 30; i++) a.check(err('EMFILE'), 'tcp accept');
    for (let i = 0; i < 12; i++) a.check(err('ENOTFOUND', err('EMFILE')), 'tcp dial');
    expect(lines).toHaveLength(1);
    advance(10_000);
    a.check(err('EMFILE'), 'dns tcp accept');
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(
      /43 failures in the last 10 s \(tcp accept 30, tcp dial 12, dns tcp accept 1\); 44 since start/,
    );
    expect(a.totals()).toEqual({ EMFILE: 44 });
  });

  it('a failure named otherwise (c-ares ECONNREFUSED) is exhaustion only when the fd probe says so', () => {
    let probe: string | undefined;
    const { a, lines, advance } = alarm(() => probe);
    expect(a.check(err('ENOTFOUND', err('ECONNREFUSED')), 'tcp dial')).toBe(false);
    expect(a.check(err('EPERM'), 'tcp dial')).toBe(false);
    advance(100);
    probe = 'EMFILE';
    expect(a.check(err('ENOTFOUND', err('ECONNREFUSED')), 'tcp dial')).toBe(true);
    // A code exhaustion does not hide behind is never probed.
    expect(a.check(err('EHOSTUNREACH'), 'tcp dial')).toBe(false);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/EMFILE.*\(tcp dial 1\)/);
  });

  it('names ENFILE and ENOMEM with their own fix, one line per code', () => {
    const { a, lines } = alarm();
    a.check(err('ENFILE'), 'tcp dial');
    a.flush();
    a.check(err('ENOMEM'), 'tcp accept');
    a.flush();
    expect(lines[0]).toMatch(/file-table slots \(ENFILE\); raise fs\.file-max/);
    expect(lines[1]).toMatch(/out of memory \(ENOMEM\)/);
  });
});
