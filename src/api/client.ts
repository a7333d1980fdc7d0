/**
 * `fakeproxy connections [ls|close ID]`: the same controller API the
 * dashboards use, so the CLI shows exactly what they show.
 */
import { FakeproxyError } from '../errors.js';
import type { ConnectionJson, Snapshot } from './connections.js';

export interface ApiClientOptions {
  /** ADDR:PORT of the controller. */
  controller: string;
  secret?: string | undefined;
  timeoutMs?: number;
}

async function request(o: ApiClientOptions, method: string, path: string): Promise<{ status: number; body: unknown }> {
  const url = `http://${o.controller}${path}`;
  let r: Response;
  try {
    r = await fetch(url, {
      method,
      headers: o.secret ? { Authorization: `Bearer ${o.secret}` } : {},
      signal: AbortSignal.timeout(o.timeoutMs ?? 5000),
    });
  } catch (e) {
    const cause = (e as { cause?: { code?: string } }).cause?.code ?? (e as Error).name;
    throw new FakeproxyError(
      'ENOTRUNNING',
      `no controller answers at ${o.controller} (${cause}): is the daemon running with --controller ${o.controller}? (--controller ADDR:PORT)`,
    );
  }
  const text = await r.text();
  let body: unknown;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch {
    throw new FakeproxyError(
      'EPROTO',
      `the controller at ${o.controller} answered ${r.status} with something not JSON`,
    );
  }
  if (r.status === 401) {
    throw new FakeproxyError('EAUTH', `the controller at ${o.controller} wants its secret: --secret TOKEN`);
  }
  if (r.status >= 400) {
    const m = (body as { message?: string } | undefined)?.message ?? `HTTP ${r.status}`;
    throw new FakeproxyError('EAPI', `controller: ${m}`);
  }
  return { status: r.status, body };
}

export async function listConnections(o: ApiClientOptions): Promise<Snapshot> {
  return (await request(o, 'GET', '/connections')).body as Snapshot;
}

/** Reset one connection; throws when no live connection has that id. */
export async function closeConnection(o: ApiClientOptions, id: string): Promise<void> {
  const snap = await listConnections(o);
  if (!snap.connections.some((c) => c.id === id)) {
    throw new FakeproxyError('ENOENT', `no live connection ${id} (fakeproxy connections ls lists them)`);
  }
  await request(o, 'DELETE', `/connections/${encodeURIComponent(id)}`);
}

const size = (n: number) =>
  n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1048576).toFixed(1)} MiB`;

/** One line per connection for people; `--json` prints the snapshot instead. */
export function formatConnections(s: Snapshot, nowMs = Date.now()): string {
  const rows = s.connections.map((c: ConnectionJson) => {
    const m = c.metadata as { host?: string; destinationIP?: string; destinationPort?: string; network?: string };
    const dst = `${m.host || m.destinationIP}:${m.destinationPort}`;
    const age = Math.max(0, Math.round((nowMs - Date.parse(c.start)) / 1000));
    const rule = c.rulePayload ? `${c.rule}(${c.rulePayload})` : c.rule;
    return `${c.id}  ${m.network} ${dst}  ${rule}  ${[...c.chains].reverse().join(' → ')}  ↑${size(c.upload)} ↓${size(c.download)}  ${age}s`;
  });
  return `${[`${s.connections.length} connection(s), total ↑${size(s.uploadTotal)} ↓${size(s.downloadTotal)}`, ...rows].join('\n')}\n`;
}
