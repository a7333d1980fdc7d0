import dnsPacket from 'dns-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeDns } from '../../../src/dns/index.js';
import {
  type Dnsmasq,
  dig,
  encodeQuery,
  fakeDnsOn,
  firstData,
  frame,
  must,
  portOf,
  startDnsmasq,
  tcpExchange,
  udpExchange,
} from './helpers.js';

let upstream: Dnsmasq;
let dns: FakeDns;
let port: number;
const logs: string[] = [];

beforeAll(async () => {
  upstream = await startDnsmasq();
  dns = fakeDnsOn(upstream.port, { filters: ['+.lan', 'time.*.com'], logger: (l) => logs.push(l) });
  await dns.start();
  port = dns.addresses[0]?.port as number;
});

afterAll(async () => {
  await dns?.close();
  await upstream?.stop();
});

describe('FakeDns over the wire (dig as client, dnsmasq as upstream)', () => {
  it('answers A with an address of the range, TTL 1, and the same address again', async () => {
    const a = await dig(port, ['example.com', 'A']);
    expect(a.status).toBe('NOERROR');
    expect(a.answers).toHaveLength(1);
    const ip = a.answers[0]?.data as string;
    expect(ip).toMatch(/^198\.18\.\d+\.\d+$/);
    expect(ip).not.toBe('198.18.0.1');
    expect(a.answers[0]?.ttl).toBe(1);
    const again = await dig(port, ['EXAMPLE.com.', 'A']);
    expect(again.answers[0]?.data).toBe(ip);
    expect(again.answers[0]?.name).toBe('EXAMPLE.com.'); // question case preserved (0x20)
    expect(dns.reverse(ip)).toBe('example.com');
    expect(dns.lookup('Example.COM.')).toBe(ip);
    expect(dns.isFake(ip)).toBe(true);
  });

  it('answers the same over TCP', async () => {
    const udp = await dig(port, ['tcp.example.com', 'A']);
    const tcp = await dig(port, ['+tcp', 'tcp.example.com', 'A']);
    expect(tcp.status).toBe('NOERROR');
    expect(tcp.answers[0]?.data).toBe(udp.answers[0]?.data);
  });

  it.each(['AAAA', 'TYPE65', 'TYPE64'])('answers %s for a fake name with NOERROR and no answer', async (type) => {
    const r = await dig(port, ['v6.example.com', type]);
    expect(r.status).toBe('NOERROR');
    expect(r.answers).toHaveLength(0);
    expect(dns.lookup('v6.example.com')).toBeUndefined();
  });

  it('answers PTR for a fake address with the name', async () => {
    const ip = (await dig(port, ['ptr.example.org', 'A'])).answers[0]?.data as string;
    const r = await dig(port, ['-x', ip]);
    expect(r.status).toBe('NOERROR');
    expect(r.answers[0]?.type).toBe('PTR');
    expect(r.answers[0]?.data).toBe('ptr.example.org.');
  });

  it('answers NXDOMAIN for PTR of an unmapped fake address', async () => {
    const r = await dig(port, ['-x', '198.18.250.250']);
    expect(r.status).toBe('NXDOMAIN');
  });

  it('forwards PTR of a real address to the upstream', async () => {
    const r = await dig(port, ['-x', '10.2.3.4']);
    expect(r.answers[0]?.data).toBe('real.example.test.');
  });

  it.each([
    ['filtered.lan', '10.1.2.3'],
    ['a.b.filtered.lan', '10.1.2.3'],
    ['time.apple.com', '10.9.9.9'],
  ])('forwards filtered name %s and returns the real answer', async (name, real) => {
    const r = await dig(port, [name, 'A']);
    expect(r.status).toBe('NOERROR');
    expect(r.answers.map((a) => a.data)).toEqual([real]);
    expect(dns.lookup(name)).toBeUndefined();
  });

  it('forwards MX and TXT', async () => {
    const mx = await dig(port, ['example.test', 'MX']);
    expect(mx.answers[0]?.data).toBe('10 mail.example.test.');
    const txt = await dig(port, ['txt.example.test', 'TXT']);
    expect(txt.answers[0]?.data).toBe('"hello"');
  });

  it.each([
    ['localhost', 'A', '127.0.0.1'],
    ['foo.localhost', 'A', '127.0.0.1'],
    ['localhost', 'AAAA', '::1'],
  ])('never fakes %s %s', async (name, type, want) => {
    const r = await dig(port, [name, type]);
    expect(r.answers.map((a) => a.data)).toEqual([want]);
    expect(dns.lookup(name)).toBeUndefined();
  });

  it('forwards PTR of the gateway (its reverse zone is never faked)', async () => {
    const q = encodeQuery('1.0.18.198.in-addr.arpa', 'PTR');
    const before = dns.stats().forwarded as number;
    const r = await udpExchange(port, q, 3000);
    // dnsmasq knows nothing about it: the answer is the upstream's, not ours
    expect(r).toBeDefined();
    expect(dnsPacket.decode(r as Buffer).answers ?? []).toHaveLength(0);
    expect(dns.stats().forwarded).toBe(before + 1);
  });

  it('truncates a large forwarded answer for a UDP client without EDNS, and dig retries over TCP', async () => {
    const noRetry = await dig(port, ['+noedns', '+ignore', 'big.example.test', 'TXT']);
    expect(noRetry.flags).toContain('tc');
    expect(noRetry.answers).toHaveLength(0);
    const full = await dig(port, ['+noedns', 'big.example.test', 'TXT']);
    expect(full.answers).toHaveLength(6);
  });

  it('echoes OPT and honours a large EDNS payload size', async () => {
    const r = await dig(port, ['+edns=0', '+bufsize=4096', 'big.example.test', 'TXT']);
    expect(r.flags).not.toContain('tc');
    expect(r.answers).toHaveLength(6);
    expect(r.out).toMatch(/OPT PSEUDOSECTION/);
    const a = dnsPacket.decode(
      (await udpExchange(port, encodeQuery('opt.example.com', 'A', { edns: 1400 }))) as Buffer,
    );
    expect(a.additionals?.[0]?.type).toBe('OPT');
  });

  it('answers BADVERS for EDNS version 1', async () => {
    const r = await dig(port, ['+edns=1', '+noednsnegotiation', 'v.example.com', 'A']);
    expect(r.status).toBe('BADVERS');
  });

  it('handles several pipelined queries on one TCP connection', async () => {
    const names = ['p1.example.com', 'p2.example.com', 'txt.example.test', 'p1.example.com'];
    const raw = Buffer.concat(
      names.map((n, i) => frame(encodeQuery(n, n.startsWith('txt') ? 'TXT' : 'A', { id: 100 + i }))),
    );
    const { replies } = await tcpExchange(port, raw, { count: names.length, timeoutMs: 5000 });
    expect(replies.map((r) => r.readUInt16BE(0)).sort()).toEqual([100, 101, 102, 103]);
    const byId = new Map(replies.map((r) => [r.readUInt16BE(0), dnsPacket.decode(r)]));
    const ip1 = firstData(byId.get(100));
    expect(firstData(byId.get(103))).toBe(ip1);
    expect((firstData(byId.get(102)) as Buffer[]).map(String)).toEqual(['hello']);
  });

  it('emits mapped events and lists entries', async () => {
    const seen: [string, string][] = [];
    const on = (n: string, ip: string) => seen.push([n, ip]);
    dns.on('mapped', on);
    const r = await dig(port, ['events.example.com', 'A']);
    dns.off('mapped', on);
    expect(seen).toEqual([['events.example.com', r.answers[0]?.data]]);
    expect(dns.entries().find((e) => e.name === 'events.example.com')).toMatchObject({
      ip: r.answers[0]?.data,
      flows: 0,
    });
  });

  it('handleQuery resolves undefined for a response and a FORMERR for garbage with a header', async () => {
    const resp = encodeQuery('x.example.com', 'A');
    resp.writeUInt16BE(0x8100, 2);
    expect(await dns.handleQuery(resp, 'udp')).toBeUndefined();
    const garbage = Buffer.from('0123456789abcdefghijklmnop');
    garbage.writeUInt16BE(0x0100, 2);
    garbage.writeUInt16BE(1, 4);
    const out = must(await dns.handleQuery(garbage, 'udp'));
    expect(out.readUInt16BE(2) & 0xf).toBe(1);
  });

  it('handleQuery truncates to maxUdpSize given by the caller', async () => {
    const q = encodeQuery('big.example.test', 'TXT', { edns: 4096 });
    const small = must(await dns.handleQuery(q, 'udp', 512));
    expect(small.length).toBeLessThanOrEqual(512);
    expect(small.readUInt16BE(2) & 0x0200).toBe(0x0200);
    const big = must(await dns.handleQuery(q, 'udp', 4096));
    expect(big.readUInt16BE(2) & 0x0200).toBe(0);
  });
});

/** A started FakeDns whose upstream is a bound UDP socket that never replies; seen() counts what reached it. */
async function silentUpstream(upstreamTimeoutMs: number) {
  const dgram = await import('node:dgram');
  const sink = dgram.createSocket('udp4');
  await new Promise<void>((r) => sink.bind(0, '127.0.0.1', () => r()));
  let n = 0;
  sink.on('message', () => n++);
  const d = fakeDnsOn(sink.address().port, { cidr: '198.18.0.0/24', upstreamTimeoutMs });
  await d.start();
  return { sink, d, seen: () => n };
}

describe('FakeDns failure paths', () => {
  it('answers SERVFAIL when the upstream does not answer', async () => {
    const { sink, d, seen } = await silentUpstream(200);
    try {
      const r = await dig(portOf(d), ['example.test', 'MX']);
      expect(r.status).toBe('SERVFAIL');
      expect(seen()).toBe(2); // one try + one retry
      expect(d.stats().upstreamFailures).toBe(1);
    } finally {
      await d.close();
      sink.close();
    }
  });

  it('close() while forwarded queries are pending (UDP and TCP) throws nothing', async () => {
    const { sink, d, seen } = await silentUpstream(10_000);
    const p = portOf(d);
    const udp = udpExchange(p, encodeQuery('example.test', 'MX'), 500);
    const tcp = tcpExchange(p, frame(encodeQuery('example.test', 'MX')), { timeoutMs: 500 });
    for (let i = 0; i < 100 && seen() < 2; i++) await new Promise((r) => setTimeout(r, 10));
    expect(seen()).toBe(2);
    await d.close();
    await Promise.all([udp, tcp]);
    expect(d.stats().upstreamInFlight).toBe(0);
    sink.close();
  });

  it('answers SERVFAIL and logs when every address is pinned by live flows', async () => {
    const lines: string[] = [];
    // 6 hosts: gateway + 5 fake
    const d = fakeDnsOn(9, { cidr: '10.99.0.0/29', logger: (l) => lines.push(l) });
    await d.start();
    try {
      const p = portOf(d);
      const ips: string[] = [];
      for (let i = 0; i < 5; i++) {
        const r = await dig(p, [`n${i}.test`, 'A']);
        const ip = must(r.answers[0]).data;
        ips.push(ip);
        d.acquire(ip);
      }
      expect(new Set(ips).size).toBe(5);
      expect(ips).not.toContain('10.99.0.1');
      const full = await dig(p, ['n5.test', 'A']);
      expect(full.status).toBe('SERVFAIL');
      expect(lines.some((l) => /exhausted/.test(l))).toBe(true);
      // release one: the next name gets exactly that address
      d.release(must(ips[2]));
      const after = await dig(p, ['n6.test', 'A']);
      expect(after.answers[0]?.data).toBe(ips[2]);
      expect(d.reverse(must(ips[2]))).toBe('n6.test');
    } finally {
      await d.close();
    }
  });

  it('rejects a bad CIDR with EBADCIDR', () => {
    expect(() => new FakeDns({ cidr: '198.18.0.0/31', listen: [], upstream: { host: '127.0.0.1', port: 53 } })).toThrow(
      expect.objectContaining({ code: 'EBADCIDR' }),
    );
  });
});
