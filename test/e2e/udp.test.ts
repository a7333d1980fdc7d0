/**
 * UDP end to end (issue 6), two namespaces: an app in the client namespace
 * sends datagrams to a fake address; the engine NATs them onto the UDP
 * Listener, which relays through the outbound (direct socket, SOCKS5 UDP
 * ASSOCIATE through a real dante, or http — which cannot carry UDP) to the
 * UDP echo server of origin.mjs in the upstream namespace. Plus the DNS
 * hijack of port-53 traffic to any address routed into the TUN, and expiry
 * of idle associations.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { danteConf } from '../support/confs.js';
import { ROOT, runCli } from './harness/daemon.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { createTopology, ECHO_PORT, type Topology, tmpFile, waitListening } from './harness/topology.js';

const skip = e2eUnavailableReason();
const CLIENT = join(ROOT, 'test/e2e/fixtures/udp-client.mjs');
const MTU = 9000;
const MAX_PAYLOAD = MTU - 28;
const isFake = (ip: string) => /^198\.18\.\d+\.\d+$/.test(ip) && ip !== '198.18.0.1' && ip !== '198.18.0.0';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** echo6.test has only an IPv6 address (on the upstream end of the veth): dnsmasq answers AAAA, never A. */
const V6 = { client: 'fd00:12a::1', upstream: 'fd00:12a::2' };

interface SocketResult {
  port: number;
  sent: number;
  echoed: number;
  lost: number;
  corrupt: number;
  foreign: number;
  sources: Record<string, number>;
  lostSizes: number[];
  sizes: [number, number];
}
interface ClientResult {
  ip: string;
  sockets: SocketResult[];
}

type Status = {
  upstream: string | null;
  engine: Record<string, number> | null;
  tcp?: { accepted: number; connectFailed: number; active: number } | null;
  udp: {
    associations: number;
    opened: number;
    expired: number;
    datagramsUp: number;
    datagramsDown: number;
    nativeMisses: number;
    nativeUnknownRemotes: number;
    dropped: Record<string, number>;
    gso: Record<'up' | 'down', { sends: number; segments: number; disabled: number; limited: number }>;
  } | null;
};

describe.skipIf(skip)('UDP end to end (direct, SOCKS5 via dante, http, DNS hijack, expiry)', () => {
  let t: Topology;

  const restart = async (args: string[]) => {
    if (t.daemon) {
      await t.daemon.stop();
      t.daemon = undefined;
    }
    return t.startDaemon(['--mtu', String(MTU), ...args]);
  };

  const udpClient = async (
    opts: { count?: number; sockets?: number; window?: number; lostAfterMs?: number; host?: string } = {},
  ) => {
    const args = [
      CLIENT,
      opts.host ?? 'echo.test',
      String(ECHO_PORT),
      '--count',
      String(opts.count ?? 1000),
      '--sockets',
      String(opts.sockets ?? 1),
      '--window',
      String(opts.window ?? 32),
      '--lost-after',
      String(opts.lostAfterMs ?? 3000),
      '--max-size',
      String(MAX_PAYLOAD),
    ];
    const r = await t.client.exec('node', args, { timeoutMs: 90_000 });
    if (r.code !== 0) throw new Error(`udp client exited ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout.trim()) as ClientResult;
  };

  /**
   * iperf3 -u for 2 s at 1 Gbit/s of 1200-byte datagrams to a one-shot server on the upstream end (by name,
   * through the TUN), from the app (`reverse`: the server sends); what the receiving end counted.
   */
  let iperfPort = 5300;
  const iperfUdp = async (reverse: boolean, len = 1200) => {
    const port = ++iperfPort;
    const srv = await t.spawnUpstream('iperf3', ['-s', '-1', '-B', t.upstreamIp, '-p', String(port)]);
    try {
      await waitListening(t.upstream, port, 'tcp');
      const args = ['-c', 'echo.test', '-p', String(port), '-u', '-b', '1G', '-l', String(len), '-t', '2', '--json'];
      const r = await t.client.exec('iperf3', reverse ? [...args, '-R'] : args, { timeoutMs: 30_000 });
      if (r.code !== 0) throw new Error(`iperf3 ${args.join(' ')} → ${r.code}: ${r.stdout}${r.stderr}`);
      const sum = (JSON.parse(r.stdout) as { end: { sum: { packets: number; lost_packets: number } } }).end.sum;
      return { received: sum.packets - sum.lost_packets };
    } finally {
      srv.kill('SIGKILL');
    }
  };

  /** The interface that holds `ip` in `ns` (the topology's veth end). */
  const vethOf = async (ns: Topology['client'], ip: string) => {
    const dev = (await ns.must('ip', ['-o', '-4', 'addr', 'show']))
      .split('\n')
      .find((l) => l.includes(` ${ip}/`))
      ?.split(/\s+/)[1];
    if (!dev) throw new Error(`no interface with ${ip} in ${ns.name}`);
    return dev;
  };

  const status = async (): Promise<Status> => {
    const r = await runCli(t.client, ['status', '--json']);
    if (r.code !== 0) throw new Error(`fakeproxy status → ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout) as Status;
  };

  /** Polls until `ok` holds (returns the last status) or throws with it after timeoutMs. */
  const waitStatus = async (ok: (s: Status) => boolean, what: string, timeoutMs = 10_000): Promise<Status> => {
    const deadline = Date.now() + timeoutMs;
    let s = await status();
    while (!ok(s)) {
      if (Date.now() > deadline) throw new Error(`${what} not reached within ${timeoutMs} ms: ${JSON.stringify(s)}`);
      await sleep(200);
      s = await status();
    }
    return s;
  };

  /** Every datagram echoed intact, from the fake address of echo.test and the port the app sent to. */
  /** Where a loss happened: each namespace's UDP RcvbufErrors and the daemon's UDP counters. */
  const lossReport = async () => {
    const lines = [`daemon udp: ${JSON.stringify((await status()).udp)}`];
    for (const ns of [t.client, t.upstream]) {
      const snmp = (await ns.exec('cat', ['/proc/net/snmp'])).stdout.split('\n').filter((l) => l.startsWith('Udp:'));
      lines.push(`${ns.name}: ${snmp.join(' / ')}`);
    }
    return lines.join('\n');
  };

  /** Every datagram echoed intact, from the fake address of echo.test and the port the app sent to. */
  const expectAllEchoed = async (r: ClientResult, count: number) => {
    expect(isFake(r.ip)).toBe(true);
    for (const s of r.sockets) {
      const why = s.lost > 0 ? `lost sizes ${s.lostSizes.join(',')}\n${await lossReport()}` : undefined;
      expect(s.sizes).toEqual([1, MAX_PAYLOAD]);
      expect({ sent: s.sent, echoed: s.echoed, lost: s.lost, corrupt: s.corrupt, foreign: s.foreign }, why).toEqual({
        sent: count,
        echoed: count,
        lost: 0,
        corrupt: 0,
        foreign: 0,
      });
      expect(s.sources).toEqual({ [`${r.ip}:${ECHO_PORT}`]: count });
    }
  };

  /** 10 000 datagrams echoed intact; how many of them (and of the replies) reached JavaScript. */
  const WINDOW = 32;
  const tenThousandNatively = async () => {
    const before = (await status()).udp;
    const r = await udpClient({ count: 10_000, window: WINDOW });
    await expectAllEchoed(r, 10_000);
    const after = (await status()).udp;
    const delta = (k: 'datagramsUp' | 'datagramsDown' | 'nativeMisses' | 'nativeUnknownRemotes') =>
      (after?.[k] ?? 0) - (before?.[k] ?? 0);
    expect(delta('datagramsUp')).toBeGreaterThanOrEqual(10_000);
    expect(delta('datagramsDown')).toBeGreaterThanOrEqual(10_000);
    expect(delta('nativeMisses')).toBeGreaterThanOrEqual(1);
    return { misses: delta('nativeMisses'), unknown: delta('nativeUnknownRemotes') };
  };

  beforeAll(async () => {
    t = await createTopology({ dnsmasqArgs: [`--address=/echo6.test/${V6.upstream}`] });
  });
  afterAll(async () => {
    await t?.destroy();
  });

  describe('direct', () => {
    beforeAll(async () => {
      await restart(['--upstream', 'direct']);
    });

    it('1 000 datagrams of 1 … MTU−28 bytes are all echoed intact, from the fake IP of echo.test:9000', async () => {
      const r = await udpClient({ count: 1000 });
      await expectAllEchoed(r, 1000);
      const s = await status();
      expect(s.udp?.datagramsUp).toBeGreaterThanOrEqual(1000);
      expect(s.udp?.datagramsDown).toBeGreaterThanOrEqual(1000);
    });

    it('two app sockets at once stay separate: each receives only its own payloads', async () => {
      const r = await udpClient({ count: 300, sockets: 2 });
      expect(r.sockets.length).toBe(2);
      expect(r.sockets[0].port).not.toBe(r.sockets[1].port);
      await expectAllEchoed(r, 300);
    });

    it('10 000 datagrams are all echoed intact by the native relay: JavaScript sees only those before the flow is bound', async () => {
      const { misses, unknown } = await tenThousandNatively();
      expect(misses + unknown).toBeLessThanOrEqual(WINDOW);
    });

    it('a 1 Gbit/s stream of equal datagrams leaves as UDP GSO sends both ways (udp.gso counts them)', async () => {
      const before = (await status()).udp?.gso;
      const up = await iperfUdp(false);
      const down = await iperfUdp(true);
      const after = (await status()).udp?.gso;
      console.info(
        `UDP GSO: ${JSON.stringify(before)} → ${JSON.stringify(after)}; received up ${up.received}, down ${down.received}`,
      );
      expect(up.received).toBeGreaterThan(0);
      expect(down.received).toBeGreaterThan(0);
      for (const dir of ['up', 'down'] as const) {
        const sends = (after?.[dir].sends ?? 0) - (before?.[dir].sends ?? 0);
        const segments = (after?.[dir].segments ?? 0) - (before?.[dir].segments ?? 0);
        expect(sends, `${dir}: no UDP GSO send`).toBeGreaterThan(0);
        // Each GSO send carries at least two datagrams, and they count among those relayed.
        expect(segments).toBeGreaterThanOrEqual(2 * sends);
        expect(after?.[dir].disabled).toBe(0);
      }
    });

    it('datagrams over the path MTU: the kernel refuses them as GSO (EINVAL), learned once per socket (udp.gso.up.limited), they still go', async () => {
      const veth = await vethOf(t.client, t.clientIp);
      await t.client.must('ip', ['link', 'set', 'dev', veth, 'mtu', '1280']);
      try {
        const before = (await status()).udp?.gso.up;
        // 1400-byte datagrams: each alone is IP-fragmented; as a GSO send the kernel refuses segments over the MTU.
        const r = await iperfUdp(false, 1400);
        const after = (await status()).udp?.gso.up;
        console.info(
          `UDP GSO at MTU 1280: ${JSON.stringify(before)} → ${JSON.stringify(after)}; received ${r.received}`,
        );
        expect(r.received).toBeGreaterThan(0);
        // One association (iperf3's one socket): learned once, then never tried again at that size.
        expect((after?.limited ?? 0) - (before?.limited ?? 0)).toBe(1);
        expect((after?.sends ?? 0) - (before?.sends ?? 0)).toBe(0);
        expect(after?.disabled).toBe(0);
      } finally {
        await t.client.must('ip', ['link', 'set', 'dev', veth, 'mtu', '1500']);
      }
    });

    it('a burst of one flow leaves the engine as UDP GSO writes: 128 datagrams echoed intact and in order', async () => {
      // The daemon is stopped while the app sends, so the burst waits in the TUN queue and the engine reads
      // it as full batches: each batch of one flow's equal-sized datagrams is one write (udpGsoWrites).
      const COUNT = 128;
      const before = (await status()).engine ?? {};
      const app = t.client.spawn('node', [
        join(ROOT, 'test/e2e/fixtures/udp-burst.mjs'),
        'echo.test',
        String(ECHO_PORT),
        String(COUNT),
        '256',
      ]);
      let out = '';
      app.stdout?.setEncoding('utf8').on('data', (d: string) => {
        out += d;
      });
      const exited = new Promise<number | null>((r) => app.once('exit', r));
      const waitOut = async (what: RegExp) => {
        const deadline = Date.now() + 15_000;
        while (!what.test(out)) {
          if (Date.now() > deadline) throw new Error(`udp-burst: no ${what} in ${JSON.stringify(out)}`);
          await sleep(50);
        }
      };
      await waitOut(/^primed$/m);
      const pid = t.daemon?.child.pid as number;
      process.kill(pid, 'SIGSTOP');
      try {
        app.stdin?.write('go\n');
        await waitOut(/^sent$/m);
      } finally {
        process.kill(pid, 'SIGCONT');
      }
      expect(await exited).toBe(0);
      const r = JSON.parse(out.trim().split('\n').pop() as string);
      expect(r, r.echoed < COUNT ? await lossReport() : undefined).toEqual({
        echoed: COUNT,
        corrupt: 0,
        dup: 0,
        missing: [],
        inOrder: true,
      });
      const after = (await status()).engine ?? {};
      const writes = after.udpGsoWrites - (before.udpGsoWrites ?? 0);
      const segs = after.udpGsoSegments - (before.udpGsoSegments ?? 0);
      // Up: 128 datagrams in batches of 64 (at most 2 × 64 segments); down: the echoes, batched as they come.
      expect(writes).toBeGreaterThanOrEqual(2);
      expect(segs).toBeGreaterThanOrEqual(COUNT);
      expect(after.udpGsoRefused).toBe(0);
    });

    it('a name with only IPv6 addresses is reached natively over IPv6: 1 000 datagrams echoed intact', async () => {
      // IPv6 on the veth (the topology's is IPv4 only) and a UDP echo bound to the IPv6 address only, so a
      // reply proves the datagram crossed over IPv6.
      for (const [ns, ip] of [
        [t.client, V6.client],
        [t.upstream, V6.upstream],
      ] as const) {
        const dev = await vethOf(ns, ns === t.client ? t.clientIp : t.upstreamIp);
        await ns.must('ip', ['-6', 'addr', 'add', `${ip}/64`, 'dev', dev, 'nodad']);
      }
      const echo6 = await t.spawnUpstream(
        'node',
        [
          '-e',
          // 8 MiB like origin.mjs: a window of 32 datagrams of up to 9 KB outgrows the default receive buffer.
          `const s = require('node:dgram').createSocket({ type: 'udp6', ipv6Only: true, recvBufferSize: 8 << 20 });
           s.on('message', (m, r) => s.send(m, r.port, r.address));
           s.bind(${ECHO_PORT}, '${V6.upstream}', () => console.log('echo6 ready'));`,
        ],
        /echo6 ready/,
      );
      try {
        const before = (await status()).udp;
        const r = await udpClient({ count: 1000, host: 'echo6.test' });
        await expectAllEchoed(r, 1000);
        const after = (await status()).udp;
        expect((after?.datagramsUp ?? 0) - (before?.datagramsUp ?? 0)).toBeGreaterThanOrEqual(1000);
        expect(after?.dropped['resolve-failed'] ?? 0).toBe(before?.dropped['resolve-failed'] ?? 0);
      } finally {
        echo6.kill('SIGKILL');
      }
    });
  });

  describe('socks5 via dante (UDP ASSOCIATE)', () => {
    let danteLog = '';

    beforeAll(async () => {
      const ext = await vethOf(t.upstream, t.upstreamIp);
      // dante is the reference relay here, not what is tested: give its UDP
      // sockets room for a burst of MTU-sized datagrams (capped by rmem_max).
      const conf = tmpFile(
        t,
        'danted.conf',
        danteConf({ ip: t.upstreamIp, port: 1080, external: ext, log: 'connect disconnect error', udpRcvbuf: 4194304 }),
      );
      const dante = await t.spawnUpstream('danted', ['-f', conf, '-N', '1']);
      const collect = (d: Buffer) => {
        danteLog += d.toString();
      };
      dante.stdout?.on('data', collect);
      dante.stderr?.on('data', collect);
      try {
        await waitListening(t.upstream, 1080, 'tcp');
      } catch (e) {
        throw new Error(`danted did not listen: ${(e as Error).message}\n${danteLog}`);
      }
      await restart(['--upstream', `socks5://${t.upstreamIp}:1080`]);
    });

    it('1 000 datagrams are all echoed intact through the relay, from the fake IP of echo.test:9000', async () => {
      const r = await udpClient({ count: 1000 });
      await expectAllEchoed(r, 1000);
      const s = await status();
      expect(s.upstream).toBe(`socks5://${t.upstreamIp}:1080`);
      expect(s.udp?.opened).toBeGreaterThanOrEqual(1);
      expect(s.udp?.datagramsDown).toBeGreaterThanOrEqual(1000);
      // The relay carried it as a UDP association (not, say, a direct socket).
      const from = t.clientIp.replaceAll('.', '\\.');
      expect(danteLog).toMatch(new RegExp(`pass\\(\\d+\\): udp/udpassociate \\[: ${from}\\.\\d+ `));
    });

    it('10 000 datagrams are all echoed intact, the RFC 1928 header added and stripped by the native relay', async () => {
      // JavaScript saw the flow's first window and the replies before dante's reply address was learned, no more.
      const { misses, unknown } = await tenThousandNatively();
      expect(misses + unknown).toBeLessThanOrEqual(2 * WINDOW);
    });
  });

  describe('http upstream (cannot carry UDP)', () => {
    beforeAll(async () => {
      // Nothing listens there: UDP never dials an http proxy anyway.
      await restart(['--upstream', `http://${t.upstreamIp}:8888`]);
    });

    it('datagrams are dropped, counted, and logged once per flow (not per datagram)', async () => {
      const r = await udpClient({ count: 50, window: 50, lostAfterMs: 2000 });
      expect(r.sockets[0]).toMatchObject({ sent: 50, echoed: 0, lost: 50, corrupt: 0 });
      await waitStatus((s) => (s.udp?.dropped['no-udp'] ?? 0) >= 50, '50 no-udp drops');
      const d = t.daemon;
      if (!d) throw new Error('no daemon');
      const lines = d.output.split('\n').filter((l) => /echo\.test:9000 .*cannot carry UDP/.test(l));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/via http:\/\//);
    });
  });

  describe('DNS hijack: port 53 of any address routed into the TUN', () => {
    const RESOLVER = '192.0.2.53'; // TEST-NET-1: never a real resolver
    const dig = (...args: string[]) =>
      t.client.exec('dig', ['+time=2', '+tries=1', `@${RESOLVER}`, ...args], { timeoutMs: 20_000 });
    const answerA = (out: string) =>
      out
        .split('\n')
        .filter((l) => l && !l.startsWith(';'))
        .map((l) => l.split(/\s+/))
        .find((f) => f[3] === 'A')?.[4];

    beforeAll(async () => {
      await restart(['--upstream', 'direct']);
      // Inside the client namespace only (the device exists only there).
      await t.client.must('ip', ['route', 'replace', `${RESOLVER}/32`, 'dev', 'fp0']);
    });

    it('dig @192.0.2.53 over UDP and TCP gets fake answers from the daemon; the real resolver never sees the query', async () => {
      const before = t.dnsmasqLog();
      const udp = await dig('hijack.example', 'A', '+noall', '+answer');
      expect(udp.code).toBe(0);
      const ipUdp = answerA(udp.stdout);
      expect(ipUdp && isFake(ipUdp)).toBe(true);
      const tcp = await dig('+tcp', 'hijack.example', 'A', '+noall', '+answer');
      expect(tcp.code).toBe(0);
      expect(answerA(tcp.stdout)).toBe(ipUdp);
      // The same name asked of the daemon itself gets the same address: it was FakeDns answering.
      const direct = await t.client.exec('dig', [
        '+time=2',
        '+tries=1',
        '@198.18.0.1',
        'hijack.example',
        'A',
        '+noall',
        '+answer',
      ]);
      expect(answerA(direct.stdout)).toBe(ipUdp);
      expect(t.dnsmasqLog().slice(before.length)).not.toMatch(/hijack\.example/);
      // Control: a name the daemon forwards (MX) does reach dnsmasq — the log capture works.
      const mx = await dig('origin.test', 'MX', '+noall', '+answer');
      expect(mx.stdout).toMatch(/MX\s+10 mail\.origin\.test\./);
      expect(t.dnsmasqLog().slice(before.length)).toMatch(/query\[MX\] origin\.test/);
    });

    it('with --no-dns-hijack the same dig times out (exit 9)', async () => {
      await restart(['--upstream', 'direct', '--no-dns-hijack']);
      await t.client.must('ip', ['route', 'replace', `${RESOLVER}/32`, 'dev', 'fp0']);
      const r = await dig('hijack2.example', 'A');
      expect(r.code).toBe(9);
      // The daemon relayed the query directly — to an address routed into
      // fp0, so it came back through the TUN: dropped as our own traffic,
      // not served by another association (which would loop forever, one
      // socket and NAT flow per round).
      const st = await waitStatus((x) => (x.udp?.dropped.loop ?? 0) >= 1, 'a loop drop');
      await sleep(500);
      const later = await status();
      expect(later.udp?.opened).toBe(1);
      expect(later.udp?.dropped.loop).toBe(st.udp?.dropped.loop);
      expect(later.engine?.udpFlows).toBeLessThanOrEqual(2);
      expect(t.daemon?.child.exitCode).toBeNull();
    });

    it('over TCP the direct outbound refuses an address routed into the TUN (ELOOP) instead of looping', async () => {
      const before = (await status()).tcp?.accepted ?? 0;
      const r = await dig('+tcp', 'hijack3.example', 'A');
      expect(r.code).not.toBe(0);
      await sleep(1000);
      const st = await status();
      // One accepted connection per dig attempt, not thousands of looped ones.
      expect((st.tcp?.accepted ?? 0) - before).toBeLessThanOrEqual(2);
      expect(st.tcp?.active).toBe(0);
      expect(t.daemon?.stderr).toMatch(/ELOOP: .*192\.0\.2\.53 is routed into fp0/);
    });
  });

  describe('idle associations expire and leave the NAT table', () => {
    beforeAll(async () => {
      await restart(['--upstream', 'direct', '--nat-timeout', 'udp=2']);
    });

    it('after the traffic stops, engine udpFlows and live associations go back to 0', async () => {
      const r = await udpClient({ count: 200, sockets: 2 });
      await expectAllEchoed(r, 200);
      const busy = await status();
      expect(busy.udp?.opened).toBe(2);
      const idle = await waitStatus(
        (s) => s.engine?.udpFlows === 0 && s.udp?.associations === 0,
        'udpFlows 0 and no live associations',
      );
      expect(idle.udp?.expired).toBe(2);
      // They left by idle expiry (not, say, never having been created).
      expect(idle.engine?.flowsExpired).toBeGreaterThanOrEqual(2);
    });
  });
});
