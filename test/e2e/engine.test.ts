/**
 * The packet engine end to end WITHOUT the proxy (issue 4, "Tests → E2E"):
 * inside one namespace, fixtures/engine-echo.mjs opens fp0 (198.18.0.0/16),
 * runs the NatManager engine on its fds and a plain TCP/UDP echo "Listener" on
 * 198.18.0.1:1313; clients in the same namespace talk to fake IPs and the test
 * inspects the NAT table through the fixture's `stats` command.
 */
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './harness/daemon.js';
import { e2eUnavailableReason, Netns } from './harness/netns.js';

const skip = e2eUnavailableReason();
const FIXTURE = join(ROOT, 'test', 'e2e', 'fixtures', 'engine-echo.mjs');
const DIST = join(ROOT, 'dist', 'src');
const GW = '198.18.0.1';
const MTU = 9000;

/** A NAT address: in 198.18.0.0/16, not the network, broadcast or gateway address. */
const isNatAddr = (ip: string) => /^198\.18\.\d+\.\d+$/.test(ip) && ![GW, '198.18.0.0', '198.18.255.255'].includes(ip);
const hostOf = (peer: string) => peer.slice(0, peer.lastIndexOf(':'));

interface SideStats {
  accepted?: number;
  maxLive?: number;
  datagrams?: number;
  peers: string[];
  lookupMisses: number;
  origDsts: Record<string, number>;
}
interface Snapshot {
  stats: Record<string, number>;
  entries: number;
  states: Record<string, number>;
  tcp: SideStats;
  udp: SideStats;
  events: { opens: number; closes: number; reasons: Record<string, number> };
}

/** The serve side of the fixture: one JSON line per stdin command. */
class EngineEcho {
  stderr = '';
  private buf = '';
  private readonly lines: string[] = [];
  private wake?: () => void;
  readonly exited: Promise<number | null>;

  private constructor(readonly child: ChildProcess) {
    child.stdout?.setEncoding('utf8').on('data', (d: string) => {
      this.buf += d;
      let i = this.buf.indexOf('\n');
      while (i >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 1);
        i = this.buf.indexOf('\n');
      }
      this.wake?.();
    });
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve(code ?? (sig ? -1 : null))));
    void this.exited.then(() => this.wake?.());
  }

  static async start(ns: Netns, cfg: Record<string, unknown>): Promise<EngineEcho> {
    const e = new EngineEcho(ns.spawn('node', [FIXTURE, 'serve', JSON.stringify({ dist: DIST, mtu: MTU, ...cfg })]));
    const ready = (await e.next()) as { ready?: boolean };
    if (!ready.ready) throw new Error(`engine-echo not ready: ${JSON.stringify(ready)} ${e.stderr}`);
    return e;
  }

  private async next(timeoutMs = 15_000): Promise<unknown> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.child.exitCode !== null || this.child.signalCode !== null)
        throw new Error(`engine-echo exited (${this.child.exitCode}): ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`engine-echo silent for ${timeoutMs} ms: ${this.stderr}`);
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 100);
      });
    }
    return JSON.parse(this.lines.shift() as string);
  }

  async cmd(c: string): Promise<unknown> {
    this.child.stdin?.write(`${c}\n`);
    return this.next();
  }

  snapshot(): Promise<Snapshot> {
    return this.cmd('stats') as Promise<Snapshot>;
  }

  /** Polls `stats` until `ok` holds (deadline-polling, not a threshold). */
  async until(ok: (s: Snapshot) => boolean, what: string, timeoutMs = 20_000): Promise<Snapshot> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.snapshot();
      if (ok(s)) return s;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last stats: ${JSON.stringify(s)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  /** The last line the fixture wrote (after stop(): its events once every flow closed). */
  lastLine(): unknown {
    const l = this.lines.at(-1);
    return l === undefined ? undefined : JSON.parse(l);
  }

  /** Closes stdin (the fixture's normal way out); SIGKILL after timeoutMs. */
  async stop(timeoutMs = 10_000): Promise<number | null> {
    if (this.child.exitCode !== null) return this.child.exitCode;
    this.child.stdin?.end();
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }
}

// biome-ignore lint/suspicious/noExplicitAny: each client op returns its own JSON shape
async function client(ns: Netns, op: Record<string, unknown>): Promise<any> {
  const r = await ns.exec('node', [FIXTURE, 'client', JSON.stringify(op)], { timeoutMs: 90_000 });
  if (r.code !== 0) throw new Error(`client ${JSON.stringify(op)} → ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout.trim());
}

/**
 * Sends raw IPv4 packets (IPPROTO_RAW: the kernel fills in only the total
 * length and header checksum) towards the fake range: they leave through fp0
 * and reach the engine as written.
 */
const RAW_SENDER = `
import socket, struct, sys
GW, DST = socket.inet_aton('198.18.0.1'), socket.inet_aton('198.18.4.4')
def ip(proto, payload, opts=b''):
    ihl = 5 + len(opts) // 4
    return struct.pack('!BBHHHBBH4s4s', 0x40 | ihl, 0, 0, 0x1234, 0x4000, 64, proto, 0, GW, DST) + opts + payload
tcp = lambda sport, dport, off, flags: struct.pack('!HHIIBBHHH', sport, dport, 1000, 2000, off << 4, flags, 65535, 0, 0)
udp = lambda sport, dport, ulen, data: struct.pack('!HHHH', sport, dport, ulen, 0) + data
cases = {
  'options':   ip(6, tcp(40001, 80, 5, 0x02), opts=b'\\x01\\x01\\x01\\x00'),
  'gre':       ip(47, b'\\x00\\x00\\x08\\x00'),
  'tcpShort':  ip(6, tcp(40002, 80, 15, 0x02)),
  'udpShort':  ip(17, udp(40003, 5000, 4, b'abcd')),
  'udpLong':   ip(17, udp(40004, 5000, 100, b'abcd')),
  'ackNoFlow': ip(6, tcp(40005, 81, 5, 0x10)),
  'udpNoCsum': ip(17, udp(40006, 5000, 12, b'abcd')),
}
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for name in sys.argv[1:]:
    s.sendto(cases[name], ('198.18.4.4', 0))
print('sent', len(sys.argv) - 1)
`;

/** Counter deltas between two snapshots. */
const delta = (a: Snapshot, b: Snapshot, k: string) => (b.stats[k] ?? 0) - (a.stats[k] ?? 0);

/** How many fragments the kernel makes of an ICMP echo with `size` data bytes at MTU. */
const fragmentsOf = (size: number, mtu: number) => Math.ceil((size + 8) / (Math.floor((mtu - 20) / 8) * 8));

describe.skipIf(skip)('packet engine end to end (TUN + NatManager + echo Listener, no proxy)', () => {
  let ns: Netns;
  let echo: EngineEcho | undefined;

  beforeAll(async () => {
    ns = await Netns.create('engine');
  });
  afterAll(async () => {
    await echo?.stop();
    await ns?.delete();
  });

  describe('default table, short timeouts', () => {
    beforeAll(async () => {
      echo = await EngineEcho.start(ns, {
        timeouts: { tcpSynMs: 5_000, tcpFinMs: 1_500, tcpClosedMs: 1_000, udpMs: 1_500 },
      });
    });

    it('1 MiB to a fake IP echoes back intact; the Listener sees a NAT peer that looks up to the fake destination', async () => {
      const e = echo as EngineEcho;
      await e.cmd('reset');
      const r = await client(ns, { op: 'bulk', host: '198.18.9.9', port: 80, bytes: 1 << 20 });
      expect(r.error).toBeUndefined();
      expect(r.recv).toBe(1 << 20);
      expect(r.recvSha).toBe(r.sentSha);
      const s = await e.snapshot();
      expect(s.tcp.accepted).toBe(1);
      expect(isNatAddr(hostOf(s.tcp.peers[0]))).toBe(true);
      expect(s.tcp.lookupMisses).toBe(0);
      expect(s.tcp.origDsts).toEqual({ '198.18.9.9:80': 1 });
      expect(s.stats.forwarded).toBeGreaterThan(0);
      expect(s.stats.reversed).toBeGreaterThan(0);
    });

    it('200 connections at once all echo; the Listener sees 200 distinct NAT peers in the range, none the gateway', async () => {
      const e = echo as EngineEcho;
      await e.cmd('reset');
      const r = await client(ns, { op: 'many', host: '198.18.9.9', port: 80, n: 200, bytes: 16 * 1024 });
      expect(r.errors).toEqual({});
      expect(r.ok).toBe(200);
      expect(r.openAtOnce).toBe(200);
      const s = await e.snapshot();
      expect(s.tcp.accepted).toBe(200);
      expect(s.tcp.maxLive).toBe(200);
      expect(new Set(s.tcp.peers).size).toBe(200);
      expect(s.tcp.peers.filter((p) => !isNatAddr(hostOf(p)))).toEqual([]);
      expect(s.tcp.lookupMisses).toBe(0);
      expect(s.tcp.origDsts).toEqual({ '198.18.9.9:80': 200 });
    });

    it('after close every flow leaves the table after the FIN linger, closed by FIN; open/close events match', async () => {
      const e = echo as EngineEcho;
      const s = await e.until((x) => x.entries === 0 && x.stats.flowsActive === 0, 'the table to drain');
      // 1 bulk + 200 concurrent flows, each opened and closed once, each by a FIN exchange.
      expect(s.stats.flowsCreated).toBe(201);
      expect(s.events.opens).toBe(201);
      expect(s.events.closes).toBe(201);
      expect(s.events.reasons).toEqual({ fin: 201 });
      expect(s.stats.flowsClosed).toBe(201);
      expect(s.stats.flowsExpired).toBe(0);
      expect(s.stats.tcpFlows).toBe(0);
      expect(s.stats.dropReverseNoFlow).toBe(0);
    });

    it('a connection aborted with RST leaves the table with reason rst', async () => {
      const e = echo as EngineEcho;
      const before = await e.snapshot();
      const r = await client(ns, { op: 'abort', host: '198.18.9.9', port: 8080 });
      expect(r.error).toBeUndefined();
      expect(r.ok).toBe(true);
      const after = await e.until(
        (x) => x.entries === 0 && x.events.closes === before.events.closes + 1,
        'the aborted flow to go',
      );
      expect(after.events.reasons.rst).toBe((before.events.reasons.rst ?? 0) + 1);
      expect(delta(before, after, 'flowsCreated')).toBe(1);
    });

    it("TCP to fake-ip:53 with no DNS server listening: the kernel's RST is translated back (ECONNREFUSED)", async () => {
      const e = echo as EngineEcho;
      const before = await e.snapshot();
      const r = await client(ns, { op: 'bulk', host: '198.18.9.9', port: 53, bytes: 16 });
      expect(r.error).toBe('ECONNREFUSED');
      const after = await e.until(
        (x) => x.entries === 0 && delta(before, x, 'flowsClosed') === 1,
        'the refused flow to go',
      );
      // Refused before its handshake completed: never reported open, so no close event either.
      expect(after.events).toEqual(before.events);
      expect(delta(before, after, 'reversed')).toBeGreaterThanOrEqual(1);
      // It never reached the echo Listener on 1313.
      expect(after.tcp.accepted).toBe(before.tcp.accepted);
    });

    it('ping to a fake IP answers 3/3 from the engine itself, without creating a flow', async () => {
      const e = echo as EngineEcho;
      const before = await e.snapshot();
      const r = await ns.exec('ping', ['-c', '3', '-W', '1', '198.18.5.5']);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(/3 packets transmitted, 3 received/);
      expect(r.stdout).toMatch(/from 198\.18\.5\.5/);
      const after = await e.snapshot();
      expect(delta(before, after, 'echoReplies')).toBe(3);
      expect(delta(before, after, 'flowsCreated')).toBe(0);
    });

    it('UDP to a fake IP: the echo comes back from 198.18.7.7:5000; the Listener sees one NAT peer', async () => {
      const e = echo as EngineEcho;
      await e.cmd('reset');
      const r = await client(ns, { op: 'udp', host: '198.18.7.7', port: 5000, count: 5 });
      expect(r.received).toBe(5);
      expect(r.matched).toBe(5);
      expect(r.sources).toEqual(['198.18.7.7:5000']);
      const s = await e.snapshot();
      expect(s.udp.datagrams).toBe(5);
      expect(s.udp.peers).toHaveLength(1);
      expect(isNatAddr(hostOf(s.udp.peers[0]))).toBe(true);
      expect(s.udp.lookupMisses).toBe(0);
      expect(s.udp.origDsts).toEqual({ '198.18.7.7:5000': 5 });
      // A second socket (another source port) is another flow with another NAT peer.
      const r2 = await client(ns, { op: 'udp', host: '198.18.7.7', port: 5000, count: 1 });
      expect(r2.sources).toEqual(['198.18.7.7:5000']);
      const s2 = await e.snapshot();
      expect(s2.udp.peers).toHaveLength(2);
      // Idle UDP flows expire (udpMs 1.5 s) with reason timeout.
      // The stats can read 0 flows a moment before the batch carrying the second close event is delivered.
      const drained = await e.until(
        (x) => x.stats.udpFlows === 0 && (x.events.reasons.timeout ?? 0) >= 2,
        'the UDP flows to idle out',
      );
      expect(drained.events.reasons.timeout).toBe(2);
    });

    it('an ICMP port unreachable from the kernel is translated back: UDP to fake-ip:53 with no DNS server → ECONNREFUSED', async () => {
      const e = echo as EngineEcho;
      const before = await e.snapshot();
      // dnsHijack sends it to 198.18.0.1:53, where nothing listens in this fixture.
      const r = await client(ns, { op: 'udpConnected', host: '198.18.7.7', port: 53 });
      expect(r.result).toBe('ECONNREFUSED');
      const after = await e.snapshot();
      expect(delta(before, after, 'icmpErrorsTranslated')).toBeGreaterThanOrEqual(1);
    });

    it('a fragmented ping (-s 20000) is counted and dropped; pings and connections keep working', async () => {
      const e = echo as EngineEcho;
      const before = await e.snapshot();
      await ns.exec('ping', ['-c', '2', '-W', '1', '-s', '20000', '198.18.5.5']);
      const expected = 2 * fragmentsOf(20000, MTU);
      const after = await e.until((x) => delta(before, x, 'dropFragment') >= expected, 'fragments to be counted');
      expect(delta(before, after, 'dropFragment')).toBe(expected);
      expect(delta(before, after, 'echoReplies')).toBe(0);
      const ping = await ns.exec('ping', ['-c', '1', '-W', '1', '198.18.5.6']);
      expect(ping.stdout).toMatch(/1 received/);
      const r = await client(ns, { op: 'bulk', host: '198.18.9.10', port: 443, bytes: 64 * 1024 });
      expect(r.recvSha).toBe(r.sentSha);
    });

    it('malformed packets (raw socket) are dropped under the right counter; a segment without a flow gets a RST', async () => {
      const e = echo as EngineEcho;
      const send = (...cases: string[]) => ns.must('python3', ['-c', RAW_SENDER, ...cases]);
      const steps: [string, string][] = [
        ['options', 'dropIpOptions'],
        ['gre', 'dropProtocol'],
        ['tcpShort', 'dropTruncated'],
        ['udpShort', 'dropBadHeader'],
        ['udpLong', 'dropTruncated'],
        ['ackNoFlow', 'dropTcpNoFlow'],
      ];
      for (const [c, counter] of steps) {
        const before = await e.snapshot();
        expect(await send(c)).toMatch(/sent 1/);
        const after = await e.until((x) => delta(before, x, 'pktsIn') >= 1, `${c} to reach the engine`);
        expect({ c, [counter]: delta(before, after, counter) }).toEqual({ c, [counter]: 1 });
        expect({ c, created: delta(before, after, 'flowsCreated') }).toEqual({ c, created: 0 });
        if (c === 'ackNoFlow') expect(delta(before, after, 'rstSent')).toBe(1);
      }
      const r = await client(ns, { op: 'bulk', host: '198.18.9.11', port: 80, bytes: 64 * 1024 });
      expect(r.recvSha).toBe(r.sentSha);
    });

    it('a UDP datagram without a checksum (0) keeps 0 through the rewrite and reaches the Listener', async () => {
      const e = echo as EngineEcho;
      await e.cmd('reset');
      const before = await e.snapshot();
      expect(await ns.must('python3', ['-c', RAW_SENDER, 'udpNoCsum'])).toMatch(/sent 1/);
      // A rewritten checksum other than 0 would be wrong and the kernel would drop the datagram.
      const after = await e.until((x) => x.udp.datagrams === 1, 'the datagram to reach the echo socket');
      expect(after.udp.origDsts).toEqual({ '198.18.4.4:5000': 1 });
      expect(delta(before, after, 'forwarded')).toBe(1);
    });

    it('closing stdin stops the engine and removes fp0; every open event got its close', async () => {
      const e = echo as EngineEcho;
      const last = await e.snapshot();
      expect(await e.stop()).toBe(0);
      echo = undefined;
      expect((await ns.exec('ip', ['link', 'show', 'dev', 'fp0'])).code).not.toBe(0);
      expect(await ns.must('ip', ['-4', 'route', 'show'])).not.toMatch(/198\.18\./);
      const { final } = e.lastLine() as { final: Snapshot['events'] };
      expect(final.opens).toBeGreaterThan(200);
      expect(final.closes).toBe(final.opens);
      // Flows that never completed a handshake (the refused :53 one) were never reported.
      expect(final.opens).toBeLessThan(last.stats.flowsCreated);
    });
  });

  describe('full table (maxFlows 16)', () => {
    beforeAll(async () => {
      echo = await EngineEcho.start(ns, {
        maxFlows: 16,
        timeouts: { tcpSynMs: 5_000, tcpEstablishedMs: 4_000, tcpFinMs: 1_500, tcpClosedMs: 1_000, udpMs: 1_500 },
        // A 1-second reuse delay so the table can be refilled within the test.
        reuseDelayMs: 1_000,
      });
    });

    it('connection 17 is refused at once (RST) and a new UDP flow gets port unreachable, while the 16 keep echoing', async () => {
      const e = echo as EngineEcho;
      const before = await e.snapshot();
      const r = await client(ns, {
        op: 'hold',
        host: '198.18.9.9',
        port: 80,
        n: 16,
        timeoutMs: 10_000,
        udpHost: '198.18.7.7',
        udpPort: 5000,
      });
      expect(r.heldOk).toBe(16);
      // The engine answers the 17th SYN with RST|ACK: ECONNREFUSED, never a timeout.
      expect(['ECONNREFUSED', 'ECONNRESET']).toContain(r.extra);
      expect(r.udpExtra.result).toBe('ECONNREFUSED');
      expect(r.afterOk).toBe(16);
      const after = await e.until((x) => x.stats.flowsActive === 0, 'the table to drain');
      expect(after.tcp.accepted).toBe(16);
      expect(delta(before, after, 'flowsCreated')).toBe(16);
      expect(delta(before, after, 'flowsRefused')).toBeGreaterThanOrEqual(2);
      expect(delta(before, after, 'rstSent')).toBeGreaterThanOrEqual(1);
      expect(delta(before, after, 'icmpUnreachSent')).toBeGreaterThanOrEqual(1);
      await expect.poll(() => e.stderr, { timeout: 5_000 }).toMatch(/NAT table full \(\d+\/16 flows\)/);
    });

    it('once the table drained, new flows are accepted again', async () => {
      const e = echo as EngineEcho;
      await e.until((x) => x.stats.flowsActive === 0, 'the table to drain');
      const r = await client(ns, { op: 'many', host: '198.18.9.12', port: 80, n: 16, bytes: 4096 });
      expect(r.ok).toBe(16);
      expect(r.errors).toEqual({});
    });

    it('an idle established flow expires (tcpEstablishedMs 4 s); the engine resets the app at once', async () => {
      const e = echo as EngineEcho;
      await e.until((x) => x.stats.flowsActive === 0, 'the table to drain');
      const before = await e.snapshot();
      const child = ns.spawn('node', [
        FIXTURE,
        'client',
        JSON.stringify({ op: 'idle', host: '198.18.9.13', port: 80 }),
      ]);
      let outText = '';
      child.stdout?.setEncoding('utf8').on('data', (d: string) => {
        outText += d;
      });
      const exited = new Promise((r) => child.once('exit', r));
      await expect.poll(() => outText, { timeout: 15_000 }).toMatch(/"idle"/);
      expect(JSON.parse(outText.split('\n')[0]).error).toBeUndefined();
      const expired = await e.until(
        (x) => x.stats.flowsActive === 0 && x.events.closes > before.events.closes,
        'the idle flow to expire',
      );
      expect(expired.events.reasons.timeout - (before.events.reasons.timeout ?? 0)).toBe(1);
      expect(delta(before, expired, 'flowsExpired')).toBe(1);
      child.stdin?.write('go\n');
      await exited;
      const r = JSON.parse(outText.trim().split('\n')[1]);
      // Reset while it sat idle, before it sent anything more (issue 15).
      expect(r).toMatchObject({ error: 'ECONNRESET', whileIdle: true });
      const after = await e.snapshot();
      expect(delta(before, after, 'rstOnExpiry')).toBe(1);
      expect(delta(before, after, 'rstSent')).toBeGreaterThanOrEqual(1);
      // No new flow for a segment that is not a SYN.
      expect(delta(expired, after, 'flowsCreated')).toBe(0);
    });
  });
});
