/**
 * Redis connection helpers shared by the mirror (src/nat/redisMirror.ts), the
 * shared fake-IP pool (src/dns/redisPool.ts) and the inspection commands
 * (src/inspect/*.ts): URL validation, password redaction, one-line error
 * messages that name the fix, and the factory seam tests drive.
 */
import { Redis, type RedisOptions } from 'ioredis';
import { FakeproxyError, UsageError } from '../errors.js';

/** How a Redis client is made; a parameter so tests (and Sentinel/Cluster later) can swap it. */
export type RedisFactory = (url: string, options: RedisOptions) => Redis;

export const defaultRedisFactory: RedisFactory = (url, options) => new Redis(url, options);

/** The smallest logger the Redis modules need; `console` satisfies it. */
export interface RedisLogger {
  info(msg: string): void;
  warn(msg: string): void;
}

/**
 * Validate a `redis://[user:pass@]host:port[/db]` or `rediss://…` URL.
 * Throws UsageError (CLI exit 2) naming what is wrong, so a typo never turns
 * into an endless "reconnecting" loop.
 */
export function parseRedisUrl(url: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch (cause) {
    throw new UsageError(`invalid Redis URL "${url}": expected redis://[user:password@]host:port[/db]`, { cause });
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new UsageError(
      `invalid Redis URL "${redactRedisUrl(url)}": scheme must be redis:// or rediss:// (TLS), not ${u.protocol}//`,
    );
  }
  if (u.hostname === '') throw new UsageError(`invalid Redis URL "${redactRedisUrl(url)}": no host`);
  const db = u.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d+$/.test(db)) {
    throw new UsageError(`invalid Redis URL "${redactRedisUrl(url)}": database "/${db}" must be a number`);
  }
  return u;
}

/** The URL with its password replaced by `***`, for log lines and errors. */
export function redactRedisUrl(url: string): string {
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
  const e = err as { message?: string; code?: string } | undefined;
  const msg = e?.message ?? String(err);
  if (/WRONGPASS|invalid password|invalid username-password/i.test(msg)) return 'auth';
  if (/NOAUTH|Authentication required/i.test(msg)) return 'noauth';
  const code = e?.code ?? '';
  if (
    /^(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|EPIPE)$/.test(code) ||
    /ECONNREFUSED|ETIMEDOUT|connect ETIMEDOUT|Connection is closed/i.test(msg)
  ) {
    return 'unreachable';
  }
  return 'other';
}

/** One line that says what failed and what to do, password redacted. */
export function describeRedisError(url: string, err: unknown): string {
  const where = redactRedisUrl(url);
  const e = err as { message?: string; code?: string } | undefined;
  const msg = (e?.message ?? String(err)).split('\n')[0];
  switch (classifyRedisError(err)) {
    case 'auth':
      return `Redis at ${where} rejected the credentials (${msg.split(' ')[0]}): check user/password in the URL (redis://[user:]password@host:port)`;
    case 'noauth':
      return `Redis at ${where} requires a password: put it in the URL (redis://:password@host:port)`;
    case 'unreachable':
      return `cannot reach Redis at ${where} (${e?.code ?? msg}): is redis-server running and the address right?`;
    default:
      return `Redis at ${where}: ${msg}`;
  }
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
): Promise<Redis> {
  parseRedisUrl(url);
  const factory = opts.redisFactory ?? defaultRedisFactory;
  const client = factory(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: opts.connectTimeoutMs ?? 5_000,
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

/** Redis keys for one node: everything under `fakeproxy:<node>:`. */
export function nodePrefix(nodeId: string): string {
  return `fakeproxy:${nodeId}:`;
}

/**
 * Node ids become key segments, so they may not contain ':' or glob
 * characters; "pool" is reserved for the shared fake-IP pool's keys.
 */
export function checkNodeId(nodeId: string): string {
  if (!/^[A-Za-z0-9._-]{1,128}$/.test(nodeId) || nodeId === 'pool') {
    throw new UsageError(`invalid node id "${nodeId}": use 1-128 letters, digits, '.', '_' or '-' (and not "pool")`);
  }
  return nodeId;
}
