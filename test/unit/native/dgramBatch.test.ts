/**
 * The batched UDP socket (native/dgram_batch*.cc + src/util/dgramBatch.ts)
 * on real loopback sockets, no root: datagrams arrive intact with their
 * source, replies go back in batches, oversized datagrams and a full receive
 * buffer are dropped and counted.
 */
import { createHash } from 'node:crypto';
import dgram from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { DgramBatchSocket, M_LEN, M_OFF, META_WORDS, peerAddress, wordsToIp } from '../../../src/util/dgramBatch.js';

const open: Array<{ close(): void }> = [];
afterEach(() => {
  for (const s of open.splice(0)) {
    try {
      s.close();
    } catch {
      // already closed
    }
  }
});

function client(type: 'udp4' | 'udp6' = 'udp4'): Promise<dgram.Socket> {
  const c = dgram.createSocket(type);
  open.push(c);
  return new Promise((resolve) => c.bind(0, type === 'udp4' ? '127.0.0.1' : '::1', () => resolve(c)));
}

function batchSocket(host: string, opts: { batch?: number; maxDatagram?: number; recvBufferBytes?: number } = {}) {
  const s = new DgramBatchSocket({ host, port: 0, ...opts });
  open.push(s);
  return s;
}

const payload = (i: number) => {
  const b = Buffer.alloc(1 + (i % 1400));
  for (let j = 0; j < b.length; j++) b[j] = (i * 31 + j) & 255;
  return b;
};
const digest = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

const until = async (cond: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
};

describe('DgramBatchSocket', () => {
  it('receives 2000 datagrams intact with their source, in batches, and echoes them back in batches', async () => {
    const s = batchSocket('127.0.0.1');
    const c = await client();
    const seen = new Map<string, number>();
    const sources = new Set<string>();
    let batches = 0;
    s.start((bytes, meta, count) => {
      batches++;
      for (let i = 0; i < count; i++) {
        const b = i * META_WORDS;
        const msg = bytes.subarray(meta[b + M_OFF], (meta[b + M_OFF] as number) + (meta[b + M_LEN] as number));
        sources.add(`${peerAddress(meta, i)}:${meta[b + 3]}`);
        seen.set(digest(msg), (seen.get(digest(msg)) ?? 0) + 1);
        s.reply(msg, meta, i);
      }
    });
    const echoed = new Map<string, number>();
    let echoes = 0;
    c.on('message', (m, rinfo) => {
      expect(rinfo.port).toBe(s.address().port);
      echoed.set(digest(m), (echoed.get(digest(m)) ?? 0) + 1);
      echoes++;
    });
    const N = 2000;
    const want = new Map<string, number>();
    // Bursts of 40 (≤ 40 × 1.4 KB, well inside the default receive buffer), so nothing overflows and batches form.
    for (let i = 0; i < N; i += 40) {
      for (let j = i; j < i + 40; j++) {
        const p = payload(j);
        want.set(digest(p), (want.get(digest(p)) ?? 0) + 1);
        c.send(p, s.address().port, '127.0.0.1');
      }
      await until(() => echoes >= i + 40);
    }
    expect(sources).toEqual(new Set([`127.0.0.1:${c.address().port}`]));
    expect(seen).toEqual(want);
    expect(echoed).toEqual(want);
    const st = s.stats();
    expect(st.received).toBe(N);
    expect(st.sent).toBe(N);
    expect(st.kernelDrops + st.truncated + st.sendDropped).toBe(0);
    // Batching happened both ways: fewer JS calls and sendmmsg calls than datagrams.
    expect(batches).toBeLessThan(N);
    expect(st.sendCalls).toBeLessThan(N);
  });

  it('works over IPv6 and formats the peer address', async () => {
    const s = batchSocket('::1');
    const c = await client('udp6');
    const got: string[] = [];
    s.start((bytes, meta, count) => {
      for (let i = 0; i < count; i++) {
        got.push(peerAddress(meta, i));
        s.reply(Buffer.from(`re:${bytes.toString()}`), meta, i);
      }
    });
    const reply = new Promise<string>((resolve) => c.once('message', (m) => resolve(m.toString())));
    c.send('hi', s.address().port, '::1');
    expect(await reply).toBe('re:hi');
    expect(got).toEqual(['::1']);
    expect(s.address()).toMatchObject({ address: '::1', family: 'IPv6' });
  });

  it('drops a datagram larger than maxDatagram and counts it (truncated); the next one still arrives', async () => {
    const s = batchSocket('127.0.0.1', { maxDatagram: 512 });
    const c = await client();
    const lens: number[] = [];
    s.start((_b, meta, count) => {
      for (let i = 0; i < count; i++) lens.push(meta[i * META_WORDS + M_LEN] as number);
    });
    c.send(Buffer.alloc(2000), s.address().port, '127.0.0.1');
    c.send(Buffer.alloc(512), s.address().port, '127.0.0.1');
    await until(() => lens.length === 1);
    await until(() => s.stats().truncated === 1);
    expect(lens).toEqual([512]);
  });

  it('a full receive buffer drops in the kernel, counted: received + kernelDrops = sent', async () => {
    const s = batchSocket('127.0.0.1', { recvBufferBytes: 4096 });
    const c = await client();
    const N = 3000;
    let sent = 0;
    await new Promise<void>((resolve) => {
      for (let i = 0; i < N; i++)
        c.send(Buffer.alloc(200), s.address().port, '127.0.0.1', () => {
          if (++sent === N) resolve();
        });
    });
    let received = 0;
    s.start((_b, _m, count) => {
      received += count;
    });
    // Nudge: one more datagram after the flood reports the final overflow count on arrival.
    await until(() => received > 0);
    c.send(Buffer.alloc(1), s.address().port, '127.0.0.1');
    await until(() => s.stats().received + s.stats().kernelDrops === N + 1);
    expect(s.stats().kernelDrops).toBeGreaterThan(0);
    expect(received).toBe(s.stats().received);
  });

  it('rejects a bind to an address in use with EADDRINUSE', () => {
    const s = batchSocket('127.0.0.1');
    expect(() => new DgramBatchSocket({ host: '127.0.0.1', port: s.address().port })).toThrow(
      expect.objectContaining({ code: 'EADDRINUSE' }),
    );
  });

  it('formats IPv4 and IPv6 address words', () => {
    expect(wordsToIp(4, new Uint32Array([0xc6120001]), 0)).toBe('198.18.0.1');
    expect(wordsToIp(6, new Uint32Array([0x20010db8, 0, 0, 1]), 0)).toBe('2001:db8::1');
    expect(wordsToIp(6, new Uint32Array([0, 0, 0, 0]), 0)).toBe('::');
    expect(wordsToIp(6, new Uint32Array([0xfe800000, 0, 0x02000000, 0x00000001]), 0)).toBe('fe80::200:0:0:1');
  });
});
