import dgram from 'node:dgram';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeDns } from '../../../src/dns/index.js';
import { type Dnsmasq, dig, encodeQuery, fakeDnsOn, frame, startDnsmasq, tcpExchange, udpExchange } from './helpers.js';

let upstream: Dnsmasq;
let dns: FakeDns;
let port: number;

beforeAll(async () => {
  upstream = await startDnsmasq();
  dns = fakeDnsOn(upstream.port, { tcpIdleTimeoutMs: 300, maxTcpConnections: 8, maxUpstreamInFlight: 16 });
  await dns.start();
  port = dns.addresses[0]?.port as number;
});

afterAll(async () => {
  await dns?.close();
  await upstream?.stop();
});

/** After each bad packet the server must still answer a real client. */
async function stillServes(): Promise<void> {
  const r = await dig(port, ['alive.example.com', 'A']);
  expect(r.status).toBe('NOERROR');
  expect(r.answers[0]?.data).toMatch(/^198\.18\./);
}

function header(id: number, flags: number, qd: number, an = 0, ns = 0, ar = 0): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(id, 0);
  b.writeUInt16BE(flags, 2);
  b.writeUInt16BE(qd, 4);
  b.writeUInt16BE(an, 6);
  b.writeUInt16BE(ns, 8);
  b.writeUInt16BE(ar, 10);
  return b;
}
const tail = Buffer.from([0, 1, 0, 1]); // type A, class IN
const label = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s, 'latin1')]);

const NONE = -1;
const cases: [string, Buffer, number][] = [
  ['garbage shorter than a header', Buffer.from('hello'), NONE],
  ['empty datagram', Buffer.alloc(0), NONE],
  ['truncated header (11 bytes)', header(1, 0x0100, 1).subarray(0, 11), NONE],
  ['header only, qdcount 1, no question', header(2, 0x0100, 1), 1],
  ['qdcount 0', header(3, 0x0100, 0), 1],
  [
    'qdcount 2',
    Buffer.concat([header(4, 0x0100, 2), label('a'), Buffer.from([0]), tail, label('b'), Buffer.from([0]), tail]),
    1,
  ],
  ['compression pointer loop in the question', Buffer.concat([header(5, 0x0100, 1), Buffer.from([0xc0, 12]), tail]), 1],
  ['pointer to a pointer loop', Buffer.concat([header(6, 0x0100, 1), label('a'), Buffer.from([0xc0, 12]), tail]), 1],
  [
    'label of 64 bytes',
    Buffer.concat([header(7, 0x0100, 1), Buffer.from([64]), Buffer.alloc(64, 0x61), Buffer.from([0]), tail]),
    1,
  ],
  [
    'name longer than 255 bytes',
    Buffer.concat([
      header(8, 0x0100, 1),
      ...Array.from({ length: 5 }, () => label('a'.repeat(60))),
      Buffer.from([0]),
      tail,
    ]),
    1,
  ],
  ['label running past the end', Buffer.concat([header(9, 0x0100, 1), Buffer.from([40]), Buffer.from('abc')]), 1],
  ['question without type/class', Buffer.concat([header(10, 0x0100, 1), label('a'), Buffer.from([0, 0])]), 1],
  ['opcode STATUS (2)', Buffer.concat([header(11, 0x1100, 1), label('a'), Buffer.from([0]), tail]), 4],
  ['opcode UPDATE (5)', Buffer.concat([header(12, 0x2800, 1), label('a'), Buffer.from([0]), tail]), 4],
  ['a response (QR set) is ignored', Buffer.concat([header(13, 0x8180, 1), label('a'), Buffer.from([0]), tail]), NONE],
  [
    'additional record running past the end',
    Buffer.concat([header(14, 0x0100, 1, 0, 0, 1), label('a'), Buffer.from([0]), tail, Buffer.from([0, 0, 41])]),
    1,
  ],
  [
    'two OPT records',
    Buffer.concat([
      header(15, 0x0100, 1, 0, 0, 2),
      label('a'),
      Buffer.from([0]),
      tail,
      ...[0, 1].map(() => Buffer.from([0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0])),
    ]),
    1,
  ],
];

describe('bad input to the real server (UDP)', () => {
  it.each(cases)('%s', async (_name, bytes, rcode) => {
    const r = await udpExchange(port, bytes, rcode === NONE ? 300 : 2000);
    if (rcode === NONE) expect(r).toBeUndefined();
    else {
      expect(r).toBeDefined();
      const b = r as Buffer;
      expect(b.readUInt16BE(0)).toBe(bytes.readUInt16BE(0)); // id echoed
      expect(b.readUInt16BE(2) & 0x8000).toBe(0x8000); // QR
      expect(b.readUInt16BE(2) & 0xf).toBe(rcode);
    }
    await stillServes();
  });

  it('random garbage of every length never stops the server', async () => {
    let seed = 12345;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    const s = dgram.createSocket('udp4');
    for (let i = 0; i < 2000; i++) {
      const b = Buffer.alloc(rnd() % 300);
      for (let j = 0; j < b.length; j++) b[j] = rnd() & 0xff;
      if (b.length > 2) b[2] = (b[2] as number) & 0x7f; // mostly "queries", so the parser gets past the QR check
      s.send(b, port, '127.0.0.1');
    }
    await new Promise((r) => setTimeout(r, 200));
    s.close();
    await stillServes();
    expect(dns.stats().handlerErrors).toBe(0);
  });
});

describe('bad input to the real server (TCP)', () => {
  it('a length prefix larger than what follows: no answer, closed after the idle timeout, server fine', async () => {
    const q = encodeQuery('partial.example.com', 'A');
    const raw = Buffer.concat([Buffer.from([0x01, 0x00]), q]); // says 256 bytes, sends fewer
    const r = await tcpExchange(port, raw, { timeoutMs: 5000 });
    expect(r.replies).toHaveLength(0);
    expect(r.closed).toBe(true);
    await stillServes();
  });

  it('a client that connects and sends nothing is closed after the idle timeout', async () => {
    const before = dns.stats().tcpIdleClosed as number;
    const r = await tcpExchange(port, Buffer.alloc(0), { timeoutMs: 5000 });
    expect(r.closed).toBe(true);
    expect(dns.stats().tcpIdleClosed).toBe(before + 1);
    await stillServes();
  });

  it('a client trickling bytes is still closed (the timer waits for a complete query)', async () => {
    const s = net.connect(port, '127.0.0.1');
    const closed = new Promise<void>((r) => s.on('close', () => r()));
    s.on('error', () => {});
    const q = frame(encodeQuery('slow.example.com', 'A'));
    let i = 0;
    const iv = setInterval(() => {
      if (i < q.length - 1 && !s.destroyed) s.write(q.subarray(i, ++i));
    }, 50);
    await closed;
    clearInterval(iv);
    expect(i).toBeLessThan(q.length);
    await stillServes();
  });

  it('an oversize length prefix closes the connection at once', async () => {
    const before = dns.stats().tcpOversize as number;
    const r = await tcpExchange(port, Buffer.from([0xff, 0xff, 1, 2, 3]), { timeoutMs: 5000 });
    expect(r.closed).toBe(true);
    expect(dns.stats().tcpOversize).toBe(before + 1);
  });

  it('garbage framed over TCP gets FORMERR and the connection keeps serving', async () => {
    const bad = Buffer.concat([header(77, 0x0100, 1), Buffer.from([0xc0, 12]), tail]);
    const good = encodeQuery('after.example.com', 'A', { id: 78 });
    const r = await tcpExchange(port, Buffer.concat([frame(bad), frame(Buffer.from('xx')), frame(good)]), { count: 2 });
    const ids = r.replies.map((b) => b.readUInt16BE(0)).sort();
    expect(ids).toEqual([77, 78]);
  });

  it('connections beyond maxTcpConnections are refused, existing ones unharmed', async () => {
    const socks: net.Socket[] = [];
    for (let i = 0; i < 8; i++) {
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => {});
      await new Promise((r) => s.on('connect', r));
      socks.push(s);
    }
    await new Promise((r) => setTimeout(r, 50));
    const extra = await tcpExchange(port, frame(encodeQuery('x.example.com', 'A')), { timeoutMs: 2000 });
    expect(extra.replies).toHaveLength(0);
    expect(extra.closed).toBe(true);
    for (const s of socks) s.destroy();
    await new Promise((r) => setTimeout(r, 50));
    const ok = await dig(port, ['+tcp', 'x.example.com', 'A']);
    expect(ok.status).toBe('NOERROR');
  });
});

describe('flood', () => {
  it('10 000 queries from one source: keeps serving, upstream questions stay capped', async () => {
    const s = dgram.createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    let replies = 0;
    let fakeAnswers = 0;
    s.on('message', (m) => {
      replies++;
      if (m.readUInt16BE(0) % 2 === 1 && m.readUInt16BE(6) === 1) fakeAnswers++;
    });
    let maxInFlight = 0;
    for (let i = 0; i < 10_000; i++) {
      // half fake A (hot path), half forwarded MX
      const q =
        i % 2 ? encodeQuery(`flood${i}.example.com`, 'A', { id: i }) : encodeQuery('example.test', 'MX', { id: i });
      s.send(q, port, '127.0.0.1');
      if (i % 500 === 0) {
        await new Promise((r) => setImmediate(r));
        maxInFlight = Math.max(maxInFlight, dns.stats().upstreamInFlight as number);
      }
    }
    await new Promise((r) => setTimeout(r, 1500));
    s.close();
    expect(maxInFlight).toBeLessThanOrEqual(16);
    expect(replies).toBeGreaterThan(0);
    expect(fakeAnswers).toBeGreaterThan(0);
    expect(dns.stats().handlerErrors).toBe(0);
    await stillServes();
    // The pool holds what was asked, never more than its capacity.
    expect(dns.stats().poolMapped).toBeLessThanOrEqual(dns.stats().poolCapacity as number);
  });
});
