/**
 * TCP dialing for every outbound: names resolved only through an injected
 * resolver (never getaddrinfo — DESIGN.md "The system resolver is us"),
 * addresses tried Happy-Eyeballs-lite (RFC 8305), one deadline for the
 * whole connect.
 */
import { Resolver } from 'node:dns/promises';
import * as net from 'node:net';
import { wrapError } from '../errors.js';
import { newTcpSocket } from '../util/sockmark.js';
import { ProxyError } from './errors.js';
import { closedMidHandshake } from './handshake-io.js';
import { holdOwnTcp } from './ownTcp.js';
import { HS_FAIL, type RelayResult } from './relay.js';

/**
 * Name → addresses, best first. Rejects (e.g. ENOTFOUND) when there are none.
 * A caching resolver may also offer `peek`: the live cached answer, without
 * a query or a promise (the dial path uses it to stay synchronous on a hit).
 */
export type ResolveName = ((name: string) => Promise<string[]>) & {
  peek?: (name: string) => readonly string[] | undefined;
};

export interface UpstreamResolverOptions {
  /**
   * Per-query timeout.
   * @default 2000 — two tries of 2 s stay inside the Listener's 5 s connect budget.
   */
  timeoutMs?: number;
  /** @default 2 */
  tries?: number;
  /**
   * Answer cache (see `cachedResolver`); `false` asks the server for every
   * connection. @default the ResolverCacheOptions defaults
   */
  cache?: ResolverCacheOptions | false;
}

/** One answer of the upstream: addresses best first, and how long they may be reused. */
export interface ResolvedAnswer {
  addrs: string[];
  /** Smallest TTL of the records used, in seconds. */
  ttlSec: number;
}

/**
 * A resolver that asks `server` (`ADDR[:PORT]`, `[v6]:PORT`) — the
 * `--dns-upstream` — and nothing else. A and AAAA are asked in parallel; the
 * answer interleaves the families starting with IPv6 (RFC 8305 §4). Answers
 * are cached by TTL (`cachedResolver`): without it every proxied connection
 * cost two queries, two exceptions for a missing AAAA, and a round trip
 * before the connect — the largest per-connection cost of the direct path.
 */
export function upstreamResolver(server: string, opts: UpstreamResolverOptions = {}): ResolveName {
  const query = upstreamQuery(server, opts);
  if (opts.cache === false) return async (name) => (await query(name)).addrs;
  return cachedResolver(query, opts.cache ?? {});
}

/** One uncached A+AAAA lookup against `server`, with the TTL of the answer. */
export function upstreamQuery(
  server: string,
  opts: UpstreamResolverOptions = {},
): (name: string) => Promise<ResolvedAnswer> {
  const r = new Resolver({ timeout: opts.timeoutMs ?? 2000, tries: opts.tries ?? 2 });
  r.setServers([server]);
  return async (name) => {
    const [v6, v4] = await Promise.allSettled([r.resolve6(name, { ttl: true }), r.resolve4(name, { ttl: true })]);
    const a6 = v6.status === 'fulfilled' ? v6.value : [];
    const a4 = v4.status === 'fulfilled' ? v4.value : [];
    if (a6.length + a4.length === 0) {
      const why = v4.status === 'rejected' ? (v4.reason as Error) : undefined;
      throw new ProxyError('ENOTFOUND', `resolve ${name} via ${server}: ${why?.message ?? 'no A or AAAA records'}`, {
        cause: why,
      });
    }
    const addrs: string[] = [];
    let ttlSec = Number.POSITIVE_INFINITY;
    for (let i = 0; i < Math.max(a6.length, a4.length); i++) {
      const x6 = a6[i];
      const x4 = a4[i];
      if (x6 !== undefined) {
        addrs.push(x6.address);
        ttlSec = Math.min(ttlSec, x6.ttl);
      }
      if (x4 !== undefined) {
        addrs.push(x4.address);
        ttlSec = Math.min(ttlSec, x4.ttl);
      }
    }
    // One family failed for another reason than "no such records" (a timeout,
    // SERVFAIL): keep the answer only briefly so the missing family is asked again soon.
    const transient = (s: PromiseSettledResult<unknown>) =>
      s.status === 'rejected' && !NO_RECORDS.has((s.reason as { code?: string })?.code ?? '');
    if (transient(v6) || transient(v4)) ttlSec = 0;
    return { addrs, ttlSec };
  };
}

/** c-ares codes that mean "the name has no records of this type", a real (cacheable) answer. */
const NO_RECORDS = new Set(['ENODATA', 'ENOTFOUND']);

export interface ResolverCacheOptions {
  /**
   * Shortest time an answer is reused, whatever its TTL.
   * @default 5000 — a TTL of 0–4 s (load balancers, some CDNs) would
   * otherwise cost a round trip per connection again; 5 s is what browsers'
   * host caches keep at the least, and far below any failover time.
   */
  minTtlMs?: number;
  /**
   * Longest time an answer is reused, whatever its TTL.
   * @default 300000 — 5 min: a moved service is picked up within minutes
   * even with day-long TTLs (Chrome's host cache keeps entries ≤ 1 min,
   * nscd/systemd-resolved honour the TTL up to hours).
   */
  maxTtlMs?: number;
  /**
   * How long a failure (NXDOMAIN, no records, timeout) is remembered.
   * @default 1000 — a burst of connections to a dead name costs one query,
   * not one each; short enough that a name that starts to exist (or a
   * resolver that comes back) works again within a second.
   */
  negativeTtlMs?: number;
  /** Names held; past it the oldest entry is dropped. @default 4096 */
  maxEntries?: number;
  /** Clock (ms). @default performance.now */
  clock?: () => number;
}

interface CacheEntry {
  expiresMs: number;
  addrs?: readonly string[];
  error?: unknown;
}

/**
 * Wraps a query function in a TTL cache: answers are reused for their TTL
 * clamped to [minTtlMs, maxTtlMs], failures for negativeTtlMs, and
 * concurrent lookups of one name share a single query (64 parallel
 * connections to a cold name ask once). Names compare case-insensitively,
 * without a trailing dot (RFC 4343). The returned arrays are frozen: callers
 * share them.
 */
export function cachedResolver(
  query: (name: string) => Promise<ResolvedAnswer>,
  opts: ResolverCacheOptions = {},
): ResolveName {
  const minTtl = opts.minTtlMs ?? 5000;
  const maxTtl = Math.max(minTtl, opts.maxTtlMs ?? 300_000);
  const negTtl = opts.negativeTtlMs ?? 1000;
  const maxEntries = Math.max(1, opts.maxEntries ?? 4096);
  const clock = opts.clock ?? (() => performance.now());
  const cache = new Map<string, CacheEntry>();
  const inflight = new Map<string, Promise<string[]>>();
  const store = (key: string, e: CacheEntry) => {
    cache.delete(key);
    cache.set(key, e);
    if (cache.size > maxEntries) cache.delete(cache.keys().next().value as string);
  };
  const keyOf = (name: string) => {
    const lower = name.toLowerCase();
    return lower.endsWith('.') ? lower.slice(0, -1) : lower;
  };
  const peek = (name: string): readonly string[] | undefined => {
    const hit = cache.get(keyOf(name));
    return hit?.addrs !== undefined && hit.addrs.length > 0 && clock() < hit.expiresMs ? hit.addrs : undefined;
  };
  const resolve = (name: string): Promise<string[]> => {
    const key = keyOf(name);
    const hit = cache.get(key);
    if (hit !== undefined) {
      if (clock() < hit.expiresMs) {
        return hit.addrs !== undefined ? Promise.resolve(hit.addrs as string[]) : Promise.reject(hit.error);
      }
      cache.delete(key);
    }
    const pending = inflight.get(key);
    if (pending !== undefined) return pending;
    const p = query(name).then(
      (ans) => {
        inflight.delete(key);
        const addrs = Object.freeze([...ans.addrs]);
        const ttlMs = Math.min(maxTtl, Math.max(minTtl, (Number.isFinite(ans.ttlSec) ? ans.ttlSec : 0) * 1000));
        store(key, { expiresMs: clock() + ttlMs, addrs });
        return addrs as string[];
      },
      (err: unknown) => {
        inflight.delete(key);
        if (negTtl > 0) store(key, { expiresMs: clock() + negTtl, error: err });
        throw err;
      },
    );
    inflight.set(key, p);
    return p;
  };
  return Object.assign(resolve, { peek });
}

/** One AbortSignal for "the whole connect", carrying a ProxyError as its reason. */
/** The connect budget (resolve + connect + proxy handshake) ran out. */
export function timeoutError(what: string, ms: number): ProxyError {
  return new ProxyError(
    'ETIMEDOUT',
    `${what}: no answer within ${ms} ms (check the upstream, or raise the connect timeout)`,
  );
}

export function connectDeadline(
  what: string,
  opts: { timeoutMs?: number; signal?: AbortSignal } | undefined,
): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const onAbort = () => ac.abort(new ProxyError('EABORTED', `${what}: aborted (the app closed its connection first)`));
  opts?.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts?.signal?.aborted) onAbort();
  let timer: NodeJS.Timeout | undefined;
  if (opts?.timeoutMs !== undefined && !ac.signal.aborted) {
    const ms = opts.timeoutMs;
    timer = setTimeout(() => ac.abort(timeoutError(what, ms)), ms);
  }
  return {
    signal: ac.signal,
    dispose() {
      if (timer) clearTimeout(timer);
      opts?.signal?.removeEventListener('abort', onAbort);
    },
  };
}

/** Reject with `signal.reason` as soon as it aborts. */
export function raceSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

export interface DialOptions {
  resolve?: ResolveName | undefined;
  signal: AbortSignal;
  /**
   * Start the next address if the current one has not connected yet.
   * @default 250 — RFC 8305 §5 "Connection Attempt Delay" recommendation.
   */
  attemptDelayMs?: number;
  /** What we are dialing, for messages ("socks5 proxy 10.0.0.1:1080"). */
  what: string;
  /** Why an address would loop back into fakeproxy, or undefined (see DirectOutboundOptions.loopGuard). */
  loopGuard?: ((ip: string) => string | undefined) | undefined;
}

// Guard: net.connect gets IP literals only, so it never calls lookup; if it
// ever did, fail loudly instead of asking getaddrinfo (= ourselves).
const noSystemLookup = ((_h: string, _o: unknown, cb: (e: Error) => void) =>
  cb(new Error('fakeproxy never uses the system resolver'))) as unknown as net.LookupFunction;

/** Connect to host:port. The socket is `allowHalfOpen` with Nagle off (the app already chose its own batching). */
export async function dialTcp(host: string, port: number, opts: DialOptions): Promise<net.Socket> {
  const { signal } = opts;
  let addrs: readonly string[];
  const hit = net.isIP(host) === 0 ? opts.resolve?.peek?.(host) : undefined;
  if (net.isIP(host) !== 0) addrs = [host];
  else if (hit !== undefined) addrs = hit;
  else if (opts.resolve === undefined) {
    throw new ProxyError(
      'ENORESOLVER',
      `${opts.what}: cannot resolve ${host}: no resolver configured (pass --dns-upstream; the system resolver is fakeproxy itself)`,
    );
  } else {
    try {
      addrs = await raceSignal(opts.resolve(host), signal);
    } catch (e) {
      if (e === signal.reason) throw e;
      const err = e as { code?: string; message?: string };
      throw new ProxyError('ENOTFOUND', `${opts.what}: resolve ${host}: ${err.message ?? String(e)}`, { cause: e });
    }
    if (addrs.length === 0) throw new ProxyError('ENOTFOUND', `${opts.what}: resolve ${host}: no addresses`);
  }
  if (opts.loopGuard) {
    const guard = opts.loopGuard;
    const why = addrs.map((a) => guard(a));
    const ok = addrs.filter((_, i) => why[i] === undefined);
    if (ok.length === 0) throw new ProxyError('ELOOP', `${opts.what}: ${why[0]}`);
    addrs = ok;
  }
  return raceAddresses(addrs, port, opts);
}

function raceAddresses(addrs: readonly string[], port: number, opts: DialOptions): Promise<net.Socket> {
  const { signal } = opts;
  const delay = opts.attemptDelayMs ?? 250;
  return new Promise<net.Socket>((resolve, reject) => {
    const pending = new Set<net.Socket>();
    let next = 0;
    let done = false;
    let lastErr: unknown;
    let timer: NodeJS.Timeout | undefined;

    const finish = (err: unknown, sock?: net.Socket) => {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      for (const s of pending) if (s !== sock) s.destroy();
      pending.clear();
      if (sock) resolve(sock);
      else reject(err);
    };
    const onAbort = () => finish(signal.reason);

    const start = () => {
      if (timer) clearTimeout(timer);
      timer = undefined;
      if (done || next >= addrs.length) return;
      const addr = addrs[next++] as string;
      // newTcpSocket: carries --fwmark in global mode, so this connection keeps the main table.
      const s = newTcpSocket(net.isIPv6(addr) ? 6 : 4, { allowHalfOpen: true, noDelay: true });
      s.connect({ host: addr, port, lookup: noSystemLookup });
      holdOwnTcp(s, addr, port);
      pending.add(s);
      const onErr = (e: Error) => {
        pending.delete(s);
        s.destroy();
        lastErr = wrapError(`${opts.what}: connect ${addr.includes(':') ? `[${addr}]` : addr}:${port}`, e);
        if (next < addrs.length) start();
        else if (pending.size === 0) finish(lastErr);
      };
      s.once('error', onErr);
      s.once('connect', () => {
        s.removeListener('error', onErr);
        finish(undefined, s);
      });
      if (next < addrs.length) timer = setTimeout(start, delay);
    };

    if (signal.aborted) return reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    start();
  });
}

/**
 * The frame of every connection to a proxy: one deadline for the whole
 * setup (`what` names it), the proxy dialled through the injected resolver
 * only, `use` run on the connected socket; the socket destroyed on any
 * failure. Resolves with what `use` returns.
 */
export async function withProxySocket<T>(
  proxy: { host: string; port: number; resolve?: ResolveName | undefined },
  what: string,
  opts: { timeoutMs?: number; signal?: AbortSignal } | undefined,
  use: (sock: net.Socket, signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const d = connectDeadline(what, opts);
  let sock: net.Socket | undefined;
  try {
    sock = await dialTcp(proxy.host, proxy.port, {
      resolve: proxy.resolve,
      signal: d.signal,
      what: `${what}: reach the proxy`,
    });
    return await use(sock, d.signal);
  } catch (e) {
    sock?.destroy();
    throw e;
  } finally {
    d.dispose();
  }
}

/**
 * What every proxy outbound's connect does (withProxySocket): run the
 * protocol's handshake for `dst`; a proxy not reached, or hanging up
 * mid-handshake, is marked down (isProxyDown).
 */
export async function connectViaProxy(
  proxy: { host: string; port: number; label: string; resolve?: ResolveName | undefined },
  dst: { host: string; port: number },
  opts: { timeoutMs?: number; signal?: AbortSignal } | undefined,
  handshake: (sock: net.Socket, signal: AbortSignal, what: string) => Promise<unknown>,
): Promise<net.Socket> {
  const what = `connect to ${hostPort(dst.host, dst.port)} via ${proxy.label}`;
  let reached = false;
  try {
    return await withProxySocket(proxy, what, opts, async (sock, signal) => {
      reached = true;
      await handshake(sock, signal, what);
      return sock;
    });
  } catch (e) {
    const code = (e as { code?: string } | undefined)?.code;
    // Not reached, or hung up on us mid-handshake: the proxy itself is down
    // (an error reply or a slow handshake may be the destination's fault).
    if (typeof e === 'object' && e !== null && code !== 'EABORTED' && (!reached || code === 'EUPSTREAM_CLOSED')) {
      markProxyDown(e as Error);
    }
    throw e;
  }
}

/**
 * The one address connectViaProxy would dial for a proxy, when it is known
 * now: an IP literal, or a name whose cached answer has exactly one address
 * (several keep connect()'s Happy-Eyeballs race). The outbounds' nativeDial
 * hands the handshake to the relay thread only then.
 */
export function knownProxyAddress(host: string, resolve: ResolveName | undefined): string | undefined {
  const addrs = net.isIP(host) !== 0 ? [host] : resolve?.peek?.(host);
  return addrs?.length === 1 ? addrs[0] : undefined;
}

/**
 * A native proxy dial's 'connect-failed' end that is the same for every
 * proxy protocol — a socket error or timeout (reaching the proxy or during
 * its handshake), or the proxy hanging up mid-handshake — worded and marked
 * as connectViaProxy would have; undefined for the protocol's own failures.
 */
export function nativeProxyFailure(
  res: RelayResult,
  proxy: { host: string; port: number },
  what: string,
  timeoutMs: number,
): Error | undefined {
  const h = res.handshake ?? 0;
  const kind = (h >>> 8) & 0xff;
  if (kind === HS_FAIL.closed) return markProxyDown(closedMidHandshake(what));
  if (kind !== HS_FAIL.errno) return undefined;
  const reachingProxy = h >>> 16 === HS_FAIL.reachingProxy;
  const code = (res.error as NodeJS.ErrnoException | undefined)?.code ?? 'ECONNRESET';
  const at = hostPort(proxy.host, proxy.port);
  const e =
    code === 'ETIMEDOUT'
      ? timeoutError(what, timeoutMs)
      : reachingProxy
        ? wrapError(`${what}: reach the proxy: connect ${at}`, { code, message: `connect ${code} ${at}` })
        : wrapError(what, { code, message: `read ${code}` });
  // Not reached (a timeout included): the proxy itself is down, as connectViaProxy says.
  return reachingProxy ? markProxyDown(e) : e;
}

/** Marks `e` as a failure of the proxy itself (isProxyDown); returns it. */
export function markProxyDown<E extends Error>(e: E): E {
  Object.defineProperty(e, 'proxyDown', { value: true, configurable: true });
  return e;
}

/** The connect failed at the proxy itself (see connectViaProxy): its group may mark it dead. */
export function isProxyDown(e: unknown): boolean {
  return (e as { proxyDown?: unknown } | undefined)?.proxyDown === true;
}

/** `host:port` with IPv6 literals bracketed, for labels and log lines. */
export function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
