/**
 * The one way fakeproxy makes Redis clients, used by the mirror
 * (src/redis/mirror.ts), the shared fake-IP pool (src/redis/sharedPool.ts)
 * and the inspection commands (src/inspect/): URL validation, the client
 * options of a long-lived ("resilient") connection and its one retry
 * strategy, connect-once for CLI commands, password redaction, and one-line
 * error messages that name the fix.
 */
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { FakeproxyError, UsageError } from '../errors.js';

/** A client of a standalone or Sentinel-managed Redis, or of a Redis Cluster. */
export type RedisClient = Redis | Cluster;

/** How a Redis client is made; a parameter so tests can watch or swap it. */
export type RedisFactory = (url: string, options: RedisOptions) => RedisClient;

/**
 * Where Redis is, parsed from `--redis`:
 * - `redis://[user:pass@]host:port[/db]` (`rediss://` for TLS): one server;
 * - `redis+sentinel://[user:pass@]host:port[,host:port…]/mastername[/db]`
 *   (`rediss+sentinel://`): the primary that these Sentinels elect, followed
 *   through failovers (ioredis's Sentinel client);
 * - `redis+cluster://[user:pass@]host:port[,host:port…]` (`rediss+cluster://`):
 *   a Redis Cluster found from these seed nodes (ioredis's Cluster client).
 * user:pass are the Redis nodes' ACL user / password. Sentinels with their
 * own AUTH (`requirepass` or an ACL user in sentinel.conf) take
 * `?sentinelUsername=…&sentinelPassword=…` after the master name.
 */
export type RedisTarget =
  | { kind: 'standalone'; url: string }
  | {
      kind: 'sentinel';
      tls: boolean;
      username?: string;
      password?: string;
      nodes: { host: string; port: number }[];
      name: string;
      db: number;
      sentinelUsername?: string;
      sentinelPassword?: string;
    }
  | { kind: 'cluster'; tls: boolean; username?: string; password?: string; nodes: { host: string; port: number }[] };

/** Default ports of the multi-node forms. */
const SENTINEL_PORT = 26379;
const CLUSTER_PORT = 6379;
const URL_FORMS =
  'redis://[user:password@]host:port[/db], redis+sentinel://[user:password@]host:port[,host:port…]/mastername[/db][?sentinelPassword=…] or redis+cluster://[user:password@]host:port[,host:port…] (rediss… for TLS)';

/** A Redis error reply (a replica that used to be the primary) that a reconnect to the new primary fixes. */
const READONLY = /^READONLY/;

/** The client for `url` (any RedisTarget form) with these options. */
export const defaultRedisFactory: RedisFactory = (url, options) => {
  const t = parseRedisUrl(url);
  // A primary demoted by a failover answers writes with READONLY: reconnect (to the new one) and resend.
  const reconnectOnError = (err: Error) => (READONLY.test(err.message) ? 2 : false);
  if (t.kind === 'standalone') return new Redis(url, { reconnectOnError, ...options });
  const tls = t.tls ? {} : undefined;
  if (t.kind === 'sentinel') {
    return new Redis({
      reconnectOnError,
      ...options,
      sentinels: t.nodes,
      name: t.name,
      db: t.db,
      username: t.username,
      password: t.password,
      sentinelUsername: t.sentinelUsername,
      sentinelPassword: t.sentinelPassword,
      role: 'master',
      tls,
      enableTLSForSentinelMode: t.tls,
      // All Sentinels unreachable: the same backoff (or none, for a one-shot command).
      sentinelRetryStrategy: (times) => options.retryStrategy?.(times) ?? null,
      // Leave a primary as soon as the Sentinels announce a new one, even if it is still reachable.
      failoverDetector: true,
    });
  }
  const { retryStrategy, enableOfflineQueue, lazyConnect, ...nodeOptions } = options;
  return new Cluster(t.nodes, {
    lazyConnect,
    enableOfflineQueue,
    clusterRetryStrategy: (times) => retryStrategy?.(times) ?? null,
    redisOptions: { reconnectOnError, ...nodeOptions, username: t.username, password: t.password, tls },
  });
};

function parseHosts(url: string, list: string, defaultPort: number): { host: string; port: number }[] {
  return list.split(',').map((hp) => {
    const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+)(?::(\d{1,5}))?$/.exec(hp);
    const port = m?.[2] === undefined ? defaultPort : Number(m[2]);
    if (!m || port < 1 || port > 65535) {
      throw new UsageError(`invalid Redis URL "${redactRedisUrl(url)}": "${hp}" is not host:port`);
    }
    return { host: m[1].replace(/^\[|\]$/g, ''), port };
  });
}

/** Reconnect backoff cap of long-lived connections. @default 2000 — back "within a few seconds" of Redis returning. */
export const DEFAULT_MAX_BACKOFF_MS = 2_000;
/** Retry interval while Redis refuses the credentials: slow and quiet, so fixing the server heals without a restart. */
export const AUTH_RETRY_MS = 30_000;
/** TCP connect timeout of every client. */
export const CONNECT_TIMEOUT_MS = 5_000;

/**
 * The one retry strategy: exponential from 100 ms, capped at `maxBackoffMs`,
 * jittered (half fixed, half random) so a fleet does not reconnect in step;
 * AUTH_RETRY_MS while the credentials are refused.
 */
export function retryDelayMs(times: number, maxBackoffMs: number, authFailed: boolean): number {
  if (authFailed) return AUTH_RETRY_MS;
  const base = Math.min(100 * 2 ** Math.min(times, 10), maxBackoffMs);
  return Math.round(base / 2 + Math.random() * (base / 2));
}

export interface ResilientOptions {
  /** @default DEFAULT_MAX_BACKOFF_MS */
  maxBackoffMs?: number;
  /** Whether the last failure was refused credentials (slows retries to AUTH_RETRY_MS). */
  authFailed?: () => boolean;
  /**
   * A subscriber: commands (SUBSCRIBE) wait in the offline queue and are
   * re-sent after a reconnect. Otherwise an outage must not grow memory:
   * commands fail fast instead of queueing, and the caller repairs what was
   * dropped when the connection is back.
   */
  subscriber?: boolean;
  /** What the connection calls itself (CLIENT SETNAME, seen in CLIENT LIST): see schema.ts clientName. */
  name?: string;
}

/** Options of a long-lived connection that reconnects by itself forever. */
export function resilientOptions(opts: ResilientOptions = {}): RedisOptions {
  const maxBackoffMs = opts.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS;
  const authFailed = opts.authFailed ?? (() => false);
  return {
    lazyConnect: true,
    enableOfflineQueue: opts.subscriber === true,
    maxRetriesPerRequest: opts.subscriber ? null : 1,
    autoResendUnfulfilledCommands: false,
    connectTimeout: CONNECT_TIMEOUT_MS,
    retryStrategy: (times) => retryDelayMs(times, maxBackoffMs, authFailed()),
    // Sent on every (re)connect; a user not allowed CLIENT SETNAME just stays unnamed (ioredis ignores the error).
    ...(opts.name ? { connectionName: opts.name } : {}),
  };
}

/**
 * A long-lived client (resilientOptions) that also survives ioredis giving
 * up on it: see reconnectAfterEnd. `wanted()` turns false when its owner
 * closes it.
 */
export function resilientClient(
  factory: RedisFactory,
  url: string,
  opts: ResilientOptions & { wanted: () => boolean },
): RedisClient {
  const options = resilientOptions(opts);
  const client = factory(url, options);
  reconnectAfterEnd(client, opts.wanted, () => options.retryStrategy?.(1) ?? DEFAULT_MAX_BACKOFF_MS);
  return client;
}

/**
 * connect() again, after `delayMs()`, whenever the client ends ('end')
 * while it is still `wanted()`. ioredis ends a client for good when its
 * connector fails instead of retrying, and a Sentinel client's failover
 * detector, still subscribed to +switch-master from the connection that was
 * lost, makes it fail: a failover announced while the client asks a
 * Sentinel where the primary is (that is, during a reconnection, which is
 * when failovers happen) aborts the attempt with "Connection is closed" and
 * ends the client. Without this a gateway could stay disconnected after a
 * Sentinel failover (test/unit/redis/failover.test.ts shows it).
 */
export function reconnectAfterEnd(client: RedisClient, wanted: () => boolean, delayMs: () => number): void {
  let timer: NodeJS.Timeout | undefined;
  client.on('end', () => {
    if (timer !== undefined || !wanted()) return;
    timer = setTimeout(() => {
      timer = undefined;
      if (wanted() && client.status === 'end') client.connect().catch(() => {});
    }, delayMs());
    timer.unref();
  });
}

/**
 * Which failures a long-lived connection has reported, so an outage logs one
 * line and not one per retry, and refused credentials slow the retries.
 */
export class FailureLog {
  /** The failure kind last logged (or 'lost'). */
  private logged?: string;
  authFailed = false;

  /** A connection error: returns its kind and whether it deserves a log line. */
  error(err: unknown): { kind: RedisFailureKind; log: boolean } {
    const kind = classifyRedisError(err);
    if (kind === 'auth' || kind === 'noauth') this.authFailed = true;
    const repeat = this.logged === kind || (this.logged === 'lost' && kind === 'unreachable');
    if (!repeat) this.logged = kind;
    return { kind, log: !repeat };
  }

  /** An established connection was lost (the caller logs it). */
  lost(): void {
    this.logged = 'lost';
  }

  /** Connected: returns whether a failure had been logged (so "connected again" is worth a line). */
  ready(): boolean {
    const was = this.logged !== undefined;
    this.logged = undefined;
    this.authFailed = false;
    return was;
  }
}

/** The smallest logger the Redis modules need; `console` satisfies it. */
export interface RedisLogger {
  info(msg: string): void;
  warn(msg: string): void;
}

/** How a long-lived Redis user (the mirror, the shared pool) connects. */
export interface RedisConnectOptions {
  /** Where Redis is: any RedisTarget form (parseRedisUrl). */
  url: string;
  /** @default console */
  logger?: RedisLogger;
  /** @default defaultRedisFactory */
  redisFactory?: RedisFactory;
  /** Cap of the reconnect backoff. @default DEFAULT_MAX_BACKOFF_MS */
  maxBackoffMs?: number;
}

/**
 * A long-lived Redis user's end of the connection: the validated URL, its
 * logger, the FailureLog of its outages, and the resilient clients it makes,
 * which retry slowly while the credentials are refused and stop
 * reconnecting once `wanted()` turns false (the owner closed).
 */
export class RedisEndpoint {
  readonly url: string;
  readonly logger: RedisLogger;
  readonly failures = new FailureLog();
  private readonly factory: RedisFactory;
  private readonly maxBackoffMs?: number;
  private readonly wanted: () => boolean;

  /** Throws UsageError for a URL that is not a RedisTarget. */
  constructor(opts: RedisConnectOptions, wanted: () => boolean) {
    parseRedisUrl(opts.url);
    this.url = opts.url;
    this.logger = opts.logger ?? console;
    this.factory = opts.redisFactory ?? defaultRedisFactory;
    this.maxBackoffMs = opts.maxBackoffMs;
    this.wanted = wanted;
  }

  /** A resilient client named `name`; a `subscriber` queues its commands while offline (ResilientOptions). */
  client(name: string, subscriber = false): RedisClient {
    return resilientClient(this.factory, this.url, {
      maxBackoffMs: this.maxBackoffMs,
      authFailed: () => this.failures.authFailed,
      wanted: this.wanted,
      subscriber,
      name,
    });
  }

  /** The URL without its passwords, for log lines. */
  get redacted(): string {
    return redactRedisUrl(this.url);
  }

  /** describeRedisError for this URL. */
  describe(err: unknown): string {
    return describeRedisError(this.url, err);
  }
}

/**
 * Validate a Redis URL (the forms of RedisTarget) and say where it points.
 * Throws UsageError (CLI exit 2) naming what is wrong, so a typo never turns
 * into an endless "reconnecting" loop.
 */
export function parseRedisUrl(url: string): RedisTarget {
  const multi = /^(rediss?)\+(sentinel|cluster):\/\/(?:([^@/]*)@)?([^/?]*)(?:\/([^?]*))?(?:\?(.*))?$/.exec(url);
  if (multi) {
    const [, scheme, kind, auth, hosts, path = '', query] = multi;
    const where = redactRedisUrl(url);
    if (hosts === '') throw new UsageError(`invalid Redis URL "${where}": no host`);
    const colon = auth?.indexOf(':') ?? -1;
    const creds = {
      tls: scheme === 'rediss',
      username:
        auth === undefined ? undefined : decodeURIComponent(colon < 0 ? auth : auth.slice(0, colon)) || undefined,
      password: auth === undefined || colon < 0 ? undefined : decodeURIComponent(auth.slice(colon + 1)) || undefined,
    };
    const params = sentinelParams(url, query, kind);
    if (kind === 'cluster') {
      if (path !== '') {
        throw new UsageError(`invalid Redis URL "${where}": a Redis Cluster has no database or name ("/${path}")`);
      }
      return { kind: 'cluster', ...creds, nodes: parseHosts(url, hosts, CLUSTER_PORT) };
    }
    const [name = '', db = '0', ...rest] = path.split('/');
    if (name === '' || rest.length > 0) {
      throw new UsageError(
        `invalid Redis URL "${where}": expected redis+sentinel://host:port[,host:port…]/mastername[/db]`,
      );
    }
    if (!/^\d+$/.test(db)) throw new UsageError(`invalid Redis URL "${where}": database "/${db}" must be a number`);
    return {
      kind: 'sentinel',
      ...creds,
      nodes: parseHosts(url, hosts, SENTINEL_PORT),
      name,
      db: Number(db),
      ...params,
    };
  }
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new UsageError(`invalid Redis URL "${url}": expected ${URL_FORMS}`, { cause });
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new UsageError(
      `invalid Redis URL "${redactRedisUrl(url)}": scheme must be redis://, rediss:// (TLS), redis+sentinel:// or redis+cluster://, not ${u.protocol}//`,
    );
  }
  if (u.hostname === '') throw new UsageError(`invalid Redis URL "${redactRedisUrl(url)}": no host`);
  const db = u.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d+$/.test(db)) {
    throw new UsageError(`invalid Redis URL "${redactRedisUrl(url)}": database "/${db}" must be a number`);
  }
  return { kind: 'standalone', url };
}

/** The Sentinels' own credentials from a Sentinel URL's query (`?sentinelUsername=…&sentinelPassword=…`). */
function sentinelParams(
  url: string,
  query: string | undefined,
  kind: string,
): { sentinelUsername?: string; sentinelPassword?: string } {
  if (query === undefined) return {};
  const where = redactRedisUrl(url);
  if (kind !== 'sentinel') throw new UsageError(`invalid Redis URL "${where}": a Redis Cluster URL takes no ?options`);
  const out: { sentinelUsername?: string; sentinelPassword?: string } = {};
  for (const [k, v] of new URLSearchParams(query)) {
    if (k !== 'sentinelUsername' && k !== 'sentinelPassword') {
      throw new UsageError(
        `invalid Redis URL "${where}": unknown option "${k}" (a Sentinel URL takes sentinelUsername and sentinelPassword)`,
      );
    }
    out[k] = v || undefined;
  }
  return out;
}

/** The URL with its passwords (the nodes', the Sentinels') replaced by `***`, for log lines and errors. */
export function redactRedisUrl(url: string): string {
  const multi = /^(rediss?\+(?:sentinel|cluster):\/\/)(?:([^:@/]*)(:[^@/]*)?@)?(.*)$/.exec(url);
  if (multi) {
    const [, head, user = '', pass, tail] = multi;
    // Every ?option value but a user name is hidden: a mistyped sentinelPassword is still a password.
    const rest = tail.replace(/([?&](?!sentinelUsername=)[^=&]*=)[^&]*/g, '$1***');
    if (pass === undefined) return multi[2] === undefined ? `${head}${rest}` : `${head}${user}@${rest}`;
    return `${head}${user}${pass === ':' ? ':' : ':***'}@${rest}`;
  }
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString().replace(/\/$/, '');
  } catch {
    return '<unparsable Redis URL>';
  }
}

export type RedisFailureKind = 'auth' | 'noauth' | 'unreachable' | 'other';

export function classifyRedisError(err: unknown): RedisFailureKind {
  const e = err as { message?: string; code?: string; lastNodeError?: unknown } | undefined;
  // A Cluster that reached no node: the last node's error says why.
  if (e?.lastNodeError !== undefined) return classifyRedisError(e.lastNodeError);
  const msg = e?.message ?? String(err);
  if (/WRONGPASS|invalid password|invalid username-password/i.test(msg)) return 'auth';
  if (/NOAUTH|Authentication required/i.test(msg)) return 'noauth';
  const code = e?.code ?? '';
  if (
    /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|EPIPE)$/.test(code) ||
    /ECONNREFUSED|ETIMEDOUT|connect ETIMEDOUT|Connection is closed|All sentinels are unreachable|CLUSTERDOWN|Failed to refresh slots cache/i.test(
      msg,
    )
  ) {
    return 'unreachable';
  }
  return 'other';
}

/** One line that says what failed and what to do, password redacted. */
export function describeRedisError(url: string, err: unknown): string {
  const where = redactRedisUrl(url);
  const outer = err as { lastNodeError?: unknown } | undefined;
  const e = (outer?.lastNodeError ?? err) as { message?: string; code?: string } | undefined;
  const msg = (e?.message ?? String(err)).split('\n')[0];
  switch (classifyRedisError(err)) {
    case 'auth':
      return `Redis at ${where} rejected the credentials (${authWord(msg)}): check user/password in the URL (${authHint(url)})`;
    case 'noauth':
      return `Redis at ${where} requires a password: put it in the URL (${authHint(url)})`;
    case 'unreachable':
      return `cannot reach Redis at ${where} (${e?.code ?? msg}): is redis-server running and the address right?`;
    default:
      return `Redis at ${where}: ${msg}`;
  }
}

/** WRONGPASS/NOAUTH/… out of a message that may wrap it ("All sentinels are unreachable… Last error: WRONGPASS…"). */
function authWord(msg: string): string {
  return /WRONGPASS|NOAUTH/.exec(msg)?.[0] ?? msg.split(' ')[0];
}

/** Where credentials go in this kind of URL. */
function authHint(url: string): string {
  if (/^rediss?\+sentinel:/.test(url)) {
    return 'redis+sentinel://[user:]password@host:port,…/mastername for the Redis nodes, ?sentinelUsername=…&sentinelPassword=… for the Sentinels';
  }
  return 'redis://[user:]password@host:port';
}

export function redisErrorCode(err: unknown): string {
  switch (classifyRedisError(err)) {
    case 'auth':
    case 'noauth':
      return 'EREDISAUTH';
    case 'unreachable':
      return 'EREDISUNREACHABLE';
    default:
      return 'EREDIS';
  }
}

/**
 * Connect once for a short-lived command (CLI): no retries, no offline
 * queue, and a one-line FakeproxyError on failure. ioredis rejects connect()
 * with a bare "Connection is closed", so the real cause is taken from the
 * last 'error' event.
 */
export async function connectOnce(
  url: string,
  opts: { redisFactory?: RedisFactory; connectTimeoutMs?: number; extra?: RedisOptions } = {},
): Promise<RedisClient> {
  parseRedisUrl(url);
  const factory = opts.redisFactory ?? defaultRedisFactory;
  const client = factory(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: opts.connectTimeoutMs ?? CONNECT_TIMEOUT_MS,
    ...opts.extra,
  });
  let lastError: unknown;
  const onError = (err: unknown) => {
    lastError = err;
  };
  client.on('error', onError);
  try {
    await client.connect();
  } catch (err) {
    client.disconnect();
    const cause = lastError ?? err;
    throw new FakeproxyError(redisErrorCode(cause), describeRedisError(url, cause), { cause });
  }
  client.off('error', onError);
  // Later errors (connection lost mid-command) surface through the rejected command.
  client.on('error', () => {});
  return client;
}

/**
 * Every key matching `pattern` (SCAN, so the server is never blocked by
 * KEYS); on a Cluster, of every primary.
 */
export async function scanKeys(client: RedisClient, pattern: string): Promise<string[]> {
  const keys: string[] = [];
  for (const node of client instanceof Cluster ? client.nodes('master') : [client]) {
    let cursor = '0';
    do {
      const [next, batch] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      keys.push(...batch);
    } while (cursor !== '0');
  }
  return keys;
}

/**
 * Subscribe to `channel` now and again after every reconnect. (ioredis's own
 * resubscription leaves its promise unhandled when the connection drops
 * again before the reply; a Cluster's subscriber handles this itself.)
 */
export function subscribeAlways(
  client: RedisClient,
  mode: 'subscribe' | 'psubscribe',
  channel: string,
): Promise<unknown> {
  if (!(client instanceof Cluster)) {
    client.options.autoResubscribe = false;
    // Not connected yet: the command below is queued and sent on the first 'ready'.
    let skip = client.status !== 'ready';
    client.on('ready', () => {
      if (skip) skip = false;
      else client[mode](channel).catch(() => {});
    });
  }
  return client[mode](channel);
}

/** Turn a connected one-shot client (connectOnce) into one that reconnects by itself, keeping its subscriptions. */
export function keepReconnecting(client: RedisClient): void {
  const { retryStrategy, enableOfflineQueue } = resilientOptions({ subscriber: true });
  if (client instanceof Cluster) {
    Object.assign(client.options, { clusterRetryStrategy: retryStrategy, enableOfflineQueue });
    return;
  }
  Object.assign(client.options, { retryStrategy, enableOfflineQueue });
  if (client.options.sentinels) client.options.sentinelRetryStrategy = (times) => retryStrategy?.(times) ?? null;
  reconnectAfterEnd(
    client,
    () => true,
    () => retryStrategy?.(1) ?? DEFAULT_MAX_BACKOFF_MS,
  );
}
