/**
 * The controller API: the REST + WebSocket surface of mihomo (hub/route/*.go)
 * that Clash dashboards (MetaCubeXD, yacd, zashboard) speak, with the same
 * paths, JSON shapes and status codes, served from the daemon's own state.
 *
 * Security (DESIGN.md "Controller API"):
 * - `secret`: every request carries `Authorization: Bearer <secret>`;
 *   WebSockets may carry `?token=<secret>` instead (browsers cannot set
 *   headers on them). Compared in constant time. Wrong or missing → 401.
 * - Without a secret the server only listens on loopback (checked at
 *   config time) and only answers requests whose Host is an address or
 *   `localhost` and whose Origin, if any, is a loopback page or its own
 *   /ui/: a web page on the Internet cannot drive it, by fetch, WebSocket
 *   or DNS rebinding.
 * - CORS: with a secret any Origin may call (a hosted dashboard on the
 *   user's machine; the token is the protection, no cookies are involved);
 *   without one only the loopback origins above. Methods and headers are
 *   mihomo's list, nothing wider, no credentials.
 * - `/ui/` serves the dashboard's static files (no secret: the page itself
 *   asks for it), never a file outside the directory.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { isIP } from 'node:net';
import * as path from 'node:path';
import dnsPacket from 'dns-packet';
import { type WebSocket, WebSocketServer } from 'ws';
import { QType } from '../dns/wire.js';
import type { Logger } from '../log.js';
import { probe as defaultProbe } from '../proxy/groups.js';
import type { Outbound } from '../proxy/outbound.js';
import type { RouteTable } from '../proxy/router.js';
import type { ConnectionTracker } from './connections.js';
import { isLogLevel, type LogBus, type LogEvent } from './logs.js';

/** What the API reads from and acts on; the daemon provides it. */
export interface ApiBackend {
  /** The routing table in use now (it changes on reload). */
  table(): RouteTable;
  connections: ConnectionTracker;
  logs: LogBus;
  /** GET /configs. */
  configs(): Record<string, unknown>;
  /** PATCH /configs: applies what it can; returns an error line for what it cannot. */
  patchConfigs(body: Record<string, unknown>): string | undefined;
  /** PUT /configs: re-read --config (as SIGHUP); `path`: the file the client named, if any. */
  reload(path?: string): { ok: boolean; error?: string | undefined };
  /** POST /cache/fakeip/flush: an error line, or undefined when done. */
  flushFakeIp(): string | undefined;
  /** Answer one DNS query message as the daemon's DNS server would. */
  dnsQuery(msg: Buffer): Promise<Buffer | undefined>;
  /** Resident memory in bytes. @default process.memoryUsage.rss */
  memory?(): number;
  /** Health-check probe (groups.ts `probe`). */
  probe?: typeof defaultProbe;
  /** The GLOBAL selector (mode global): its pick, and PUT /proxies/GLOBAL. @default the table's final target, not switchable */
  global?: { now(): string; select(name: string): boolean };
}

export interface ApiServerOptions {
  host: string;
  port: number;
  /** '' or undefined: no authentication (loopback only, checked by the config). */
  secret?: string | undefined;
  /** Directory served at /ui/. */
  uiDir?: string | undefined;
  backend: ApiBackend;
  log: Logger;
  version: string;
  /**
   * Bytes a stream client may have queued before we skip (snapshots) or drop
   * (logs) messages for it. @default 262144 — a few seconds of a busy log; a
   * connections snapshot is sent only when the previous one has left.
   */
  maxBufferedBytes?: number;
}

export interface ApiStats {
  /** Stream messages not sent because the client had not read the previous ones. */
  streamSkipped: number;
  /** Largest send queue seen on any stream client, bytes. */
  maxBuffered: number;
  streams: number;
}

const JSON_TYPE = 'application/json; charset=utf-8';
const CORS_METHODS = 'GET, POST, PUT, PATCH, DELETE';
const CORS_HEADERS = 'Content-Type, Authorization';
const MAX_BODY = 1 << 16;

const MIME: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.webmanifest': 'application/manifest+json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.woff': 'font/woff',
  '.ttf': 'font/ttf',
  '.txt': 'text/plain; charset=utf-8',
  '.wasm': 'application/wasm',
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const notFound = () => new HttpError(404, 'Resource not found');
const badRequest = (m = 'Body invalid') => new HttpError(400, m);

/** One subscriber of a stream: a WebSocket, or a chunked HTTP response (mihomo serves both). */
interface Sink {
  send(s: string): void;
  buffered(): number;
  close(): void;
}

/** Same bytes in constant time; hashing first makes the lengths equal (timingSafeEqual needs that). */
export function sameSecret(given: string, secret: string): boolean {
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(secret).digest();
  return timingSafeEqual(a, b);
}

function isLoopbackHost(h: string): boolean {
  return h === 'localhost' || h === '::1' || h === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** `Host` without its port. */
function hostOnly(host: string): string {
  if (host.startsWith('[')) return host.slice(0, host.indexOf(']') + 1);
  const i = host.lastIndexOf(':');
  return i >= 0 ? host.slice(0, i) : host;
}

const ADAPTER_TYPES: Record<Outbound['kind'], string> = {
  direct: 'Direct',
  reject: 'Reject',
  socks5: 'Socks5',
  http: 'Http',
};
const GROUP_TYPES = { select: 'Selector', fallback: 'Fallback', 'url-test': 'URLTest', 'load-balance': 'LoadBalance' };

export class ApiServer {
  readonly #o: ApiServerOptions;
  readonly #secret: string;
  #server: http.Server | undefined;
  readonly #wss = new WebSocketServer({ noServer: true, maxPayload: 4096 });
  readonly #sinks = new Set<Sink>();
  readonly #trafficSinks = new Set<Sink>();
  readonly #memorySinks = new Set<Sink>();
  #ticker: NodeJS.Timeout | undefined;
  #last = { up: 0, down: 0 };
  /** Delay tests by proxy name, newest last (mihomo keeps 10). */
  readonly #delays = new Map<string, { time: string; delay: number }[]>();
  readonly #stats: ApiStats = { streamSkipped: 0, maxBuffered: 0, streams: 0 };
  readonly #maxBuffered: number;
  readonly #uiDir: string | undefined;

  constructor(o: ApiServerOptions) {
    this.#o = o;
    this.#secret = o.secret ?? '';
    this.#maxBuffered = o.maxBufferedBytes ?? 262_144;
    this.#uiDir = o.uiDir === undefined ? undefined : path.resolve(o.uiDir);
  }

  async start(): Promise<void> {
    const server = http.createServer((req, res) => {
      this.#handle(req, res).catch((e: unknown) => {
        const err = e instanceof HttpError ? e : new HttpError(500, (e as Error).message);
        if (!res.headersSent) this.#json(res, err.status, { message: err.message });
        else res.destroy();
      });
    });
    server.on('upgrade', (req, socket: Socket, head) => this.#upgrade(req, socket, head));
    server.on('clientError', (_e, socket) => socket.destroy());
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.#o.host, port: this.#o.port }, () => {
        server.removeListener('error', reject);
        server.on('error', (e) => this.#o.log(`controller: ${e.message}`));
        resolve();
      });
    });
    this.#last = this.#totals();
    this.#ticker = setInterval(() => this.#tick(), 1000);
    this.#ticker.unref();
  }

  address(): { host: string; port: number } {
    const a = this.#server?.address() as AddressInfo | null | undefined;
    if (!a) throw new Error('ApiServer is not started');
    return { host: a.address, port: a.port };
  }

  stats(): ApiStats {
    return { ...this.#stats, streams: this.#sinks.size };
  }

  close(): Promise<void> {
    if (this.#ticker) clearInterval(this.#ticker);
    for (const s of [...this.#sinks]) s.close();
    const server = this.#server;
    this.#server = undefined;
    if (!server) return Promise.resolve();
    server.closeAllConnections();
    return new Promise((resolve) => server.close(() => resolve()));
  }

  #totals(): { up: number; down: number } {
    const s = this.#o.backend.connections.snapshotTotals();
    return { up: s.bytesUp, down: s.bytesDown };
  }

  /** Once a second: bytes/s for /traffic, memory for /memory. */
  #tick(): void {
    const now = this.#totals();
    const msg = JSON.stringify({
      up: Math.max(0, now.up - this.#last.up),
      down: Math.max(0, now.down - this.#last.down),
    });
    this.#last = now;
    for (const s of this.#trafficSinks) this.#offer(s, msg);
    if (this.#memorySinks.size) {
      const m = JSON.stringify({ inuse: this.#memory(), oslimit: 0 });
      for (const s of this.#memorySinks) this.#offer(s, m);
    }
  }

  #memory(): number {
    return this.#o.backend.memory ? this.#o.backend.memory() : process.memoryUsage.rss();
  }

  /** Send unless the client still holds more than `limit` bytes of earlier messages (then skip: each message is whole state or droppable). */
  #offer(s: Sink, msg: string, limit = this.#maxBuffered): void {
    const b = s.buffered();
    if (b > this.#stats.maxBuffered) this.#stats.maxBuffered = b;
    if (b > limit) {
      this.#stats.streamSkipped++;
      return;
    }
    s.send(msg);
  }

  // ---- access control ----

  /** Host/Origin rules for a server without a secret; with one, anything (the token decides). */
  #originAllowed(req: http.IncomingMessage): boolean {
    if (this.#secret !== '') return true;
    const origin = req.headers.origin;
    if (origin === undefined) return true;
    try {
      const u = new URL(origin);
      return isLoopbackHost(u.hostname) || u.host === req.headers.host;
    } catch {
      return false;
    }
  }

  #hostAllowed(req: http.IncomingMessage): boolean {
    if (this.#secret !== '') return true;
    const h = hostOnly(req.headers.host ?? '');
    // An address or localhost: a DNS-rebound name never matches.
    return h === 'localhost' || isIP(h.replace(/^\[|\]$/g, '')) !== 0;
  }

  #authorized(req: http.IncomingMessage, url: URL, upgrade: boolean): boolean {
    if (this.#secret === '') return true;
    const token = url.searchParams.get('token');
    if (upgrade && token) return sameSecret(token, this.#secret);
    const h = req.headers.authorization ?? '';
    const sp = h.indexOf(' ');
    if (sp < 0 || h.slice(0, sp) !== 'Bearer') return false;
    return sameSecret(h.slice(sp + 1), this.#secret);
  }

  #cors(req: http.IncomingMessage, res: http.ServerResponse): void {
    const origin = req.headers.origin;
    if (origin === undefined || !this.#originAllowed(req)) return;
    res.setHeader('Access-Control-Allow-Origin', origin);
    res.setHeader('Vary', 'Origin');
  }

  // ---- HTTP ----

  #json(res: http.ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': JSON_TYPE, 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  }

  #noContent(res: http.ServerResponse): void {
    res.writeHead(204);
    res.end();
  }

  async #body(req: http.IncomingMessage): Promise<Record<string, unknown>> {
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of req as AsyncIterable<Buffer>) {
      n += c.length;
      if (n > MAX_BODY) throw new HttpError(413, 'Body too large');
      chunks.push(c);
    }
    try {
      const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
      return v as Record<string, unknown>;
    } catch {
      throw badRequest();
    }
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://controller');
    const method = req.method ?? 'GET';
    if (!this.#hostAllowed(req) || !this.#originAllowed(req)) {
      this.#json(res, 403, {
        message: 'Forbidden: without a secret the controller answers loopback pages only (set --secret)',
      });
      return;
    }
    this.#cors(req, res);
    if (method === 'OPTIONS') {
      // Preflight: mihomo's cors options (hub/route/server.go), no wider.
      if (req.headers.origin !== undefined) {
        res.setHeader('Access-Control-Allow-Methods', CORS_METHODS);
        res.setHeader('Access-Control-Allow-Headers', CORS_HEADERS);
        res.setHeader('Access-Control-Max-Age', '300');
        if (req.headers['access-control-request-private-network'] === 'true') {
          res.setHeader('Access-Control-Allow-Private-Network', 'true');
        }
      }
      this.#noContent(res);
      return;
    }
    const p = url.pathname;
    if (this.#uiDir !== undefined && (p === '/ui' || p.startsWith('/ui/'))) {
      await this.#static(req, res, p);
      return;
    }
    if (!this.#authorized(req, url, false)) {
      this.#json(res, 401, { message: 'Unauthorized' });
      return;
    }
    const seg = p
      .split('/')
      .filter((s) => s !== '')
      .map((s) => {
        try {
          return decodeURIComponent(s);
        } catch {
          return s;
        }
      });
    const route = `${method} /${seg[0] ?? ''}`;
    const b = this.#o.backend;
    switch (route) {
      case 'GET /':
        return this.#json(res, 200, { hello: 'fakeproxy' });
      case 'GET /version':
        return this.#json(res, 200, { meta: true, version: this.#o.version });
      case 'GET /configs':
        if (seg.length > 1) throw notFound();
        return this.#json(res, 200, b.configs());
      case 'PATCH /configs': {
        const err = b.patchConfigs(await this.#body(req));
        if (err) throw badRequest(err);
        return this.#noContent(res);
      }
      case 'PUT /configs': {
        const body = await this.#body(req);
        if (body.payload !== undefined && body.payload !== '') {
          throw badRequest('fakeproxy reloads its --config file only, not a payload: send {"path": ""}');
        }
        if (body.path !== undefined && typeof body.path !== 'string') throw badRequest();
        const r = b.reload(body.path === '' ? undefined : body.path);
        if (!r.ok) throw badRequest(r.error ?? 'reload failed');
        return this.#noContent(res);
      }
      case 'GET /proxies':
      case 'PUT /proxies':
      case 'DELETE /proxies':
        return this.#proxies(req, res, method, seg);
      case 'GET /group':
        return this.#groups(req, res, seg);
      case 'GET /rules': {
        const t = b.table();
        const rules = t.rules.map((r, i) => ({
          type: t.apiRules[i]?.type ?? 'Unknown',
          payload: t.apiRules[i]?.payload ?? '',
          proxy: r.target,
          size: -1,
        }));
        return this.#json(res, 200, { rules });
      }
      case 'GET /providers':
        if (seg.length === 2 && (seg[1] === 'proxies' || seg[1] === 'rules')) {
          return this.#json(res, 200, { providers: {} });
        }
        throw notFound();
      case 'GET /connections':
        if (seg.length > 1) throw notFound();
        return this.#stream(req, res, url, 'connections');
      case 'DELETE /connections':
        if (seg.length === 1) b.connections.closeAll();
        else if (seg.length === 2) b.connections.close(seg[1] as string);
        else throw notFound();
        return this.#noContent(res);
      case 'GET /traffic':
      case 'GET /memory':
      case 'GET /logs':
        return this.#stream(req, res, url, seg[0] as 'traffic' | 'memory' | 'logs');
      case 'POST /cache':
        if (seg[1] === 'fakeip' && seg[2] === 'flush' && seg.length === 3) {
          const err = b.flushFakeIp();
          if (err) throw badRequest(err);
          return this.#noContent(res);
        }
        throw notFound();
      case 'GET /dns':
        if (seg[1] === 'query' && seg.length === 2) return this.#dnsQuery(res, url);
        throw notFound();
      default:
        throw notFound();
    }
  }

  // ---- proxies and groups ----

  #history(name: string, t: RouteTable): { time: string; delay: number }[] {
    const h = this.#delays.get(name);
    if (h) return h;
    // Not tested from the API yet: the newest health check of any group that has it as a member.
    let best: { time: string; delay: number } | undefined;
    let at = -1;
    for (const g of t.groups.values()) {
      const st = g.state.get(name);
      if (st?.checkedAtMs !== undefined && st.checkedAtMs > at) {
        at = st.checkedAtMs;
        best = { time: new Date(st.checkedAtMs).toISOString(), delay: st.alive ? (st.delayMs ?? 0) : 0 };
      }
    }
    return best ? [best] : [];
  }

  #alive(name: string, t: RouteTable): boolean {
    const h = this.#history(name, t);
    const last = h[h.length - 1];
    return last === undefined || last.delay > 0;
  }

  /** mihomo's adapter.Proxy MarshalJSON for one name (proxy, group or GLOBAL); undefined when unknown. */
  #proxyJson(name: string, t: RouteTable): Record<string, unknown> | undefined {
    const base = (type: string, udp: boolean) => ({
      name,
      type,
      id: '',
      history: this.#history(name, t),
      extra: {},
      alive: this.#alive(name, t),
      udp,
      uot: false,
      xudp: false,
      tfo: false,
      mptcp: false,
      smux: false,
      interface: '',
      'dialer-proxy': '',
      'routing-mark': 0,
    });
    const g = t.groups.get(name);
    if (g) {
      return {
        ...base(GROUP_TYPES[g.type], true),
        now: g.type === 'load-balance' ? '' : g.pick(''),
        all: [...g.members],
        ...(g.spec.health ? { testUrl: g.spec.health.url } : {}),
        hidden: false,
        icon: '',
      };
    }
    if (name === 'GLOBAL') {
      // mihomo's GLOBAL selector: dashboards order groups by its `all`; in mode global it decides.
      return {
        ...base('Selector', true),
        now: this.#o.backend.global?.now() ?? t.final,
        all: [...t.groups.keys(), ...t.outbounds.keys()],
        hidden: true,
        icon: '',
      };
    }
    const ob = t.outbounds.get(name);
    if (!ob) return undefined;
    const type = name === 'REJECT-DROP' ? 'RejectDrop' : ADAPTER_TYPES[ob.kind];
    return base(type, ob.udpAssociate !== undefined);
  }

  async #proxies(req: http.IncomingMessage, res: http.ServerResponse, method: string, seg: string[]): Promise<void> {
    const t = this.#o.backend.table();
    if (seg.length === 1 && method === 'GET') {
      const proxies: Record<string, unknown> = {};
      for (const n of [...t.outbounds.keys(), ...t.groups.keys(), 'GLOBAL']) proxies[n] = this.#proxyJson(n, t);
      return this.#json(res, 200, { proxies });
    }
    const name = seg[1] as string;
    const pj = seg.length >= 2 && seg.length <= 3 ? this.#proxyJson(name, t) : undefined;
    if (!pj) throw notFound();
    if (seg.length === 3) {
      if (seg[2] !== 'delay' || method !== 'GET') throw notFound();
      return this.#delay(res, name, new URL(req.url ?? '/', 'http://c'));
    }
    if (method === 'GET') return this.#json(res, 200, pj);
    if (method === 'DELETE') throw badRequest();
    const body = await this.#body(req);
    const global = this.#o.backend.global;
    if (name === 'GLOBAL' && global && !t.groups.has(name)) {
      if (typeof body.name !== 'string') throw badRequest();
      if (!global.select(body.name)) throw badRequest(`Selector update error: proxy not exist: '${body.name}'`);
      this.#o.log(`GLOBAL: selected ${body.name} (controller; routes everything in mode global)`);
      return this.#noContent(res);
    }
    const g = t.groups.get(name);
    if (g?.type !== 'select') throw badRequest('Must be a Selector');
    if (typeof body.name !== 'string') throw badRequest();
    if (!g.select(body.name)) {
      throw badRequest(`Selector update error: proxy not exist: '${body.name}' is not a member of '${name}'`);
    }
    this.#o.log(`group ${name}: selected ${body.name} (controller)`);
    return this.#noContent(res);
  }

  #record(name: string, delay: number): void {
    const h = this.#delays.get(name) ?? [];
    h.push({ time: new Date().toISOString(), delay });
    if (h.length > 10) h.shift();
    this.#delays.set(name, h);
  }

  /** One real probe through `name` (a group probes its current pick). */
  async #probeOne(name: string, url: string, timeoutMs: number): Promise<number | undefined> {
    const t = this.#o.backend.table();
    const ob = t.leaf(name);
    const probe = this.#o.backend.probe ?? defaultProbe;
    const d = ob === undefined ? undefined : await probe(ob, url, timeoutMs);
    this.#record(name, d ?? 0);
    return d;
  }

  #delayArgs(url: URL): { testUrl: string; timeoutMs: number } {
    const testUrl = url.searchParams.get('url') ?? '';
    const timeoutMs = Number(url.searchParams.get('timeout'));
    if (!/^https?:\/\//.test(testUrl) || !Number.isInteger(timeoutMs) || timeoutMs <= 0 || timeoutMs > 60_000) {
      throw badRequest();
    }
    return { testUrl, timeoutMs };
  }

  async #delay(res: http.ServerResponse, name: string, url: URL): Promise<void> {
    const { testUrl, timeoutMs } = this.#delayArgs(url);
    const t0 = performance.now();
    const d = await this.#probeOne(name, testUrl, timeoutMs);
    if (d !== undefined) return this.#json(res, 200, { delay: d });
    if (performance.now() - t0 >= timeoutMs) throw new HttpError(504, 'Timeout');
    throw new HttpError(503, 'An error occurred in the delay test');
  }

  async #groups(req: http.IncomingMessage, res: http.ServerResponse, seg: string[]): Promise<void> {
    const t = this.#o.backend.table();
    if (seg.length === 1) {
      return this.#json(res, 200, { proxies: [...t.groups.keys()].map((n) => this.#proxyJson(n, t)) });
    }
    const g = t.groups.get(seg[1] as string);
    if (!g || seg.length > 3) throw notFound();
    if (seg.length === 2) return this.#json(res, 200, this.#proxyJson(g.name, t));
    if (seg[2] !== 'delay') throw notFound();
    const { testUrl, timeoutMs } = this.#delayArgs(new URL(req.url ?? '/', 'http://c'));
    const out: Record<string, number> = {};
    await Promise.all(
      g.members.map(async (m) => {
        const d = await this.#probeOne(m, testUrl, timeoutMs);
        if (d !== undefined) out[m] = d;
      }),
    );
    if (Object.keys(out).length === 0) throw new HttpError(504, 'get delay: all proxies timeout');
    return this.#json(res, 200, out);
  }

  // ---- DNS ----

  async #dnsQuery(res: http.ServerResponse, url: URL): Promise<void> {
    const name = url.searchParams.get('name') ?? '';
    const type = (url.searchParams.get('type') || 'A').toUpperCase();
    if (name === '' || name.length > 253) throw badRequest('invalid query name');
    if (RR_CODES[type] === undefined || type === 'OPT' || type === 'ANY') throw badRequest('invalid query type');
    let msg: Buffer;
    try {
      msg = dnsPacket.encode({
        type: 'query',
        id: 1,
        flags: dnsPacket.RECURSION_DESIRED,
        questions: [{ type: type as dnsPacket.RecordType, name, class: 'IN' }],
      });
    } catch {
      throw badRequest('invalid query type');
    }
    const answer = await this.#o.backend.dnsQuery(msg);
    if (!answer) throw new HttpError(500, 'no answer from the DNS server');
    const d = dnsPacket.decode(answer);
    const flags = d.flags ?? 0;
    const rr = (a: dnsPacket.Answer) => ({
      name: `${a.name}.`,
      type: typeCode(a.type),
      TTL: 'ttl' in a ? (a.ttl ?? 0) : 0,
      data: 'data' in a ? (typeof a.data === 'string' ? a.data : JSON.stringify(a.data ?? '')) : '',
    });
    const body: Record<string, unknown> = {
      Status: rcodeNumber((d as { rcode?: string }).rcode),
      Question: (d.questions ?? []).map((q) => ({ Name: `${q.name}.`, Qtype: typeCode(q.type), Qclass: 1 })),
      TC: (flags & dnsPacket.TRUNCATED_RESPONSE) !== 0,
      RD: (flags & dnsPacket.RECURSION_DESIRED) !== 0,
      RA: (flags & dnsPacket.RECURSION_AVAILABLE) !== 0,
      AD: (flags & dnsPacket.AUTHENTIC_DATA) !== 0,
      CD: (flags & dnsPacket.CHECKING_DISABLED) !== 0,
    };
    if (d.answers?.length) body.Answer = d.answers.map(rr);
    if (d.authorities?.length) body.Authority = d.authorities.map(rr);
    const extra = (d.additionals ?? []).filter((a) => a.type !== 'OPT');
    if (extra.length) body.Additional = extra.map(rr);
    return this.#json(res, 200, body);
  }

  // ---- static dashboard ----

  async #static(req: http.IncomingMessage, res: http.ServerResponse, p: string): Promise<void> {
    const root = this.#uiDir as string;
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new HttpError(405, 'Method not allowed');
    if (p === '/ui') {
      res.writeHead(307, { Location: '/ui/' });
      res.end();
      return;
    }
    let rel: string;
    try {
      rel = decodeURIComponent(p.slice('/ui/'.length));
    } catch {
      throw notFound();
    }
    if (rel.includes('\0')) throw notFound();
    const realRoot = await fsp.realpath(root);
    let file = path.resolve(realRoot, rel);
    // Never outside the directory: not by `..`, not by a symlink inside it.
    const inside = (f: string) => f === realRoot || f.startsWith(realRoot + path.sep);
    if (!inside(file)) throw notFound();
    try {
      file = await fsp.realpath(file);
      if (!inside(file)) throw notFound();
      let st = await fsp.stat(file);
      if (st.isDirectory()) {
        file = path.join(file, 'index.html');
        st = await fsp.stat(file);
      }
      if (!st.isFile()) throw notFound();
      res.writeHead(200, {
        'Content-Type': MIME[path.extname(file).toLowerCase()] ?? 'application/octet-stream',
        'Content-Length': st.size,
        'X-Content-Type-Options': 'nosniff',
      });
      if (req.method === 'HEAD') {
        res.end();
        return;
      }
      const rs = createReadStream(file);
      rs.on('error', () => res.destroy());
      rs.pipe(res);
    } catch (e) {
      if (e instanceof HttpError) throw e;
      throw notFound();
    }
  }

  // ---- streams (WebSocket or chunked HTTP) ----

  #upgrade(req: http.IncomingMessage, socket: Socket, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const url = new URL(req.url ?? '/', 'http://controller');
    const refuse = (status: number, text: string, message: string) => {
      const body = JSON.stringify({ message });
      socket.end(
        `HTTP/1.1 ${status} ${text}\r\nContent-Type: ${JSON_TYPE}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
      );
    };
    if (!this.#hostAllowed(req) || !this.#originAllowed(req)) {
      refuse(403, 'Forbidden', 'Forbidden');
      return;
    }
    if (!this.#authorized(req, url, true)) {
      refuse(401, 'Unauthorized', 'Unauthorized');
      return;
    }
    const kind = url.pathname.replace(/\/+$/, '');
    if (kind !== '/connections' && kind !== '/traffic' && kind !== '/memory' && kind !== '/logs') {
      refuse(404, 'Not Found', 'Resource not found');
      return;
    }
    const level = url.searchParams.get('level') || 'info';
    if (kind === '/logs' && !isLogLevel(level)) {
      refuse(400, 'Bad Request', 'Body invalid');
      return;
    }
    this.#wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      ws.on('error', () => ws.terminate());
      // Clients send nothing we read; a ping is answered by ws itself.
      const sink: Sink = {
        send: (s) => ws.send(s),
        buffered: () => ws.bufferedAmount,
        close: () => ws.terminate(),
      };
      const stop = this.#subscribe(sink, kind.slice(1) as 'connections', url);
      ws.on('close', stop);
    });
  }

  #stream(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    url: URL,
    kind: 'connections' | 'traffic' | 'memory' | 'logs',
  ): void {
    if (kind === 'connections') {
      // Plain GET: one snapshot (a WebSocket upgrade never reaches here).
      this.#json(res, 200, this.#o.backend.connections.snapshot());
      return;
    }
    const level = url.searchParams.get('level') || 'info';
    if (kind === 'logs' && !isLogLevel(level)) throw badRequest();
    res.writeHead(200, { 'Content-Type': JSON_TYPE });
    const sink: Sink = {
      send: (s) => res.write(`${s}\n`),
      buffered: () => res.writableLength,
      close: () => res.destroy(),
    };
    const stop = this.#subscribe(sink, kind, url);
    req.on('close', stop);
  }

  /** Start feeding `sink`; returns the function that stops it. */
  #subscribe(sink: Sink, kind: 'connections' | 'traffic' | 'memory' | 'logs', url: URL): () => void {
    this.#sinks.add(sink);
    let stopInner: () => void = () => {};
    if (kind === 'traffic') {
      this.#trafficSinks.add(sink);
      stopInner = () => this.#trafficSinks.delete(sink);
    } else if (kind === 'memory') {
      // mihomo sends 0 first, so the dashboard's chart starts at zero.
      sink.send(JSON.stringify({ inuse: 0, oslimit: 0 }));
      this.#memorySinks.add(sink);
      stopInner = () => this.#memorySinks.delete(sink);
    } else if (kind === 'logs') {
      const structured = url.searchParams.get('format') === 'structured';
      const level = url.searchParams.get('level') || 'info';
      stopInner = this.#o.backend.logs.subscribe(level as 'info', (e: LogEvent) =>
        this.#offer(sink, structured ? structuredLog(e) : JSON.stringify({ type: e.level, payload: e.payload })),
      );
    } else {
      const n = Number(url.searchParams.get('interval') ?? '1000');
      const every = Number.isFinite(n) && n >= 100 ? Math.min(n, 60_000) : 1000;
      // A snapshot is the whole state: send the next only once the last has
      // left (bufferedAmount 0). A slow client sees fewer, current snapshots
      // and never a queue of stale ones.
      const send = () => this.#offer(sink, JSON.stringify(this.#o.backend.connections.snapshot()), 0);
      send();
      const timer = setInterval(send, every);
      stopInner = () => clearInterval(timer);
    }
    let stopped = false;
    return () => {
      if (stopped) return;
      stopped = true;
      stopInner();
      this.#sinks.delete(sink);
    };
  }
}

function structuredLog(e: LogEvent): string {
  const t = new Date(e.timeMs);
  const time = t.toISOString().slice(11, 19);
  return JSON.stringify({
    time,
    level: e.level === 'warning' ? 'warn' : e.level,
    message: e.payload,
    fields: [],
  });
}

const RR_CODES: Readonly<Record<string, number>> = QType;
function typeCode(t: string): number {
  return RR_CODES[t] ?? 0;
}
const RCODES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'];
function rcodeNumber(r: string | undefined): number {
  const i = RCODES.indexOf((r ?? 'NOERROR').toUpperCase());
  return i < 0 ? 2 : i;
}
