/**
 * The one description of what fakeproxy keeps in Redis: key names, the rows
 * stored under them and how they are encoded and decoded. The writers (the
 * mirror, src/redis/mirror.ts; the shared pool, src/redis/sharedPool.ts)
 * and the readers (`fakeproxy nat|dns`, src/inspect/) import it, so a key or
 * field is spelled once. docs/redis.md documents the same schema for people.
 *
 * Adding a field to flow rows (as `rule` and `chain` were): add it to
 * MirroredFlow and one line to FLOW_FIELDS; the hash
 * encoding, the JSON events and `nat ls --json` follow. Readers must
 * tolerate fields they do not know and rows that lack new ones (decodeFlow
 * fills the zero value), so mixed versions of a fleet keep working.
 */
import type { Command } from 'ioredis';
import { UsageError } from '../errors.js';
import type { CloseReason, FlowEntry } from '../nat/types.js';
import type { RespWriter } from './resp.js';

/** Every key starts with this. */
export const KEY_ROOT = 'fakeproxy';

/**
 * The name each of the daemon's Redis connections gives itself (CLIENT SETNAME), so an operator's
 * CLIENT LIST tells them apart: `fakeproxy:<node>:mirror`, `fakeproxy:pool`, `fakeproxy:pool:events`.
 */
export function clientName(...parts: string[]): string {
  return [KEY_ROOT, ...parts].join(':');
}

// ---- per-node keys (the mirror) ----

/** Suffixes of a node's keys, after `fakeproxy:{<node>}:`. */
export const NODE_KEY = {
  /** sorted set: members `<proto>:<id>`, score = last seen (ms since epoch) */
  flows: 'flows',
  /** hash per live flow: `flow:<proto>:<id>` */
  flow: 'flow',
  /** hash name → fake IP */
  dnsName: 'dns:name',
  /** hash fake IP → name */
  dnsIp: 'dns:ip',
  /** hash: node, pid, startedMs, heartbeatMs */
  info: 'info',
  /** pub/sub channel of open/close events */
  events: 'events',
} as const;

/** Node ids are key segments: 1-128 of [A-Za-z0-9._-]; "pool" is reserved for the shared pool's keys. */
const NODE_ID = /^[A-Za-z0-9._-]{1,128}$/;
const RESERVED_NODE_ID = 'pool';

/**
 * Node ids become key segments, so they may not contain ':' or glob
 * characters; "pool" is reserved for the shared fake-IP pool's keys.
 */
export function checkNodeId(nodeId: string): string {
  if (!NODE_ID.test(nodeId) || nodeId === RESERVED_NODE_ID) {
    throw new UsageError(`invalid node id "${nodeId}": use 1-128 letters, digits, '.', '_' or '-' (and not "pool")`);
  }
  return nodeId;
}

/**
 * Every key of one node starts with this: `fakeproxy:{<node>}:`. The node id
 * is a hash tag, so all of a node's keys live in one Redis Cluster slot and
 * the mirror's pipelines, multi-key UNLINK/ZREM and MULTI work on a Cluster
 * as on one server (the nodes of a fleet still spread over the slots).
 */
export function nodePrefix(nodeId: string): string {
  return `${KEY_ROOT}:{${nodeId}}:`;
}

export interface NodeKeys {
  prefix: string;
  flows: string;
  dnsName: string;
  dnsIp: string;
  info: string;
  events: string;
  /** SCAN pattern of the node's flow hashes. */
  flowPattern: string;
  /** SCAN pattern of every key of the node. */
  allPattern: string;
}

export function nodeKeys(nodeId: string): NodeKeys {
  const prefix = nodePrefix(checkNodeId(nodeId));
  return {
    prefix,
    flows: `${prefix}${NODE_KEY.flows}`,
    dnsName: `${prefix}${NODE_KEY.dnsName}`,
    dnsIp: `${prefix}${NODE_KEY.dnsIp}`,
    info: `${prefix}${NODE_KEY.info}`,
    events: `${prefix}${NODE_KEY.events}`,
    flowPattern: `${prefix}${NODE_KEY.flow}:*`,
    allPattern: `${prefix}*`,
  };
}

/** Member of the flows index for one flow (also the tail of its hash key). */
export function flowMember(proto: string, id: number): string {
  return `${proto}:${id}`;
}

/** Key of a flow's hash, from its node prefix and index member. */
export function flowKeyOf(keys: Pick<NodeKeys, 'prefix'>, member: string): string {
  return `${keys.prefix}${NODE_KEY.flow}:${member}`;
}

/** SCAN pattern matching `suffix` keys of every node (node discovery). */
export function everyNodePattern(suffix: string): string {
  return `${KEY_ROOT}:*:${suffix}`;
}

/** The node id inside `fakeproxy:{<node>}:<suffix>`, or undefined when the key is not one. */
export function nodeIdOfKey(key: string, suffix: string): string | undefined {
  const head = `${KEY_ROOT}:{`;
  const tail = `}:${suffix}`;
  if (!key.startsWith(head) || !key.endsWith(tail)) return undefined;
  const id = key.slice(head.length, key.length - tail.length);
  return NODE_ID.test(id) && id !== RESERVED_NODE_ID ? id : undefined;
}

// ---- flow rows ----

/** Flow object as stored (hash fields) and published (events JSON); docs/redis.md. */
export interface MirroredFlow {
  id: number;
  proto: string;
  app: string;
  dst: string;
  name: string;
  nat: string;
  outbound: string;
  /** The routing rule that matched, as written (`DOMAIN-SUFFIX,example.com,Proxy`); `""` until routed. */
  rule: string;
  /** Rule target → … → proxy name (`Proxy → auto → hk-1`); `""` until routed. */
  chain: string;
  state: string;
  createdMs: number;
  lastSeenMs: number;
  bytesOut: number;
  bytesIn: number;
  pktsOut: number;
  pktsIn: number;
}

/**
 * Hash fields of a flow row, in the order they are written; `number` fields
 * are decimal strings in Redis and numbers in JSON.
 */
export const FLOW_FIELDS: readonly { readonly name: keyof MirroredFlow; readonly type: 'string' | 'number' }[] = [
  { name: 'id', type: 'number' },
  { name: 'proto', type: 'string' },
  { name: 'app', type: 'string' },
  { name: 'dst', type: 'string' },
  { name: 'name', type: 'string' },
  { name: 'nat', type: 'string' },
  { name: 'outbound', type: 'string' },
  { name: 'rule', type: 'string' },
  { name: 'chain', type: 'string' },
  { name: 'state', type: 'string' },
  { name: 'createdMs', type: 'number' },
  { name: 'lastSeenMs', type: 'number' },
  { name: 'bytesOut', type: 'number' },
  { name: 'bytesIn', type: 'number' },
  { name: 'pktsOut', type: 'number' },
  { name: 'pktsIn', type: 'number' },
];

/** What the Listener adds to the engine's view of a flow. */
export interface FlowAnnotation {
  /** The name the app asked for (`""` if none). */
  name: string;
  /** The outbound serving the flow (`""` until routed). */
  outbound: string;
  /** The rule that chose it and the chain of groups to it (`""` until routed). */
  rule: string;
  chain: string;
}

/** The row of one flow: the engine's entry plus what the Listener told. */
export function flowRow(entry: FlowEntry, ann: FlowAnnotation): MirroredFlow {
  return {
    id: entry.id,
    proto: entry.proto,
    app: `${entry.srcIp}:${entry.srcPort}`,
    dst: `${entry.dstIp}:${entry.dstPort}`,
    name: ann.name,
    nat: `${entry.natIp}:${entry.natPort}`,
    outbound: ann.outbound,
    rule: ann.rule,
    chain: ann.chain,
    state: entry.state,
    createdMs: entry.createdMs,
    lastSeenMs: entry.lastSeenMs,
    bytesOut: entry.bytesOut,
    bytesIn: entry.bytesIn,
    pktsOut: entry.pktsOut,
    pktsIn: entry.pktsIn,
  };
}

/**
 * A row as HSET's flat field/value list. Every field is always written, so an
 * overwrite leaves nothing stale. The reference form: the mirror sends the
 * same bytes through hsetFlow (test/unit/redis/resp.test.ts holds them equal).
 */
export function encodeFlow(row: MirroredFlow): string[] {
  const out = new Array<string>(FLOW_FIELDS.length * 2);
  let i = 0;
  for (const f of FLOW_FIELDS) {
    out[i++] = f.name;
    out[i++] = String(row[f.name]);
  }
  return out;
}

/** HSET key …row's fields as one encoded command: encodeFlow's fields, written without a string per field. */
export function hsetFlow(w: RespWriter, key: string, row: MirroredFlow): Command {
  w.begin('hset', key, 2 + FLOW_FIELDS.length * 2).str(key);
  for (const f of FLOW_FIELDS) {
    const v = row[f.name];
    w.str(f.name);
    if (typeof v === 'number') w.num(v);
    else w.str(v);
  }
  return w.end();
}

/** A flow hash as read back (HGETALL); undefined for a hash that is gone or not a flow. */
export function decodeFlow(h: Record<string, string>): MirroredFlow | undefined {
  if (h.id === undefined || h.proto === undefined) return undefined;
  const row: Record<string, string | number> = {};
  for (const f of FLOW_FIELDS) row[f.name] = f.type === 'number' ? Number(h[f.name] ?? 0) : (h[f.name] ?? '');
  return row as unknown as MirroredFlow;
}

// ---- events ----

/** One message on a node's events channel; `v` changes only if a field changes meaning (fields are only added). */
export interface FlowEventMessage {
  v: 1;
  type: 'open' | 'close';
  node: string;
  ts: number;
  reason?: CloseReason;
  flow: MirroredFlow;
}

export function encodeEvent(ev: FlowEventMessage): string {
  return JSON.stringify(ev);
}

/** A published message, or undefined when it is not one of ours. */
export function decodeEvent(raw: string): FlowEventMessage | undefined {
  try {
    const ev = JSON.parse(raw) as Partial<FlowEventMessage>;
    if ((ev.type === 'open' || ev.type === 'close') && typeof ev.flow === 'object' && ev.flow !== null) {
      return ev as FlowEventMessage;
    }
  } catch {
    /* not JSON */
  }
  return undefined;
}

/** The fields of a node's info hash (liveness for operators). */
export function encodeNodeInfo(info: { node: string; pid: number; startedMs: number; heartbeatMs: number }) {
  return {
    node: info.node,
    pid: String(info.pid),
    startedMs: String(info.startedMs),
    heartbeatMs: String(info.heartbeatMs),
  };
}

// ---- the shared fake-IP pool ----

export interface PoolKeys {
  /** hash name → ip */
  n2i: string;
  /** hash ip → name */
  i2n: string;
  /** sorted set: ip, score = logical clock of its last use */
  lru: string;
  /** string: addresses handed out for the first time so far */
  cursor: string;
  /** string: logical clock (INCR; daemons' wall clocks may differ) */
  clock: string;
  /** channel: JSON {name, ip, by} when an address changes owner */
  recycled: string;
}

/**
 * Keys of the pool shared by every daemon with this (normalised) CIDR. The
 * CIDR is a hash tag: every key one script touches lives in one Cluster slot.
 */
export function poolKeys(cidr: string): PoolKeys {
  const base = `${KEY_ROOT}:${RESERVED_NODE_ID}:{${cidr}}:`;
  return {
    n2i: `${base}n2i`,
    i2n: `${base}i2n`,
    lru: `${base}lru`,
    cursor: `${base}cursor`,
    clock: `${base}clock`,
    recycled: `${base}recycled`,
  };
}

/** A recycling message: the address `ip` was taken from `name` by daemon `by`. */
export interface RecycledMessage {
  name: string;
  ip: string;
  by: string;
}

export function decodeRecycled(raw: string): RecycledMessage | undefined {
  try {
    const m = JSON.parse(raw) as Partial<RecycledMessage>;
    if (typeof m.name === 'string' && typeof m.ip === 'string') return { name: m.name, ip: m.ip, by: String(m.by) };
  } catch {
    /* not ours */
  }
  return undefined;
}
