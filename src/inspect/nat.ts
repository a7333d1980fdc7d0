/** `fakeproxy nat ls` and `fakeproxy nat watch`: the NAT table mirrored by src/redis/mirror.ts. */
import { connectOnce, keepReconnecting, subscribeAlways } from '../redis/client.js';
import {
  checkNodeId,
  decodeEvent,
  decodeFlow,
  everyNodePattern,
  type FlowEventMessage,
  flowKeyOf,
  type MirroredFlow,
  NODE_KEY,
  nodeKeys,
} from '../redis/schema.js';
import { type InspectOptions, resolveNodes, withRedis } from './common.js';
import { type Column, humanAge, humanBytes, renderTable } from './format.js';

export type NatLsOptions = InspectOptions;

export interface NatLsRow extends MirroredFlow {
  node: string;
}

/** Destination as a person wants it: the name the app asked for, else the address. */
export function destination(f: Pick<MirroredFlow, 'name' | 'dst'>): string {
  if (!f.name) return f.dst;
  const port = f.dst.slice(f.dst.lastIndexOf(':') + 1);
  return `${f.name}:${port}`;
}

/** Rows of the live NAT table, oldest flow first. */
export async function readFlows(opts: NatLsOptions): Promise<NatLsRow[]> {
  return withRedis(opts, async (client) => {
    const nodes = await resolveNodes(client, opts.node, [NODE_KEY.flows]);
    const rows: NatLsRow[] = [];
    for (const node of nodes) {
      const keys = nodeKeys(node);
      const members = await client.zrange(keys.flows, 0, -1);
      for (let i = 0; i < members.length; i += 1000) {
        const p = client.pipeline();
        for (const m of members.slice(i, i + 1000)) p.hgetall(flowKeyOf(keys, m));
        for (const [err, h] of (await p.exec()) ?? []) {
          if (err) throw err;
          // An index entry whose hash expired or was just deleted: skip it.
          const flow = decodeFlow(h as Record<string, string>);
          if (flow) rows.push({ node, ...flow });
        }
      }
    }
    rows.sort((a, b) => a.node.localeCompare(b.node) || a.createdMs - b.createdMs || a.id - b.id);
    return rows;
  });
}

/** Print the live NAT table: aligned columns for people, `{"flows":[…]}` for scripts (docs/redis.md). */
export async function natLs(opts: NatLsOptions): Promise<NatLsRow[]> {
  const rows = await readFlows(opts);
  if (opts.json) {
    opts.out.write(`${JSON.stringify({ flows: rows })}\n`);
    return rows;
  }
  if (rows.length === 0) {
    opts.out.write(opts.node === undefined ? 'no live flows\n' : `no live flows on node ${opts.node}\n`);
    return rows;
  }
  const now = (opts.now ?? Date.now)();
  const columns: Column<NatLsRow>[] = [
    { header: 'PROTO', get: (r) => r.proto },
    { header: 'APP', get: (r) => r.app },
    { header: 'DESTINATION', get: (r) => destination(r) },
    { header: 'NAT', get: (r) => r.nat },
    { header: 'OUTBOUND', get: (r) => r.outbound || '-' },
    { header: 'STATE', get: (r) => r.state },
    { header: 'AGE', get: (r) => humanAge(now - r.createdMs), right: true },
    { header: 'UP', get: (r) => humanBytes(r.bytesOut), right: true },
    { header: 'DOWN', get: (r) => humanBytes(r.bytesIn), right: true },
    // Last: a chain has spaces (`Proxy → auto → hk-1`).
    { header: 'RULE', get: (r) => r.rule || '-' },
    { header: 'CHAIN', get: (r) => r.chain || '-' },
  ];
  if (opts.node === undefined) columns.unshift({ header: 'NODE', get: (r) => r.node });
  opts.out.write(renderTable(rows, columns));
  return rows;
}

export interface NatWatchOptions extends InspectOptions {
  /** Stops watching (Ctrl-C). */
  signal: AbortSignal;
}

/** One line per event for people. */
export function formatEvent(ev: FlowEventMessage, withNode: boolean): string {
  const f = ev.flow;
  const time = new Date(ev.ts).toISOString().slice(11, 23);
  const node = withNode ? `${ev.node}  ` : '';
  const head = `${time}  ${node}${ev.type.padEnd(5)}  ${f.proto}  ${f.app} → ${destination(f)}  nat ${f.nat}`;
  if (ev.type === 'open') {
    return `${head}${f.outbound ? `  via ${f.outbound}` : ''}${f.rule ? `  rule ${f.rule}  chain ${f.chain}` : ''}\n`;
  }
  return `${head}  ${ev.reason ?? ''}  up ${humanBytes(f.bytesOut)}  down ${humanBytes(f.bytesIn)}  after ${humanAge(ev.ts - f.createdMs)}\n`;
}

/**
 * Print open/close events as they are published, until `signal` aborts.
 * JSON mode prints each event's JSON as published (one per line).
 * Reconnects by itself if Redis goes away after the first connection.
 */
export async function natWatch(opts: NatWatchOptions): Promise<void> {
  if (opts.node !== undefined) checkNodeId(opts.node);
  if (opts.signal.aborted) return;
  const client = await connectOnce(opts.redis, { redisFactory: opts.redisFactory });
  // Connected once: from now on a long-lived subscriber that reconnects by itself.
  keepReconnecting(client);
  const all = opts.node === undefined;
  const onMessage = (raw: string) => {
    if (opts.json) {
      opts.out.write(`${raw}\n`);
      return;
    }
    const ev = decodeEvent(raw);
    opts.out.write(ev ? formatEvent(ev, all) : `${raw}\n`);
  };
  client.on('message', (_ch: string, msg: string) => onMessage(msg));
  client.on('pmessage', (_p: string, _ch: string, msg: string) => onMessage(msg));
  try {
    if (all) await subscribeAlways(client, 'psubscribe', everyNodePattern(NODE_KEY.events));
    else await subscribeAlways(client, 'subscribe', nodeKeys(opts.node as string).events);
    await new Promise<void>((resolve) => {
      if (opts.signal.aborted) resolve();
      else opts.signal.addEventListener('abort', () => resolve(), { once: true });
    });
  } finally {
    client.disconnect();
  }
}
