import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeproxyError } from '../../../src/errors.js';
import { humanAge, humanBytes } from '../../../src/inspect/format.js';
import { dnsLookup, dnsLs, natLs, natWatch } from '../../../src/inspect/index.js';
import { RedisMirror } from '../../../src/nat/redisMirror.js';
import { FakeDnsSource, FakeNat } from './fakeSources.js';
import { captureLog, eventually, freePort, TestRedis } from './redisServer.js';

class Buf {
  text = '';
  write(s: string) {
    this.text += s;
    return true;
  }
}

let redis: TestRedis;
let mirror: RedisMirror;
const nat = new FakeNat();
const dns = new FakeDnsSource();
const T0 = 1_700_000_000_000;
const now = () => T0 + 192_000; // 3m12s after the flows were created

beforeAll(async () => {
  redis = await TestRedis.start({ password: 'inspect-pw' });
  dns.mapName('example.com', '198.18.2.2');
  dns.mapName('video.example', '198.18.2.3');
  mirror = new RedisMirror({ url: redis.url, nodeId: 'gw1', logger: captureLog() });
  mirror.attachNat(nat);
  mirror.attachDns(dns);
  mirror.start();
  const a = nat.open({
    createdMs: T0,
    lastSeenMs: T0 + 1000,
    bytesOut: 1234,
    bytesIn: 1_258_291,
    natPort: 40001,
    srcPort: 34567,
  });
  const b = nat.open({
    proto: 'udp',
    state: 'udp',
    dstIp: '198.18.2.3',
    dstPort: 443,
    createdMs: T0 + 1,
    lastSeenMs: T0 + 2,
    bytesOut: 10,
    bytesIn: 0,
    natPort: 40002,
    srcPort: 5353,
  });
  mirror.annotate(a.id, { outbound: 'socks5' });
  mirror.annotate(b.id, { outbound: 'direct' });
  await eventually(async () => (await redis.cliLines('ZCARD', 'fakeproxy:gw1:flows'))[0] === '2', 'two flows mirrored');
  await eventually(
    async () => (await redis.cliLines('HGET', `fakeproxy:gw1:flow:tcp:${a.id}`, 'outbound'))[0] === 'socks5',
    'annotation',
  );
  // A second node, written by hand the way the mirror writes.
  await redis.cli('HSET', 'fakeproxy:gw2:dns:name', 'other.example', '198.18.0.5');
  await redis.cli('HSET', 'fakeproxy:gw2:dns:ip', '198.18.0.5', 'other.example');
});
afterAll(async () => {
  await mirror.close();
  await redis.destroy();
});

describe('human units', () => {
  it.each([
    [0, '0 B'],
    [512, '512 B'],
    [1234, '1.2 KiB'],
    [1_258_291, '1.2 MiB'],
    [50 * 1024 ** 3, '50 GiB'],
  ])('humanBytes(%d) = %s', (n, s) => expect(humanBytes(n)).toBe(s));
  it.each([
    [0, '0s'],
    [45_000, '45s'],
    [192_000, '3m12s'],
    [7_500_000, '2h05m'],
    [273_600_000, '3d04h'],
  ])('humanAge(%d) = %s', (ms, s) => expect(humanAge(ms)).toBe(s));
});

describe('nat ls', () => {
  it('prints an aligned table with names, outbounds, ages and human byte counts', async () => {
    const out = new Buf();
    await natLs({ redis: redis.url, node: 'gw1', json: false, out, now });
    expect(out.text).toBe(
      [
        'PROTO  APP               DESTINATION        NAT               OUTBOUND  STATE    AGE       UP     DOWN',
        'tcp    198.18.0.1:34567  example.com:80     198.18.7.9:40001  socks5    syn    3m12s  1.2 KiB  1.2 MiB',
        'udp    198.18.0.1:5353   video.example:443  198.18.7.9:40002  direct    udp    3m11s     10 B      0 B',
        '',
      ].join('\n'),
    );
  });

  it('prints stable JSON for scripts, and a NODE column / field when listing all nodes', async () => {
    const out = new Buf();
    await natLs({ redis: redis.url, json: true, out });
    const parsed = JSON.parse(out.text) as { flows: Record<string, unknown>[] };
    expect(parsed.flows).toHaveLength(2);
    expect(parsed.flows[0]).toEqual({
      node: 'gw1',
      id: expect.any(Number),
      proto: 'tcp',
      app: '198.18.0.1:34567',
      dst: '198.18.2.2:80',
      name: 'example.com',
      nat: '198.18.7.9:40001',
      outbound: 'socks5',
      state: 'syn',
      createdMs: T0,
      lastSeenMs: T0 + 1000,
      bytesOut: 1234,
      bytesIn: 1_258_291,
      pktsOut: 1,
      pktsIn: 0,
    });
    const table = new Buf();
    await natLs({ redis: redis.url, json: false, out: table, now });
    expect(table.text.split('\n')[0]).toMatch(/^NODE {2}PROTO {2}APP/);
    expect(table.text.split('\n')[1]).toMatch(/^gw1 {3}tcp/);
  });

  it('says so when a node has no flows', async () => {
    const out = new Buf();
    await natLs({ redis: redis.url, node: 'nobody', json: false, out });
    expect(out.text).toBe('no live flows on node nobody\n');
  });
});

describe('dns ls / lookup', () => {
  it('lists the fake-IP map of every node, ordered by address', async () => {
    const out = new Buf();
    await dnsLs({ redis: redis.url, json: false, out });
    expect(out.text).toBe(
      [
        'NODE  NAME           IP',
        'gw1   example.com    198.18.2.2',
        'gw1   video.example  198.18.2.3',
        'gw2   other.example  198.18.0.5',
        '',
      ].join('\n'),
    );
    const json = new Buf();
    await dnsLs({ redis: redis.url, node: 'gw1', json: true, out: json });
    expect(JSON.parse(json.text)).toEqual({
      names: [
        { node: 'gw1', name: 'example.com', ip: '198.18.2.2' },
        { node: 'gw1', name: 'video.example', ip: '198.18.2.3' },
      ],
    });
  });

  it('looks up a name or an address; no match is ENOTFOUND', async () => {
    const out = new Buf();
    await dnsLookup({ redis: redis.url, node: 'gw1', query: 'Example.com.', json: true, out });
    expect(JSON.parse(out.text)).toEqual({
      query: 'example.com',
      results: [{ node: 'gw1', name: 'example.com', ip: '198.18.2.2' }],
    });
    const byIp = new Buf();
    await dnsLookup({ redis: redis.url, query: '198.18.0.5', json: false, out: byIp });
    expect(byIp.text).toBe('NODE  NAME           IP\ngw2   other.example  198.18.0.5\n');
    await expect(dnsLookup({ redis: redis.url, query: 'missing.example', json: false, out })).rejects.toMatchObject({
      code: 'ENOTFOUND',
    });
  });
});

describe('nat watch', () => {
  it('prints open and close events as they are published', async () => {
    const out = new Buf();
    const human = new Buf();
    const ac = new AbortController();
    const watching = natWatch({ redis: redis.url, node: 'gw1', json: true, out, signal: ac.signal });
    const watchingAll = natWatch({ redis: redis.url, json: false, out: human, signal: ac.signal });
    try {
      // Subscriptions are in place once a published probe arrives.
      await eventually(async () => {
        await redis.cli('PUBLISH', 'fakeproxy:gw1:events', '{"probe":true}');
        return out.text.includes('probe') && human.text.includes('probe');
      }, 'subscribed');
      const f = nat.open({ dstIp: '198.18.2.2', dstPort: 8080 });
      nat.close(f.id, 'rst');
      await eventually(() => out.text.includes('"close"') && human.text.includes('close'), 'close event printed');
      const events = out.text
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l))
        .filter((e) => e.flow?.id === f.id);
      expect(events.map((e) => [e.type, e.reason])).toEqual([
        ['open', undefined],
        ['close', 'rst'],
      ]);
      expect(human.text).toMatch(
        new RegExp(
          `gw1 {2}open {3}tcp {2}198\\.18\\.0\\.1:\\d+ → example\\.com:8080 {2}nat 198\\.18\\.7\\.9:${f.natPort}`,
        ),
      );
      expect(human.text).toMatch(/close {2}tcp .* rst {2}up 60 B {2}down 0 B {2}after 0s/);
    } finally {
      ac.abort();
      await Promise.all([watching, watchingAll]);
    }
  });
});

describe('connection failures are one-line FakeproxyErrors', () => {
  it.each([
    ['wrong password', () => `redis://:nope@127.0.0.1:${redis.port}`, 'EREDISAUTH', /rejected the credentials/],
    ['missing password', () => `redis://127.0.0.1:${redis.port}`, 'EREDISAUTH', /requires a password/],
  ])('%s', async (_what, url, code, pattern) => {
    const err = await natLs({ redis: url(), json: false, out: new Buf() }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(FakeproxyError);
    expect(err).toMatchObject({ code });
    expect((err as Error).message).toMatch(pattern);
    expect((err as Error).message).not.toContain('\n');
    expect((err as Error).message).not.toContain('nope');
  });

  it('unreachable', async () => {
    const port = await freePort();
    for (const run of [
      () => dnsLs({ redis: `redis://127.0.0.1:${port}`, json: false, out: new Buf() }),
      () =>
        natWatch({
          redis: `redis://127.0.0.1:${port}`,
          json: false,
          out: new Buf(),
          signal: new AbortController().signal,
        }),
    ]) {
      await expect(run()).rejects.toMatchObject({
        code: 'EREDISUNREACHABLE',
        message: `cannot reach Redis at redis://127.0.0.1:${port} (ECONNREFUSED): is redis-server running and the address right?`,
      });
    }
  });
});
