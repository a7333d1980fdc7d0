import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeproxyError } from '../../../src/errors.js';
import { humanAge, humanBytes } from '../../../src/inspect/format.js';
import { dnsLookup, dnsLs, natLs, natWatch } from '../../../src/inspect/index.js';
import { RedisMirror } from '../../../src/redis/mirror.js';
import { LiveDns, LiveNat } from './liveNat.js';
import { captureLog, eventually, freePort, TestRedis } from './redisServer.js';

const ipToNumber = (ip: string) => ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);

class Buf {
  text = '';
  write(s: string) {
    this.text += s;
    return true;
  }
}

let redis: TestRedis;
let mirror: RedisMirror;
// UDP flows idle out after an hour here: the clock jumps minutes ahead below.
const nat = new LiveNat({ timeouts: { udpMs: 3_600_000 } });
const dns = new LiveDns();
const T0 = 1_700_000_000_000;
const now = () => T0 + 192_000; // 3m12s after the flows were created
let ipA: string;
let ipB: string;
let natA: string;
let natB: string;

beforeAll(async () => {
  redis = await TestRedis.start({ password: 'inspect-pw' });
  ipA = await dns.resolve('example.com');
  ipB = await dns.resolve('video.example');
  mirror = new RedisMirror({ url: redis.url, nodeId: 'gw1', logger: captureLog(), now });
  mirror.attachNat(nat.nat);
  mirror.attachDns(dns.dns);
  mirror.start();
  // TCP: SYN, ACK and 1 114 bytes out (3 packets, 1 234 bytes with headers); the
  // SYN-ACK and 1 257 411 bytes in 21 segments back (22 packets, 1 258 291 bytes).
  const a = nat.open({ sport: 34567, dst: ipA, dport: 80, at: T0 });
  nat.traffic(a, 1114, 1_257_411, T0 + 1000);
  // UDP: one 4-byte datagram (32 bytes with headers).
  const b = nat.open({ proto: 'udp', sport: 5353, dst: ipB, dport: 443, at: T0 + 1 });
  natA = `${a.natIp}:${a.natPort}`;
  natB = `${b.natIp}:${b.natPort}`;
  mirror.annotate(a.id, { outbound: 'socks5', rule: 'DOMAIN-SUFFIX,example.com,Proxy', chain: 'Proxy → auto → hk-1' });
  mirror.annotate(b.id, { outbound: 'direct' });
  await eventually(
    async () => (await redis.cliLines('ZCARD', 'fakeproxy:{gw1}:flows'))[0] === '2',
    'two flows mirrored',
  );
  await eventually(
    async () => (await redis.cliLines('HGET', `fakeproxy:{gw1}:flow:tcp:${a.id}`, 'bytesIn'))[0] === '1258291',
    'counters',
  );
  await eventually(
    async () => (await redis.cliLines('HGET', `fakeproxy:{gw1}:flow:tcp:${a.id}`, 'outbound'))[0] === 'socks5',
    'annotation',
  );
  // A second node, written by hand the way the mirror writes.
  await redis.cli('HSET', 'fakeproxy:{gw2}:dns:name', 'other.example', '198.18.0.5');
  await redis.cli('HSET', 'fakeproxy:{gw2}:dns:ip', '198.18.0.5', 'other.example');
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
    // The NAT column is as wide as the addresses the engine picked.
    const w = Math.max(natA.length, natB.length);
    expect(out.text).toBe(
      [
        `PROTO  APP               DESTINATION        ${'NAT'.padEnd(w)}  OUTBOUND  STATE          AGE       UP     DOWN  RULE                             CHAIN`,
        `tcp    198.18.0.1:34567  example.com:80     ${natA.padEnd(w)}  socks5    established  3m12s  1.2 KiB  1.2 MiB  DOMAIN-SUFFIX,example.com,Proxy  Proxy → auto → hk-1`,
        `udp    198.18.0.1:5353   video.example:443  ${natB.padEnd(w)}  direct    udp          3m11s     32 B      0 B  -                                -`,
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
      dst: `${ipA}:80`,
      name: 'example.com',
      nat: natA,
      outbound: 'socks5',
      rule: 'DOMAIN-SUFFIX,example.com,Proxy',
      chain: 'Proxy → auto → hk-1',
      state: 'established',
      createdMs: T0,
      lastSeenMs: T0 + 1000,
      bytesOut: 1234,
      bytesIn: 1_258_291,
      pktsOut: 3,
      pktsIn: 22,
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
    // FakeDns hands out the range in order: example.com got the lower address.
    expect(ipToNumber(ipA)).toBeLessThan(ipToNumber(ipB));
    expect(out.text).toBe(
      [
        'NODE  NAME           IP',
        `gw1   example.com    ${ipA}`,
        `gw1   video.example  ${ipB}`,
        'gw2   other.example  198.18.0.5',
        '',
      ].join('\n'),
    );
    const json = new Buf();
    await dnsLs({ redis: redis.url, node: 'gw1', json: true, out: json });
    expect(JSON.parse(json.text)).toEqual({
      names: [
        { node: 'gw1', name: 'example.com', ip: ipA },
        { node: 'gw1', name: 'video.example', ip: ipB },
      ],
    });
  });

  it('looks up a name or an address; no match is ENOTFOUND', async () => {
    const out = new Buf();
    await dnsLookup({ redis: redis.url, node: 'gw1', query: 'Example.com.', json: true, out });
    expect(JSON.parse(out.text)).toEqual({
      query: 'example.com',
      results: [{ node: 'gw1', name: 'example.com', ip: ipA }],
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
        await redis.cli('PUBLISH', 'fakeproxy:{gw1}:events', '{"probe":true}');
        return out.text.includes('probe') && human.text.includes('probe');
      }, 'subscribed');
      const f = nat.open({ dst: ipA, dport: 8080, at: now() });
      nat.close(f, 'rst', now());
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
          `gw1 {2}open {3}tcp {2}198\\.18\\.0\\.1:\\d+ → example\\.com:8080 {2}nat ${f.natIp.replaceAll('.', '\\.')}:${f.natPort}`,
        ),
      );
      // SYN, ACK, RST out; SYN-ACK in: 40 bytes each.
      expect(human.text).toMatch(/close {2}tcp .* rst {2}up 120 B {2}down 40 B {2}after 0s/);
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
