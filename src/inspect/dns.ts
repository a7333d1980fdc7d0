/** `fakeproxy dns ls` and `fakeproxy dns lookup`: the fake-IP map mirrored by src/redis/mirror.ts. */
import { FakeproxyError } from '../errors.js';
import { NODE_KEY, nodeKeys } from '../redis/schema.js';
import { type InspectOptions, resolveNodes, withRedis } from './common.js';
import { renderTable } from './format.js';

export interface DnsRow {
  node: string;
  name: string;
  ip: string;
}

function ipKey(ip: string): number {
  const p = ip.split('.').map(Number);
  return p.length === 4 ? ((p[0] << 24) >>> 0) + (p[1] << 16) + (p[2] << 8) + p[3] : Number.MAX_SAFE_INTEGER;
}

function sortRows(rows: DnsRow[]): DnsRow[] {
  return rows.sort((a, b) => a.node.localeCompare(b.node) || ipKey(a.ip) - ipKey(b.ip) || a.name.localeCompare(b.name));
}

function printRows(rows: DnsRow[], opts: InspectOptions): void {
  const columns = [
    { header: 'NAME', get: (r: DnsRow) => r.name },
    { header: 'IP', get: (r: DnsRow) => r.ip },
  ];
  if (opts.node === undefined) columns.unshift({ header: 'NODE', get: (r: DnsRow) => r.node });
  opts.out.write(renderTable(rows, columns));
}

/** Print the fake-IP map, ordered by address: a table, or `{"names":[{node,name,ip}…]}`. */
export async function dnsLs(opts: InspectOptions): Promise<DnsRow[]> {
  const rows = await withRedis(opts, async (client) => {
    const out: DnsRow[] = [];
    for (const node of await resolveNodes(client, opts.node, [NODE_KEY.dnsName])) {
      const map = await client.hgetall(nodeKeys(node).dnsName);
      for (const [name, ip] of Object.entries(map)) out.push({ node, name, ip });
    }
    return sortRows(out);
  });
  if (opts.json) opts.out.write(`${JSON.stringify({ names: rows })}\n`);
  else if (rows.length === 0) opts.out.write('no fake-IP mappings\n');
  else printRows(rows, opts);
  return rows;
}

export interface DnsLookupOptions extends InspectOptions {
  /** A name (example.com) or a fake IP (198.18.2.2). */
  query: string;
}

/**
 * Look a name or fake IP up in the map: prints the matches
 * (`{"query":…,"results":[…]}` in JSON); no match → FakeproxyError ENOTFOUND (exit 1).
 */
export async function dnsLookup(opts: DnsLookupOptions): Promise<DnsRow[]> {
  const isIp = /^\d{1,3}(\.\d{1,3}){3}$/.test(opts.query);
  const query = isIp ? opts.query : opts.query.toLowerCase().replace(/\.$/, '');
  const rows = await withRedis(opts, async (client) => {
    const out: DnsRow[] = [];
    for (const node of await resolveNodes(client, opts.node, [NODE_KEY.dnsName, NODE_KEY.dnsIp])) {
      const keys = nodeKeys(node);
      const v = await client.hget(isIp ? keys.dnsIp : keys.dnsName, query);
      if (v !== null) out.push(isIp ? { node, name: v, ip: query } : { node, name: query, ip: v });
    }
    return sortRows(out);
  });
  if (rows.length === 0) {
    const where = opts.node === undefined ? 'any node' : `node ${opts.node}`;
    throw new FakeproxyError('ENOTFOUND', `no fake-IP mapping for ${opts.query} on ${where}`);
  }
  if (opts.json) opts.out.write(`${JSON.stringify({ query, results: rows })}\n`);
  else printRows(rows, opts);
  return rows;
}
