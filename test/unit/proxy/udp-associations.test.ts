/**
 * The upstream UDP associations on their own, and bad SOCKS5 UDP input
 * through the listener: a tiny fake SOCKS5 server (TCP handshake + a UDP
 * relay socket the test drives) crafts the malformed replies — truncated,
 * FRAG ≠ 0, unknown ATYP, oversized, from a foreign address — that a real
 * relay never sends.
 */
import * as dgram from 'node:dgram';
import { once } from 'node:events';
import type * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import type { FlowEntry, Proto } from '../../../src/nat/types.js';
import type { Destination, UdpAssociation } from '../../../src/proxy/outbound.js';
import { DirectUdpAssociation } from '../../../src/proxy/outbounds/direct-udp.js';
import { Socks5Outbound } from '../../../src/proxy/outbounds/socks5.js';
import { udpHeader } from '../../../src/proxy/socks5-codec.js';
import { UdpListener } from '../../../src/proxy/udp/udpListener.js';
import { flowEntry, LO, scriptedServer, startListener, until } from './helpers.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function udpSocket(address = LO): Promise<dgram.Socket> {
  const s = dgram.createSocket('udp4');
  s.bind(0, address);
  await once(s, 'listening');
  cleanups.push(() => s.close());
  return s;
}

/**
 * Fake SOCKS5 server: no-auth, answers UDP ASSOCIATE with its relay socket
 * (or `bnd`), records the client address from the request and every
 * datagram the relay receives (header decoded).
 */
async function fakeSocks(opts: { bnd?: string; rep?: number } = {}) {
  const relay = await udpSocket();
  let requested: { host: string; port: number } | undefined;
  const got: Array<{ host: string; port: number; data: Buffer; from: dgram.RemoteInfo }> = [];
  relay.on('message', (m, r) => {
    const h = udpHeader.decode(m);
    got.push({ host: h.host, port: h.port, data: m.subarray(udpHeader.encodingLength(h)), from: r });
  });
  const server = await scriptedServer((c) => {
    let stage = 0;
    return (buf) => {
      if (stage === 0 && buf.length >= 3) {
        buf = buf.subarray(3);
        stage = 1;
        c.write(Buffer.from([5, 0]));
      }
      if (stage === 1 && buf.length >= 10) {
        // VER CMD RSV ATYP(1) ADDR(4) PORT(2): we always send an IPv4 literal.
        requested = { host: `${buf[4]}.${buf[5]}.${buf[6]}.${buf[7]}`, port: buf.readUInt16BE(8) };
        stage = 2;
        const rep = Buffer.from([5, opts.rep ?? 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        (opts.bnd ?? LO).split('.').forEach((x, i) => {
          rep[4 + i] = Number(x);
        });
        rep.writeUInt16BE(relay.address().port, 8);
        c.write(rep);
      }
      return buf;
    };
  });
  cleanups.push(server.close);
  return {
    port: server.port,
    relay,
    ctrls: server.conns,
    got,
    requested: () => requested,
    /** Send raw bytes from the relay to the association's UDP socket. */
    sendRaw: (b: Buffer) => {
      const to = got.at(-1)?.from ?? { address: requested?.host ?? LO, port: requested?.port ?? 0 };
      relay.send(b, to.port, to.address);
    },
  };
}

function reply(host: string, port: number, data: Buffer | string, frag = 0): Buffer {
  return Buffer.concat([udpHeader.encode({ frag, host, port }), Buffer.from(data)]);
}

function collect(a: UdpAssociation) {
  const msgs: Array<{ src: Destination; data: string }> = [];
  a.onMessage((src, p) => msgs.push({ src, data: p.toString() }));
  return msgs;
}

/** The malformed replies, each with the counter it must land in. */
const BAD: Array<[string, Buffer, 'truncated' | 'fragment' | 'bad-atyp' | 'oversized']> = [
  ['3 bytes (shorter than RSV RSV FRAG ATYP)', Buffer.from([0, 0, 0]), 'truncated'],
  ['IPv4 address cut off', Buffer.from([0, 0, 0, 1, 127, 0]), 'truncated'],
  ['name length past the end', Buffer.from([0, 0, 0, 3, 20, 0x61, 0x62]), 'truncated'],
  ['FRAG 1', reply(LO, 9, 'frag', 1), 'fragment'],
  ['ATYP 9', Buffer.from([0, 0, 0, 9, 127, 0, 0, 1, 0, 9, 0x78]), 'bad-atyp'],
  ['payload over maxPayloadBytes (100)', reply(LO, 9, Buffer.alloc(200)), 'oversized'],
];

describe('Socks5 UDP ASSOCIATE (fake relay)', () => {
  it('binds first and tells the proxy its UDP address; datagrams carry the name (ATYP 3)', async () => {
    const fs = await fakeSocks();
    const a = await new Socks5Outbound({ host: LO, port: fs.port }).udpAssociate();
    cleanups.push(() => a.close());
    a.send({ host: 'echo.test', port: 9000 }, Buffer.from('hi'));
    await until(() => fs.got.length === 1);
    const g = fs.got[0];
    expect(g).toMatchObject({ host: 'echo.test', port: 9000 });
    expect(g?.data.toString()).toBe('hi');
    expect(fs.requested()).toEqual({ host: g?.from.address, port: g?.from.port });
  });

  it('learns the relay-reported IP for a name; two names on one port stay ambiguous (reported as the IP)', async () => {
    const fs = await fakeSocks();
    const a = await new Socks5Outbound({ host: LO, port: fs.port }).udpAssociate();
    cleanups.push(() => a.close());
    const msgs = collect(a);
    a.send({ host: 'one.test', port: 443 }, Buffer.from('x'));
    a.send({ host: 'two.test', port: 53 }, Buffer.from('x'));
    a.send({ host: 'three.test', port: 53 }, Buffer.from('x'));
    await until(() => fs.got.length === 3);
    fs.sendRaw(reply('10.0.0.7', 443, 'r1'));
    fs.sendRaw(reply('10.0.0.8', 53, 'r2'));
    fs.sendRaw(reply('10.0.0.7', 443, 'r3'));
    await until(() => msgs.length === 3);
    expect(msgs).toEqual([
      { src: { host: 'one.test', port: 443 }, data: 'r1' },
      { src: { host: '10.0.0.8', port: 53 }, data: 'r2' },
      { src: { host: 'one.test', port: 443 }, data: 'r3' },
    ]);
  });

  it('malformed replies and foreign sources are dropped and counted (one log line per reason); valid ones still arrive', async () => {
    const fs = await fakeSocks();
    const log: string[] = [];
    const a = await new Socks5Outbound({ host: LO, port: fs.port }).udpAssociate({
      maxPayloadBytes: 100,
      logger: (l) => log.push(l),
    });
    cleanups.push(() => a.close());
    const msgs = collect(a);
    a.send({ host: LO, port: 9 }, Buffer.from('x'));
    await until(() => fs.got.length === 1);
    for (const [, b] of BAD) fs.sendRaw(b);
    fs.sendRaw(BAD[0]?.[1] as Buffer); // the same reason twice: counted twice, logged once
    const foreign = await udpSocket('127.0.0.2');
    const to = fs.got[0]?.from as dgram.RemoteInfo;
    foreign.send(reply(LO, 9, 'spoof'), to.port, to.address);
    fs.sendRaw(reply(LO, 9, 'good'));
    await until(() => msgs.length === 1 && a.stats().dropped['foreign-source'] === 1);
    expect(msgs).toEqual([{ src: { host: LO, port: 9 }, data: 'good' }]);
    expect(a.stats().dropped).toMatchObject({
      truncated: 4,
      fragment: 1,
      'bad-atyp': 1,
      oversized: 1,
      'foreign-source': 1,
    });
    expect(log).toHaveLength(5);
  });

  it('BND.ADDR 0.0.0.0 means "the address you reached me on"', async () => {
    const fs = await fakeSocks({ bnd: '0.0.0.0' });
    const a = await new Socks5Outbound({ host: LO, port: fs.port }).udpAssociate();
    cleanups.push(() => a.close());
    a.send({ host: 'x.test', port: 1 }, Buffer.from('hi'));
    await until(() => fs.got.length === 1);
  });

  it('the proxy refusing UDP ASSOCIATE rejects with its REP code', async () => {
    const fs = await fakeSocks({ rep: 7 });
    await expect(new Socks5Outbound({ host: LO, port: fs.port }).udpAssociate()).rejects.toMatchObject({
      code: 'ESOCKS5_CMD_UNSUPPORTED',
    });
  });

  it('the proxy closing the control connection ends the association; sends after it are counted, not thrown', async () => {
    const fs = await fakeSocks();
    const a = await new Socks5Outbound({ host: LO, port: fs.port }).udpAssociate();
    const closed = new Promise<Error | undefined>((r) => a.onClose(r));
    fs.ctrls[0]?.end();
    expect(await closed).toMatchObject({ code: 'EUPSTREAM_CLOSED' });
    a.send({ host: 'x.test', port: 1 }, Buffer.from('late'));
    expect(a.stats().dropped.closed).toBe(1);
  });

  it('close() ends the control connection (the proxy sees EOF)', async () => {
    const fs = await fakeSocks();
    const a = await new Socks5Outbound({ host: LO, port: fs.port }).udpAssociate();
    const c = fs.ctrls[0] as net.Socket;
    const ended = once(c, 'close');
    a.close();
    await ended;
  });
});

describe('DirectUdpAssociation', () => {
  it('without a resolver, names are dropped (counted, one log line per name); IPs work', async () => {
    const echo = await udpSocket();
    echo.on('message', (m, r) => echo.send(m, r.port, r.address));
    const log: string[] = [];
    const a = new DirectUdpAssociation({ logger: (l) => log.push(l) });
    cleanups.push(() => a.close());
    const msgs = collect(a);
    a.send({ host: 'echo.test', port: echo.address().port }, Buffer.from('by name'));
    a.send({ host: LO, port: echo.address().port }, Buffer.from('by ip'));
    await until(() => msgs.length === 1);
    expect(msgs[0]).toEqual({ src: { host: LO, port: echo.address().port }, data: 'by ip' });
    expect(a.stats().dropped['resolve-failed']).toBe(1);
    expect(log).toEqual([expect.stringMatching(/cannot resolve echo\.test: no resolver configured/)]);
  });

  it('a failed resolution drops what queued and is remembered briefly (one query per burst)', async () => {
    let now = 0;
    let calls = 0;
    let fail: (e: Error) => void = () => {};
    const a = new DirectUdpAssociation({
      clock: () => now,
      resolve: () => {
        calls++;
        return new Promise((_res, rej) => {
          fail = rej;
        });
      },
    });
    cleanups.push(() => a.close());
    for (let i = 0; i < 3; i++) a.send({ host: 'nx.test', port: 1 }, Buffer.from('q'));
    expect(calls).toBe(1);
    fail(new Error('NXDOMAIN'));
    await until(() => a.stats().dropped['resolve-failed'] === 3);
    a.send({ host: 'nx.test', port: 1 }, Buffer.from('q'));
    expect(calls).toBe(1);
    expect(a.stats().dropped['resolve-failed']).toBe(4);
    now = 5000;
    a.send({ host: 'nx.test', port: 1 }, Buffer.from('q'));
    expect(calls).toBe(2);
  });

  it('replies from the resolved address are reported under the name that was sent to', async () => {
    const echo = await udpSocket();
    echo.on('message', (m, r) => echo.send(m, r.port, r.address));
    const a = new DirectUdpAssociation({ resolve: async () => ['::1', LO] });
    cleanups.push(() => a.close());
    const msgs = collect(a);
    a.send({ host: 'echo.test', port: echo.address().port }, Buffer.from('v4 first'));
    await until(() => msgs.length === 1);
    expect(msgs[0]).toEqual({ src: { host: 'echo.test', port: echo.address().port }, data: 'v4 first' });
  });

  it('oversized payloads are dropped and counted', () => {
    const a = new DirectUdpAssociation({ maxPayloadBytes: 10 });
    cleanups.push(() => a.close());
    a.send({ host: LO, port: 9 }, Buffer.alloc(11));
    expect(a.stats().dropped.oversized).toBe(1);
  });
});

describe('UdpListener with a misbehaving SOCKS5 relay', () => {
  class OneFlowNat {
    entry: FlowEntry | undefined;
    lookup(proto: Proto, natIp: string, natPort: number): FlowEntry | undefined {
      const e = this.entry;
      return proto === 'udp' && e && natIp === e.natIp && natPort === e.natPort ? e : undefined;
    }
  }

  /** A NAT that reports closes: the listener then relays natively (native/udp_relay.h). */
  class ClosingOneFlowNat extends OneFlowNat {
    on(): this {
      return this;
    }
    off(): this {
      return this;
    }
  }

  async function setup(nat: OneFlowNat = new OneFlowNat()) {
    const fs = await fakeSocks();
    const names = { reverse: (ip: string) => (ip === '198.18.2.2' ? 'echo.test' : undefined) };
    const final = new Socks5Outbound({ host: LO, port: fs.port });
    const { l, log, sessions } = await startListener(
      UdpListener,
      final,
      { nat, names, maxPayloadBytes: 100 },
      cleanups,
    );
    const app = await udpSocket();
    const got: string[] = [];
    app.on('message', (m) => got.push(m.toString()));
    nat.entry = flowEntry({
      id: 1,
      srcIp: '198.18.0.1',
      srcPort: 40001,
      dstIp: '198.18.2.2',
      dstPort: 9000,
      natPort: app.address().port,
    });
    app.send('hello', l.address().port, LO);
    await until(() => fs.got.length === 1);
    expect(fs.got[0]).toMatchObject({ host: 'echo.test', port: 9000 });
    return { fs, l, got, log, sessions, again: (b: string) => app.send(b, l.address().port, LO) };
  }

  describe.each([
    ['in JavaScript', () => new OneFlowNat()],
    ['on the native relay (the header is added and stripped natively)', () => new ClosingOneFlowNat()],
  ])('%s', (_where, nat) => {
    it.each(BAD)(
      '%s → dropped, counted in the listener stats, the next good reply is delivered',
      async (_n, bad, reason) => {
        const { fs, l, got } = await setup(nat());
        fs.sendRaw(bad);
        // The relay reports the IP it heard from: learned as echo.test:9000's answer.
        fs.sendRaw(reply('10.0.0.7', 9000, 'good'));
        await until(() => got.length === 1);
        expect(got).toEqual(['good']);
        expect(l.stats().dropped[reason]).toBe(1);
      },
    );

    it('the proxy dropping the control connection closes the association (EUPSTREAM_CLOSED), the next datagram opens a new one', async () => {
      const { fs, l, sessions, again } = await setup(nat());
      fs.ctrls[0]?.destroy();
      await until(() => sessions.some((e) => e.phase === 'close'));
      expect(sessions.at(-1)).toMatchObject({ phase: 'close', end: 'upstream-closed', errorCode: 'EUPSTREAM_CLOSED' });
      expect(l.stats().associations).toBe(0);
      again('after');
      await until(() => fs.got.length === 2);
      expect(fs.got[1]?.data.toString()).toBe('after');
      expect(fs.ctrls).toHaveLength(2);
      expect(l.stats()).toMatchObject({ opened: 2, associations: 1 });
    });
  });

  describe('on the native relay', () => {
    it('after the relay-reported IP is learned, replies and datagrams no longer reach JavaScript', async () => {
      const { fs, l, got, again } = await setup(new ClosingOneFlowNat());
      fs.sendRaw(reply('10.0.0.7', 9000, 'r0'));
      await until(() => got.length === 1);
      const before = l.stats();
      for (let i = 1; i <= 50; i++) {
        again(`u${i}`);
        fs.sendRaw(reply('10.0.0.7', 9000, `r${i}`));
      }
      await until(() => got.length === 51 && fs.got.length === 51);
      expect(fs.got.at(-1)).toMatchObject({ host: 'echo.test', port: 9000 });
      const after = l.stats();
      expect(after.nativeMisses - before.nativeMisses).toBe(0);
      expect(after.nativeUnknownRemotes - before.nativeUnknownRemotes).toBe(0);
      expect(after.datagramsUp).toBe(51);
      expect(after.datagramsDown).toBe(51);
    });
  });
});
