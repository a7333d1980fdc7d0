/** Shared plumbing of the inspection commands: connecting and finding nodes. */
import { FakeproxyError, wrapError } from '../errors.js';
import { connectOnce, describeRedisError, type RedisClient, type RedisFactory, scanKeys } from '../redis/client.js';
import { checkNodeId, everyNodePattern, nodeIdOfKey } from '../redis/schema.js';
import type { Out } from './format.js';

export interface InspectOptions {
  /** redis://[user:pass@]host:port[/db] */
  redis: string;
  /** Node id (`--node`); undefined: every node found in Redis. The CLI passes os.hostname() if it wants that default. */
  node?: string;
  json: boolean;
  out: Out;
  redisFactory?: RedisFactory;
  /** Clock for ages, for tests. @default Date.now */
  now?: () => number;
}

/** Connect, run, disconnect; a Redis failure mid-command becomes a one-line FakeproxyError. */
export async function withRedis<T>(opts: InspectOptions, fn: (client: RedisClient) => Promise<T>): Promise<T> {
  const client = await connectOnce(opts.redis, { redisFactory: opts.redisFactory });
  try {
    return await fn(client);
  } catch (err) {
    if (err instanceof FakeproxyError) throw err;
    const e = wrapError('reading Redis', err);
    throw new FakeproxyError(e.code, describeRedisError(opts.redis, err), { cause: err });
  } finally {
    client.disconnect();
  }
}

/** The nodes to show: the one asked for, or every node that has a `<suffix>` key (NODE_KEY in src/redis/schema.ts). */
export async function resolveNodes(
  client: RedisClient,
  node: string | undefined,
  suffixes: string[],
): Promise<string[]> {
  if (node !== undefined) return [checkNodeId(node)];
  const nodes = new Set<string>();
  for (const suffix of suffixes) {
    for (const k of await scanKeys(client, everyNodePattern(suffix))) {
      const id = nodeIdOfKey(k, suffix);
      if (id !== undefined) nodes.add(id);
    }
  }
  return [...nodes].sort();
}
