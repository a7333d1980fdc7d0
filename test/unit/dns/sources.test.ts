/**
 * The DNS server's source policy (issue 16): refused sources, the UDP rate
 * limit per client, the TCP per-client cap and fair eviction of idle
 * connections. Real sockets on loopback; clients bind distinct 127.0.0.x
 * source addresses so the server sees distinct clients.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { DnsServer, type DnsServerOptions, type DnsSourcePolicy } from '../../../src/dns/server.js';
import { ipToInt } from '../../../src/util/cidr.js';

const REFUSED = ipToInt('127.0.0.9');
const TRUSTED = ipToInt('127.0.0.4');
const policy: DnsSourcePolicy = {
  client: (addr) => (addr === REFUSED ? -1 : addr),
  trusted: (c) => c === TRUSTED,
};

/** Answers every query with an empty NOERROR response (same id). */
const echoHandler = (msg: Buffer) => {
  const q = dnsPacket.decode(msg);
  return dnsPacket.encode({ id: q.id, type: 'response', flags: 0, questions: q.questions });
};
const query = (id: number) => dnsPacket.encode({ id, type: 'query', questions: [{ type: 'A', name: 'x.test' }] });

let server: DnsServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function start(opts: DnsServerOptions): Promise<number> {
  server = new DnsServer(echoHandler, { sources: policy, ...opts });
  await server.listen([{ host: '127.0.0.1', port: 0 }]);
  return server.addresses[0].port;
}

/** Sends n UDP queries from `from` and counts the answers that arrive within 500 ms of the last one. */
async function udpBurst(port: number, from: string, n: number): Promise<number> {
  const s = dgram.createSocket('udp4');
  await new Promise<void>((r) => s.bind(0, from, () => r()));
  let answers = 0;
  s.on('message', () => answers++);
  for (let i = 0; i < n; i++) s.send(query(i), port, '127.0.0.1');
  await new Promise((r) => setTimeout(r, 500));
  s.close();
  return answers;
}

/** Opens a TCP connection from `from`; resolves with it once connected. */
function connect(port: number, from: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ host: '127.0.0.1', port, localAddress: from }, () => resolve(c));
    c.once('error', reject);
  });
}

/** One framed query on a fresh connection from `from`: the answer's id, or undefined when closed first. */
async function tcpAsk(port: number, from: string, id: number): Promise<number | undefined> {
  const c = await connect(port, from);
  return new Promise((resolve) => {
    let buf = Buffer.alloc(0);
    c.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        resolve(dnsPacket.decode(buf.subarray(2)).id);
        c.destroy();
      }
    });
    c.on('error', () => resolve(undefined));
    c.on('close', () => resolve(undefined));
    const q = query(id);
    const framed = Buffer.alloc(q.length + 2);
    framed.writeUInt16BE(q.length, 0);
    q.copy(framed, 2);
    c.write(framed);
  });
}

const closed = (c: net.Socket) => new Promise<void>((r) => (c.destroyed ? r() : c.once('close', () => r())));

describe('DNS source policy', () => {
  it('drops queries and connections from sources the policy does not serve, and counts them', async () => {
    const port = await start({});
    expect(await udpBurst(port, '127.0.0.9', 3)).toBe(0);
    expect(await udpBurst(port, '127.0.0.2', 3)).toBe(3);
    expect(await tcpAsk(port, '127.0.0.9', 7)).toBeUndefined();
    expect(await tcpAsk(port, '127.0.0.2', 8)).toBe(8);
    expect(server?.stats).toMatchObject({ udpRefusedSource: 3, tcpRefusedSource: 1, udpReceived: 6 });
  });

  it('limits the UDP queries of an untrusted client to its bucket; other and trusted clients keep being answered', async () => {
    const port = await start({ udpQueriesPerSecond: 10 });
    const flooder = await udpBurst(port, '127.0.0.2', 200);
    // A bucket holds 2 s worth (20) plus what refills during the burst.
    expect(flooder).toBeGreaterThanOrEqual(20);
    expect(flooder).toBeLessThan(40);
    expect(await udpBurst(port, '127.0.0.3', 15)).toBe(15);
    expect(await udpBurst(port, '127.0.0.4', 200)).toBe(200);
    expect(server?.stats.udpRateLimited).toBe(200 - flooder);
  });

  it('caps TCP connections per client; another client still gets its answer', async () => {
    const port = await start({ maxConnectionsPerClient: 4 });
    const conns = await Promise.all(Array.from({ length: 10 }, () => connect(port, '127.0.0.2')));
    // The server closes the six over the cap at accept.
    await new Promise((r) => setTimeout(r, 300));
    expect(server?.stats.tcpPerClientRefused).toBe(6);
    expect(server?.openConnections).toBe(4);
    expect(await tcpAsk(port, '127.0.0.3', 42)).toBe(42);
    for (const c of conns) c.destroy();
  });

  it('at the global cap a new client evicts the longest-idle connection of the client holding the most', async () => {
    const port = await start({ maxConnections: 6, maxConnectionsPerClient: 6 });
    const hog = [];
    for (let i = 0; i < 6; i++) hog.push(await connect(port, '127.0.0.2'));
    await new Promise((r) => setTimeout(r, 100));
    expect(server?.openConnections).toBe(6);
    expect(await tcpAsk(port, '127.0.0.3', 5)).toBe(5);
    // The first (longest idle) of the hog's connections was the one closed.
    await closed(hog[0]);
    expect(server?.stats.tcpEvicted).toBe(1);
    expect(hog.slice(1).every((c) => !c.destroyed)).toBe(true);
    for (const c of hog) c.destroy();
  });
});
