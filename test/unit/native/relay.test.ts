/**
 * The native splice relay (native/relay.cc) on real loopback sockets, no
 * root: bytes read before the hand-off, libuv letting go of the fds, large
 * transfers both ways at once, many pairs, bad input. The shared semantics
 * (half-close, RST, idle, close) run for both relays in
 * test/unit/proxy/relay.test.ts.
 */

import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { native, RELAY_RECORD_FIELDS } from '../../../src/native.js';
import { type RelayHandle, SpliceRelay } from '../../../src/proxy/relay.js';
import { freePort, LO, listen, readAll, socketError, socketPair, until } from '../proxy/helpers.js';

const open: net.Socket[] = [];
const splices: SpliceRelay[] = [];
afterEach(() => {
  for (const s of open.splice(0)) s.destroy();
  for (const s of splices.splice(0)) s.stop();
});

function newSplice(threads = 2): SpliceRelay {
  const s = new SpliceRelay({ threads });
  splices.push(s);
  return s;
}

/** app —— a │splice│ b —— origin, handed off at once. */
async function chain() {
  const [app, a] = await socketPair();
  const [b, origin] = await socketPair();
  open.push(app, a, b, origin);
  return { app, a, b, origin };
}

function handOff(s: SpliceRelay, a: net.Socket, b: net.Socket): RelayHandle {
  const h = s.handOff(a, b);
  if (!h) throw new Error('hand-off refused');
  return h;
}

const fdOf = (s: net.Socket) => (s as unknown as { _handle: { fd: number } })._handle.fd;
const inodeOf = (fd: number) => Number(/socket:\[(\d+)\]/.exec(readlinkSync(`/proc/self/fd/${fd}`))?.[1]);
/** Dials a closed port on 127.0.0.1 (as a u32): the relay ends connect-failed/ECONNREFUSED and the app gets a reset. */
async function expectRefusedDial(local?: Float64Array): Promise<void> {
  const s = newSplice();
  const [app, a] = await socketPair();
  open.push(app, a);
  const err = socketError(app);
  const h = s.dial(a, 0x7f000001, await freePort(), { mark: 0, connectTimeoutMs: 5000, ...(local ? { local } : {}) });
  if (!h) throw new Error('dial refused');
  const r = await h.done;
  expect(r.end).toBe('connect-failed');
  expect((r.error as NodeJS.ErrnoException).code).toBe('ECONNREFUSED');
  expect((await err).code).toBe('ECONNRESET');
}

/** An origin server listening on loopback (the next connection it accepts) and an app socket pair. */
async function originAndApp() {
  const originSrv = net.createServer({ allowHalfOpen: true });
  const port = await listen(originSrv);
  const accepted = once(originSrv, 'connection') as Promise<[net.Socket]>;
  const [app, a] = await socketPair();
  open.push(app, a);
  return { originSrv, port, accepted, app, a };
}

const openFds = () => readdirSync('/proc/self/fd').length;

/** Every epoll registration of this process: [epoll fd, target fd, target inode]. */
function epollEntries(): { ep: number; tfd: number; ino: number }[] {
  const out: { ep: number; tfd: number; ino: number }[] = [];
  for (const name of readdirSync('/proc/self/fd')) {
    let link: string;
    try {
      link = readlinkSync(`/proc/self/fd/${name}`);
    } catch {
      continue;
    }
    if (link !== 'anon_inode:[eventpoll]') continue;
    let info: string;
    try {
      info = readFileSync(`/proc/self/fdinfo/${name}`, 'utf8');
    } catch {
      continue;
    }
    for (const m of info.matchAll(/^tfd:\s*(\d+).*?ino:\s*([0-9a-f]+)/gm)) {
      out.push({ ep: Number(name), tfd: Number(m[1]), ino: Number.parseInt(m[2] as string, 16) });
    }
  }
  return out;
}

describe('SpliceRelay', () => {
  it('bytes Node read before the hand-off go first, exactly once, in order (app speaks first, server-first banner)', async () => {
    const s = newSplice();
    const { app, a, b, origin } = await chain();
    // The app speaks before "upstream connects"; the origin's banner arrives right after the "handshake".
    app.write('GET / first\n');
    origin.write('220 banner\n');
    await until(() => a.readableLength === 12 && b.readableLength === 11);
    const h = handOff(s, a, b);
    const up = readAll(origin);
    const down = readAll(app);
    app.end('second\n');
    origin.end('after banner\n');
    expect((await up).toString()).toBe('GET / first\nsecond\n');
    expect((await down).toString()).toBe('220 banner\nafter banner\n');
    expect(await h.done).toEqual({ bytesUp: 19, bytesDown: 24, end: 'done' });
  });

  it('libuv lets go: after the hand-off no epoll set of Node holds the sockets, only the relay’s dup’d fds', async () => {
    const s = newSplice(1);
    const { app, a, b, origin } = await chain();
    const fds = [fdOf(a), fdOf(b)];
    const inodes = fds.map(inodeOf);
    const before = epollEntries().filter((e) => inodes.includes(e.ino));
    // Node registered them (reading): the probe sees them before the hand-off.
    expect(before.map((e) => e.tfd).sort()).toEqual([...fds].sort());
    const h = handOff(s, a, b);
    await until(() => epollEntries().filter((e) => inodes.includes(e.ino)).length === 2);
    const after = epollEntries().filter((e) => inodes.includes(e.ino));
    for (const e of after) {
      expect(fds).not.toContain(e.tfd);
      expect(inodeOf(e.tfd)).toBe(e.ino); // a live dup of the same socket, in the relay's own epoll set
    }
    expect(new Set(after.map((e) => e.ep)).size).toBe(1);
    expect(before.map((e) => e.ep)).not.toContain(after[0]?.ep);
    // And it still relays.
    app.write('ping');
    const [d] = (await once(origin, 'data')) as [Buffer];
    expect(d.toString()).toBe('ping');
    h.close('fin');
    expect((await h.done).end).toBe('closed');
    expect(epollEntries().filter((e) => inodes.includes(e.ino))).toEqual([]);
  });

  it('64 MiB each way at once arrive intact (sha256) and the counts match', async () => {
    const s = newSplice();
    const { app, a, b, origin } = await chain();
    const h = handOff(s, a, b);
    const MiB = 1024 * 1024;
    const hashOf = (sock: net.Socket) =>
      new Promise<{ sha: string; n: number }>((resolve) => {
        const hash = createHash('sha256');
        let n = 0;
        sock.on('data', (d: Buffer) => {
          hash.update(d);
          n += d.length;
        });
        sock.once('end', () => resolve({ sha: hash.digest('hex'), n }));
      });
    const send = (sock: net.Socket) => {
      const hash = createHash('sha256');
      let left = 64;
      const pump = () => {
        while (left > 0) {
          const c = randomBytes(MiB);
          hash.update(c);
          left--;
          if (!sock.write(c)) return void sock.once('drain', pump);
        }
        sock.end();
      };
      pump();
      return hash;
    };
    const gotUp = hashOf(origin);
    const gotDown = hashOf(app);
    const sentUp = send(app);
    const sentDown = send(origin);
    const [u, d] = await Promise.all([gotUp, gotDown]);
    expect(u).toEqual({ sha: sentUp.digest('hex'), n: 64 * MiB });
    expect(d).toEqual({ sha: sentDown.digest('hex'), n: 64 * MiB });
    expect(await h.done).toEqual({ bytesUp: 64 * MiB, bytesDown: 64 * MiB, end: 'done' });
  }, 60_000);

  it('1 000 pairs at once each carry their own bytes; fds and pipes go back to the baseline after close', async () => {
    const s = newSplice();
    const baseline = openFds();
    const N = 1000;
    const pairs = await Promise.all(Array.from({ length: N }, () => chain()));
    const handles = pairs.map((p) => handOff(s, p.a, p.b));
    expect(s.totals().active).toBe(N);
    const echoes = pairs.map((p, i) => {
      p.origin.on('data', (d: Buffer) => p.origin.write(d));
      p.origin.on('end', () => p.origin.end());
      const got = readAll(p.app);
      p.app.end(`pair ${i} `.repeat(100));
      return got;
    });
    const bodies = await Promise.all(echoes);
    bodies.forEach((b, i) => {
      expect(b.toString()).toBe(`pair ${i} `.repeat(100));
    });
    const ends = await Promise.all(handles.map((h) => h.done));
    expect(ends.every((e) => e.end === 'done')).toBe(true);
    for (const p of pairs) for (const x of [p.app, p.origin]) x.destroy();
    open.splice(0);
    await until(() => openFds() <= baseline + s.totals().pipes * 2, 10_000);
    expect(s.totals().active).toBe(0);
    s.stop();
    await until(() => openFds() <= baseline, 10_000);
  }, 60_000);

  it('stop() closes live pairs with FIN and resolves their ends before it returns', async () => {
    const s = newSplice();
    const { app, a, b, origin } = await chain();
    const h = handOff(s, a, b);
    const appEnd = readAll(app);
    const originEnd = readAll(origin);
    let ended = false;
    void h.done.then(() => {
      ended = true;
    });
    s.stop();
    await Promise.resolve();
    expect(ended).toBe(true);
    expect((await h.done).end).toBe('closed');
    expect((await appEnd).length).toBe(0);
    expect((await originEnd).length).toBe(0);
    expect(s.handOff(app, origin)).toBeUndefined();
  });

  it('a trickle of ends (held back to one signal per 20 ms) and an end right before stop() each arrive exactly once', async () => {
    const s = newSplice(1);
    const pairs: RelayHandle[] = [];
    for (let i = 0; i < 6; i++) {
      const { a, b } = await chain();
      pairs.push(handOff(s, a, b));
    }
    // One at a time, each once the previous end arrived: every end after the first comes
    // within 20 ms of the last signal, so its signal is held back and must still come.
    for (const h of pairs.slice(0, 5)) {
      h.close('fin');
      expect((await h.done).end).toBe('closed');
    }
    expect(s.totals().active).toBe(1);
    // Ended (possibly held) and stopped at once: stop() hands it over.
    const last = pairs[5] as RelayHandle;
    last.close('reset');
    s.stop();
    expect((await last.done).end).toBe('closed');
    expect(s.totals().active).toBe(0);
  });

  it('live byte counts are readable while the pair runs', async () => {
    const s = newSplice();
    const { app, a, b, origin } = await chain();
    const h = handOff(s, a, b);
    origin.resume();
    app.write(Buffer.alloc(5000));
    await until(() => h.bytesUp === 5000);
    expect(h.bytesDown).toBe(0);
    expect(s.totals().bytesUp).toBeGreaterThanOrEqual(5000);
    const e1 = socketError(app);
    // The origin may see its RST as ECONNRESET or (a kernel/libuv race right
    // after it read data, the JS Relay shows it too) as EOF: not asserted here.
    origin.on('error', () => {});
    h.close('reset');
    expect((await e1).code).toBe('ECONNRESET');
    expect((await h.done).bytesUp).toBe(5000);
    expect(h.bytesUp).toBe(5000);
  });
});

describe('native Relay: bad input gets a clear error, never a crash', () => {
  const records: Float64Array[] = [];
  const make = () => new (native().Relay)({ threads: 1, idleTimeoutMs: 0 }, (r) => records.push(r));

  it('fds that are not sockets, closed fds, the same fd twice, a live id again', async () => {
    const r = make();
    const [x, y] = await socketPair();
    open.push(x, y);
    const file = openSync('/dev/null', 'r');
    try {
      expect(() => r.add(1, file, fdOf(y))).toThrow(expect.objectContaining({ code: 'ENOTSOCK' }));
      expect(() => r.add(1, file, fdOf(y))).toThrow(/app fd \d+ is not a socket/);
      expect(() => r.add(1, fdOf(x), 987654)).toThrow(expect.objectContaining({ code: 'EBADF' }));
      expect(() => r.add(1, fdOf(x), -1)).toThrow(/upstream fd -1 is not an open file descriptor/);
      expect(() => r.add(1, fdOf(x), fdOf(x))).toThrow(/same socket/);
      expect(() => r.add(-5, fdOf(x), fdOf(y))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => r.add(1, 1.5, fdOf(y))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      r.add(7, fdOf(x), fdOf(y));
      expect(() => r.add(7, fdOf(x), fdOf(y))).toThrow(expect.objectContaining({ code: 'EEXIST' }));
      expect(r.totals().active).toBe(1);
    } finally {
      closeSync(file);
    }
    expect(r.close(7, false)).toBe(true);
    await until(() => r.totals().active === 0);
    // Double close and unknown ids: false, nothing else.
    expect(r.close(7, false)).toBe(false);
    expect(r.close(12345, true)).toBe(false);
    expect(r.bytes(7, new Float64Array(2))).toBe(false);
    expect(() => r.bytes(7, new Float64Array(1))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
    const left = r.stop();
    const all = [...records.flatMap((a) => [...a]), ...left];
    expect(all.length).toBe(RELAY_RECORD_FIELDS);
    expect(all[0]).toBe(7);
    expect(all[3]).toBe(4); // closed
    expect(r.stop().length).toBe(0);
    expect(() => r.add(8, fdOf(x), fdOf(y))).toThrow(expect.objectContaining({ code: 'ESHUTDOWN' }));
    expect(() => r.close(8, false)).toThrow(expect.objectContaining({ code: 'ESHUTDOWN' }));
  });

  it('dial: the relay connects the upstream itself; bytes and a FIN the app sends before the connect is done arrive once, in order', async () => {
    const s = newSplice();
    const { originSrv, port, accepted, app, a } = await originAndApp();
    // Request and FIN leave the app before dial(): a FIN forwarded to a SYN_SENT socket would abort its connect.
    app.end('GET / first\n');
    await until(() => a.readableLength === 12);
    const h = s.dial(a, LO, port, { mark: 0, connectTimeoutMs: 5000 });
    if (!h) throw new Error('dial refused');
    const [origin] = await accepted;
    open.push(origin);
    originSrv.close();
    expect((await readAll(origin)).toString()).toBe('GET / first\n');
    const down = readAll(app);
    origin.end('reply\n');
    expect((await down).toString()).toBe('reply\n');
    expect(await h.done).toEqual({ bytesUp: 12, bytesDown: 6, end: 'done' });
  });

  it("dial: an origin's last bytes and its FIN reach the app in one segment, not two", async () => {
    // The origin corks its reply and shuts down: reply and FIN arrive at the relay in one segment,
    // some time after the connect (so the relay has long been relaying).
    const py = spawn('python3', [
      '-S',
      '-c',
      [
        'import socket,time',
        "s=socket.socket();s.bind(('127.0.0.1',0));s.listen(1)",
        'print(s.getsockname()[1],flush=True)',
        'c,_=s.accept();time.sleep(0.2)',
        'c.setsockopt(socket.IPPROTO_TCP,socket.TCP_CORK,1);c.sendall(b"reply\\n");c.shutdown(socket.SHUT_WR)',
        'c.recv(1);c.close()',
      ].join('\n'),
    ]);
    try {
      const [line] = (await once(py.stdout, 'data')) as [Buffer];
      const s = newSplice();
      const [app, a] = await socketPair();
      open.push(app, a);
      const h = s.dial(a, LO, Number(line.toString().trim()), { mark: 0, connectTimeoutMs: 5000 });
      if (!h) throw new Error('dial refused');
      expect((await readAll(app)).toString()).toBe('reply\n');
      // Segments the app received: the SYN-ACK, then the reply carrying the FIN (3 with a FIN of its own).
      const ss = spawnSync('ss', ['-tinH', `sport = :${app.localPort}`], { encoding: 'utf8' });
      expect(/segs_in:(\d+)/.exec(ss.stdout)?.[1], ss.stdout).toBe('2');
      app.end();
      expect(await h.done).toEqual({ bytesUp: 0, bytesDown: 6, end: 'done' });
    } finally {
      py.kill();
    }
  });

  it('dial: a refused connect resets the app and ends connect-failed/ECONNREFUSED; an IPv4 u32 address works too', async () => {
    await expectRefusedDial();
  });

  it('dial with local: connects before it returns and reports the bound address the origin sees as its peer', async () => {
    const s = newSplice();
    const { originSrv, port, accepted, app, a } = await originAndApp();
    const local = new Float64Array([-1, -1]);
    const h = s.dial(a, LO, port, { mark: 0, connectTimeoutMs: 5000, local });
    if (!h) throw new Error('dial refused');
    // Written synchronously: the loop guard reads it before anything else runs.
    expect(local[0]).toBe(0x7f000001);
    expect(local[1]).toBeGreaterThan(0);
    const [origin] = await accepted;
    open.push(origin);
    originSrv.close();
    expect(origin.remotePort).toBe(local[1]);
    expect(origin.remoteAddress).toBe('127.0.0.1');
    app.end('ping\n');
    expect((await readAll(origin)).toString()).toBe('ping\n');
    origin.end('pong\n');
    expect((await readAll(app)).toString()).toBe('pong\n');
    expect(await h.done).toEqual({ bytesUp: 5, bytesDown: 5, end: 'done' });
  });

  it('dial with local: a refused connect still ends connect-failed/ECONNREFUSED on the relay and resets the app', async () => {
    await expectRefusedDial(new Float64Array(2));
  });

  it('dial: a connect that gets no answer ends connect-failed/ETIMEDOUT after connectTimeoutMs and resets the app', async () => {
    // A listener whose accept queue is full (backlog 0 holds one connection, never accepted): the kernel drops further SYNs.
    const py = spawn('python3', [
      '-S',
      '-c',
      "import socket,sys,time\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen(0)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(60)",
    ]);
    try {
      const [line] = (await once(py.stdout, 'data')) as [Buffer];
      const port = Number(line.toString().trim());
      const fill = net.connect({ host: LO, port });
      open.push(fill);
      await once(fill, 'connect');
      const s = newSplice();
      const [app, a] = await socketPair();
      open.push(app, a);
      const err = socketError(app);
      const t0 = performance.now();
      const h = s.dial(a, LO, port, { mark: 0, connectTimeoutMs: 300 });
      if (!h) throw new Error('dial refused');
      const r = await h.done;
      expect(r.end).toBe('connect-failed');
      expect((r.error as NodeJS.ErrnoException).code).toBe('ETIMEDOUT');
      expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
      expect((await err).code).toBe('ECONNRESET');
    } finally {
      py.kill();
    }
  });

  it('dial: bad arguments throw; a mark needs CAP_NET_ADMIN or fails at once with EPERM', async () => {
    const r = new (native().Relay)({ threads: 1, idleTimeoutMs: 0 }, () => {});
    const [x] = await socketPair();
    open.push(x);
    try {
      expect(() => r.dial(1, fdOf(x), 'not-an-ip', 80, 0, 1000)).toThrow(
        expect.objectContaining({ code: 'ERR_INVALID_ARG' }),
      );
      expect(() => r.dial(1, fdOf(x), LO, 0, 0, 1000)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => r.dial(1, fdOf(x), LO, 80, -1, 1000)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => r.dial(1, fdOf(x), LO, 80, 0, 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG' }));
      expect(() => r.dial(1, 987654, LO, 80, 0, 1000)).toThrow(expect.objectContaining({ code: 'EBADF' }));
    } finally {
      r.stop();
    }
  });

  it('bad options', () => {
    const R = native().Relay;
    expect(() => new R({ threads: 0, idleTimeoutMs: 0 }, () => {})).toThrow(/threads must be an integer in \[1, 256\]/);
    expect(() => new R({ threads: 1, idleTimeoutMs: -1 }, () => {})).toThrow(/idleTimeoutMs/);
    expect(() => new R({ threads: 1, idleTimeoutMs: 0, pipeSize: 10 }, () => {})).toThrow(/pipeSize/);
  });
});
