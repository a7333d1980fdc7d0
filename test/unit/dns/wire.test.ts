import dnsPacket from 'dns-packet';
import { describe, expect, it } from 'vitest';
import {
  buildAResponse,
  buildHeaderOnly,
  buildResponse,
  encodeName,
  encodeRR,
  parseQuery,
  parseReverseV4,
  Rcode,
  udpLimit,
} from '../../../src/dns/wire.js';
import { encodeQuery } from './helpers.js';

function q(buf: Buffer) {
  const p = parseQuery(buf);
  if (p.kind !== 'query') throw new Error(`not a query: ${JSON.stringify(p)}`);
  return p.q;
}

describe('parseQuery', () => {
  it('reads id, name (lower case), type, EDNS', () => {
    const x = q(encodeQuery('WwW.Example.COM', 'AAAA', { id: 0xbeef, edns: 1400 }));
    expect(x).toMatchObject({ id: 0xbeef, name: 'www.example.com', plain: true, labelCount: 3, qtype: 28, qclass: 1 });
    expect(x.edns).toEqual({ udpSize: 1400, version: 0, dnssecOk: false });
  });

  it('marks names with non-presentation bytes as not plain', () => {
    const b = encodeQuery('abc.example', 'A');
    b[13] = 0x2e; // a '.' inside the first label
    expect(q(b).plain).toBe(false);
  });

  it('reads the root name', () => {
    expect(q(encodeQuery('.', 'NS')).name).toBe('');
  });

  it('accepts a 255-byte name and rejects 256+', () => {
    // 3×63 + 62 = 251 + 4 length bytes + root = 256: one too many; 61 → 255
    const mk = (last: number) => [63, 63, 63, last].map((n) => 'a'.repeat(n)).join('.');
    expect(parseQuery(encodeQuery(mk(61), 'A')).kind).toBe('query');
    const long = Buffer.concat([
      Buffer.from(encodeQuery('x', 'A').subarray(0, 12)),
      ...[63, 63, 63, 62].map((n) => Buffer.concat([Buffer.from([n]), Buffer.alloc(n, 0x61)])),
      Buffer.from([0, 0, 1, 0, 1]),
    ]);
    expect(parseQuery(long)).toEqual({ kind: 'error', rcode: Rcode.FORMERR });
  });
});

describe('responses decode with dns-packet', () => {
  it('A answer', () => {
    const buf = encodeQuery('Fake.Example', 'A', { id: 42, edns: 1232 });
    const d = dnsPacket.decode(buildAResponse(buf, q(buf), 0xc6120203, 1));
    expect(d.id).toBe(42);
    expect(d.type).toBe('response');
    expect(d.answers?.[0]).toMatchObject({ name: 'Fake.Example', type: 'A', ttl: 1, data: '198.18.2.3' });
    expect(d.additionals?.[0]?.type).toBe('OPT');
    expect(d.flag_rd).toBe(true);
    expect(d.flag_ra).toBe(true);
  });

  it('PTR answer', () => {
    const buf = encodeQuery('3.2.18.198.in-addr.arpa', 'PTR');
    const d = dnsPacket.decode(buildResponse(buf, q(buf), 0, encodeRR(12, 1, encodeName('example.com')), 1));
    expect(d.answers?.[0]).toMatchObject({ type: 'PTR', data: 'example.com' });
  });

  it('sets TC and drops the answer when it does not fit', () => {
    const buf = encodeQuery('x.example', 'TXT');
    const big = encodeRR(16, 1, Buffer.alloc(600, 1));
    const out = buildResponse(buf, q(buf), 0, big, 1, 512);
    expect(out.length).toBeLessThanOrEqual(512);
    const d = dnsPacket.decode(out);
    expect(d.flag_tc).toBe(true);
    expect(d.answers).toHaveLength(0);
  });

  it('header-only errors echo id and opcode', () => {
    const buf = encodeQuery('x', 'A', { id: 9 });
    buf.writeUInt16BE(0x1100, 2); // opcode 2
    const out = buildHeaderOnly(buf, Rcode.NOTIMP);
    expect(out.length).toBe(12);
    expect(out.readUInt16BE(0)).toBe(9);
    expect(out.readUInt16BE(2)).toBe(0x8000 | 0x1000 | 0x0100 | 4);
  });
});

describe('helpers', () => {
  it.each([
    [undefined, 4096, 512],
    [100, 4096, 512],
    [1232, 4096, 1232],
    [65535, 4096, 4096],
    [4096, 512, 512],
  ])('udpLimit(edns %s, cap %i) = %i', (edns, cap, want) => {
    expect(udpLimit(q(encodeQuery('x', 'A', edns ? { edns } : {})), cap)).toBe(want);
  });

  it.each([
    ['4.3.2.1.in-addr.arpa', 0x01020304],
    ['255.255.18.198.in-addr.arpa', 0xc612ffff],
    ['3.2.1.in-addr.arpa', undefined],
    ['256.3.2.1.in-addr.arpa', undefined],
    ['04.3.2.1.in-addr.arpa', undefined],
    ['x.3.2.1.in-addr.arpa', undefined],
    ['4.3.2.1.ip6.arpa', undefined],
  ])('parseReverseV4(%s) = %s', (name, want) => {
    expect(parseReverseV4(name)).toBe(want);
  });
});
