/**
 * Routing-loop guard: a datagram whose NAT flow comes from one of the
 * daemon's own upstream sockets (it sent to an address routed into the TUN,
 * e.g. a resolver with --no-dns-hijack) is dropped, not served by yet
 * another association (which would send into the TUN again, forever).
 */
import type * as dgram from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { DirectOutbound } from '../../../src/proxy/outbounds/direct.js';
import { DirectUdpAssociation } from '../../../src/proxy/outbounds/direct-udp.js';
import { Router } from '../../../src/proxy/router.js';
import { isOwnPort } from '../../../src/proxy/udp/ownPorts.js';
import { UdpListener } from '../../../src/proxy/udp/udpListener.js';
import { boundUdp, flowEntry, LO, until } from './helpers.js';

const closers: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

const bound = () => boundUdp(closers);

describe('UDP routing-loop guard', () => {
  it('a direct association holds its socket port while open', async () => {
    const a = new DirectUdpAssociation();
    a.send({ host: LO, port: 9 }, Buffer.from('x'));
    await until(() => a.localPort4() !== undefined && isOwnPort(a.localPort4() as number));
    const port = a.localPort4() as number;
    a.close();
    expect(isOwnPort(port)).toBe(false);
  });

  it('the listener drops a flow from one of our own upstream sockets, counted and logged once; other flows are served', async () => {
    // Our own socket: a direct association that already sent once (its port is held).
    const own = new DirectUdpAssociation();
    closers.push(() => own.close());
    own.send({ host: LO, port: 9 }, Buffer.from('x'));
    await until(() => own.localPort4() !== undefined && isOwnPort(own.localPort4() as number));
    const ownPort = own.localPort4() as number;

    const echo = await bound();
    echo.on('message', (m, r) => echo.send(m, r.port, r.address));
    const loopNat = await bound();
    const appNat = await bound();
    const flow = (id: number, nat: dgram.Socket, srcPort: number) =>
      flowEntry({ id, srcIp: LO, srcPort, dstIp: LO, dstPort: echo.address().port, natPort: nat.address().port });
    const flows = new Map([
      [loopNat.address().port, flow(1, loopNat, ownPort)],
      [appNat.address().port, flow(2, appNat, 40_001)],
    ]);
    const log: string[] = [];
    const l = new UdpListener({
      host: LO,
      port: 0,
      nat: { lookup: (_p, ip, port) => (ip === LO ? flows.get(port) : undefined) },
      names: { reverse: () => undefined },
      router: new Router({ final: new DirectOutbound() }),
      logger: (line) => log.push(line),
    });
    await l.start();
    closers.push(() => l.close());
    const lport = l.address().port;

    for (let i = 0; i < 3; i++) loopNat.send(`loop${i}`, lport, LO);
    const got: string[] = [];
    appNat.on('message', (m) => got.push(m.toString()));
    appNat.send('hello', lport, LO);
    await until(() => got.length === 1 && l.stats().dropped.loop === 3);
    expect(got).toEqual(['hello']);
    expect(l.stats().opened).toBe(1);
    expect(log.filter((x) => /came back through the TUN/.test(x))).toHaveLength(1);
  });
});
