/**
 * The DNS fast path (native/fake_answers.h): names that already hold a fake
 * address are answered by the UDP socket's native side. Its answers must be
 * byte for byte what JavaScript would send (wire.ts buildAResponse), every
 * other query must reach JavaScript unchanged, and the pool must stay the
 * one owner of the map (new, removed and recycled names; LRU uses; who may
 * ask).
 */
import dnsPacket from 'dns-packet';
import { afterEach, describe, expect, it } from 'vitest';
import type { FakeDns } from '../../../src/dns/index.js';
import { DnsServer, type DnsSourcePolicy } from '../../../src/dns/server.js';
import { buildAResponse, parseQuery } from '../../../src/dns/wire.js';
import { type NativeFakeAnswers, native } from '../../../src/native.js';
import { ipToInt } from '../../../src/util/cidr.js';
import { DgramBatchSocket } from '../../../src/util/dgramBatch.js';
import { dig, encodeQuery, fakeDnsOn, must, portOf, udpExchange } from './helpers.js';

const LOOPBACK = ipToInt('127.0.0.1');
const TTL = 7;

function table(): NativeFakeAnswers {
  const t = new (native().FakeAnswers)({ ttl: TTL });
  t.setTrusted([], true, false);
  return t;
}

/** What JavaScript answers for `q` when `name` maps to `ip`. */
function jsAnswer(q: Buffer, ip: number): Buffer {
  const p = parseQuery(q);
  if (p.kind !== 'query') throw new Error(`not a query: ${p.kind}`);
  return buildAResponse(q, p.q, ip, TTL);
}

/** A query with the given header fields and raw question/additional bytes. */
function raw(opts: { flags?: number; qd?: number; an?: number; ns?: number; ar?: number }, body: Buffer): Buffer {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(0xbeef, 0);
  h.writeUInt16BE(opts.flags ?? 0x0100, 2);
  h.writeUInt16BE(opts.qd ?? 1, 4);
  h.writeUInt16BE(opts.an ?? 0, 6);
  h.writeUInt16BE(opts.ns ?? 0, 8);
  h.writeUInt16BE(opts.ar ?? 0, 10);
  return Buffer.concat([h, body]);
}
const QNAME = Buffer.from([3, 0x77, 0x77, 0x77, 7, ...Buffer.from('example'), 3, ...Buffer.from('com'), 0]);
const A_IN = Buffer.from([0, 1, 0, 1]);
/** OPT owned by the root: payload size, extended rcode, version, DO flag word, no options. */
const opt = (size: number, version: number, flags: number) =>
  Buffer.from([0, 0, 41, size >> 8, size & 255, 0, version, flags >> 8, flags & 255, 0, 0]);

describe('FakeAnswers: the same bytes as JavaScript', () => {
  const ip = ipToInt('198.18.3.4');
  const cases: [string, Buffer][] = [
    ['plain A, RD', encodeQuery('www.example.com', 'A')],
    ['0x20 mixed case (question echoed as asked)', encodeQuery('WwW.ExAmPlE.CoM', 'A', { id: 7 })],
    ['no RD', encodeQuery('www.example.com', 'A', { rd: false })],
    ['EDNS 4096', encodeQuery('www.example.com', 'A', { edns: 4096 })],
    ['EDNS 512, DO and CD', raw({ flags: 0x0110, ar: 1 }, Buffer.concat([QNAME, A_IN, opt(512, 0, 0x8000)]))],
    [
      'trailing bytes after the question (ignored)',
      Buffer.concat([encodeQuery('www.example.com', 'A'), Buffer.of(1, 2)]),
    ],
  ];
  for (const [what, q] of cases) {
    it(what, () => {
      const t = table();
      t.set('www.example.com', ip);
      const got = must(t.answer(q, LOOPBACK), 'native answer');
      expect(got.toString('hex')).toBe(jsAnswer(q, ip).toString('hex'));
      expect(t.stats()).toEqual({ entries: 1, answered: 1 });
    });
  }
});

describe('FakeAnswers: everything else is left to JavaScript', () => {
  const cases: [string, Buffer][] = [
    ['a name not in the table', encodeQuery('other.example.com', 'A')],
    ['AAAA', encodeQuery('www.example.com', 'AAAA')],
    ['HTTPS', encodeQuery('www.example.com', 'HTTPS')],
    ['class CH', raw({}, Buffer.concat([QNAME, Buffer.from([0, 1, 0, 3])]))],
    ['a response (QR)', raw({ flags: 0x8100 }, Buffer.concat([QNAME, A_IN]))],
    ['opcode NOTIFY', raw({ flags: 4 << 11 }, Buffer.concat([QNAME, A_IN]))],
    ['two questions', raw({ qd: 2 }, Buffer.concat([QNAME, A_IN, QNAME, A_IN]))],
    ['an answer section', raw({ an: 1 }, Buffer.concat([QNAME, A_IN]))],
    ['EDNS version 1 (BADVERS is JavaScript’s)', raw({ ar: 1 }, Buffer.concat([QNAME, A_IN, opt(1232, 1, 0)]))],
    [
      'an additional record that is not OPT',
      raw({ ar: 1 }, Buffer.concat([QNAME, A_IN, Buffer.from([0, 0, 1, 0, 1])])),
    ],
    ['OPT cut short', raw({ ar: 1 }, Buffer.concat([QNAME, A_IN, opt(1232, 0, 0).subarray(0, 9)]))],
    ['two additional records', raw({ ar: 2 }, Buffer.concat([QNAME, A_IN, opt(1232, 0, 0), opt(1232, 0, 0)]))],
    ['a compression pointer', raw({}, Buffer.concat([Buffer.from([0xc0, 12]), A_IN]))],
    ['a label with a dot in it', raw({}, Buffer.concat([Buffer.from([3, 0x77, 0x2e, 0x77, 0]), A_IN]))],
    ['the root', raw({}, Buffer.concat([Buffer.from([0]), A_IN]))],
    ['a header only', raw({}, Buffer.alloc(0))],
    ['a name without its end', raw({}, QNAME.subarray(0, 8))],
    ['no type and class', raw({}, QNAME)],
  ];
  for (const [what, q] of cases) {
    it(what, () => {
      const t = table();
      t.set('www.example.com', ipToInt('198.18.3.4'));
      expect(t.answer(q, LOOPBACK)).toBeUndefined();
      expect(t.stats().answered).toBe(0);
    });
  }

  it('sources it does not trust, and nobody before setTrusted', () => {
    const t = new (native().FakeAnswers)({ ttl: TTL });
    t.set('www.example.com', ipToInt('198.18.3.4'));
    const q = encodeQuery('www.example.com', 'A');
    expect(t.answer(q, LOOPBACK)).toBeUndefined();
    t.setTrusted([ipToInt('192.168.1.1')], false, false);
    expect(t.answer(q, LOOPBACK)).toBeUndefined();
    expect(t.answer(q, ipToInt('192.168.1.2'))).toBeUndefined();
    expect(t.answer(q, ipToInt('192.168.1.1'))).toBeDefined();
    t.setTrusted([], true, false);
    expect(t.answer(q, ipToInt('127.9.9.9'))).toBeDefined();
    expect(t.answer(q, ipToInt('192.168.1.1'))).toBeUndefined();
    t.setTrusted([], false, true);
    expect(t.answer(q, ipToInt('10.1.2.3'))).toBeDefined();
  });

  it('a deleted or cleared name', () => {
    const t = table();
    const q = encodeQuery('www.example.com', 'A');
    t.set('www.example.com', 1);
    t.delete('www.example.com');
    expect(t.answer(q, LOOPBACK)).toBeUndefined();
    t.set('www.example.com', 1);
    t.clear();
    expect(t.answer(q, LOOPBACK)).toBeUndefined();
  });

  it('reports each answered name once per takeHits', () => {
    const t = table();
    t.set('a.test', 1);
    t.set('b.test', 2);
    for (const n of ['a.test', 'A.TEST', 'b.test', 'a.test']) t.answer(encodeQuery(n, 'A'), LOOPBACK);
    expect(t.takeHits().sort()).toEqual(['a.test', 'b.test']);
    expect(t.takeHits()).toEqual([]);
    t.answer(encodeQuery('b.test', 'A'), LOOPBACK);
    expect(t.takeHits()).toEqual(['b.test']);
  });

  it('rejects what is not a table or a host-order address', () => {
    const t = table();
    expect(() => t.set('x', -1)).toThrow(/FakeAnswers.set/);
    expect(() => t.setTrusted([2 ** 32], false, false)).toThrow(/host-order/);
    const sock = new DgramBatchSocket({ host: '127.0.0.1', port: 0 });
    try {
      expect(() => sock.setFastPath({} as NativeFakeAnswers)).toThrow(/setFastPath/);
      sock.setFastPath(t);
      sock.setFastPath(null);
    } finally {
      sock.close();
    }
  });
});

describe('FakeAnswers: mutated queries', () => {
  it('answers a mutated query only when JavaScript would give the same bytes (20 000 mutations, fixed seed)', () => {
    const t = table();
    const ip = ipToInt('198.18.7.7');
    t.set('www.example.com', ip);
    const seeds = [
      encodeQuery('www.example.com', 'A'),
      encodeQuery('www.example.com', 'A', { edns: 1232 }),
      raw({ flags: 0x0110, ar: 1 }, Buffer.concat([QNAME, A_IN, opt(512, 0, 0x8000)])),
    ];
    let x = 0x2545f491; // xorshift32: the same mutations every run
    const rnd = (n: number) => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) % n;
    };
    let answered = 0;
    for (let i = 0; i < 20_000; i++) {
      const q = Buffer.from(seeds[rnd(seeds.length)] as Buffer);
      for (let k = rnd(3) + 1; k > 0; k--) q[rnd(q.length)] = rnd(256);
      const cut = rnd(8) === 0 ? q.subarray(0, rnd(q.length + 1)) : q;
      const got = t.answer(cut, LOOPBACK);
      if (!got) continue;
      answered++;
      const p = parseQuery(cut);
      expect(p.kind).toBe('query');
      if (p.kind !== 'query') continue;
      expect([p.q.name, p.q.qtype, p.q.qclass, p.q.plain, p.q.edns?.version ?? 0]).toEqual([
        'www.example.com',
        1,
        1,
        true,
        0,
      ]);
      expect(got.toString('hex')).toBe(buildAResponse(cut, p.q, ip, TTL).toString('hex'));
    }
    // Mutations of the id, flags and OPT fields still make answerable queries: the check above ran.
    expect(answered).toBeGreaterThan(1000);
  });
});

describe('FakeDns with the fast path (dig against the real sockets)', () => {
  let dns: FakeDns | undefined;
  afterEach(async () => {
    await dns?.close();
    dns = undefined;
  });

  it('answers a known name natively, with what the pool holds, and counts it', async () => {
    dns = fakeDnsOn(9, { ttl: 3 });
    await dns.start();
    const port = portOf(dns);
    const first = await dig(port, ['Fast.Example.com', 'A']);
    expect(first.status).toBe('NOERROR');
    const ip = first.answers[0]?.data;
    expect(ip).toBe(dns.lookup('fast.example.com'));
    expect(dns.stats().fastAnswered).toBe(0);
    for (let i = 0; i < 5; i++) {
      const again = await dig(port, ['fast.EXAMPLE.com', 'A']);
      expect(again.answers).toEqual([{ name: 'fast.EXAMPLE.com.', ttl: 3, type: 'A', data: ip }]);
      expect(again.flags).toEqual(expect.arrayContaining(['qr', 'rd', 'ra']));
    }
    const st = dns.stats();
    expect(st.fastAnswered).toBe(5);
    expect(st.udpFastAnswered).toBe(5);
    expect(st.queries).toBe(6);
    expect(st.fakeA).toBe(6);
    expect(st.udpReceived).toBe(6);
    // Other types of the same name still go to JavaScript: NODATA for AAAA.
    const aaaa = await dig(port, ['fast.example.com', 'AAAA']);
    expect(aaaa.status).toBe('NOERROR');
    expect(aaaa.answers).toEqual([]);
    expect(dns.stats().fastAnswered).toBe(5);
  });

  it('forgets a name the pool recycled: the next answer is the new mapping', async () => {
    // 10.9.0.0/29: five addresses; a sixth name takes the least recently used one.
    dns = fakeDnsOn(9, { cidr: '10.9.0.0/29' });
    await dns.start();
    const port = portOf(dns);
    const ask = async (n: string) => (await dig(port, [n, 'A'])).answers[0]?.data;
    const ips = new Map<string, string | undefined>();
    for (const n of ['a.test', 'b.test', 'c.test', 'd.test', 'e.test']) ips.set(n, await ask(n));
    // a used again (natively): b is now the LRU, so f takes b's address.
    expect(await ask('a.test')).toBe(ips.get('a.test'));
    expect(dns.stats().fastAnswered).toBe(1);
    expect(await ask('f.test')).toBe(ips.get('b.test'));
    expect(dns.lookup('b.test')).toBeUndefined();
    // b comes back with a new mapping (c's address, now the LRU), answered by JavaScript, then natively.
    const b2 = await ask('b.test');
    expect(b2).toBe(ips.get('c.test'));
    expect(b2).toBe(dns.lookup('b.test'));
    expect(dns.stats().fastAnswered).toBe(1);
    expect(await ask('b.test')).toBe(b2);
    expect(dns.stats().fastAnswered).toBe(2);
    // c lost its address to b: JavaScript maps it again.
    expect(await ask('c.test')).toBe(dns.lookup('c.test'));
    expect(dns.stats().fastAnswered).toBe(2);
  });

  it('the controller flush: dropped names are answered by JavaScript again', async () => {
    dns = fakeDnsOn(9);
    await dns.start();
    const port = portOf(dns);
    await dig(port, ['gone.test', 'A']);
    await dig(port, ['gone.test', 'A']);
    expect(dns.stats().fastAnswered).toBe(1);
    expect(dns.flushUnpinned()?.dropped).toBe(1);
    const again = await dig(port, ['gone.test', 'A']);
    expect(again.answers[0]?.data).toBe(dns.lookup('gone.test'));
    expect(dns.stats().fastAnswered).toBe(1);
  });

  it('fastPath: false leaves every query to JavaScript with the same answers', async () => {
    dns = fakeDnsOn(9, { fastPath: false });
    await dns.start();
    const port = portOf(dns);
    const q = encodeQuery('slow.test', 'A', { edns: 1232 });
    const a1 = must(await udpExchange(port, q));
    const a2 = must(await udpExchange(port, q));
    expect(a2.equals(a1)).toBe(true);
    expect(dnsPacket.decode(a2).answers?.[0]).toMatchObject({ type: 'A', name: 'slow.test' });
    expect(dns.stats().fastAnswered).toBe(0);
  });
});

describe('DnsServer: the fast path follows the source policy', () => {
  const TABLE_IP = ipToInt('198.18.0.9');
  /**
   * A DnsServer on 127.0.0.1 with a table holding p.test → TABLE_IP; its JS
   * handler answers every A with `jsIp` and counts its calls (`js()`).
   */
  async function withServer(
    sources: DnsSourcePolicy,
    jsIp: number,
    body: (s: DnsServer, port: number, js: () => number) => Promise<void>,
  ): Promise<DnsServer> {
    const fast = new (native().FakeAnswers)({ ttl: TTL });
    fast.set('p.test', TABLE_IP);
    let js = 0;
    const s = new DnsServer(
      (msg) => {
        js++;
        const p = parseQuery(msg);
        return p.kind === 'query' ? buildAResponse(msg, p.q, jsIp, TTL) : undefined;
      },
      { sources, fastAnswers: fast },
    );
    await s.listen([{ host: '127.0.0.1', port: 0 }]);
    try {
      await body(s, must(s.addresses[0]).port, () => js);
    } finally {
      await s.close();
    }
    return s;
  }

  it('answers the sources the policy trusts natively; names not in the table reach the handler', async () => {
    const trustedList = [ipToInt('127.0.0.4')];
    const policy: DnsSourcePolicy = {
      client: (addr) => addr,
      trusted: () => false,
      trustedSources: () => trustedList,
    };
    const s = await withServer(policy, TABLE_IP, async (s, port, js) => {
      // The policy trusts loopback: 127.0.0.1 is answered natively.
      const r = must(await udpExchange(port, encodeQuery('p.test', 'A')));
      expect(dnsPacket.decode(r).answers?.[0]).toMatchObject({ data: '198.18.0.9', ttl: TTL });
      expect(s.stats.udpFastAnswered).toBe(1);
      expect(js()).toBe(0);
      // A name not in the table reaches the handler.
      await udpExchange(port, encodeQuery('q.test', 'A'));
      expect(js()).toBe(1);
      expect(s.stats.udpReceived).toBe(2);
    });
    expect(s.stats.udpFastAnswered).toBe(1);
  });

  it('a policy that serves nobody yet (trustedSources undefined): JavaScript answers, loopback included, until it does', async () => {
    let list: readonly number[] | undefined;
    const policy: DnsSourcePolicy = { client: (a) => a, trusted: () => true, trustedSources: () => list };
    await withServer(policy, 1, async (s, port, js) => {
      await udpExchange(port, encodeQuery('p.test', 'A'));
      expect([js(), s.stats.udpFastAnswered]).toEqual([1, 0]);
      list = [];
      // The first batch JS gets after the change hands it over; the next query is native.
      await udpExchange(port, encodeQuery('p.test', 'A'));
      const r = must(await udpExchange(port, encodeQuery('p.test', 'A')));
      expect(dnsPacket.decode(r).answers?.[0]).toMatchObject({ data: '198.18.0.9' });
      expect([js(), s.stats.udpFastAnswered]).toEqual([2, 1]);
    });
  });

  it('a policy without trustedSources: JavaScript answers everything', async () => {
    await withServer({ client: (a) => a, trusted: () => true }, 1, async (s, port, js) => {
      const r = must(await udpExchange(port, encodeQuery('p.test', 'A')));
      expect(dnsPacket.decode(r).answers?.[0]).toMatchObject({ data: '0.0.0.1' });
      expect(js()).toBe(1);
      expect(s.stats.udpFastAnswered).toBe(0);
    });
  });
});
