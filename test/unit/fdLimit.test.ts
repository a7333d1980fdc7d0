import { describe, expect, it } from 'vitest';
import { parseFdLimit, readFdLimit } from '../../src/util/fdLimit.js';

describe('fd limit', () => {
  it('parses the Max open files row of /proc/<pid>/limits', () => {
    const text = [
      'Limit                     Soft Limit           Hard Limit           Units     ',
      'Max processes             63582                63582                processes ',
      'Max open files            4096                 524288               files     ',
    ].join('\n');
    expect(parseFdLimit(text)).toEqual({ soft: 4096, hard: 524288 });
    expect(parseFdLimit('Max open files unlimited unlimited files')).toEqual({
      soft: Number.POSITIVE_INFINITY,
      hard: Number.POSITIVE_INFINITY,
    });
    expect(parseFdLimit('nothing here')).toBeUndefined();
  });
  it('node runs with the soft limit raised to the hard one', () => {
    const l = readFdLimit();
    expect(l?.soft).toBe(l?.hard);
  });
});
