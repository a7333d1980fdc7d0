import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Upstream } from '../../../src/dns/index.js';
import { matches } from '../../../src/dns/upstream.js';
import { parseQuery } from '../../../src/dns/wire.js';
import { type Dnsmasq, encodeQuery, firstData, startDnsmasq } from './helpers.js';

function qEnd(q: Buffer): number {
  const p = parseQuery(q);
  if (p.kind !== 'query') throw new Error('bad test query');
  return p.q.questionEnd;
}

/**
 * Binds a UDP socket and, when asked, a TCP server on the same free port of
 * 127.0.0.1. A kernel-chosen UDP port can be taken on TCP by another suite
 * running at the same time, so a clash just tries another port.
 */
async function bindPair(withTcp: boolean): Promise<{ udp: dgram.Socket; tcp?: net.Server }> {
  for (let attempt = 0; ; attempt++) {
    const udp = dgram.createSocket('udp4');
    await new Promise<void>((r) => udp.bind(0, '127.0.0.1', () => r()));
    if (!withTcp) return { udp };
    const tcp = net.createServer();
    const err = await new Promise<Error | undefined>((r) => {
      tcp.once('error', r);
      tcp.listen(udp.address().port, '127.0.0.1', () => r(undefined));
    });
    if (!err) return { udp, tcp };
    udp.close();
    if (attempt >= 20) throw err;
  }
}

/** Closes of the fakeUpstreams a test started. */
const upstreams: Array<() => void> = [];
afterEach(() => {
  for (const close of upstreams.splice(0)) close();
});

/** A scripted UDP (and optional TCP) server on 127.0.0.1 standing in for a misbehaving upstream; closed after the test. */
async function fakeUpstream(
  onUdp: (q: Buffer, reply: (b: Buffer) => void, n: number) => void,
  onTcp?: (q: Buffer) => Buffer,
) {
  const { udp, tcp } = await bindPair(onTcp !== undefined);
  const port = udp.address().port;
  let n = 0;
  udp.on('message', (m, ri) => onUdp(m, (b) => udp.send(b, ri.port, ri.address), n++));
  if (tcp && onTcp) {
    tcp.on('connection', (s) => {
      s.on('data', (d) => {
        const out = onTcp(d.subarray(2, 2 + d.readUInt16BE(0)));
        const f = Buffer.alloc(out.length + 2);
        f.writeUInt16BE(out.length, 0);
        out.copy(f, 2);
        s.write(f);
      });
    });
  }
  upstreams.push(() => {
    udp.close();
    tcp?.close();
  });
  return { port, count: () => n };
}

function set16(b: Buffer, off: number, v: number): Buffer {
  b.writeUInt16BE(v, off);
  return b;
}

function answerFor(q: Buffer, opts: { id?: number; name?: string; tc?: boolean; ip?: string } = {}): Buffer {
  const d = dnsPacket.decode(q);
  const name = opts.name ?? d.questions?.[0]?.name ?? '';
  return dnsPacket.encode({
    type: 'response',
    id: opts.id ?? d.id,
    flags: opts.tc ? dnsPacket.TRUNCATED_RESPONSE : 0,
    questions: [{ name, type: 'A' }],
    answers: opts.tc ? [] : [{ name, type: 'A', ttl: 5, data: opts.ip ?? '10.0.0.7' }],
  });
}

let dm: Dnsmasq;
beforeAll(async () => {
  dm = await startDnsmasq();
});
afterAll(async () => {
  await dm?.stop();
});

describe('Upstream', () => {
  it('asks dnsmasq and returns its answer with a random id', async () => {
    const u = new Upstream({ host: '127.0.0.1', port: dm.port });
    const q = encodeQuery('txt.example.test', 'TXT', { id: 7 });
    const r = await u.query(q, qEnd(q));
    const d = dnsPacket.decode(r);
    expect((firstData(d) as Buffer[]).map(String)).toEqual(['hello']);
    expect(u.inFlight).toBe(0);
  });

  it('falls back to TCP when dnsmasq truncates the UDP answer', async () => {
    const u = new Upstream({ host: '127.0.0.1', port: dm.port });
    const q = encodeQuery('big.example.test', 'TXT');
    const r = await u.query(q, qEnd(q));
    expect(r.length).toBeGreaterThan(512);
    expect(dnsPacket.decode(r).answers).toHaveLength(6);
  });

  it('ignores responses with the wrong id or question, accepts the matching one', async () => {
    const f = await fakeUpstream((q, reply) => {
      reply(answerFor(q, { id: (q.readUInt16BE(0) + 1) & 0xffff, ip: '10.0.0.1' }));
      reply(answerFor(q, { name: 'evil.example', ip: '10.0.0.2' }));
      reply(Buffer.from('junk'));
      reply(answerFor(q, { ip: '10.0.0.3' }));
    });
    const u = new Upstream({ host: '127.0.0.1', port: f.port });
    const q = encodeQuery('Good.Example', 'A');
    const d = dnsPacket.decode(await u.query(q, qEnd(q)));
    expect(firstData(d)).toBe('10.0.0.3');
  });

  it('times out, retries once with a new id, then fails', async () => {
    const ids: number[] = [];
    const f = await fakeUpstream((q) => ids.push(q.readUInt16BE(0)));
    const u = new Upstream({ host: '127.0.0.1', port: f.port, timeoutMs: 100, retries: 1 });
    const q = encodeQuery('x.example', 'A', { id: 1 });
    await expect(u.query(q, qEnd(q))).rejects.toMatchObject({ code: 'EUPSTREAM' });
    expect(ids).toHaveLength(2);
    expect(u.inFlight).toBe(0);
  });

  it('succeeds on the retry when the first attempt is lost', async () => {
    const f = await fakeUpstream((q, reply, n) => {
      if (n > 0) reply(answerFor(q));
    });
    const u = new Upstream({ host: '127.0.0.1', port: f.port, timeoutMs: 100 });
    const q = encodeQuery('x.example', 'A');
    const d = dnsPacket.decode(await u.query(q, qEnd(q)));
    expect(d.answers).toHaveLength(1);
    expect(f.count()).toBe(2);
  });

  it('uses TCP after a TC answer from a scripted upstream', async () => {
    const f = await fakeUpstream(
      (q, reply) => reply(answerFor(q, { tc: true })),
      (q) => answerFor(q, { ip: '10.0.0.9' }),
    );
    const u = new Upstream({ host: '127.0.0.1', port: f.port, timeoutMs: 500 });
    const q = encodeQuery('tc.example', 'A');
    const d = dnsPacket.decode(await u.query(q, qEnd(q)));
    expect(firstData(d)).toBe('10.0.0.9');
  });

  it('refuses beyond maxInFlight at once', async () => {
    const f = await fakeUpstream(() => {});
    const u = new Upstream({ host: '127.0.0.1', port: f.port, timeoutMs: 200, retries: 0, maxInFlight: 2 });
    const q = encodeQuery('x.example', 'A');
    const a = u.query(q, qEnd(q)).catch((e) => e);
    const b = u.query(q, qEnd(q)).catch((e) => e);
    await expect(u.query(q, qEnd(q))).rejects.toMatchObject({ code: 'EUPSTREAMBUSY' });
    expect(u.inFlight).toBe(2);
    await Promise.all([a, b]);
    expect(u.inFlight).toBe(0);
  });

  it('close() aborts outstanding questions', async () => {
    const f = await fakeUpstream(() => {});
    const u = new Upstream({ host: '127.0.0.1', port: f.port, timeoutMs: 10_000 });
    const q = encodeQuery('x.example', 'A');
    const p = u.query(q, qEnd(q));
    await new Promise((r) => setTimeout(r, 20));
    u.close();
    await expect(p).rejects.toMatchObject({ code: 'EUPSTREAM' });
  });

  it.each([
    ['same', (r: Buffer) => r, true],
    [
      'other case in the name (RFC 4343)',
      (r: Buffer) => Buffer.from(r.toString('latin1').replace('abc', 'ABC'), 'latin1'),
      true,
    ],
    ['other id', (r: Buffer) => set16(r, 0, r.readUInt16BE(0) ^ 1), false],
    ['QR clear', (r: Buffer) => set16(r, 2, r.readUInt16BE(2) & 0x7fff), false],
    ['other type', (r: Buffer) => set16(r, r.length - 4, 28), false],
    ['short', (r: Buffer) => r.subarray(0, 10), false],
  ])('matches(): %s → %s', (_n, mutate, want) => {
    const q = encodeQuery('abc.example', 'A');
    const r = Buffer.from(q);
    r.writeUInt16BE(0x8180, 2);
    expect(matches(mutate(r), q, qEnd(q))).toBe(want);
  });
});
