/** `fakeproxy nat ls` and `fakeproxy nat watch`: the NAT table mirrored by src/nat/redisMirror.ts. */
import type { FlowEventMessage, MirroredFlow } from '../nat/redisMirror.js';
import { type InspectOptions, resolveNodes, withRedis } from './common.js';
import { type Column, humanAge, humanBytes, renderTable } from './format.js';
import { checkNodeId, connectOnce } from './redisConn.js';

export type NatLsOptions = InspectOptions;

export interface NatLsRow extends MirroredFlow {
  node: string;
}

const NUMERIC: (keyof MirroredFlow)[] = ['id', 'createdMs', 'lastSeenMs', 'bytesOut', 'bytesIn', 'pktsOut', 'pktsIn'];

function parseFlow(node: string, h: Record<string, string>): NatLsRow | undefined {
  if (h.id === undefined || h.proto === undefined) return undefined;
  const row: Record<string, unknown> = { node };
  for (const k of [
    'id',
    'proto',
    'app',
    'dst',
    'name',
    'nat',
    'outbound',
    'state',
    'createdMs',
    'lastSeenMs',
    'bytesOut',
    'bytesIn',
    'pktsOut',
    'pktsIn',
  ] as const) {
    row[k] = (NUMERIC as string[]).includes(k) ? Number(h[k] ?? 0) : (h[k] ?? '');
  }
  return row as unknown as NatLsRow;
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
    const nodes = await resolveNodes(client, opts.node, ['flows']);
    const rows: NatLsRow[] = [];
    for (const node of nodes) {
      const members = await client.zrange(`fakeproxy:${node}:flows`, 0, -1);
      for (let i = 0; i < members.length; i += 1000) {
        const p = client.pipeline();
        for (const m of members.slice(i, i + 1000)) p.hgetall(`fakeproxy:${node}:flow:${m}`);
        for (const [err, h] of (await p.exec()) ?? []) {
          if (err) throw err;
          // An index entry whose hash expired or was just deleted: skip it.
          const row = parseFlow(node, h as Record<string, string>);
          if (row) rows.push(row);
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
  if (ev.type === 'open') return `${head}${f.outbound ? `  via ${f.outbound}` : ''}\n`;
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
  client.options.retryStrategy = (times) => Math.min(100 * 2 ** Math.min(times, 10), 5_000);
  client.options.enableOfflineQueue = true;
  const all = opts.node === undefined;
  const onMessage = (raw: string) => {
    if (opts.json) {
      opts.out.write(`${raw}\n`);
      return;
    }
    try {
      opts.out.write(formatEvent(JSON.parse(raw) as FlowEventMessage, all));
    } catch {
      opts.out.write(`${raw}\n`);
    }
  };
  client.on('message', (_ch: string, msg: string) => onMessage(msg));
  client.on('pmessage', (_p: string, _ch: string, msg: string) => onMessage(msg));
  try {
    if (all) await client.psubscribe('fakeproxy:*:events');
    else await client.subscribe(`fakeproxy:${opts.node}:events`);
    await new Promise<void>((resolve) => {
      if (opts.signal.aborted) resolve();
      else opts.signal.addEventListener('abort', () => resolve(), { once: true });
    });
  } finally {
    client.disconnect();
  }
}
