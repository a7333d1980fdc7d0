import { describe, expect, it } from 'vitest';
import { type Ctx, Unavailable } from '../../../bench/lib/env.js';
import { alternate, rows, section } from '../../../bench/scenarios/common.js';

function ctx(reps: number): Ctx & { lines: string[] } {
  const lines: string[] = [];
  return { reps, quick: true, tmp: '/nonexistent', aborted: false, log: (m) => lines.push(m), lines };
}

const M = { metric: 'rate', unit: 'x' } as const;

describe('bench alternate()', () => {
  it('runs the legs in turn, repetition by repetition', async () => {
    const order: string[] = [];
    const s = section('t', 't', { id: 'a', label: 'a', ...M }, { id: 'b', label: 'b', ...M });
    const got = await alternate(
      ctx(3),
      ['a', 'b'],
      (l) => ({ section: s, ids: [l], what: l }),
      async (l, rep) => {
        order.push(`${l}${rep}`);
        return rep;
      },
    );
    expect(order).toEqual(['a0', 'b0', 'a1', 'b1', 'a2', 'b2']);
    expect([...got]).toEqual([
      ['a', [0, 1, 2]],
      ['b', [0, 1, 2]],
    ]);
  });

  it('a failing leg loses only its own rows and sits out the rest; the baseline keeps going', async () => {
    const order: string[] = [];
    const s = section('t', 't', { id: 'base', label: 'base', ...M }, { id: 'tun', label: 'tun', ...M });
    s.rows.push(...rows({ id: 'tun-loss', label: 'tun', ...M }));
    // Samples from before (a partial fill) must not survive the failure.
    for (const r of s.rows) r.samples = [9];
    const ids = (l: string) => (l === 'tun' ? ['tun', 'tun-loss'] : [l]);
    const c = ctx(3);
    const got = await alternate(
      c,
      ['base', 'tun'],
      (l) => ({ section: s, ids: ids(l), what: `leg ${l}` }),
      async (l, rep) => {
        order.push(`${l}${rep}`);
        if (l === 'tun' && rep === 1) throw new Error('daemon died\nstack…');
        return rep;
      },
    );
    expect(order).toEqual(['base0', 'tun0', 'base1', 'tun1', 'base2']);
    expect([...got.keys()]).toEqual(['base']);
    expect(got.get('base')).toEqual([0, 1, 2]);
    for (const id of ['tun', 'tun-loss']) {
      const r = s.rows.find((x) => x.id === id);
      expect(r?.unavailable).toBe('FAILED: daemon died');
      expect(r?.samples).toEqual([]);
    }
    expect(s.rows.find((x) => x.id === 'base')?.unavailable).toBeUndefined();
    expect(s.rows.find((x) => x.id === 'base')?.samples).toEqual([9]);
    expect(s.error).toBe('leg tun: daemon died');
    expect(c.lines).toEqual(['leg tun: FAILED: daemon died']);
  });

  it('a leg failing in the middle of a repetition does not stop the legs after it', async () => {
    const order: string[] = [];
    const s = section('t', 't', ...['b', 'e', 'c'].map((id) => ({ id, label: id, ...M })));
    const got = await alternate(
      ctx(2),
      ['b', 'e', 'c'],
      (l) => ({ section: s, ids: [l], what: l }),
      async (l, rep) => {
        order.push(`${l}${rep}`);
        if (l === 'e') throw new Error('redsocks exited');
        return rep;
      },
    );
    expect(order).toEqual(['b0', 'e0', 'c0', 'b1', 'c1']);
    expect([...got]).toEqual([
      ['b', [0, 1]],
      ['c', [0, 1]],
    ]);
    expect(s.rows.map((r) => r.unavailable)).toEqual([undefined, 'FAILED: redsocks exited', undefined]);
  });

  it('an Unavailable leg is a plain skip: no section error', async () => {
    const s = section('t', 't', { id: 'e', label: 'e', ...M }, { id: 'b', label: 'b', ...M });
    const got = await alternate(
      ctx(2),
      ['b', 'e'],
      (l) => ({ section: s, ids: [l], what: l }),
      async (l) => {
        if (l === 'e') throw new Unavailable('redsocks is not installed');
        return 1;
      },
    );
    expect([...got.keys()]).toEqual(['b']);
    expect(s.rows.find((x) => x.id === 'e')?.unavailable).toBe('redsocks is not installed');
    expect(s.error).toBeUndefined();
  });
});
