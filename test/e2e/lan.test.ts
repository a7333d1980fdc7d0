/**
 * LAN gateway mode and "who may use it" (DESIGN.md), end to end in three
 * namespaces around the gateway (the topology's client namespace, which runs
 * the daemon with ip_forward=1 and a default route to the upstream side):
 *   lan — default route and resolver → the gateway, admitted with --lan
 *   wan — a neighbour that merely routes the fake range at the gateway
 * The README section "LAN gateway mode" gives the same commands.
 */
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, runCli } from './harness/daemon.js';
import { e2eUnavailableReason, ifaceOf, Netns, vethPair } from './harness/netns.js';
import { createTopology, ECHO_PORT, HTTP_PORT, type Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();
const UDP_CLIENT = join(ROOT, 'test/e2e/fixtures/udp-client.mjs');
const GW = '198.18.0.1';
const FAKE = /^198\.18\.\d+\.\d+$/;

/** A counter of the kernel's own (nstat), e.g. TcpExtIPReversePathFilter, UdpNoPorts. */
async function nstat(ns: Netns, name: string): Promise<number> {
  const out = await ns.must('nstat', ['-saz', name]);
  const m = new RegExp(`^${name}\\s+(\\d+)`, 'm').exec(out);
  return m ? Number(m[1]) : 0;
}

describe.skipIf(skip)('LAN gateway mode: a LAN is served, the WAN side is not', () => {
  let t: Topology;
  let lan: Netns;
  let wan: Netns;
  let lanIf: string;
  /** A LAN app holding one TCP and one UDP flow to the echo server; prints every line/datagram it gets back. */
  let app: ChildProcess;
  let appOut = '';

  const status = async () => JSON.parse((await runCli(t.client, ['status', '--json'])).stdout);
  const dig = (ns: Netns, args: string[]) =>
    ns.exec('dig', ['+time=2', '+tries=1', '+short', ...args], { timeoutMs: 10_000 });
  /** The fake address the daemon hands out for `name` (asked from the gateway itself). */
  const fakeOf = async (name: string) => {
    const r = await dig(t.client, [`@${GW}`, name]);
    expect(r.stdout.trim()).toMatch(FAKE);
    return r.stdout.trim();
  };

  beforeAll(async () => {
    t = await createTopology();
    lan = await Netns.create('lan');
    wan = await Netns.create('wan');
    const l = await vethPair(t.client, lan);
    const w = await vethPair(t.client, wan);
    lanIf = await ifaceOf(t.client, l.aIp);
    // The gateway: forwards, and reaches the rest of the world through the upstream side.
    await t.client.must('sysctl', ['-qw', 'net.ipv4.ip_forward=1']);
    await t.client.must('ip', ['route', 'add', 'default', 'via', t.upstreamIp]);
    // LAN host: default route and resolver → the gateway (README "LAN gateway mode").
    await lan.must('ip', ['route', 'add', 'default', 'via', l.aIp]);
    lan.writeEtc('resolv.conf', `nameserver ${GW}\n`);
    lan.writeEtc('hosts', '127.0.0.1 localhost\n');
    // WAN neighbour: routes only the fake range at the gateway (the probe of issue 16).
    await wan.must('ip', ['route', 'add', '198.18.0.0/16', 'via', w.aIp]);
    await t.startDaemon(['--lan', `${l.aIp}/30`]);
    // Hard-coded resolvers of the LAN: its port-53 traffic goes into the TUN, where the DNS hijack answers.
    for (const proto of ['udp', 'tcp'])
      await t.client.must('ip', ['rule', 'add', 'iif', lanIf, 'ipproto', proto, 'dport', '53', 'lookup', '53']);
    await t.client.must('ip', ['route', 'add', 'default', 'dev', 'fp0', 'table', '53']);
    // Test instrument (this namespace only): the NAT sources of datagrams the engine writes towards the
    // Listener, so the spoofing test knows a live UDP NAT pair.
    const nft = join(t.tmp, 'seen.nft');
    writeFileSync(
      nft,
      'table ip fptseen {\n  set seen { type ipv4_addr . inet_service; flags dynamic; }\n' +
        '  chain in { type filter hook input priority 0; iifname "fp0" udp dport 1313 add @seen { ip saddr . udp sport }; }\n}\n',
    );
    await t.client.must('nft', ['-f', nft]);

    app = lan.spawn('node', [
      '-e',
      `const net = require('node:net'), dgram = require('node:dgram'), dns = require('node:dns');
dns.lookup('echo.test', { family: 4 }, (err, ip) => {
  if (err) { console.log('error ' + err.message); return; }
  const tcp = net.connect(${ECHO_PORT}, ip, () => tcp.write('tcp-hello\\n'));
  tcp.on('data', (d) => process.stdout.write('tcp ' + d));
  const udp = dgram.createSocket('udp4');
  udp.on('message', (m) => process.stdout.write('udp ' + m + '\\n'));
  udp.send('udp-hello', ${ECHO_PORT}, ip);
  // Each stdin line goes out again on both flows: proof they still work after an attack.
  process.stdin.setEncoding('utf8').on('data', (l) => { tcp.write(l); udp.send(l.trim(), ${ECHO_PORT}, ip); });
});`,
    ]);
    app.stdout?.setEncoding('utf8').on('data', (d: string) => {
      appOut += d;
    });
  }, 60_000);

  afterAll(async () => {
    app?.kill('SIGKILL');
    await t?.destroy();
    await lan?.delete();
    await wan?.delete();
  });

  it('a LAN client gets fake answers from the gateway and reaches names over TCP, UDP and ping', async () => {
    const a = await dig(lan, ['origin.test']); // resolv.conf → 198.18.0.1
    expect(a.stdout.trim(), a.stderr).toMatch(FAKE);
    const curl = await lan.exec('curl', ['-sS', '--max-time', '10', `http://origin.test:${HTTP_PORT}/hello`]);
    expect(curl.stdout, curl.stderr).toBe(`hello from origin origin.test:${HTTP_PORT}\n`);
    const u = await lan.exec(
      'node',
      [UDP_CLIENT, 'echo.test', String(ECHO_PORT), '--count', '50', '--max-size', '1400'],
      {
        timeoutMs: 30_000,
      },
    );
    const sock = JSON.parse(u.stdout).sockets[0];
    expect(sock.sent).toBe(50);
    expect(sock.echoed).toBe(50);
    expect(sock.corrupt).toBe(0);
    const ping = await lan.exec('ping', ['-c', '2', '-W', '2', a.stdout.trim()]);
    expect(ping.stdout).toMatch(/2 received/);
    // The long-lived app of the spoofing test got its echoes too.
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('tcp tcp-hello\n');
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('udp udp-hello\n');
  });

  it("a LAN host's hard-coded resolver (@8.8.8.8, UDP and TCP) is answered by the daemon", async () => {
    // Nothing answers 8.8.8.8 here (the upstream side has no route to it): a fake address proves the hijack.
    const udp = await dig(lan, ['@8.8.8.8', 'origin.test']);
    expect(udp.stdout.trim(), udp.stderr).toMatch(FAKE);
    const tcp = await dig(lan, ['+tcp', '@8.8.8.8', 'echo.test']);
    expect(tcp.stdout.trim(), tcp.stderr).toMatch(FAKE);
  });

  it('the WAN side that routes the fake range at the gateway gets neither a resolver nor a proxy (dropped, counted)', async () => {
    const fake = await fakeOf('origin.test');
    const before = await status();
    // dig exits 9 when no server answered (+short prints its complaint on stdout).
    for (const args of [[`@${GW}`], ['+tcp', `@${GW}`], [`@${fake}`]]) {
      const r = await dig(wan, [...args, 'origin.test']);
      expect(r.code, `dig ${args.join(' ')}: ${r.stdout}`).toBe(9);
      expect(r.stdout).not.toMatch(/^198\.18\.\d+\.\d+$/m);
    }
    const curl = await wan.exec('curl', ['-sS', '--max-time', '3', `http://${fake}:${HTTP_PORT}/hello`]);
    expect(curl.stdout).toBe('');
    expect(curl.code).not.toBe(0);
    const after = await status();
    expect(after.dns.udpRefusedSource).toBeGreaterThan(before.dns.udpRefusedSource);
    expect(after.dns.tcpRefusedSource).toBeGreaterThan(before.dns.tcpRefusedSource);
    // The hijacked query and the SYN (with its retries) entered the TUN and were dropped there.
    expect(after.engine.dropForeignSource - before.engine.dropForeignSource).toBeGreaterThanOrEqual(2);
    // The same from the LAN still works.
    expect((await dig(lan, [`@${GW}`, 'origin.test'])).stdout.trim()).toBe(fake);
  });

  it('a LAN host claiming a live NAT address towards a fake address is dropped by the engine (dropNatSource)', async () => {
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('tcp tcp-hello\n');
    // The app's live TCP NAT pair, as the Listener sees its peer.
    const ss = await t.client.must('ss', ['-tnH', 'state', 'established', '( sport = :1313 )']);
    const peer = ss.trim().split('\n')[0]?.trim().split(/\s+/).pop() ?? '';
    const [natIp, natPort] = [peer.slice(0, peer.lastIndexOf(':')), peer.slice(peer.lastIndexOf(':') + 1)];
    expect(natIp).toMatch(FAKE);
    const fake = await fakeOf('origin.test');
    const before = (await status()).engine.dropNatSource;
    const h = await lan.exec(
      'hping3',
      ['-S', '-a', natIp, '-s', natPort, '-k', '-p', String(HTTP_PORT), '-c', '5', '-i', 'u20000', fake],
      { timeoutMs: 20_000 },
    );
    expect(h.stderr).toMatch(/5 packets transmitted/);
    await expect.poll(async () => (await status()).engine.dropNatSource - before, { timeout: 5000 }).toBe(5);
  });

  it('spoofed UDP and TCP straight to the Listener from a LAN host (rp_filter off): dropped, counted; the flows live on', async () => {
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('tcp tcp-hello\n');
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('udp udp-hello\n');
    // The app's live NAT pairs: UDP from the nftables set of beforeAll, TCP as the Listener sees its peer.
    const set = await t.client.must('nft', ['-nn', 'list', 'set', 'ip', 'fptseen', 'seen']);
    const m = /(198\.18\.\d+\.\d+) \. (\d+)/.exec(set);
    expect(m, set).not.toBeNull();
    const [uIp, uPort] = [m?.[1] as string, m?.[2] as string];
    const ss = await t.client.must('ss', ['-tnH', 'state', 'established', '( sport = :1313 )']);
    const peer = ss.trim().split('\n')[0]?.trim().split(/\s+/).pop() ?? '';
    const [tIp, tPort] = [peer.slice(0, peer.lastIndexOf(':')), peer.slice(peer.lastIndexOf(':') + 1)];
    expect(tIp).toMatch(FAKE);
    // Test instruments (this namespace only): what reached the local stack for gateway:1313 from the LAN
    // interface, and what the Listener's side sent back towards the spoofed TCP pair (a challenge ACK, a
    // SYN-ACK or a RST would each show there).
    const nft = join(t.tmp, 'spoof.nft');
    writeFileSync(
      nft,
      'table ip fptspoof {\n' +
        `  chain in { type filter hook input priority 0; iifname "${lanIf}" ip daddr ${GW} udp dport 1313 counter; iifname "${lanIf}" ip daddr ${GW} tcp dport 1313 counter; }\n` +
        `  chain out { type filter hook output priority 0; ip daddr ${tIp} tcp sport 1313 counter; }\n}\n`,
    );
    await t.client.must('nft', ['-f', nft]);
    const counters = async () => {
      const out = await t.client.must('nft', ['-nn', 'list', 'table', 'ip', 'fptspoof']);
      return [...out.matchAll(/counter packets (\d+)/g)].map((x) => Number(x[1]));
    };
    const hping = async (args: string[]) => {
      const h = await lan.exec('hping3', [...args, '-k', '-p', '1313', '-c', '3', '-i', 'u20000', GW], {
        timeoutMs: 20_000,
      });
      expect(h.stderr).toMatch(/3 packets transmitted/);
    };
    expect((await t.client.must('sysctl', ['-n', `net.ipv4.conf.${lanIf}.rp_filter`])).trim()).toBe('0');
    const before = await status();
    const payload = join(t.tmp, 'spoof.bin');
    writeFileSync(payload, 'SPOOFED1');
    await hping(['-2', '-a', uIp, '-s', uPort, '-d', '8', '-E', payload]);
    // A SYN on the live TCP pair (would draw a challenge ACK), then a RST and data on it.
    await hping(['-S', '-a', tIp, '-s', tPort]);
    await hping(['-R', '-a', tIp, '-s', tPort]);
    await hping(['-A', '-a', tIp, '-s', tPort, '-d', '8', '-E', payload]);
    // All of it reached the gateway's stack (rp_filter off) ...
    await expect.poll(counters, { timeout: 5000 }).toEqual([3, 9, 0]);
    // ... and the UDP Listener counted and dropped its three.
    await expect
      .poll(async () => (await status()).udp.dropped['foreign-ingress'] - before.udp.dropped['foreign-ingress'], {
        timeout: 5000,
      })
      .toBe(3);
    // ... and the TCP Listener's device filter dropped and counted its nine (SYN, RST, data × 3).
    await expect
      .poll(async () => (await status()).tcp.droppedForeignIngress - before.tcp.droppedForeignIngress, {
        timeout: 5000,
      })
      .toBe(9);
    // Both flows still carry the app's own traffic, and the spoofed payload never reached the app.
    app.stdin?.write('again\n');
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('tcp again\n');
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('udp again\n');
    expect(appOut).not.toContain('SPOOFED1');
    // The instrument sees the Listener's side of that pair: the echo of 'again' went out on it.
    const [, , out] = await counters();
    expect(out).toBeGreaterThan(0);
    expect((await status()).tcp.active).toBe(before.tcp.active);
  });

  it('rp_filter=1 on the LAN interface drops spoofed NAT sources before they reach any socket (IPReversePathFilter)', async () => {
    const set = await t.client.must('nft', ['-nn', 'list', 'set', 'ip', 'fptseen', 'seen']);
    const m = /(198\.18\.\d+\.\d+) \. (\d+)/.exec(set);
    expect(m, set).not.toBeNull();
    const payload = join(t.tmp, 'spoof2.bin');
    writeFileSync(payload, 'SPOOFED2');
    await t.client.must('sysctl', ['-qw', `net.ipv4.conf.${lanIf}.rp_filter=1`]);
    const before = await nstat(t.client, 'TcpExtIPReversePathFilter');
    const h = await lan.exec(
      'hping3',
      ['-2', '-a', m?.[1] as string, '-s', m?.[2] as string, '-k', '-p', '1313', '-c', '3', '-i', 'u20000'].concat([
        '-d',
        '8',
        '-E',
        payload,
        GW,
      ]),
      { timeoutMs: 20_000 },
    );
    expect(h.stderr).toMatch(/3 packets transmitted/);
    await expect
      .poll(() => nstat(t.client, 'TcpExtIPReversePathFilter'), { timeout: 5000 })
      .toBeGreaterThanOrEqual(before + 3);
    expect(appOut).not.toContain('SPOOFED2');
  });
});
