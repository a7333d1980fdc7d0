/**
 * The controller API against mihomo's shapes (hub/route/*.go), on loopback:
 * a real TcpListener (loopback "apps" through DIRECT and microsocks), a real
 * RouteTable with a select group, a real FakeDns, real HTTP and WebSocket
 * clients. Only the NAT is the small test NAT of the listener tests.
 */
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { ConnectionTracker, type SessionSource } from '../../../src/api/connections.js';
import { LogBus } from '../../../src/api/logs.js';
import { type ApiBackend, ApiServer } from '../../../src/api/server.js';
import { FakeDns } from '../../../src/dns/FakeDns.js';
import { type SessionEvent, TcpListener } from '../../../src/proxy/listener.js';
import { DirectOutbound } from '../../../src/proxy/outbounds/direct.js';
import { RejectOutbound } from '../../../src/proxy/outbounds/reject.js';
import { Socks5Outbound } from '../../../src/proxy/outbounds/socks5.js';
import { Router, RouteTable } from '../../../src/proxy/router.js';
import { parseRule } from '../../../src/proxy/rules.js';
import {
  closeServer,
  type Daemon,
  echoOrigin,
  FakeNat,
  LO,
  listen,
  socketError,
  startMicrosocks,
  until,
} from '../proxy/helpers.js';

const FAKE = '198.18.2.2';
const SECRET = 'correct horse';

let socks: Daemon;
let origin: Awaited<ReturnType<typeof echoOrigin>>;
let web: http.Server;
let webPort: number;
let deadPort: number;
let dns: FakeDns;
let listener: TcpListener;
let tracker: ConnectionTracker;
let api: ApiServer;
let base: string;
let uiDir: string;
let outsideDir: string;
const nat = new FakeNat();
const logs = new LogBus();
const logLines: string[] = [];

function makeTable(): RouteTable {
  return new RouteTable({
    outbounds: new Map<string, ConstructorParameters<typeof Router>[0]['final'] & object>([
      ['DIRECT', new DirectOutbound()],
      ['REJECT', new RejectOutbound()],
      ['sock', new Socks5Outbound({ host: LO, port: socks.port })],
    ]),
    groups: [{ name: 'Proxy', type: 'select', members: ['DIRECT', 'sock'], line: 2 }],
    rules: [parseRule('DOMAIN-SUFFIX,localhost,Proxy', 1), parseRule('DST-PORT,25,REJECT', 2)],
    final: 'DIRECT',
  });
}
let table: RouteTable;

function backend(over: Partial<ApiBackend> = {}): ApiBackend {
  return {
    table: () => table,
    connections: tracker,
    logs,
    configs: () => ({ mode: 'rule', 'log-level': 'info', port: 0 }),
    patchConfigs: (b) => (Object.keys(b).every((k) => k === 'mode') ? undefined : 'cannot change that'),
    reload: () => ({ ok: false, error: 'started without --config: nothing to reload' }),
    flushFakeIp: () => 'kept',
    dnsQuery: (m) => dns.handleQuery(m, 'tcp'),
    ...over,
  };
}

async function startApi(o: Partial<ConstructorParameters<typeof ApiServer>[0]> = {}): Promise<ApiServer> {
  const s = new ApiServer({
    host: LO,
    port: 0,
    secret: SECRET,
    uiDir,
    backend: backend(),
    log: (l) => logLines.push(l),
    version: 'fakeproxy test',
    ...o,
  });
  await s.start();
  return s;
}

beforeAll(async () => {
  [socks, origin] = await Promise.all([startMicrosocks(), echoOrigin()]);
  web = http.createServer((_q, r) => r.end('ok'));
  webPort = await listen(web);
  const dead = net.createServer();
  deadPort = await listen(dead);
  await closeServer(dead);
  dns = new FakeDns({ cidr: '198.18.0.0/16', listen: [], upstream: { host: LO, port: deadPort }, stateDir: null });
  table = makeTable();
  listener = new TcpListener({
    host: LO,
    port: 0,
    nat,
    names: { reverse: (ip: string) => (ip === FAKE ? 'localhost' : undefined) },
    router: new Router({ table }),
    logger: () => {},
  });
  await listener.start();
  tracker = new ConnectionTracker(listener);
  uiDir = mkdtempSync(join(tmpdir(), 'fp-ui-'));
  writeFileSync(join(uiDir, 'index.html'), '<html>dashboard</html>');
  outsideDir = mkdtempSync(join(tmpdir(), 'fp-outside-'));
  writeFileSync(join(outsideDir, 'secret.txt'), 'outside');
  symlinkSync(join(outsideDir, 'secret.txt'), join(uiDir, 'link.txt'));
  api = await startApi();
  base = `http://${LO}:${api.address().port}`;
});

afterAll(async () => {
  await api?.close();
  tracker?.detach();
  await listener?.close();
  await dns?.close();
  await Promise.all([socks?.stop(), origin?.close(), web && closeServer(web)]);
  rmSync(uiDir, { recursive: true, force: true });
  rmSync(outsideDir, { recursive: true, force: true });
});

const auth = { Authorization: `Bearer ${SECRET}` };

async function call(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = auth,
  at = base,
): Promise<{ status: number; json: unknown; headers: Headers }> {
  const r = await fetch(`${at}${path}`, {
    method,
    headers: { ...headers, ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  const text = await r.text();
  return { status: r.status, json: text === '' ? undefined : JSON.parse(text), headers: r.headers };
}

/** Raw request (no URL normalisation), for traversal and Host tests. */
function raw(path: string, headers: Record<string, string> = {}, port = api.address().port) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({ host: LO, port, path, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Messages that arrived before anyone asked (the first can come with the handshake). */
const inbox = new WeakMap<WebSocket, unknown[]>();

/** Opens a WebSocket; resolves with it, or with the HTTP status it was refused with. */
function openWs(path: string, port = api.address().port): Promise<WebSocket | number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${LO}:${port}${path}`);
    const box: unknown[] = [];
    inbox.set(ws, box);
    ws.on('message', (d) => box.push(JSON.parse(String(d))));
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('error', reject);
  });
}

async function nextMessage(ws: WebSocket): Promise<unknown> {
  const box = inbox.get(ws) as unknown[];
  await until(() => box.length > 0);
  return box.shift();
}

/** An app connection through the Listener, headed for the fake address (name: localhost). */
async function app(dstPort = origin.port): Promise<net.Socket> {
  const s = net.connect({ host: LO, port: listener.address().port, allowHalfOpen: true });
  nat.flows.set(s, { dstIp: FAKE, dstPort });
  s.on('error', () => {});
  await new Promise((r) => s.once('connect', r));
  return s;
}

async function echo(s: net.Socket, text: string): Promise<void> {
  let got = '';
  await new Promise<void>((resolve) => {
    const on = (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) {
        s.off('data', on);
        resolve();
      }
    };
    s.on('data', on);
    s.write(text);
  });
}

describe('authentication', () => {
  it('REST: missing, wrong or non-Bearer secret → 401 {"message":"Unauthorized"}; the right one passes', async () => {
    for (const h of [{}, { Authorization: 'Bearer wrong' }, { Authorization: `Basic ${SECRET}` }] as Record<
      string,
      string
    >[]) {
      const r = await call('GET', '/version', undefined, h);
      expect(r).toMatchObject({ status: 401, json: { message: 'Unauthorized' } });
    }
    // A token in the query is for WebSockets only.
    expect((await call('GET', `/version?token=${encodeURIComponent(SECRET)}`, undefined, {})).status).toBe(401);
    expect(await call('GET', '/version')).toMatchObject({
      status: 200,
      json: { meta: true, version: 'fakeproxy test' },
    });
  });

  it('WebSocket: missing or wrong ?token= → 401; the right token opens the stream', async () => {
    expect(await openWs('/traffic')).toBe(401);
    expect(await openWs('/traffic?token=wrong')).toBe(401);
    expect(await openWs('/logs?token=wrong&level=info')).toBe(401);
    const ws = await openWs(`/memory?token=${encodeURIComponent(SECRET)}`);
    expect(ws).toBeInstanceOf(WebSocket);
    expect(await nextMessage(ws as WebSocket)).toEqual({ inuse: 0, oslimit: 0 });
    (ws as WebSocket).close();
  });
});

describe('CORS and origins', () => {
  it('with a secret: preflight from a hosted dashboard gets exactly mihomo’s methods and headers', async () => {
    const r = await call('OPTIONS', '/proxies', undefined, {
      Origin: 'https://dash.example',
      'Access-Control-Request-Method': 'PUT',
      'Access-Control-Request-Private-Network': 'true',
    });
    expect(r.status).toBe(204);
    expect(r.headers.get('access-control-allow-origin')).toBe('https://dash.example');
    expect(r.headers.get('access-control-allow-methods')).toBe('GET, POST, PUT, PATCH, DELETE');
    expect(r.headers.get('access-control-allow-headers')).toBe('Content-Type, Authorization');
    expect(r.headers.get('access-control-allow-credentials')).toBeNull();
  });

  it('without a secret: foreign origins, WebSockets from them and rebound Host names are refused (403)', async () => {
    const open = await startApi({ secret: '' });
    const port = open.address().port;
    const at = `http://${LO}:${port}`;
    try {
      expect((await call('GET', '/version', undefined, {}, at)).status).toBe(200);
      const loop = await call('GET', '/version', undefined, { Origin: 'http://127.0.0.1:5173' }, at);
      expect(loop.status).toBe(200);
      expect(loop.headers.get('access-control-allow-origin')).toBe('http://127.0.0.1:5173');
      expect((await call('GET', '/version', undefined, { Origin: 'https://evil.example' }, at)).status).toBe(403);
      expect((await raw('/version', { Host: `evil.example:${port}` }, port)).status).toBe(403);
      const ws = await new Promise<number>((resolve) => {
        const w = new WebSocket(`ws://${LO}:${port}/traffic`, { origin: 'https://evil.example' });
        w.once('unexpected-response', (_q, res) => resolve(res.statusCode ?? 0));
        w.once('open', () => resolve(101));
      });
      expect(ws).toBe(403);
    } finally {
      await open.close();
    }
  });
});

describe('REST shapes', () => {
  it('GET /configs; PATCH applies mode and names what it cannot change (400)', async () => {
    expect(await call('GET', '/configs')).toMatchObject({ status: 200, json: { mode: 'rule' } });
    expect((await call('PATCH', '/configs', { mode: 'rule' })).status).toBe(204);
    expect(await call('PATCH', '/configs', { 'allow-lan': true })).toMatchObject({
      status: 400,
      json: { message: 'cannot change that' },
    });
    expect(await call('PATCH', '/configs', 'not json')).toMatchObject({
      status: 400,
      json: { message: 'Body invalid' },
    });
    expect(await call('PUT', '/configs', { path: '' })).toMatchObject({
      status: 400,
      json: { message: 'started without --config: nothing to reload' },
    });
  });

  it('GET /proxies: proxies, groups and GLOBAL as mihomo marshals them', async () => {
    const r = (await call('GET', '/proxies')) as { status: number; json: { proxies: Record<string, unknown> } };
    expect(r.status).toBe(200);
    const p = r.json.proxies;
    expect(Object.keys(p).sort()).toEqual(['DIRECT', 'GLOBAL', 'Proxy', 'REJECT', 'sock']);
    expect(p.DIRECT).toMatchObject({ name: 'DIRECT', type: 'Direct', history: [], alive: true, udp: true });
    expect(p.REJECT).toMatchObject({ name: 'REJECT', type: 'Reject' });
    expect(p.sock).toMatchObject({ name: 'sock', type: 'Socks5', tfo: false, 'dialer-proxy': '' });
    expect(p.Proxy).toMatchObject({ name: 'Proxy', type: 'Selector', now: 'DIRECT', all: ['DIRECT', 'sock'] });
    expect(p.GLOBAL).toMatchObject({ type: 'Selector', all: ['Proxy', 'DIRECT', 'REJECT', 'sock'] });
    expect(await call('GET', '/proxies/sock')).toMatchObject({ status: 200, json: { name: 'sock', type: 'Socks5' } });
    expect(await call('GET', '/proxies/nope')).toMatchObject({ status: 404, json: { message: 'Resource not found' } });
    expect(await call('GET', '/group')).toMatchObject({ status: 200, json: { proxies: [{ name: 'Proxy' }] } });
    expect(await call('GET', '/group/Proxy')).toMatchObject({ status: 200, json: { type: 'Selector' } });
  });

  it('PUT /proxies/:group switches a select group; non-members and non-selectors are 400', async () => {
    expect((await call('PUT', '/proxies/Proxy', { name: 'sock' })).status).toBe(204);
    expect(await call('GET', '/proxies/Proxy')).toMatchObject({ json: { now: 'sock' } });
    expect(table.decide({ name: 'localhost', ip: FAKE, port: 80, proto: 'tcp' }).chain).toEqual(['Proxy', 'sock']);
    expect((await call('PUT', '/proxies/Proxy', { name: 'REJECT' })).status).toBe(400);
    expect(await call('PUT', '/proxies/DIRECT', { name: 'sock' })).toMatchObject({
      status: 400,
      json: { message: 'Must be a Selector' },
    });
    expect((await call('PUT', '/proxies/Proxy', { name: 'DIRECT' })).status).toBe(204);
  });

  it('delay tests are real probes: 200 {delay}, 503 on a dead target, 504 when the budget runs out; history kept', async () => {
    const ok = (await call('GET', `/proxies/sock/delay?url=http://${LO}:${webPort}/&timeout=3000`)) as {
      status: number;
      json: { delay: number };
    };
    expect(ok.status).toBe(200);
    expect(ok.json.delay).toBeGreaterThan(0);
    expect(await call('GET', `/proxies/DIRECT/delay?url=http://${LO}:${deadPort}/&timeout=3000`)).toMatchObject({
      status: 503,
      json: { message: 'An error occurred in the delay test' },
    });
    expect((await call('GET', '/proxies/DIRECT/delay?timeout=3000')).status).toBe(400);
    const hist = (await call('GET', '/proxies/sock')) as { json: { history: { delay: number; time: string }[] } };
    expect(hist.json.history.at(-1)?.delay).toBe(ok.json.delay);
    const g = (await call('GET', `/group/Proxy/delay?url=http://${LO}:${webPort}/&timeout=3000`)) as {
      status: number;
      json: Record<string, number>;
    };
    expect(g.status).toBe(200);
    expect(Object.keys(g.json).sort()).toEqual(['DIRECT', 'sock']);
    expect(await call('GET', `/group/Proxy/delay?url=http://${LO}:${deadPort}/&timeout=2000`)).toMatchObject({
      status: 504,
      json: { message: 'get delay: all proxies timeout' },
    });
    // A blackhole: accepted, never answered → the budget runs out.
    const hole = net.createServer(() => {});
    const holePort = await listen(hole);
    try {
      expect(await call('GET', `/proxies/DIRECT/delay?url=http://${LO}:${holePort}/&timeout=300`)).toMatchObject({
        status: 504,
        json: { message: 'Timeout' },
      });
    } finally {
      hole.close();
    }
  });

  it('GET /rules, /providers/proxies, /providers/rules', async () => {
    expect(await call('GET', '/rules')).toMatchObject({
      status: 200,
      json: {
        rules: [
          { type: 'DomainSuffix', payload: 'localhost', proxy: 'Proxy', size: -1 },
          { type: 'DstPort', payload: '25', proxy: 'REJECT', size: -1 },
        ],
      },
    });
    expect(await call('GET', '/providers/proxies')).toMatchObject({ status: 200, json: { providers: {} } });
    expect(await call('GET', '/providers/rules')).toMatchObject({ status: 200, json: { providers: {} } });
  });

  it('GET /dns/query answers as the daemon’s DNS does (a fake address for A)', async () => {
    const r = (await call('GET', '/dns/query?name=example.com&type=A')) as {
      status: number;
      json: {
        Status: number;
        Question: unknown[];
        Answer: { name: string; type: number; TTL: number; data: string }[];
      };
    };
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ Status: 0, Question: [{ Name: 'example.com.', Qtype: 1, Qclass: 1 }], RD: true });
    expect(r.json.Answer[0]).toMatchObject({ name: 'example.com.', type: 1 });
    expect(r.json.Answer[0]?.data).toMatch(/^198\.18\.\d+\.\d+$/);
    expect(dns.reverse(r.json.Answer[0]?.data as string)).toBe('example.com');
    expect((await call('GET', '/dns/query?name=example.com&type=BOGUS')).status).toBe(400);
    expect((await call('GET', '/dns/query')).status).toBe(400);
  });

  it('POST /cache/fakeip/flush reports why it keeps the map (400 with a message)', async () => {
    expect(await call('POST', '/cache/fakeip/flush')).toMatchObject({ status: 400, json: { message: 'kept' } });
  });

  it('unknown endpoints and methods: 404 JSON, the server keeps serving', async () => {
    for (const [m, p] of [
      ['GET', '/nope'],
      ['GET', '/proxies/sock/nope'],
      ['POST', '/version'],
      ['GET', '/providers/other'],
      ['GET', '/%E0%A4%A'],
    ] as const) {
      expect(await call(m, p)).toMatchObject({ status: 404, json: { message: 'Resource not found' } });
    }
    expect(await openWs(`/nope?token=${encodeURIComponent(SECRET)}`)).toBe(404);
    expect((await call('GET', '/version')).status).toBe(200);
  });
});

describe('connections', () => {
  // Through microsocks: it resolves `localhost` as the origin listens (127.0.0.1).
  beforeAll(() => call('PUT', '/proxies/Proxy', { name: 'sock' }));
  afterAll(() => call('PUT', '/proxies/Proxy', { name: 'DIRECT' }));

  it('lists a live connection with host, rule, payload, chains and growing bytes; DELETE /connections/:id resets the app', async () => {
    const s = await app();
    await echo(s, 'hello');
    type Snap = {
      downloadTotal: number;
      connections: {
        id: string;
        upload: number;
        download: number;
        chains: string[];
        rule: string;
        rulePayload: string;
        metadata: Record<string, unknown>;
        start: string;
      }[];
    };
    const one = async () => ((await call('GET', '/connections')).json as Snap).connections;
    await until(() => tracker.size === 1);
    let c = (await one())[0];
    expect(c).toMatchObject({
      rule: 'DomainSuffix',
      rulePayload: 'localhost',
      chains: ['sock', 'Proxy'],
      metadata: {
        network: 'tcp',
        type: 'Tun',
        host: 'localhost',
        destinationIP: FAKE,
        destinationPort: String(origin.port),
        sourceIP: '198.18.0.1',
        sourcePort: '40000',
        dnsMode: 'fake-ip',
      },
    });
    expect(Number.isNaN(Date.parse(c?.start ?? ''))).toBe(false);
    await until(() => (tracker.snapshot().connections[0]?.download ?? 0) >= 5);
    await echo(s, 'more bytes');
    await until(() => (tracker.snapshot().connections[0]?.download ?? 0) >= 15);
    c = (await one())[0];
    expect(c).toMatchObject({ upload: 15, download: 15 });
    const err = socketError(s);
    expect((await call('DELETE', `/connections/${c?.id}`)).status).toBe(204);
    expect((await err).code).toBe('ECONNRESET');
    await until(() => tracker.size === 0);
    expect(await one()).toEqual([]);
    // Unknown ids are fine (mihomo answers 204 too).
    expect((await call('DELETE', '/connections/00000000-0000-0000-0000-000000000000')).status).toBe(204);
  });

  it('DELETE /connections resets every connection; the WebSocket stream shows them come and go', async () => {
    const ws = (await openWs(`/connections?token=${encodeURIComponent(SECRET)}&interval=100`)) as WebSocket;
    const seen: number[] = [];
    ws.on('message', (d) => seen.push((JSON.parse(String(d)) as { connections: unknown[] }).connections.length));
    const apps = await Promise.all([app(), app(), app()]);
    await Promise.all(apps.map((a) => echo(a, 'x')));
    await until(() => seen.at(-1) === 3);
    const errs = apps.map(socketError);
    expect((await call('DELETE', '/connections')).status).toBe(204);
    for (const e of await Promise.all(errs)) expect(e.code).toBe('ECONNRESET');
    await until(() => seen.at(-1) === 0);
    ws.close();
  });
});

describe('streams', () => {
  it('/traffic sends bytes per second once a second; /logs filters by level', async () => {
    const t = (await openWs(`/traffic?token=${encodeURIComponent(SECRET)}`)) as WebSocket;
    const m = await nextMessage(t);
    expect(m).toEqual({ up: expect.any(Number), down: expect.any(Number) });
    t.close();
    const lw = (await openWs(`/logs?token=${encodeURIComponent(SECRET)}&level=warning`)) as WebSocket;
    const got: unknown[] = [];
    lw.on('message', (d) => got.push(JSON.parse(String(d))));
    logs.publish('just info', 'info');
    logs.publish('warning: something', 'warning');
    await until(() => got.length >= 1);
    expect(got).toEqual([{ type: 'warning', payload: 'warning: something' }]);
    lw.close();
    expect(await openWs(`/logs?token=${encodeURIComponent(SECRET)}&level=loud`)).toBe(400);
  });
});

/** A session source of N synthetic connections (the Listener's interface), bytes advanced by the test. */
class ManySessions extends EventEmitter implements SessionSource {
  bytes = 0;
  readonly live = new Set<number>();
  open(n: number): void {
    for (let i = 1; i <= n; i++) {
      this.live.add(i);
      const e: SessionEvent = {
        phase: 'open',
        flowId: i,
        name: `host-${i}.example`,
        ip: '198.18.3.3',
        port: 443,
        outbound: 'direct',
        rule: 'MATCH (final),DIRECT',
        chains: ['DIRECT'],
        ruleType: 'Match',
        rulePayload: '',
        srcIp: '198.18.0.1',
        srcPort: 30000 + i,
        startMs: Date.now(),
        bytesUp: 0,
        bytesDown: 0,
      };
      this.emit('session', e);
    }
  }
  sessionBytes(id: number) {
    return this.live.has(id) ? { bytesUp: this.bytes, bytesDown: this.bytes * 2 } : undefined;
  }
  closeFlow(id: number): boolean {
    if (!this.live.delete(id)) return false;
    this.emit('session', { phase: 'close', flowId: id, ip: '', port: 0, outbound: '', bytesUp: 0, bytesDown: 0 });
    return true;
  }
  stats() {
    return { bytesUp: this.bytes * this.live.size, bytesDown: this.bytes * 2 * this.live.size };
  }
}

/** A controller over 1 000 synthetic connections and a WebSocket on its /connections stream every 100 ms. */
async function thousand(): Promise<{ src: ManySessions; many: ConnectionTracker; s: ApiServer; ws: WebSocket }> {
  const src = new ManySessions();
  const many = new ConnectionTracker(src);
  const s = await startApi({ backend: backend({ connections: many }) });
  src.open(1000);
  const ws = (await openWs(
    `/connections?token=${encodeURIComponent(SECRET)}&interval=100`,
    s.address().port,
  )) as WebSocket;
  return { src, many, s, ws };
}

describe('1 000 connections', () => {
  it('the stream lists all and stays current: a change shows in the next snapshot or the one after', async () => {
    const { src, many, s, ws } = await thousand();
    try {
      const snaps: { n: number; bytes: number }[] = [];
      ws.on('message', (d) => {
        const j = JSON.parse(String(d)) as { connections: { download: number }[] };
        snaps.push({ n: j.connections.length, bytes: j.connections[999]?.download ?? -1 });
      });
      for (let round = 1; round <= 5; round++) {
        await until(() => snaps.length > 0);
        const before = snaps.length;
        src.bytes = round * 1000;
        await until(() => snaps.at(-1)?.bytes === round * 2000);
        // Snapshots built before the change may still be on their way, but
        // never a backlog: the first current one is at most two behind.
        const first = snaps.findIndex((x, i) => i >= before && x.bytes === round * 2000);
        expect(first - before).toBeLessThanOrEqual(2);
        expect(snaps.at(-1)?.n).toBe(1000);
      }
      for (let i = 1; i <= 500; i++) many.close([...(many.snapshot().connections as { id: string }[])][0]?.id ?? '');
      await until(() => snaps.at(-1)?.n === 500);
      ws.close();
    } finally {
      many.detach();
      await s.close();
    }
  });

  it('a client that stops reading does not grow the daemon’s memory: snapshots are skipped, not queued', async () => {
    const { many, s, ws } = await thousand();
    try {
      const size = JSON.stringify(many.snapshot()).length;
      // Stop reading: the kernel buffers fill, then ws queues in the daemon.
      (ws as unknown as { _socket: net.Socket })._socket.pause();
      await until(() => s.stats().streamSkipped >= 20, 15_000);
      // Bounded by one snapshot queued in the daemon, whatever the time spent.
      expect(s.stats().maxBuffered).toBeLessThanOrEqual(size + 1024);
      const skipped = s.stats().streamSkipped;
      // Read again: fresh snapshots arrive and skipping stops.
      const fresh = new Promise<number>((resolve) =>
        ws.on('message', (d) => resolve((JSON.parse(String(d)) as { connections: unknown[] }).connections.length)),
      );
      (ws as unknown as { _socket: net.Socket })._socket.resume();
      expect(await fresh).toBe(1000);
      expect(skipped).toBeGreaterThanOrEqual(20);
      ws.close();
    } finally {
      many.detach();
      await s.close();
    }
  });
});

describe('/ui/', () => {
  it('serves the dashboard, redirects /ui, and never a file outside the directory', async () => {
    expect(await raw('/ui/')).toMatchObject({ status: 200, body: '<html>dashboard</html>' });
    expect(await raw('/ui/index.html')).toMatchObject({ status: 200 });
    expect((await raw('/ui')).status).toBe(307);
    for (const p of [
      '/ui/../package.json',
      '/ui/..%2f..%2f..%2fetc%2fpasswd',
      '/ui/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
      '/ui/link.txt',
      '/ui/nope.js',
      '/ui/%00',
    ]) {
      const r = await raw(p);
      // 404, or 401 where the path normalises to outside /ui/ (an API path without the secret).
      expect([401, 404], p).toContain(r.status);
      expect(r.body).not.toContain('outside');
      expect(r.body).not.toContain('root:');
    }
  });
});
