/**
 * Relay between real loopback sockets: app ⇄ [a  Relay  b] ⇄ origin. Every
 * case runs against the JS Relay and the native SpliceRelay (a and b handed
 * off by fd): the same observable semantics.
 */
import { once } from 'node:events';
import type * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Relay, type RelayHandle, SpliceRelay } from '../../../src/proxy/relay.js';
import { readAll, socketError, socketPair, until } from './helpers.js';

const open: net.Socket[] = [];
const splices: SpliceRelay[] = [];
afterEach(() => {
  for (const s of open.splice(0)) s.destroy();
  for (const s of splices.splice(0)) s.stop();
});

describe.each(['js', 'native'] as const)('Relay (%s)', (kind) => {
  /** app —— a │relay│ b —— origin */
  async function chain(idleTimeoutMs?: number) {
    const [app, a] = await socketPair();
    const [b, origin] = await socketPair();
    open.push(app, a, b, origin);
    const opts = idleTimeoutMs === undefined ? {} : { idleTimeoutMs };
    let relay: RelayHandle;
    if (kind === 'js') relay = new Relay(a, b, opts);
    else {
      const s = new SpliceRelay({ ...opts, threads: 1 });
      splices.push(s);
      const h = s.handOff(a, b);
      if (!h) throw new Error('hand-off refused');
      relay = h;
    }
    return { app, a, b, origin, relay };
  }

  it('carries bytes both ways and reports the counts', async () => {
    const { app, origin, relay } = await chain();
    origin.on('data', (d: Buffer) => origin.write(Buffer.concat([d, d])));
    app.write('abc');
    const [echo] = (await once(app, 'data')) as [Buffer];
    expect(echo.toString()).toBe('abcabc');
    app.end();
    origin.on('end', () => origin.end());
    app.resume();
    const res = await relay.done;
    expect(res).toEqual({ bytesUp: 3, bytesDown: 6, end: 'done' });
  });

  it.each([
    ['app', 'origin'],
    ['origin', 'app'],
  ] as const)(
    'half-close: the %s ends its side first and still receives all the %s sends after',
    async (first, other) => {
      const ends = await chain();
      const [closer, peer] = [ends[first], ends[other]];
      // The peer answers only after it has seen the EOF (like `nc -q`, or an HTTP/1.0 upload).
      const request = readAll(peer);
      closer.end('request body');
      expect((await request).toString()).toBe('request body');
      const reply = readAll(closer);
      peer.write('reply part 1, ');
      await new Promise((r) => setTimeout(r, 20));
      peer.end('part 2');
      expect((await reply).toString()).toBe('reply part 1, part 2');
      expect((await ends.relay.done).end).toBe('done');
    },
  );

  it.each([
    ['app', 'origin', 'app-reset'],
    ['origin', 'app', 'upstream-reset'],
  ] as const)('RST from the %s is propagated to the %s as a reset (%s)', async (from, to, end) => {
    const ends = await chain();
    const [resetter, peer] = [ends[from], ends[to]];
    resetter.write('x');
    await once(peer, 'data');
    const err = socketError(peer);
    resetter.resetAndDestroy();
    expect((await err).code).toBe('ECONNRESET');
    expect((await ends.relay.done).end).toBe(end);
  });

  it('backpressure: a paused reader keeps the relay’s buffers bounded', async () => {
    const { app, a, b, origin, relay } = await chain();
    origin.pause(); // the slow reader
    const chunk = Buffer.alloc(64 * 1024, 1);
    const TOTAL = 256 * 1024 * 1024;
    let written = 0;
    let maxUserSpace = 0;
    const sample = () => {
      maxUserSpace = Math.max(maxUserSpace, a.readableLength + b.writableLength);
    };
    const timer = setInterval(sample, 5);
    // The app writes as fast as the relay lets it (it honours 'drain').
    const pump = () => {
      while (written < TOTAL) {
        written += chunk.length;
        if (!app.write(chunk)) return void app.once('drain', pump);
      }
    };
    pump();
    // Wait until the app can no longer push: no progress over 5 polls in a row.
    let last = -1;
    let still = 0;
    await until(() => {
      sample();
      const flushed = app.bytesWritten - app.writableLength;
      still = app.writableLength > 0 && flushed === last ? still + 1 : 0;
      last = flushed;
      return still >= 5 || written >= TOTAL;
    }, 20_000);
    clearInterval(timer);
    // Kernel socket buffers hold a few MiB on loopback; without backpressure the relay would hold the rest.
    expect(written).toBeLessThan(TOTAL);
    // Node's highWaterMarks (16 KiB) plus one 64 KiB read per direction, with slack.
    expect(maxUserSpace).toBeLessThan(1024 * 1024);
    // Release the reader: everything arrives.
    let received = 0;
    origin.on('data', (d: Buffer) => {
      received += d.length;
    });
    origin.resume();
    await until(() => written >= TOTAL, 30_000);
    app.end();
    await once(origin, 'end');
    expect(received).toBe(TOTAL);
    origin.end();
    expect((await relay.done).bytesUp).toBe(TOTAL);
  }, 60_000);

  it('idle timeout closes both sockets', async () => {
    const { app, origin, relay } = await chain(100);
    app.resume();
    origin.resume();
    const res = await relay.done;
    expect(res.end).toBe('idle');
    await until(() => app.readableEnded || app.destroyed);
    await until(() => origin.readableEnded || origin.destroyed);
  });

  it('traffic keeps an idle timer from firing', async () => {
    // A 1 s timeout against 50 ms spacing: a loaded machine's timer slips stay far below it.
    const { app, origin, relay } = await chain(1000);
    origin.on('data', (d: Buffer) => origin.write(d));
    app.resume();
    for (let i = 0; i < 30; i++) {
      app.write('ping');
      await new Promise((r) => setTimeout(r, 50));
    }
    // 1.5 s of traffic at 50 ms spacing: past the 1 s timeout, still open.
    expect(app.destroyed || app.readableEnded).toBe(false);
    expect(await Promise.race([relay.done.then(() => 'ended'), Promise.resolve('open')])).toBe('open');
    relay.close();
    expect((await relay.done).end).toBe('closed');
  });

  it('close("reset") resets both ends', async () => {
    const { app, origin, relay } = await chain();
    const e1 = socketError(app);
    const e2 = socketError(origin);
    relay.close('reset');
    expect((await e1).code).toBe('ECONNRESET');
    expect((await e2).code).toBe('ECONNRESET');
    expect((await relay.done).end).toBe('closed');
  });
});

describe('Relay (js): one reused read buffer per direction', () => {
  async function chain() {
    const [app, a] = await socketPair();
    const [b, origin] = await socketPair();
    open.push(app, a, b, origin);
    return { app, a, b, origin };
  }

  /** Record which ArrayBuffers the relay hands to `s.write`. */
  function writtenFrom(s: net.Socket): Set<ArrayBufferLike> {
    const seen = new Set<ArrayBufferLike>();
    const write = s.write.bind(s) as (c: Buffer, cb?: () => void) => boolean;
    (s as unknown as { write: typeof write }).write = (c, cb) => {
      seen.add(c.buffer);
      return write(c, cb);
    };
    return seen;
  }

  it('16 MiB each way arrive intact, read into one buffer per direction; early bytes first, once', async () => {
    const { app, a, b, origin } = await chain();
    // Bytes Node already holds (e.g. a handshake's leftovers) when the relay starts.
    a.unshift(Buffer.from('early-up:'));
    b.unshift(Buffer.from('early-down:'));
    const toB = writtenFrom(b);
    const toA = writtenFrom(a);
    const relay = new Relay(a, b);
    expect(relay.userBuffers).toBe(2);
    const N = 16 * 1024 * 1024;
    const up = Buffer.alloc(N);
    const down = Buffer.alloc(N);
    for (let i = 0; i < N; i++) {
      up[i] = (i * 7) & 0xff;
      down[i] = (i * 13 + 1) & 0xff;
    }
    const atOrigin = readAll(origin);
    const atApp = readAll(app);
    app.end(up);
    origin.end(down);
    expect((await atOrigin).equals(Buffer.concat([Buffer.from('early-up:'), up]))).toBe(true);
    expect((await atApp).equals(Buffer.concat([Buffer.from('early-down:'), down]))).toBe(true);
    const res = await relay.done;
    expect(res).toEqual({ bytesUp: N + 9, bytesDown: N + 11, end: 'done' });
    // The early chunk, then every read from the same 64 KiB buffer (Node's 'data' gives one ArrayBuffer per read).
    expect(toB.size).toBe(2);
    expect(toA.size).toBe(2);
  }, 60_000);
});
