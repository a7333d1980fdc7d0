import { describe, expect, it } from 'vitest';
import { rpMarkScript, strictRpFilter } from '../../src/tun/rpfilter.js';

describe('strictRpFilter', () => {
  const conf: Record<string, string> = { all: '0\n', default: '1\n', lo: '1\n', fp0: '1\n', eth0: '2\n', eth1: '1\n' };
  const read = (p: string) => {
    const v = conf[p.split('/')[6] as string];
    if (v === undefined) throw new Error('ENOENT');
    return v;
  };

  it('names the strict entries, skipping the TUN and lo; loose (2) and off (0) are not strict', () => {
    expect(strictRpFilter('fp0', read, () => [...Object.keys(conf), 'gone0'])).toEqual(['default', 'eth1']);
  });

  it('no /proc/sys: nothing', () => {
    expect(
      strictRpFilter('fp0', read, () => {
        throw new Error('ENOENT');
      }),
    ).toEqual([]);
  });
});

describe('rpMarkScript', () => {
  it('saves the mark of own and bypassed-uid packets leaving by another interface, restores it on what comes in', () => {
    expect(rpMarkScript('fakeproxy_fp0', 'fp0', 0x2d0, ['1000-1000', '2000-2999'])).toBe(
      [
        'add table ip fakeproxy_fp0',
        'add chain ip fakeproxy_fp0 rpsave { type filter hook postrouting priority mangle; policy accept; }',
        'add rule ip fakeproxy_fp0 rpsave oifname != "fp0" meta mark 0x2d0 ct mark set 0x2d0',
        'add rule ip fakeproxy_fp0 rpsave oifname != "fp0" meta skuid 1000 ct mark set 0x2d0',
        'add rule ip fakeproxy_fp0 rpsave oifname != "fp0" meta skuid 2000-2999 ct mark set 0x2d0',
        'add chain ip fakeproxy_fp0 rprestore { type filter hook prerouting priority mangle; policy accept; }',
        'add rule ip fakeproxy_fp0 rprestore iifname != "fp0" ct mark 0x2d0 meta mark set 0x2d0',
        '',
      ].join('\n'),
    );
  });
});
