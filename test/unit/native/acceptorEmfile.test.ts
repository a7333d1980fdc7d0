/**
 * TcpAcceptor out of file descriptors, for real: a child process (the built
 * Listener from dist/, as the daemon runs it) with RLIMIT_NOFILE lowered to
 * 256 by prlimit fills its fd table, real loopback clients connect, then the
 * fds are freed. At EMFILE each pending connection is accepted on the reserve
 * fd and reset (the client sees ECONNRESET instead of hanging in the backlog)
 * and counted once — a level-triggered poll that spun on the pending
 * connection would count it thousands of times —, the exhaustion line comes
 * at most once per 10 s, and once fds are free the next connection is
 * proxied again.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import * as net from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { LO, socketError, until } from '../proxy/helpers.js';

const dist = (p: string) => fileURLToPath(new URL(`../../../dist/src/${p}`, import.meta.url));

// The child: an echo origin, the Listener on 127.0.0.1 (native accept) with a NAT that sends every
// peer to the origin through `direct`. Commands on stdin: "fill" (open /dev/null until EMFILE),
// "free" (close those), "stats"; answers one JSON line each on stdout. The Listener logs to stderr.
const CHILD = `
import { openSync, closeSync } from 'node:fs';
import * as net from 'node:net';
import { createInterface } from 'node:readline';
import { TcpListener } from ${JSON.stringify(dist('proxy/listener.js'))};
import { Router } from ${JSON.stringify(dist('proxy/router.js'))};
import { DirectOutbound } from ${JSON.stringify(dist('proxy/outbounds/direct.js'))};
import { resourceAlarm } from ${JSON.stringify(dist('util/exhaustion.js'))};
const origin = net.createServer((s) => s.pipe(s)).listen(0, '127.0.0.1');
await new Promise((r) => origin.once('listening', r));
const dst = { dstIp: '127.0.0.1', dstPort: origin.address().port };
let id = 0;
const nat = {
  lookup: (proto, natIp, natPort) => ({ id: ++id, proto, srcIp: '198.18.0.1', srcPort: 40000, ...dst, natIp, natPort,
    state: 'established', createdMs: 0, lastSeenMs: 0, pktsOut: 0, bytesOut: 0, pktsIn: 0, bytesIn: 0 }),
};
const relayThreads = process.env.RELAY_THREADS ? Number(process.env.RELAY_THREADS) : undefined;
const l = new TcpListener({ host: '127.0.0.1', port: 0, nat, names: { reverse: () => undefined }, relayThreads,
  router: new Router({ final: new DirectOutbound() }), logger: (line) => process.stderr.write(line + '\\n') });
await l.start();
const held = [];
const say = (o) => process.stdout.write(JSON.stringify(o) + '\\n');
say({ port: l.address().port });
for await (const cmd of createInterface({ input: process.stdin })) {
  if (cmd.startsWith('fill')) {
    // "fill N": leave N fds free.
    // The previous connection's fds (relay pair, origin side) close asynchronously: wait for them,
    // or they would free up right after the fill and let a connection through.
    for (;;) {
      const originConns = await new Promise((r) => origin.getConnections((_e, n) => r(n)));
      if (l.stats().active === 0 && originConns === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    for (;;) {
      try { held.push(openSync('/dev/null', 'r')); } catch (e) { say({ filled: held.length, code: e.code }); break; }
    }
    for (const fd of held.splice(held.length - Number(cmd.slice(5) || 0))) closeSync(fd);
  } else if (cmd === 'free') {
    for (const fd of held.splice(0)) closeSync(fd);
    say({ freed: true });
  } else if (cmd === 'stats') {
    const st = l.stats();
    say({ accepted: st.accepted, nativeDials: st.nativeDials, exhaustion: resourceAlarm.totals() });
  }
}
`;

const children: ChildProcess[] = [];
const sockets: net.Socket[] = [];
afterEach(() => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

interface Child {
  ask(cmd: string): Promise<Record<string, unknown>>;
  first: Promise<Record<string, unknown>>;
  /** stderr lines with the time each arrived (ms). */
  lines: { at: number; text: string }[];
}

function startChild(env: Record<string, string> = {}): Child {
  const c = spawn('prlimit', ['--nofile=256:256', process.execPath, '--input-type=module', '-e', CHILD], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  children.push(c);
  const lines: Child['lines'] = [];
  let err = '';
  c.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err += d;
    for (let nl = err.indexOf('\n'); nl >= 0; nl = err.indexOf('\n')) {
      lines.push({ at: Date.now(), text: err.slice(0, nl) });
      err = err.slice(nl + 1);
    }
  });
  const waiting: ((o: Record<string, unknown>) => void)[] = [];
  let out = '';
  c.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    for (let nl = out.indexOf('\n'); nl >= 0; nl = out.indexOf('\n')) {
      const o = JSON.parse(out.slice(0, nl)) as Record<string, unknown>;
      out = out.slice(nl + 1);
      waiting.shift()?.(o);
    }
  });
  const next = () =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      waiting.push(resolve);
      c.once('exit', (code) => reject(new Error(`child exited ${code}: ${lines.map((l) => l.text).join(' | ')}`)));
    });
  return {
    first: next(),
    lines,
    ask: (cmd) => {
      const p = next();
      c.stdin?.write(`${cmd}\n`);
      return p;
    },
  };
}

async function echo(port: number, msg: string): Promise<string> {
  const s = net.connect({ host: LO, port });
  sockets.push(s);
  s.setEncoding('latin1');
  s.write(msg);
  let got = '';
  for await (const d of s) {
    got += d;
    if (got.length >= msg.length) break;
  }
  s.destroy();
  return got;
}

const K = 5;

describe('TcpAcceptor at EMFILE (RLIMIT_NOFILE 256 in a child process)', () => {
  it('resets each pending connection once without spinning, logs once per 10 s, and serves again when fds free up', async () => {
    expect(existsSync(dist('proxy/listener.js')), 'dist/ is built (npm run build)').toBe(true);
    const child = startChild();
    const { port } = (await child.first) as { port: number };
    expect(await echo(port, 'before')).toBe('before');

    const full = await child.ask('fill');
    expect(full.code).toBe('EMFILE');
    expect(full.filled as number).toBeGreaterThan(100);
    // K real clients, one after another: each is accepted on the reserve fd and reset at once.
    for (let i = 0; i < K; i++) {
      const s = net.connect({ host: LO, port });
      sockets.push(s);
      const e = (await socketError(s).catch((x) => x)) as NodeJS.ErrnoException;
      expect({ i, code: e.code, m: e.message }).toEqual({ i, code: 'ECONNRESET', m: expect.any(String) });
    }
    const st = await child.ask('stats');
    // One failed accept per connection: a spinning poll would count each pending one many times.
    expect((st.exhaustion as Record<string, number>).EMFILE).toBe(K);
    expect(st.accepted).toBe(1);

    // The exhaustion line names the cause, the limit and the fix; within 10 s only the first comes.
    const emfile = () => child.lines.filter((l) => l.text.includes('EMFILE'));
    await until(() => emfile().length >= 1);
    expect(emfile()[0]?.text).toMatch(/out of file descriptors \(EMFILE: the open-file limit of this process, 256\)/);
    expect(emfile()[0]?.text).toMatch(/raise it \(systemd LimitNOFILE=, ulimit -n\)/);
    expect(emfile()[0]?.text).toMatch(/1 failure \(tcp accept 1\); 1 since start/);
    // The other K-1 are reported together when the 10 s are over, not one line each.
    await until(() => emfile().length >= 2, 20_000);
    const [a, b] = emfile() as [{ at: number; text: string }, { at: number; text: string }];
    expect(b.text).toMatch(
      new RegExp(`${K - 1} failures in the last 1\\d s \\(tcp accept ${K - 1}\\); ${K} since start`),
    );
    expect(b.at - a.at).toBeGreaterThanOrEqual(9_000);

    await child.ask('free');
    expect(await echo(port, 'after')).toBe('after');
    const st2 = await child.ask('stats');
    expect(st2.accepted).toBe(2);
    expect((st2.exhaustion as Record<string, number>).EMFILE).toBe(K);
    expect(emfile()).toHaveLength(2);
  }, 60_000);

  it('a native relay that cannot start for want of fds leaves the connection to the JavaScript dial and relay', async () => {
    // Four relay threads need eight fds (an epoll and an eventfd each); three are left: the
    // accepted app, the JavaScript dial's socket and the origin's side of it.
    const child = startChild({ RELAY_THREADS: '4' });
    const { port } = (await child.first) as { port: number };
    expect((await child.ask('fill 3')).code).toBe('EMFILE');
    expect(await echo(port, 'in javascript')).toBe('in javascript');
    const st = await child.ask('stats');
    // Tried twice, both counted: for the native dial, then for the hand-off after the JavaScript dial.
    expect(st).toMatchObject({ accepted: 1, nativeDials: 0, exhaustion: { EMFILE: 2 } });
    const emfile = () => child.lines.filter((l) => l.text.includes('EMFILE'));
    await until(() => emfile().length >= 1);
    expect(emfile()[0]?.text).toMatch(/1 failure \(tcp relay start 1\)/);

    // With fds to spare the next connection starts the native relay and goes through it.
    await child.ask('free');
    expect(await echo(port, 'natively')).toBe('natively');
    expect(await child.ask('stats')).toMatchObject({ accepted: 2, nativeDials: 1, exhaustion: { EMFILE: 2 } });
  }, 30_000);
});
