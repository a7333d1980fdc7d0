/**
 * TcpAcceptor (native/accept_addon.cc), the Listener's socket on real
 * loopback connections, no root: a burst arrives as batches of numbers
 * (fd, peer address, peer port), the fds are the accepted sockets, reset()
 * sends RST, close() stops listening.
 */
import { once } from 'node:events';
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ACCEPT_RECORD_FIELDS, type NativeTcpAcceptor, native } from '../../../src/native.js';
import { LO, socketError, until } from '../proxy/helpers.js';

const LO_U32 = 0x7f000001;
const open: net.Socket[] = [];
const acceptors: NativeTcpAcceptor[] = [];
afterEach(() => {
  for (const s of open.splice(0)) s.destroy();
  for (const a of acceptors.splice(0)) a.close();
});

function start(): { a: NativeTcpAcceptor; batches: number[]; recs: { fd: number; ip: number; port: number }[] } {
  const a = new (native().TcpAcceptor)({ host: LO_U32, port: 0, backlog: 128 });
  acceptors.push(a);
  const batches: number[] = [];
  const recs: { fd: number; ip: number; port: number }[] = [];
  a.start((r, n) => {
    batches.push(n);
    for (let i = 0; i < n; i++) {
      const k = i * ACCEPT_RECORD_FIELDS;
      recs.push({ fd: r[k] as number, ip: r[k + 1] as number, port: r[k + 2] as number });
    }
  });
  return { a, batches, recs };
}

describe('TcpAcceptor', () => {
  it("device: what arrived on that interface is served ('lo' for loopback peers); a missing device is one error naming it", async () => {
    const a = new (native().TcpAcceptor)({ host: LO_U32, port: 0, backlog: 16, device: 'lo' });
    acceptors.push(a);
    const recs: number[] = [];
    a.start((r, n) => {
      for (let i = 0; i < n; i++) recs.push(r[i * ACCEPT_RECORD_FIELDS] as number);
    });
    const c = net.connect({ host: LO, port: a.port() });
    open.push(c);
    await once(c, 'connect');
    await until(() => recs.length === 1);
    expect(recs[0]).toBeGreaterThanOrEqual(0);
    // The eBPF filter counts what it drops: nothing yet (-1, uncounted, only where bpf() is refused: not
    // as root); uncounted without a device.
    if (process.getuid?.() === 0) expect(a.filterDrops()).toBe(0);
    else expect([0, -1]).toContain(a.filterDrops());
    const plain = new (native().TcpAcceptor)({ host: LO_U32, port: 0, backlog: 16 });
    acceptors.push(plain);
    expect(plain.filterDrops()).toBe(-1);
    a.reset(recs[0] as number);
    expect(() => new (native().TcpAcceptor)({ host: LO_U32, port: 0, backlog: 16, device: 'fpnone0' })).toThrow(
      /accept only from device 'fpnone0': No such device \(open the TUN before the listener\)/,
    );
  });

  it('50 connections at once reach JavaScript in batches, each as its fd, peer address and peer port', async () => {
    const { a, batches, recs } = start();
    const clients = Array.from({ length: 50 }, () => net.connect({ host: LO, port: a.port() }));
    open.push(...clients);
    await Promise.all(clients.map((c) => once(c, 'connect')));
    await until(() => recs.length === 50);
    // One call per wake-up, not one per connection.
    expect(batches.length).toBeLessThan(50);
    expect(recs.every((r) => r.fd >= 0 && r.ip === LO_U32)).toBe(true);
    expect(new Set(recs.map((r) => r.port))).toEqual(new Set(clients.map((c) => c.localPort)));
    // The fd is that client's accepted socket: bytes both ways through it.
    const first = recs[0] as { fd: number; port: number };
    const client = clients.find((c) => c.localPort === first.port) as net.Socket;
    const srv = new net.Socket({ fd: first.fd, readable: true, writable: true });
    open.push(srv);
    client.write('ping');
    const [got] = (await once(srv, 'data')) as [Buffer];
    expect(got.toString()).toBe('ping');
    srv.write('pong');
    const [back] = (await once(client, 'data')) as [Buffer];
    expect(back.toString()).toBe('pong');
    // reset(fd): the peer sees a reset, not a clean FIN.
    const second = recs[1] as { fd: number; port: number };
    const victim = clients.find((c) => c.localPort === second.port) as net.Socket;
    const err = socketError(victim);
    a.reset(second.fd);
    expect((await err).code).toBe('ECONNRESET');
    for (const r of recs.slice(2)) a.reset(r.fd);
  });

  it('close() stops listening (ECONNREFUSED); a taken port or a foreign address throws with its code', async () => {
    const { a } = start();
    const port = a.port();
    const T = native().TcpAcceptor;
    expect(() => new T({ host: LO_U32, port, backlog: 16 })).toThrow(expect.objectContaining({ code: 'EADDRINUSE' }));
    // 192.0.2.1 (TEST-NET-1) is no address of this machine: nothing is sent, bind() fails.
    expect(() => new T({ host: 0xc0000201, port: 0, backlog: 16 })).toThrow(
      expect.objectContaining({ code: 'EADDRNOTAVAIL' }),
    );
    expect(() => new T({ host: -1, port: 0, backlog: 16 })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARG' }),
    );
    a.close();
    const c = net.connect({ host: LO, port });
    open.push(c);
    expect((await socketError(c)).code).toBe('ECONNREFUSED');
    expect(() => a.port()).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });
});
