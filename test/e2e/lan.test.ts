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
  setInterval(() => {}, 1000);
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

  it('spoofed UDP straight to the Listener from a LAN host: delivered with rp_filter off, dropped with rp_filter=1 (IPReversePathFilter)', async () => {
    await expect.poll(() => appOut, { timeout: 10_000 }).toContain('udp udp-hello\n');
    // The app's live UDP NAT pair, collected by the nftables set of beforeAll.
    const set = await t.client.must('nft', ['-nn', 'list', 'set', 'ip', 'fptseen', 'seen']);
    const m = /(198\.18\.\d+\.\d+) \. (\d+)/.exec(set);
    expect(m, set).not.toBeNull();
    const [natIp, natPort] = [m?.[1] as string, m?.[2] as string];
    const spoof = async (text: string) => {
      const payload = join(t.tmp, `${text}.bin`);
      writeFileSync(payload, text);
      const h = await lan.exec(
        'hping3',
        [
          '-2',
          '-a',
          natIp,
          '-s',
          natPort,
          '-k',
          '-p',
          '1313',
          '-c',
          '3',
          '-i',
          'u20000',
          '-d',
          String(text.length),
          '-E',
          payload,
          GW,
        ],
        { timeoutMs: 20_000 },
      );
      expect(h.stderr).toMatch(/3 packets transmitted/);
    };
    // Without reverse-path filtering (the default in a new namespace) the kernel delivers the datagram to the
    // Listener, which cannot tell it from the app's own: the echo server answers the app with it. This is why
    // the README's LAN setup sets rp_filter=1 on the LAN interface.
    expect((await t.client.must('sysctl', ['-n', `net.ipv4.conf.${lanIf}.rp_filter`])).trim()).toBe('0');
    await spoof('SPOOFED1');
    await expect.poll(() => appOut, { timeout: 5000 }).toContain('udp SPOOFED1\n');
    await t.client.must('sysctl', ['-qw', `net.ipv4.conf.${lanIf}.rp_filter=1`]);
    const before = await nstat(t.client, 'TcpExtIPReversePathFilter');
    await spoof('SPOOFED2');
    await expect
      .poll(() => nstat(t.client, 'TcpExtIPReversePathFilter'), { timeout: 5000 })
      .toBeGreaterThanOrEqual(before + 3);
    // Give a delivered datagram time to come back through the echo, then check none did.
    await new Promise((r) => setTimeout(r, 1500));
    expect(appOut).not.toContain('SPOOFED2');
  });
});
