/**
 * UDP sessions in the controller's connection list: a real UdpListener
 * (JS relay and native relay) on loopback serves an "app" socket through
 * DIRECT to a UDP echo; the tracker lists the association as mihomo does
 * (network "udp", the name behind the fake address, rule, chains, the
 * relay's byte counts) and close(id) ends it. Only the NAT is a table.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type ConnectionJson as Conn, ConnectionTracker } from '../../../src/api/connections.js';
import { DirectOutbound } from '../../../src/proxy/outbounds/direct.js';
import { Router, RouteTable } from '../../../src/proxy/router.js';
import { parseRule } from '../../../src/proxy/rules.js';
import { UdpListener, type UdpSessionEvent } from '../../../src/proxy/udp/udpListener.js';
import { boundUdp, flowEntry, LO, until } from '../proxy/helpers.js';

const FAKE = '198.18.7.7';
const closers: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

const bound = () => boundUdp(closers);

/** No TCP here: a TCP source with no sessions. */
const noTcp = {
  on: () => undefined,
  off: () => undefined,
  sessionBytes: () => undefined,
  closeFlow: () => false,
  stats: () => ({ bytesUp: 0, bytesDown: 0 }),
};

describe.each([
  ['JS relay', false],
  ['native relay', true],
])('ConnectionTracker with UDP sessions (%s)', (_what, native) => {
  it('lists the association by name with growing bytes; close(id) ends it and it leaves the list', async () => {
    const echo = await bound();
    echo.on('message', (m, r) => echo.send(m, r.port, r.address));
    const app = await bound();
    const flow = flowEntry({
      id: 41,
      srcIp: '10.0.0.2',
      srcPort: 5353,
      dstIp: FAKE,
      dstPort: echo.address().port,
      natIp: LO,
      natPort: app.address().port,
    });
    const l = new UdpListener({
      host: LO,
      port: 0,
      nat: { lookup: (_p, ip, port) => (ip === LO && port === flow.natPort ? flow : undefined) },
      names: { reverse: (ip) => (ip === FAKE ? 'echo.test' : undefined) },
      // The fake address is only a name here: DIRECT resolves echo.test to the real echo on loopback.
      router: new Router({
        table: new RouteTable({
          outbounds: new Map([['DIRECT', new DirectOutbound({ resolve: async () => [LO] })]]),
          groups: [],
          rules: [parseRule('DOMAIN-SUFFIX,echo.test,DIRECT', 1)],
          final: 'DIRECT',
        }),
      }),
      logger: () => {},
      native,
    });
    await l.start();
    closers.push(() => l.close());
    const tracker = new ConnectionTracker(noTcp, { udp: l });
    closers.push(() => tracker.detach());
    const sessions: UdpSessionEvent[] = [];
    l.on('session', (e) => sessions.push(e));
    let echoed = 0;
    app.on('message', () => echoed++);
    const lport = l.address().port;

    app.send(Buffer.alloc(100, 1), lport, LO);
    await until(() => echoed === 1);
    const conns = tracker.snapshot().connections as Conn[];
    expect(conns).toHaveLength(1);
    const c = conns[0] as Conn;
    expect(c).toMatchObject({
      upload: 100,
      download: 100,
      chains: ['DIRECT'],
      rule: 'DomainSuffix',
      rulePayload: 'echo.test',
      metadata: {
        network: 'udp',
        type: 'Tun',
        host: 'echo.test',
        dnsMode: 'fake-ip',
        sourceIP: '10.0.0.2',
        sourcePort: '5353',
        destinationIP: FAKE,
        destinationPort: String(echo.address().port),
      },
    });
    expect(Date.parse(c.start)).not.toBeNaN();

    app.send(Buffer.alloc(50, 2), lport, LO);
    await until(() => echoed === 2);
    const c2 = (tracker.snapshot().connections as Conn[])[0] as Conn;
    expect({ id: c2.id, upload: c2.upload, download: c2.download }).toEqual({ id: c.id, upload: 150, download: 150 });
    // Totals count UDP too (the /traffic graph's source).
    expect(tracker.snapshotTotals().bytesDown).toBeGreaterThanOrEqual(150);

    expect(tracker.close(c.id)).toBe(true);
    await until(() => tracker.size === 0);
    expect(sessions.map((e) => e.phase)).toEqual(['open', 'close']);
    expect(sessions[1]).toMatchObject({ bytesUp: 150, bytesDown: 150, end: 'closed' });
    expect(l.stats().associations).toBe(0);
    expect(tracker.close(c.id)).toBe(false);

    // The app's next datagram opens a new association: a new id in the list.
    app.send(Buffer.alloc(10, 3), lport, LO);
    await until(() => echoed === 3);
    const again = tracker.snapshot().connections as Conn[];
    expect(again).toHaveLength(1);
    expect(again[0]?.id).not.toBe(c.id);
    expect(again[0]?.upload).toBe(10);
    expect(tracker.closeAll()).toBe(1);
    await until(() => tracker.size === 0);
  });
});
