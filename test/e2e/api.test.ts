/**
 * The controller API of a real daemon: a curl download through the TUN is
 * listed by its name with growing bytes (`fakeproxy connections`), closing
 * it resets curl at once, switching a select group through the API sends the
 * next connection through the other SOCKS5 server (its log says so); a UDP
 * exchange with echo.test is listed as network "udp" by its name with the
 * native relay's byte counts, and DELETE ends its association.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './harness/daemon.js';
import { e2eUnavailableReason } from './harness/netns.js';
import {
  capture,
  createTopology,
  ECHO_PORT,
  eventually,
  HTTP_PORT,
  slowCurl,
  startPickProxies,
  type Topology,
} from './harness/topology.js';

const skip = e2eUnavailableReason();
const SECRET = 'e2e-secret';
/** Each `fakeproxy connections` spawns node: on a loaded 2-core machine a poll takes seconds. */
const SLOW = 30_000;

interface Conn {
  id: string;
  download: number;
  upload: number;
  chains: string[];
  rule: string;
  rulePayload: string;
  metadata: { host: string; destinationPort: string; network: string; sourceIP: string; type: string };
}

describe.skipIf(skip)('controller API of a running daemon', () => {
  let t: Topology;
  let a: { readonly text: string };
  let b: { readonly text: string };

  const api = (method: string, path: string, body?: string) =>
    t.client.exec(
      'curl',
      [
        '-sS',
        '--max-time',
        '10',
        '-X',
        method,
        '-H',
        `Authorization: Bearer ${SECRET}`,
        ...(body ? ['-H', 'Content-Type: application/json', '-d', body] : []),
        '-w',
        '\\n%{http_code}',
        `http://127.0.0.1:9090${path}`,
      ],
      { timeoutMs: 20_000 },
    );
  const ls = async (): Promise<Conn[]> => {
    const r = await runCli(t.client, ['connections', 'ls', '--json', '--secret', SECRET]);
    expect(r.stderr).toBe('');
    return (JSON.parse(r.stdout) as { connections: Conn[] }).connections;
  };

  beforeAll(async () => {
    t = await createTopology();
    let cfg: string;
    ({ a, b, cfg } = await startPickProxies(t, 'api.yaml', [
      'external-controller: 127.0.0.1:9090',
      `secret: ${SECRET}`,
    ]));
    const d = await t.startDaemon(['--config', cfg]);
    await d.waitFor(/controller http:\/\/127\.0\.0\.1:9090 \(secret set\)/);
  }, 60_000);

  afterAll(async () => {
    await t?.destroy();
  });

  it('lists a download by host name with growing bytes; close ID resets curl at once', async () => {
    // Slowly read, so it is still running while we look.
    const curl = slowCurl(t.client, `http://origin.test:${HTTP_PORT}/big?mib=512`, '2M', 150);
    const out = capture(curl);
    const exited = new Promise<number | null>((r) => curl.once('exit', (c) => r(c)));
    const first = await eventually(ls, (c) => c.some((x) => x.metadata.host === 'origin.test' && x.download > 0));
    const c1 = first.find((x) => x.metadata.host === 'origin.test') as Conn;
    expect(c1).toMatchObject({
      rule: 'DomainSuffix',
      rulePayload: 'origin.test',
      chains: ['a', 'pick'],
      metadata: { network: 'tcp', destinationPort: String(HTTP_PORT) },
    });
    const later = await eventually(ls, (c) => (c.find((x) => x.id === c1.id)?.download ?? 0) > c1.download);
    expect(later.find((x) => x.id === c1.id)?.download).toBeGreaterThan(c1.download);
    const human = await runCli(t.client, ['connections', '--secret', SECRET]);
    expect(human.stdout).toContain(`${c1.id}  tcp origin.test:${HTTP_PORT}  DomainSuffix(origin.test)  pick → a`);

    const closed = await runCli(t.client, ['connections', 'close', c1.id, '--secret', SECRET]);
    expect(closed.stdout).toBe(`closed ${c1.id}\n`);
    // Reset, not a clean end: curl says "Connection reset by peer" (exit 56).
    expect(await exited).toBe(56);
    expect(out.text).toMatch(/reset/i);
    expect((await ls()).some((x) => x.id === c1.id)).toBe(false);
    const gone = await runCli(t.client, ['connections', 'close', c1.id, '--secret', SECRET]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(/no live connection/);
    const noSecret = await runCli(t.client, ['connections']);
    expect(noSecret.code).toBe(1);
    expect(noSecret.stderr).toMatch(/wants its secret: --secret TOKEN/);
    // Each `fakeproxy connections` is a node process: seconds apiece on a saturated 2-core CI machine.
  }, 180_000);

  it('PUT /proxies/pick switches the select group: the next connection goes through b (its log)', async () => {
    const curl = (p: string) =>
      t.client.exec('curl', ['-sS', '--max-time', '10', `http://${p}.origin.test:${HTTP_PORT}/hello`], {
        timeoutMs: 20_000,
      });
    expect((await curl('one')).code).toBe(0);
    expect(a.text).toMatch(/one\.origin\.test/);
    const put = await api('PUT', '/proxies/pick', '{"name":"b"}');
    expect(put.stdout.trim()).toBe('204');
    const g = await api('GET', '/proxies/pick');
    expect(JSON.parse(g.stdout.split('\n')[0] as string)).toMatchObject({
      type: 'Selector',
      now: 'b',
      all: ['a', 'b'],
    });
    expect((await curl('two')).code).toBe(0);
    expect(b.text).toMatch(/two\.origin\.test/);
    expect(a.text).not.toMatch(/two\.origin\.test/);
    expect(t.daemon?.output).toMatch(/group pick: selected b \(controller\)/);
  }, 60_000);

  it('PATCH /configs: mode global through GLOBAL’s pick, mode direct, log-level debug; what it cannot change is a 400 naming it', async () => {
    const curl = (p: string) =>
      t.client.exec('curl', ['-sS', '--max-time', '10', `http://${p}.origin.test:${HTTP_PORT}/hello`], {
        timeoutMs: 20_000,
      });
    const get = async () => JSON.parse((await api('GET', '/configs')).stdout.split('\n')[0] as string);
    expect(await get()).toMatchObject({ mode: 'rule', 'log-level': 'info', ipv6: false, 'allow-lan': false });
    // Refused keys: named with the reason, and nothing applied (not even the mode beside them).
    const bad = await api('PATCH', '/configs', '{"mode":"global","ipv6":true,"mixed-port":7890}');
    expect(bad.stdout).toMatch(
      /^\{"message":"PATCH \/configs refused, nothing changed: ipv6 \(the fake range and the TUN are IPv4 only\); mixed-port \(fakeproxy has no HTTP\/SOCKS\/redir\/tproxy inbound/,
    );
    expect(bad.stdout).toMatch(/\n400$/);
    expect((await get()).mode).toBe('rule');
    // Global: GLOBAL picks a although the rule's group (pick) says b.
    expect((await api('PATCH', '/configs', '{"mode":"global","log-level":"debug"}')).stdout).toBe('\n204');
    expect((await api('PUT', '/proxies/GLOBAL', '{"name":"a"}')).stdout).toBe('\n204');
    expect(JSON.parse((await api('GET', '/proxies/GLOBAL')).stdout.split('\n')[0] as string)).toMatchObject({
      now: 'a',
    });
    expect(await get()).toMatchObject({ mode: 'global', 'log-level': 'debug' });
    expect((await curl('three')).code).toBe(0);
    expect(a.text).toMatch(/three\.origin\.test/);
    expect(b.text).not.toMatch(/three\.origin\.test/);
    // log-level debug: one line per connection, with the mode as its rule.
    await t.daemon?.waitFor(/tcp three\.origin\.test:\d+ rule mode global chain GLOBAL → a/);
    // Direct: neither SOCKS5 server sees it.
    expect((await api('PATCH', '/configs', '{"mode":"direct","log-level":"info"}')).stdout).toBe('\n204');
    expect((await curl('four')).code).toBe(0);
    expect(a.text + b.text).not.toMatch(/four\.origin\.test/);
    expect(t.daemon?.output).not.toMatch(/tcp four\.origin\.test/);
    // Rule again: pick → b.
    expect((await api('PATCH', '/configs', '{"mode":"rule"}')).stdout).toBe('\n204');
    expect((await curl('five')).code).toBe(0);
    expect(b.text).toMatch(/five\.origin\.test/);
    expect(t.daemon?.output).toMatch(/controller: mode global, log-level debug/);
    // PUT /configs: its own --config only.
    const other = await api('PUT', '/configs', '{"path":"/etc/passwd"}');
    expect(other.stdout).toMatch(/fakeproxy reloads its own --config only .*\n400$/);
    expect((await api('PUT', '/configs', '{"path":"","payload":""}')).stdout).toBe('\n204');
  }, 90_000);

  it('a UDP exchange through the TUN is listed as udp by its name with bytes; DELETE ends its association', async () => {
    // One datagram every 200 ms from one socket, each echo counted on stdout.
    const app = t.client.spawn('node', [
      '-e',
      `const s = require('node:dgram').createSocket('udp4');
       let echoed = 0;
       s.on('message', (m) => console.log('echo ' + ++echoed + ' ' + m.length));
       const send = () => s.send(Buffer.alloc(100, 7), ${ECHO_PORT}, 'echo.test');
       send();
       setInterval(send, 200);
       setTimeout(() => process.exit(0), 110000);`,
    ]);
    const out = capture(app);
    try {
      const udp = (c: Conn[]) =>
        c.find((x) => x.metadata.network === 'udp' && x.metadata.host === 'echo.test' && x.download >= 200);
      const c1 = udp(await eventually(ls, (c) => udp(c) !== undefined, SLOW)) as Conn;
      expect(out.text).toMatch(/echo \d+ 100/);
      expect(c1).toMatchObject({
        rule: 'Match',
        rulePayload: '',
        chains: ['DIRECT'],
        metadata: { network: 'udp', type: 'Tun', destinationPort: String(ECHO_PORT) },
      });
      expect(c1.metadata.sourceIP).not.toBe('');
      // The native relay's counts: payload bytes both ways, growing while the app talks.
      expect(c1.upload).toBeGreaterThanOrEqual(c1.download);
      const later = await eventually(ls, (c) => (c.find((x) => x.id === c1.id)?.download ?? 0) > c1.download, SLOW);
      expect(later.find((x) => x.id === c1.id)?.download).toBeGreaterThan(c1.download);

      const del = await api('DELETE', `/connections/${c1.id}`);
      expect(del.stdout.trim()).toBe('204');
      await eventually(ls, (c) => !c.some((x) => x.id === c1.id), SLOW);
      // The association ended: the app's next datagram opens a new one (a new id), and echoes keep coming.
      const next = await eventually(ls, (c) => udp(c) !== undefined && udp(c)?.id !== c1.id, SLOW);
      expect(udp(next)?.id).not.toBe(c1.id);
      const gone = await runCli(t.client, ['connections', 'close', c1.id, '--secret', SECRET]);
      expect(gone.stderr).toMatch(/no live connection/);
    } finally {
      app.kill('SIGKILL');
    }
  }, 120_000);

  it('POST /cache/fakeip/flush: names no connection holds get a new address; a live download keeps its own', async () => {
    const dig = async (name: string) => (await t.client.must('dig', ['+short', '+time=3', name])).trim();
    const curl = slowCurl(t.client, `http://held.origin.test:${HTTP_PORT}/big?mib=256`, '1M', 100);
    capture(curl);
    try {
      const idle = await dig('idle.origin.test');
      const conns = async () =>
        (JSON.parse((await api('GET', '/connections')).stdout.split('\n')[0] as string) as { connections: Conn[] })
          .connections;
      await eventually(conns, (c) => c.some((x) => x.metadata.host === 'held.origin.test' && x.download > 0), SLOW);
      const held = await dig('held.origin.test');
      const flush = await api('POST', '/cache/fakeip/flush');
      expect(flush.stdout).toBe('\n204');
      const m = (await t.daemon?.waitFor(
        /dns: fake-IP flush \(controller\): dropped (\d+) mappings no live connection holds, kept (\d+) in use/,
      )) as RegExpMatchArray;
      expect(Number(m[1])).toBeGreaterThanOrEqual(1); // idle.origin.test at least
      expect(Number(m[2])).toBeGreaterThanOrEqual(1); // held.origin.test at least
      // The idle name gets a fresh address; the one a live connection holds is never re-pointed.
      const idle2 = await dig('idle.origin.test');
      expect(idle2).toMatch(/^198\.18\./);
      expect(idle2).not.toBe(idle);
      expect(await dig('held.origin.test')).toBe(held);
      // The download was not disturbed: still listed, bytes still growing.
      const before = (await conns()).find((x) => x.metadata.host === 'held.origin.test') as Conn;
      await eventually(conns, (c) => (c.find((x) => x.id === before.id)?.download ?? 0) > before.download, SLOW);
      expect(curl.exitCode).toBeNull();
    } finally {
      curl.kill('SIGKILL');
    }
  }, 120_000);

  it('wrong secret → 401; the daemon keeps its unknown endpoints at 404 JSON', async () => {
    const bad = await t.client.exec('curl', [
      '-sS',
      '-w',
      '\\n%{http_code}',
      '-H',
      'Authorization: Bearer nope',
      'http://127.0.0.1:9090/connections',
    ]);
    expect(bad.stdout).toBe('{"message":"Unauthorized"}\n401');
    const nf = await api('GET', '/no/such/thing');
    expect(nf.stdout).toBe('{"message":"Resource not found"}\n404');
  });
});
