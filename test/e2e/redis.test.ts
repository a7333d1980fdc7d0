/**
 * Redis view end to end (issue 7, docs/redis.md): a real redis-server started
 * inside the test namespaces, the daemon mirroring into it, and what an
 * operator sees through redis-cli and `fakeproxy nat|dns`.
 */
import type { ChildProcess } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, DaemonProc, runCli } from './harness/daemon.js';
import { e2eUnavailableReason, type Netns } from './harness/netns.js';
import { killRedis, output, rcli, startRedis, until } from './harness/redis.js';
import {
  addClient,
  createTopology,
  ECHO_PORT,
  HTTP_PORT,
  inRange,
  startDaemonIn,
  type Topology,
  tmpFile,
} from './harness/topology.js';

const skip = e2eUnavailableReason();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface FlowHash {
  key: string;
  name: string;
  app: string;
  dst: string;
  outbound: string;
  state: string;
  bytesOut: number;
  bytesIn: number;
}

const FIELDS = ['name', 'app', 'dst', 'outbound', 'state', 'bytesOut', 'bytesIn'] as const;

/** Every flow hash of `node` as redis-cli sees it (SCAN + HMGET). Keys that vanish between the two are skipped. */
async function flowHashes(ns: Netns, port: number, node: string, host?: string): Promise<FlowHash[]> {
  const keys = (await rcli(ns, port, ['--scan', '--pattern', `fakeproxy:{${node}}:flow:*`], { host }))
    .split('\n')
    .filter(Boolean);
  if (keys.length === 0) return [];
  const input = keys.map((k) => `HMGET ${k} ${FIELDS.join(' ')}\n`).join('');
  const lines = (await rcli(ns, port, [], { host, input })).split('\n');
  const out: FlowHash[] = [];
  keys.forEach((key, i) => {
    const v = lines.slice(i * FIELDS.length, (i + 1) * FIELDS.length);
    if (v[0] === '' && v[1] === '') return; // deleted meanwhile
    out.push({
      key,
      name: v[0],
      app: v[1],
      dst: v[2],
      outbound: v[3],
      state: v[4],
      bytesOut: Number(v[5]),
      bytesIn: Number(v[6]),
    });
  });
  return out;
}

/**
 * A node script run inside the client namespace: opens N TCP connections to
 * host:port (resolved by the system resolver, i.e. the daemon), writes 4 KiB
 * on each every 200 ms, prints `apps [...]` (local addr:port of each) once
 * all are connected; on a `close` line on stdin ends them all and prints
 * `closed` once every one is closed (the echo server FINs back).
 */
const ECHO_CLIENT = `
const net = require('node:net');
const [n, host, port] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4])];
const chunk = Buffer.alloc(4096, 120);
const socks = [];
let connected = 0, closed = 0;
for (let i = 0; i < n; i++) {
  const s = net.connect({ host, port, family: 4 });
  s.on('error', (e) => console.log('error ' + e.message));
  s.on('data', () => {});
  s.once('connect', () => {
    if (++connected === n) console.log('apps ' + JSON.stringify(socks.map((x) => x.localAddress + ':' + x.localPort)));
  });
  s.once('close', () => {
    if (++closed === n) { console.log('closed'); process.exit(0); }
  });
  socks.push(s);
}
const timer = setInterval(() => { for (const s of socks) if (!s.pending && s.writable) s.write(chunk); }, 200);
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d) => {
  if (!d.includes('close')) return;
  clearInterval(timer);
  for (const s of socks) s.end();
});
`;

interface EchoClients {
  apps: string[];
  close(): Promise<void>;
}

async function openEchoClients(t: Topology, ns: Netns, n: number): Promise<EchoClients> {
  const script = tmpFile(t, 'echo-client.js', ECHO_CLIENT);
  const child = ns.spawn('node', [script, String(n), 'echo.test', String(ECHO_PORT)]);
  const out = output(child);
  const m = await out.wait(/^apps (\[.*\])$/m, 20_000);
  const apps = JSON.parse(m[1]) as string[];
  expect(apps).toHaveLength(n);
  expect(out.text()).not.toMatch(/^error /m);
  return {
    apps,
    async close() {
      child.stdin?.write('close\n');
      await out.wait(/^closed$/m, 20_000);
    },
  };
}

describe.skipIf(skip)('Redis mirror of the NAT table and fake-IP map (redis-server in the client namespace)', () => {
  let t: Topology;
  let redis: ChildProcess;
  let daemon: DaemonProc;
  const PORT = 6390;
  const URL = `redis://127.0.0.1:${PORT}`;
  const echoFlows = (hs: FlowHash[], apps: string[]) => hs.filter((h) => apps.includes(h.app));
  /** Polls the flow hashes of the echo clients `apps` until `ok` holds for them; returns them (throws with the last read). */
  const untilEchoFlows = async (
    what: string,
    apps: string[],
    ok: (hs: FlowHash[]) => boolean | Promise<boolean>,
    timeoutMs = 10_000,
  ): Promise<FlowHash[]> => {
    let last: FlowHash[] = [];
    return until(
      what,
      async () => {
        last = echoFlows(await flowHashes(t.client, PORT, 'gw1'), apps);
        return (await ok(last)) ? last : undefined;
      },
      timeoutMs,
      () => last,
    );
  };

  beforeAll(async () => {
    t = await createTopology();
    redis = await startRedis(t.client, t, PORT);
    daemon = await t.startDaemon(['--upstream', 'direct', '--redis', URL, '--node-id', 'gw1']);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('20 live connections: 20 flow hashes with the name and growing bytes; nat ls shows them; gone after close + linger', async () => {
    const c = await openEchoClients(t, t.client, 20);
    const first = await untilEchoFlows(
      '20 echo flow hashes with outbound and bytes',
      c.apps,
      (last) => last.length === 20 && last.every((h) => h.outbound !== '' && h.bytesOut > 0),
    );
    // One hash per connection, keyed fakeproxy:{gw1}:flow:tcp:<id>.
    expect(new Set(first.map((h) => h.app))).toEqual(new Set(c.apps));
    for (const h of first) {
      expect(h.key).toMatch(/^fakeproxy:\{gw1\}:flow:tcp:\d+$/);
      expect(h.name).toBe('echo.test');
      expect(h.dst).toMatch(new RegExp(`^198\\.18\\.\\d+\\.\\d+:${ECHO_PORT}$`));
      expect(h.outbound).toBe('direct');
    }
    // The index holds the same 20 members.
    const members = (await rcli(t.client, PORT, ['ZRANGE', 'fakeproxy:{gw1}:flows', '0', '-1']))
      .split('\n')
      .filter(Boolean);
    for (const h of first) expect(members).toContain(h.key.slice('fakeproxy:{gw1}:flow:'.length));

    // Byte counters keep growing while the clients write (refreshed at least every second).
    const before = new Map(first.map((h) => [h.key, h]));
    await untilEchoFlows('every flow hash to show more bytes both ways than the first read', c.apps, (last) => {
      const grown = last.filter((h) => {
        const b = before.get(h.key);
        return b !== undefined && h.bytesOut > b.bytesOut && h.bytesIn > b.bytesIn;
      });
      return grown.length === 20;
    });

    // fakeproxy nat ls: a table with 20 rows naming echo.test:9000.
    const ls = await runCli(t.client, ['nat', 'ls', '--redis', URL]);
    expect(ls.code).toBe(0);
    const lines = ls.stdout.trimEnd().split('\n');
    expect(lines[0]).toMatch(
      /^NODE\s+PROTO\s+APP\s+DESTINATION\s+NAT\s+OUTBOUND\s+STATE\s+AGE\s+UP\s+DOWN\s+RULE\s+CHAIN$/,
    );
    const rows = lines.filter((l) => l.includes(`echo.test:${ECHO_PORT}`));
    expect(rows).toHaveLength(20);
    for (const app of c.apps) expect(rows.filter((r) => r.split(/\s+/).includes(app))).toHaveLength(1);
    for (const r of rows)
      expect(r).toMatch(
        /^gw1\s+tcp\s+\S+\s+echo\.test:9000\s+\S+\s+direct\s+established\s+\S+\s+[\d.]+ [KMG]?i?B\s+[\d.]+ [KMG]?i?B\s+MATCH \(final\),\S+\s+\S+$/,
      );

    // --json parses and carries the same 20 flows with numbers.
    const js = await runCli(t.client, ['nat', 'ls', '--redis', URL, '--node', 'gw1', '--json']);
    expect(js.code).toBe(0);
    const flows = (JSON.parse(js.stdout) as { flows: Record<string, unknown>[] }).flows.filter((f) =>
      c.apps.includes(f.app as string),
    );
    expect(flows).toHaveLength(20);
    for (const f of flows) {
      expect(f).toMatchObject({ node: 'gw1', proto: 'tcp', name: 'echo.test', outbound: 'direct' });
      // The routing decision as fields (no --config: the final target).
      expect(f.rule).toMatch(/^MATCH \(final\),\S+$/);
      expect(f.chain).toMatch(/^\S+$/);
      expect(typeof f.bytesOut).toBe('number');
      expect(f.bytesOut as number).toBeGreaterThan(0);
      expect(f.bytesIn as number).toBeGreaterThan(0);
    }

    // Close them: after the engine's closed-state linger, hashes and index members are gone.
    await c.close();
    await untilEchoFlows('the 20 echo flow hashes to disappear', c.apps, (last) => last.length === 0, 30_000);
    const after = (await rcli(t.client, PORT, ['ZRANGE', 'fakeproxy:{gw1}:flows', '0', '-1']))
      .split('\n')
      .filter(Boolean);
    for (const h of first) expect(after).not.toContain(h.key.slice('fakeproxy:{gw1}:flow:'.length));
    const ls2 = await runCli(t.client, ['nat', 'ls', '--redis', URL]);
    expect(ls2.code).toBe(0);
    expect(ls2.stdout).not.toContain('echo.test');
  });

  it('nat watch prints an open and a close event for a connection', async () => {
    const watch = t.client.spawn('node', [CLI, 'nat', 'watch', '--redis', URL, '--json']);
    const out = output(watch);
    try {
      // Subscribed once Redis counts its pattern subscription.
      await until(
        'nat watch to subscribe',
        async () => (Number((await rcli(t.client, PORT, ['PUBSUB', 'NUMPAT'])).trim()) >= 1 ? true : undefined),
        // A node process starting and connecting: seconds when CI's two cores are saturated.
        30_000,
      );
      const r = await t.client.exec('curl', [
        '-sS',
        '--max-time',
        '10',
        '-w',
        '\\n%{local_ip}:%{local_port}',
        `http://origin.test:${HTTP_PORT}/hello`,
      ]);
      expect(r.code).toBe(0);
      const lines = r.stdout.split('\n');
      expect(lines[0]).toBe(`hello from origin origin.test:${HTTP_PORT}`);
      const app = lines[lines.length - 1];
      expect(app).toMatch(/^198\.18\.0\.1:\d+$/);
      type Ev = { v: number; type: string; node: string; reason?: string; flow: Record<string, unknown> };
      const events = () =>
        out
          .text()
          .split('\n')
          .filter((l) => l.startsWith('{'))
          .map((l) => JSON.parse(l) as Ev)
          .filter((e) => e.flow.app === app);
      const [open, close] = await until(
        'an open and a close event for the curl connection',
        async () => {
          const evs = events();
          const o = evs.find((e) => e.type === 'open');
          const c = evs.find((e) => e.type === 'close');
          return o && c ? [o, c] : undefined;
        },
        30_000,
        () => out.text().slice(-2000),
      );
      expect(open).toMatchObject({ v: 1, node: 'gw1', flow: { proto: 'tcp', name: 'origin.test' } });
      expect(open.flow.dst).toMatch(new RegExp(`^198\\.18\\.\\d+\\.\\d+:${HTTP_PORT}$`));
      expect(close).toMatchObject({
        v: 1,
        node: 'gw1',
        flow: { id: open.flow.id, proto: 'tcp', name: 'origin.test', outbound: 'direct' },
      });
      expect(['fin', 'rst']).toContain(close.reason);
      expect(close.flow.bytesIn as number).toBeGreaterThan(0);
      expect(events().filter((e) => e.type === 'open')).toHaveLength(1);
    } finally {
      watch.kill('SIGTERM');
    }
  });

  it('Redis killed mid-run: proxying goes on; restarted empty, the mirror is complete again with no stale rows', async () => {
    const stay = await openEchoClients(t, t.client, 5);
    const leave = await openEchoClients(t, t.client, 5);
    const before = (
      await t.client.exec('dig', ['+short', '+time=2', '+tries=1', '@198.18.0.1', 'before.outage.test'])
    ).stdout.trim();
    expect(inRange(before)).toBe(true);
    await untilEchoFlows('the 10 echo flows in Redis', [...stay.apps, ...leave.apps], (last) => last.length === 10);

    await killRedis(redis);
    await daemon.waitFor(/redis mirror: lost connection to redis:\/\/127\.0\.0\.1:6390/, 10_000);

    // Proxying does not notice: several requests through the TUN succeed.
    for (let i = 0; i < 5; i++) {
      const r = await t.client.exec('curl', ['-sS', '--max-time', '10', `http://origin.test:${HTTP_PORT}/hello`]);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`hello from origin origin.test:${HTTP_PORT}\n`);
    }
    const during = (
      await t.client.exec('dig', ['+short', '+time=2', '+tries=1', '@198.18.0.1', 'during.outage.test'])
    ).stdout.trim();
    expect(inRange(during)).toBe(true);
    // Half of the mirrored flows close during the outage; wait out the engine's
    // 10 s closed-state linger so they (and the curls) are gone from the NAT table.
    await leave.close();
    await sleep(13_000);
    expect(daemon.child.exitCode).toBeNull();

    redis = await startRedis(t.client, t, PORT);
    const dnsMap = async () => ({
      before: (await rcli(t.client, PORT, ['HGET', 'fakeproxy:{gw1}:dns:name', 'before.outage.test'])).trim(),
      during: (await rcli(t.client, PORT, ['HGET', 'fakeproxy:{gw1}:dns:name', 'during.outage.test'])).trim(),
      reverse: (await rcli(t.client, PORT, ['HGET', 'fakeproxy:{gw1}:dns:ip', during])).trim(),
    });
    await untilEchoFlows('the live flows and the DNS map back in the restarted Redis', stay.apps, async (last) => {
      const m = await dnsMap();
      return last.length === 5 && m.before === before && m.during === during && m.reverse === 'during.outage.test';
    });
    // Complete and nothing else: the live echo flows, with their names; no row
    // for a flow that closed during the outage (the 5 that left, the curls).
    const all = await flowHashes(t.client, PORT, 'gw1');
    expect(all.map((h) => h.app).sort()).toEqual([...stay.apps].sort());
    for (const h of all) expect(h).toMatchObject({ name: 'echo.test', outbound: 'direct', state: 'established' });
    const members = (await rcli(t.client, PORT, ['ZRANGE', 'fakeproxy:{gw1}:flows', '0', '-1']))
      .split('\n')
      .filter(Boolean);
    expect(members.sort()).toEqual(all.map((h) => h.key.slice('fakeproxy:{gw1}:flow:'.length)).sort());
    // dns lookup through the CLI agrees.
    const lk = await runCli(t.client, ['dns', 'lookup', 'during.outage.test', '--redis', URL, '--json']);
    expect(lk.code).toBe(0);
    expect(JSON.parse(lk.stdout)).toMatchObject({ results: [{ node: 'gw1', name: 'during.outage.test', ip: during }] });
    await stay.close();
  });

  it('Redis restarted with its old data (SAVE before the kill): the resync deletes the rows of flows that closed meanwhile', async () => {
    const stay = await openEchoClients(t, t.client, 2);
    const leave = await openEchoClients(t, t.client, 3);
    await untilEchoFlows('the 5 echo flows in Redis', [...stay.apps, ...leave.apps], (last) => last.length === 5);
    // Snapshot (dump.rdb in t.tmp, loaded by the next start): the 3 that will leave are in it.
    expect((await rcli(t.client, PORT, ['SAVE'])).trim()).toBe('OK');
    await killRedis(redis);
    await leave.close();
    await sleep(13_000); // past the engine's 10 s closed-state linger
    redis = await startRedis(t.client, t, PORT);
    await untilEchoFlows(
      'exactly the 2 live echo flows in the restarted Redis',
      [...stay.apps, ...leave.apps],
      (last) => last.length === 2 && last.every((h) => stay.apps.includes(h.app)),
    );
    const all = await flowHashes(t.client, PORT, 'gw1');
    expect(all.map((h) => h.app).sort()).toEqual([...stay.apps].sort());
    const members = (await rcli(t.client, PORT, ['ZRANGE', 'fakeproxy:{gw1}:flows', '0', '-1']))
      .split('\n')
      .filter(Boolean);
    expect(members.sort()).toEqual(all.map((h) => h.key.slice('fakeproxy:{gw1}:flow:'.length)).sort());
    await stay.close();
  });
});

describe.skipIf(skip)('shared fake-IP pool: two daemons in two namespaces on one Redis', () => {
  let t: Topology;
  let client2: Netns;
  let d2: DaemonProc | undefined;
  let redis: ChildProcess;
  const PORT = 6390;

  /** Fires A queries for `names` at 198.18.0.1 in parallel from one UDP socket; retries the unanswered; prints {name: ip}. */
  const BATCH = `
const dgram = require('node:dgram');
const fs = require('node:fs');
const names = fs.readFileSync(process.argv[2], 'utf8').split('\\n').filter(Boolean);
const query = (id, name) => {
  const h = Buffer.alloc(12); h.writeUInt16BE(id, 0); h.writeUInt16BE(0x0100, 2); h.writeUInt16BE(1, 4);
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  return Buffer.concat([h, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
};
const got = {}, rcodes = {};
const s = dgram.createSocket('udp4');
s.on('message', (m) => {
  const id = m.readUInt16BE(0), rcode = m[3] & 15, an = m.readUInt16BE(6);
  const name = names[id];
  if (name === undefined || got[name]) return;
  if (rcode !== 0 || an !== 1) { rcodes[name] = rcode; return; }
  got[name] = Array.from(m.subarray(m.length - 4)).join('.');
});
let round = 0;
const send = () => {
  const todo = names.map((n, i) => [n, i]).filter(([n]) => !got[n]);
  if (todo.length === 0 || round++ === 6) {
    console.log(JSON.stringify({ got, rcodes, rounds: round }));
    s.close();
    return;
  }
  for (const [n, i] of todo) s.send(query(i, n), 53, '198.18.0.1');
  setTimeout(send, 1500);
};
s.bind(0, send);
`;

  beforeAll(async () => {
    t = await createTopology();
    // Redis in the upstream namespace, reachable from both client namespaces.
    redis = await startRedis(t.upstream, t, PORT, ['--protected-mode', 'no'], '0.0.0.0');
    let upstreamIp2: string;
    ({ ns: client2, upstreamSideIp: upstreamIp2 } = await addClient(t, 'c2'));

    await t.startDaemon(['--redis', `redis://${t.upstreamIp}:${PORT}`, '--redis-shared-pool', '--node-id', 'gw1']);
    d2 = startDaemonIn(client2, t.upstreamIp, [
      '--redis',
      `redis://${upstreamIp2}:${PORT}`,
      '--redis-shared-pool',
      '--node-id',
      'gw2',
    ]);
    await d2.waitFor(/running; Ctrl-C to stop/, 20_000);
    expect(t.daemon?.stdout).toMatch(/fake-IP pool shared through redis:\/\//);
    expect(d2.stdout).toMatch(/fake-IP pool shared through redis:\/\//);
  });
  afterAll(async () => {
    await d2?.stop();
    await client2?.delete();
    await t?.destroy();
  });

  const dig = async (ns: Netns, name: string) =>
    (await ns.exec('dig', ['+short', '+time=2', '+tries=2', '@198.18.0.1', name])).stdout.trim();

  it('the same name gets the same address from both daemons', async () => {
    const a1 = await dig(t.client, 'shared.example');
    const a2 = await dig(client2, 'shared.example');
    expect(inRange(a1)).toBe(true);
    expect(a2).toBe(a1);
    // Asked first on the other side this time.
    const b2 = await dig(client2, 'other.example');
    const b1 = await dig(t.client, 'other.example');
    expect(inRange(b2)).toBe(true);
    expect(b1).toBe(b2);
    expect(b1).not.toBe(a1);
    // And the address works as a destination from the second gateway.
    const r = await client2.exec('curl', ['-sS', '--max-time', '10', `http://origin.test:${HTTP_PORT}/hello`]);
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`hello from origin origin.test:${HTTP_PORT}\n`);
  });

  it('1 000 names resolved concurrently on both never give two names one address', async () => {
    // Side 1 asks n0..n599, side 2 n400..n999: 1 000 names, 200 asked on both,
    // and both start with the shared ones so they race for the same names.
    const name = (i: number) => `n${i}.pool.test`;
    const range = (a: number, b: number) => Array.from({ length: b - a }, (_, k) => name(a + k));
    const side1 = [...range(400, 600), ...range(0, 400)];
    const side2 = [...range(400, 600), ...range(600, 1000)];
    const script = tmpFile(t, 'dns-batch.js', BATCH);
    const f1 = tmpFile(t, 'names1.txt', side1.join('\n'));
    const f2 = tmpFile(t, 'names2.txt', side2.join('\n'));
    const [r1, r2] = await Promise.all([t.client.exec('node', [script, f1]), client2.exec('node', [script, f2])]);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r2.code, r2.stderr).toBe(0);
    type Res = { got: Record<string, string>; rcodes: Record<string, number> };
    const g1 = (JSON.parse(r1.stdout) as Res).got;
    const g2 = (JSON.parse(r2.stdout) as Res).got;
    // Everything answered, in range.
    expect(side1.filter((n) => !g1[n])).toEqual([]);
    expect(side2.filter((n) => !g2[n])).toEqual([]);
    for (const ip of [...Object.values(g1), ...Object.values(g2)]) expect(inRange(ip)).toBe(true);
    // Names asked on both sides got one address.
    for (const n of range(400, 600)) expect(g2[n], n).toBe(g1[n]);
    // ip → name is a function over both daemons' answers.
    const owner = new Map<string, Set<string>>();
    for (const g of [g1, g2]) {
      for (const [n, ip] of Object.entries(g)) {
        const s = owner.get(ip) ?? new Set<string>();
        s.add(n);
        owner.set(ip, s);
      }
    }
    const shared = [...owner].filter(([, s]) => s.size > 1).map(([ip, s]) => `${ip}: ${[...s].join(', ')}`);
    expect(shared).toEqual([]);
    expect(owner.size).toBe(1000);
    // The pool in Redis agrees: each name's address there is the one answered.
    const input = range(0, 1000)
      .map((n) => `HGET fakeproxy:pool:{198.18.0.0/16}:n2i ${n}\n`)
      .join('');
    const inRedis = (await rcli(t.upstream, PORT, [], { host: t.upstreamIp, input })).split('\n');
    range(0, 1000).forEach((n, i) => {
      expect(inRedis[i], n).toBe(g1[n] ?? g2[n]);
    });
  });

  it('Redis lost: cached names keep their answers, new names get SERVFAIL; back (empty): both daemons agree again', async () => {
    const cached = await dig(t.client, 'shared.example');
    expect(inRange(cached)).toBe(true);
    expect(inRange(await dig(t.client, 'origin.test'))).toBe(true);
    await killRedis(redis);
    await t.daemon?.waitFor(/shared fake-IP pool: lost Redis/, 10_000);
    // Known name: same answer, and traffic to it flows.
    expect(await dig(t.client, 'shared.example')).toBe(cached);
    const r = await t.client.exec('curl', ['-sS', '--max-time', '10', `http://origin.test:${HTTP_PORT}/hello`]);
    expect(r.code).toBe(0);
    // Unknown name: SERVFAIL, on either side.
    for (const ns of [t.client, client2]) {
      const out = (await ns.exec('dig', ['+time=2', '+tries=1', '@198.18.0.1', 'new-during-outage.example'])).stdout;
      expect(out).toMatch(/status: SERVFAIL/);
    }
    redis = await startRedis(t.upstream, t, PORT, ['--protected-mode', 'no'], '0.0.0.0');
    // Both reconnect (and revalidate their caches before allocating again): a new name resolves on each.
    for (const [ns, probe] of [
      [t.client, 'probe1.example'],
      [client2, 'probe2.example'],
    ] as const) {
      await until(
        `${probe} to resolve after Redis is back`,
        async () => (inRange(await dig(ns, probe)) ? true : undefined),
        10_000,
      );
    }
    // Side 2 asks first for a name only side 1 had cached: the empty pool gives it a
    // new address, and side 1, having revalidated its cache, must answer the same.
    const fresh = await dig(client2, 'n100.pool.test');
    expect(inRange(fresh)).toBe(true);
    expect(await dig(t.client, 'n100.pool.test')).toBe(fresh);
    const other = await dig(t.client, 'new-during-outage.example');
    expect(inRange(other)).toBe(true);
    expect(other).not.toBe(fresh);
    expect(await dig(client2, 'new-during-outage.example')).toBe(other);
  });
});

describe.skipIf(skip)('Redis refusing the password', () => {
  let t: Topology;
  const PORT = 6391;
  const WRONG = `redis://:wrong@127.0.0.1:${PORT}`;

  beforeAll(async () => {
    t = await createTopology();
    await startRedis(t.client, t, PORT, ['--requirepass', 'secret']);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('nat ls and dns ls: exit 1 with one clear line, password not echoed', async () => {
    for (const cmd of [
      ['nat', 'ls'],
      ['dns', 'ls'],
    ]) {
      const r = await runCli(t.client, [...cmd, '--redis', WRONG]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe('');
      const lines = r.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(
        /^fakeproxy: Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:6391 rejected the credentials \(WRONGPASS\): check user\/password/,
      );
      expect(r.stderr).not.toContain('wrong');
    }
    // No password at all: also one line, naming the fix.
    const r = await runCli(t.client, ['nat', 'ls', '--redis', `redis://127.0.0.1:${PORT}`]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/requires a password/);
    // The right one works.
    const ok = await runCli(t.client, ['nat', 'ls', '--redis', `redis://:secret@127.0.0.1:${PORT}`]);
    expect(ok.code).toBe(0);
  });

  it('--redis-shared-pool with a refused password: the daemon exits 1 with one clear line', async () => {
    const d = DaemonProc.start(t.client, [
      'start',
      '--state-dir',
      '',
      '--dns-upstream',
      `${t.upstreamIp}:53`,
      '--redis',
      WRONG,
      '--redis-shared-pool',
    ]);
    expect(await d.exited).toBe(1);
    const errs = d.stderr
      .trim()
      .split('\n')
      .filter((l) => /credentials|password/i.test(l));
    expect(errs).toHaveLength(1);
    expect(errs[0]).toMatch(
      /^fakeproxy: shared fake-IP pool: Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:6391 rejected the credentials/,
    );
    expect(d.output).not.toContain(':wrong@');
    // It left no TUN behind.
    expect((await t.client.exec('ip', ['link', 'show', 'dev', 'fp0'])).code).not.toBe(0);
  });

  it('a daemon with the wrong password keeps proxying and logs one line about authentication', async () => {
    const d = await t.startDaemon(['--upstream', 'direct', '--redis', WRONG, '--node-id', 'gw1']);
    await d.waitFor(/redis mirror: .*rejected the credentials/, 10_000);
    for (let i = 0; i < 5; i++) {
      const r = await t.client.exec('curl', ['-sS', '--max-time', '10', `http://origin.test:${HTTP_PORT}/hello`]);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(`hello from origin origin.test:${HTTP_PORT}\n`);
    }
    // Connections were opened and closed meanwhile (flushes, ticks): still one line.
    await sleep(3_000);
    const authLines = d.stderr.split('\n').filter((l) => /redis/i.test(l));
    expect(authLines).toHaveLength(1);
    expect(authLines[0]).toMatch(
      /^fakeproxy: redis mirror: Redis at redis:\/\/:\*\*\*@127\.0\.0\.1:6391 rejected the credentials \(WRONGPASS\): check user\/password in the URL .*; proxying continues, retrying every 30 s$/,
    );
    expect(d.output).not.toContain(':wrong@');
    // Nothing was written.
    expect((await rcli(t.client, PORT, ['--scan', '--pattern', 'fakeproxy:*'], { auth: 'secret' })).trim()).toBe('');
    expect(d.child.exitCode).toBeNull();
  });
});
