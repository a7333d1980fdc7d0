/**
 * A mirror flush as one Redis command: EVAL of a fixed Lua script that
 * replays, inside Redis, the commands the mirror would otherwise pipeline
 * one by one (queueBatch in ./mirror.ts): UNLINK and ZREM of the closed
 * flows, HSET (and the first PEXPIRE) of each written flow, one ZADD of
 * their index entries, HSET/HDEL of the fake-IP map and its two PEXPIREs,
 * and a PUBLISH per event, in that order.
 *
 * Why: per flow the mirror sends about four commands (its row, its TTL, an
 * open and a close event), and each is an ioredis Command with its promise,
 * its parsed reply and its slot in the pipeline's result array: under
 * `bench redis` that was a quarter of the daemon's allocation, and garbage
 * is what the mirror costs on this VM kind (each scavenge costs
 * milliseconds). As one command per flush, ioredis holds one object per
 * flush whatever the batch's size.
 *
 * The keys, fields, values and events are exactly the per-command path's
 * (./schema.ts): the script has no schema of its own. Field names arrive in
 * ARGV (FLOW_FIELDS stays the one list of them) and every key is declared
 * in KEYS: they share the node's hash tag, so a Cluster runs the script on
 * the one shard that holds them.
 *
 * Each command runs with redis.pcall: one that fails (a wrong type, a bad
 * score) does not stop the others, as in a pipeline; the script returns how
 * many failed. A big batch (a poll that changed thousands of rows) goes as
 * several EVALs of at most MAX_EVAL_ARGS arguments, cut along the command
 * order, so no single script holds Redis for long.
 *
 * A server that refuses scripts (an ACL user without +eval, EVAL renamed
 * away) answers before running anything; the mirror then writes that batch,
 * and every later one, command by command (./mirror.ts).
 */
import type { Command } from 'ioredis';
import { errorText } from '../util/errorText.js';
import type { RespWriter } from './resp.js';
import { FLOW_FIELDS, type NodeKeys } from './schema.js';
import type { Batch } from './view.js';

/**
 * KEYS: flows index, dns name map, dns ip map, then the deleted flows' keys,
 * then the written flows' keys. ARGV: ttl ms, then the counts (deleted keys,
 * deleted members, writes, fields, names, ips, events), the events channel,
 * then the deleted members, the field names, per write (ttl flag, score,
 * member, one value per field), per name (set flag, name, ip), per ip (set
 * flag, ip, name), the events. Big lists go to Redis in chunks: Lua's
 * unpack() has a stack limit of a few thousand values.
 */
export const MIRROR_BATCH_SCRIPT = `
local ttl = ARGV[1]
local nk, nm, nw, nf = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local nn, ni, ne = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local channel = ARGV[9]
local a, k = 10, 4
local CHUNK = 512
local failed = 0
local function run(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then failed = failed + 1 end
end
local function chunked(cmd, key, t, first, last)
  local i = first
  while i <= last do
    local j = math.min(i + CHUNK - 1, last)
    if key then run(cmd, key, unpack(t, i, j)) else run(cmd, unpack(t, i, j)) end
    i = j + 1
  end
end
if nk > 0 then chunked('UNLINK', nil, KEYS, k, k + nk - 1) end
if nm > 0 then chunked('ZREM', KEYS[1], ARGV, a, a + nm - 1) end
k = k + nk
a = a + nm
local fields = {}
for f = 1, nf do fields[f] = ARGV[a + f - 1] end
a = a + nf
local row, z = {}, {}
for w = 1, nw do
  local key = KEYS[k]
  for f = 1, nf do
    row[2 * f - 1] = fields[f]
    row[2 * f] = ARGV[a + 2 + f]
  end
  run('HSET', key, unpack(row, 1, 2 * nf))
  if ARGV[a] == '1' then run('PEXPIRE', key, ttl) end
  z[#z + 1] = ARGV[a + 1]
  z[#z + 1] = ARGV[a + 2]
  k = k + 1
  a = a + 3 + nf
end
if nw > 0 then chunked('ZADD', KEYS[1], z, 1, #z) end
for i = 1, nn do
  if ARGV[a] == '1' then run('HSET', KEYS[2], ARGV[a + 1], ARGV[a + 2]) else run('HDEL', KEYS[2], ARGV[a + 1]) end
  a = a + 3
end
for i = 1, ni do
  if ARGV[a] == '1' then run('HSET', KEYS[3], ARGV[a + 1], ARGV[a + 2]) else run('HDEL', KEYS[3], ARGV[a + 1]) end
  a = a + 3
end
if nn + ni > 0 then
  run('PEXPIRE', KEYS[2], ttl)
  run('PEXPIRE', KEYS[3], ttl)
end
for i = 1, ne do
  run('PUBLISH', channel, ARGV[a])
  a = a + 1
end
return failed
`;

/**
 * Most arguments in one EVAL (~1 000 flow rows): Redis runs a script to its
 * end before it serves anyone else.
 */
export const MAX_EVAL_ARGS = 20_000;

/** The commands a batch stands for, as the per-command path sends them (the mirror's `written`/`dropped` count these). */
export function batchCommands(b: Batch): number {
  let n = b.deleteKeys.length > 0 ? 2 : 0;
  for (const w of b.writes) n += w.withTtl ? 2 : 1;
  if (b.writes.length > 0) n++;
  n += b.names.length + b.ips.length;
  if (b.names.length + b.ips.length > 0) n += 2;
  return n + b.events.length;
}

/**
 * What each part of a batch adds to its EVAL's argument count (evalArgs):
 * a deleted flow its key and index member; a write its key, ttl flag,
 * score, member and one value per field; a name or ip entry its flag and
 * two strings; an event itself.
 */
const ARGS_PER = { delete: 2, write: 4 + FLOW_FIELDS.length, mapEntry: 3, event: 1 } as const;

/** EVAL, the script, numkeys, the three fixed keys, ttl, seven counts, the channel and the field names. */
const ARGS_FIXED = 3 + 3 + 9 + FLOW_FIELDS.length;

/** The arguments of the batch's EVAL (evalBatch), the command's name included: what splitBatch bounds. */
export function evalArgs(b: Batch): number {
  return (
    ARGS_FIXED +
    b.deleteKeys.length +
    b.deleteMembers.length +
    ARGS_PER.write * b.writes.length +
    ARGS_PER.mapEntry * (b.names.length + b.ips.length) +
    ARGS_PER.event * b.events.length
  );
}

/**
 * The batch cut into parts whose EVALs have at most maxArgs arguments each,
 * along its command order (deletes, writes, names, ips, events): sent in
 * order, the parts run the same commands in the same order as the whole.
 */
export function splitBatch(b: Batch, maxArgs = MAX_EVAL_ARGS): Batch[] {
  if (evalArgs(b) <= maxArgs) return [b];
  const parts: Batch[] = [];
  let part: Batch | undefined;
  let used = 0;
  const room = (cost: number): Batch => {
    if (!part || used + cost > maxArgs) {
      part = { deleteKeys: [], deleteMembers: [], writes: [], names: [], ips: [], events: [] };
      parts.push(part);
      used = ARGS_FIXED;
    }
    used += cost;
    return part;
  };
  b.deleteKeys.forEach((k, i) => {
    const p = room(ARGS_PER.delete);
    p.deleteKeys.push(k);
    p.deleteMembers.push(b.deleteMembers[i] as string);
  });
  for (const w of b.writes) room(ARGS_PER.write).writes.push(w);
  for (const n of b.names) room(ARGS_PER.mapEntry).names.push(n);
  for (const ip of b.ips) room(ARGS_PER.mapEntry).ips.push(ip);
  for (const ev of b.events) room(ARGS_PER.event).events.push(ev);
  return parts;
}

/** The batch as one EVAL of MIRROR_BATCH_SCRIPT (cut big ones with splitBatch first); its reply is the number of commands that failed. */
export function evalBatch(r: RespWriter, keys: NodeKeys, ttlMs: number, b: Batch): Command {
  const nf = FLOW_FIELDS.length;
  const nkeys = 3 + b.deleteKeys.length + b.writes.length;
  r.begin('eval', keys.flows, evalArgs(b))
    .str(MIRROR_BATCH_SCRIPT)
    .num(nkeys)
    .str(keys.flows)
    .str(keys.dnsName)
    .str(keys.dnsIp);
  for (const k of b.deleteKeys) r.str(k);
  for (const w of b.writes) r.str(w.key);
  r.num(ttlMs)
    .num(b.deleteKeys.length)
    .num(b.deleteMembers.length)
    .num(b.writes.length)
    .num(nf)
    .num(b.names.length)
    .num(b.ips.length)
    .num(b.events.length)
    .str(keys.events);
  for (const m of b.deleteMembers) r.str(m);
  for (const f of FLOW_FIELDS) r.str(f.name);
  for (const w of b.writes) {
    r.str(w.withTtl ? '1' : '0')
      .num(w.score)
      .str(w.member);
    for (const f of FLOW_FIELDS) {
      const v = w.row[f.name];
      if (typeof v === 'number') r.num(v);
      else r.str(v);
    }
  }
  for (const [name, ip] of b.names)
    r.str(ip === undefined ? '0' : '1')
      .str(name)
      .str(ip ?? '');
  for (const [ip, name] of b.ips)
    r.str(name === undefined ? '0' : '1')
      .str(ip)
      .str(name ?? '');
  for (const ev of b.events) r.str(ev);
  return r.end();
}

/**
 * Whether an EVAL's error says the server will not run scripts for us at all
 * (nothing of the batch was applied), as opposed to an error while running
 * one (a wrong type, out of memory, a lost connection).
 */
export function refusesScripts(err: unknown): boolean {
  const msg = errorText(err);
  return /^NOPERM\b.*[`'"]eval[`'"] command/i.test(msg) || /^ERR unknown command [`'"]eval[`'"]/i.test(msg);
}
