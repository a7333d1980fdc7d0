/**
 * TCP dialing for every outbound: names resolved only through an injected
 * resolver (never getaddrinfo — DESIGN.md "The system resolver is us"),
 * addresses tried Happy-Eyeballs-lite (RFC 8305), one deadline for the
 * whole connect.
 */
import { Resolver } from 'node:dns/promises';
import * as net from 'node:net';
import { wrapError } from '../errors.js';
import { ProxyError } from './errors.js';

/** Name → addresses, best first. Rejects (e.g. ENOTFOUND) when there are none. */
export type ResolveName = (name: string) => Promise<string[]>;

export interface UpstreamResolverOptions {
  /**
   * Per-query timeout.
   * @default 2000 — two tries of 2 s stay inside the Listener's 5 s connect budget.
   */
  timeoutMs?: number;
  /** @default 2 */
  tries?: number;
}

/**
 * A resolver that asks `server` (`ADDR[:PORT]`, `[v6]:PORT`) — the
 * `--dns-upstream` — and nothing else. A and AAAA are asked in parallel; the
 * answer interleaves the families starting with IPv6 (RFC 8305 §4).
 */
export function upstreamResolver(server: string, opts: UpstreamResolverOptions = {}): ResolveName {
  const r = new Resolver({ timeout: opts.timeoutMs ?? 2000, tries: opts.tries ?? 2 });
  r.setServers([server]);
  return async (name) => {
    const [v6, v4] = await Promise.allSettled([r.resolve6(name), r.resolve4(name)]);
    const a6 = v6.status === 'fulfilled' ? v6.value : [];
    const a4 = v4.status === 'fulfilled' ? v4.value : [];
    if (a6.length + a4.length === 0) {
      const why = v4.status === 'rejected' ? (v4.reason as Error) : undefined;
      throw new ProxyError('ENOTFOUND', `resolve ${name} via ${server}: ${why?.message ?? 'no A or AAAA records'}`, {
        cause: why,
      });
    }
    const out: string[] = [];
    for (let i = 0; i < Math.max(a6.length, a4.length); i++) {
      if (i < a6.length) out.push(a6[i] as string);
      if (i < a4.length) out.push(a4[i] as string);
    }
    return out;
  };
}

/** One AbortSignal for "the whole connect", carrying a ProxyError as its reason. */
export function connectDeadline(
  what: string,
  opts: { timeoutMs?: number; signal?: AbortSignal } | undefined,
): { signal: AbortSignal; dispose(): void } {
  const ac = new AbortController();
  const onAbort = () =>
    ac.abort(new ProxyError('EABORTED', `${what}: aborted (the app closed its connection first)`));
  opts?.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts?.signal?.aborted) onAbort();
  let timer: NodeJS.Timeout | undefined;
  if (opts?.timeoutMs !== undefined && !ac.signal.aborted) {
    const ms = opts.timeoutMs;
    timer = setTimeout(
      () =>
        ac.abort(
          new ProxyError('ETIMEDOUT', `${what}: no answer within ${ms} ms (check the upstream, or raise the connect timeout)`),
        ),
      ms,
    );
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
  let addrs: string[];
  if (net.isIP(host) !== 0) addrs = [host];
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

function raceAddresses(addrs: string[], port: number, opts: DialOptions): Promise<net.Socket> {
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
      const s = net.connect({ host: addr, port, allowHalfOpen: true, noDelay: true, lookup: noSystemLookup });
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

/** `host:port` with IPv6 literals bracketed, for labels and log lines. */
export function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}
