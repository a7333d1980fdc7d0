/**
 * RespWriter (src/redis/resp.ts) against ioredis's own encoder: for the
 * commands the mirror sends, the bytes must be exactly what ioredis would
 * have written for the same arguments. The round trip through a real
 * redis-server is mirror.test.ts's (rows read back field by field).
 */
import { Command } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { evalArgs, evalBatch, MIRROR_BATCH_SCRIPT, splitBatch } from '../../../src/redis/batchScript.js';
import { RespWriter } from '../../../src/redis/resp.js';
import {
  encodeFlow,
  FLOW_FIELDS,
  flowKeyOf,
  hsetFlow,
  type MirroredFlow,
  nodeKeys,
} from '../../../src/redis/schema.js';
import type { Batch } from '../../../src/redis/view.js';

/** What ioredis writes for `name args…`, as bytes. */
const ioredisBytes = (name: string, args: (string | number)[]) => {
  const w = new Command(name, args).toWritable(undefined as never);
  return typeof w === 'string' ? Buffer.from(w) : w;
};
const ours = (c: Command) => c.toWritable(undefined as never) as Buffer;

const row: MirroredFlow = {
  id: 9_007_199_254_740_991,
  proto: 'tcp',
  app: '10.0.0.2:40000',
  dst: '198.18.0.7:443',
  name: 'bücher.example',
  nat: '198.18.255.254:65535',
  outbound: 'hk-1',
  rule: 'DOMAIN-SUFFIX,example.com,Proxy',
  chain: 'Proxy → auto → hk-1',
  state: 'established',
  createdMs: 1_764_000_000_000,
  lastSeenMs: 0,
  bytesOut: 10,
  bytesIn: 1_234_567_890,
  pktsOut: 9,
  pktsIn: 100,
};

describe('RespWriter', () => {
  it('encodes a flow row as ioredis encodes HSET key …encodeFlow(row), UTF-8 and 0 and 2^53-1 included', () => {
    const w = new RespWriter();
    const key = 'fakeproxy:{gw}:flow:tcp:1';
    const c = hsetFlow(w, key, row);
    expect(ours(c).toString('latin1')).toBe(ioredisBytes('hset', [key, ...encodeFlow(row)]).toString('latin1'));
    // What ioredis reads from a command: its name and key (a Cluster's slot).
    expect([c.name, c.args]).toEqual(['hset', [key]]);
  });

  it('encodes numbers that are not non-negative integers as String(n) does, and grows past its first buffer', () => {
    const w = new RespWriter();
    const nums = [0, 7, 10, 99, 100, -1, 1.5, 1e21, Number.MAX_SAFE_INTEGER];
    w.begin('zadd', 'k', 2 + nums.length).str('k');
    for (const n of nums) w.num(n);
    expect(ours(w.end())).toEqual(ioredisBytes('zadd', ['k', ...nums.map(String)]));
    const long = 'x'.repeat(100_000);
    expect(ours(w.begin('publish', 'ch', 3).str('ch').str(long).end())).toEqual(ioredisBytes('publish', ['ch', long]));
    // The scratch buffer is reused: a short command after the long one carries nothing of it.
    expect(ours(w.begin('pexpire', 'k', 3).str('k').num(60_000).end())).toEqual(ioredisBytes('pexpire', ['k', 60_000]));
  });

  it("encodes a flush's EVAL as ioredis encodes it, with the slot of the node's keys", () => {
    const w = new RespWriter();
    const keys = nodeKeys('gw');
    const flowKey = flowKeyOf(keys, 'tcp:1');
    const batch: Batch = {
      deleteKeys: [flowKeyOf(keys, 'tcp:2')],
      deleteMembers: ['tcp:2'],
      writes: [{ key: flowKey, row, member: 'tcp:1', score: 1_764_000_000_000, withTtl: true }],
      names: [['bücher.example', '198.18.0.7']],
      ips: [['198.18.0.9', undefined]],
      events: ['{"v":1}'],
    };
    const c = evalBatch(w, keys, 60_000, batch);
    const fields = FLOW_FIELDS.map((f) => f.name);
    const args = [
      MIRROR_BATCH_SCRIPT,
      5,
      keys.flows,
      keys.dnsName,
      keys.dnsIp,
      flowKeyOf(keys, 'tcp:2'),
      flowKey,
      60_000,
      1,
      1,
      1,
      fields.length,
      1,
      1,
      1,
      keys.events,
      'tcp:2',
      ...fields,
      '1',
      1_764_000_000_000,
      'tcp:1',
      ...fields.map((f) => String(row[f])),
      '1',
      'bücher.example',
      '198.18.0.7',
      '0',
      '198.18.0.9',
      '',
      '{"v":1}',
    ];
    expect(ours(c).toString('latin1')).toBe(ioredisBytes('eval', args).toString('latin1'));
    // A Cluster sends it to the shard of the node's hash tag, as ioredis would route the same EVAL.
    expect(c.getSlot()).toBe(new Command('eval', args).getSlot());
    expect(c.getSlot()).toBe(new Command('hset', [flowKey, 'id', '1']).getSlot());
  });

  it('refuses a command whose argument count differs from what begin() announced', () => {
    const w = new RespWriter();
    expect(() => w.begin('unlink', 'a', 3).str('a').end()).toThrow(/unlink is off by 1/);
    expect(() => w.begin('unlink', 'a', 2).str('a').str('b').end()).toThrow(/unlink is off by -1/);
  });
});

describe('splitBatch', () => {
  it('cuts a big batch along its command order into parts of at most maxArgs arguments', () => {
    const keys = nodeKeys('gw');
    const w = (i: number) => ({
      key: flowKeyOf(keys, `tcp:${i}`),
      row,
      member: `tcp:${i}`,
      score: i,
      withTtl: i % 2 === 0,
    });
    const big: Batch = {
      deleteKeys: Array.from({ length: 3000 }, (_, i) => flowKeyOf(keys, `tcp:${100_000 + i}`)),
      deleteMembers: Array.from({ length: 3000 }, (_, i) => `tcp:${100_000 + i}`),
      writes: Array.from({ length: 2500 }, (_, i) => w(i)),
      names: Array.from({ length: 10 }, (_, i): [string, string] => [`n${i}.example`, `198.18.0.${i}`]),
      ips: [['198.18.0.1', undefined]],
      events: Array.from({ length: 5000 }, (_, i) => `{"i":${i}}`),
    };
    const parts = splitBatch(big, 20_000);
    // The argument count of the EVAL as encoded: its RESP header `*<n>`.
    const sent = (b: Batch) => {
      const bytes = ours(evalBatch(new RespWriter(), keys, 60_000, b)).toString('latin1');
      return Number(bytes.slice(1, bytes.indexOf('\r\n')));
    };
    expect(sent(big)).toBe(evalArgs(big));
    expect(parts.length).toBeGreaterThanOrEqual(Math.ceil(evalArgs(big) / 20_000));
    for (const p of parts) {
      expect(sent(p)).toBeLessThanOrEqual(20_000);
      expect(sent(p)).toBe(evalArgs(p));
      expect(p.deleteMembers).toEqual(p.deleteKeys.map((k) => k.slice(k.lastIndexOf(':flow:') + 6)));
    }
    // In order: the parts' commands, one after the other, are the whole batch's.
    const seq = (b: Batch) => [
      ...b.deleteKeys.map((k) => `del ${k}`),
      ...b.writes.map((x) => `write ${x.key}`),
      ...b.names.map(([n]) => `name ${n}`),
      ...b.ips.map(([ip]) => `ip ${ip}`),
      ...b.events.map((e) => `event ${e}`),
    ];
    expect(parts.flatMap(seq)).toEqual(seq(big));
    const small: Batch = { ...big, deleteKeys: [], deleteMembers: [], writes: [w(1)], events: ['{}'] };
    expect(splitBatch(small, 20_000)).toEqual([small]);
  });
});
