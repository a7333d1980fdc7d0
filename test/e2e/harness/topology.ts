/**
 * The two-namespace topology of DESIGN.md "End-to-end test topology":
 *   client   — TUN + daemon + curl/dig; resolv.conf → the daemon
 *   upstream — dnsmasq (the real resolver), origin servers, proxies
 * joined by a veth pair on a /30. The upstream resolver knows the test names;
 * the client can only reach them by name through fakeproxy.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { dnsmasqArgs } from '../../support/confs.js';
import { DaemonProc, ROOT } from './daemon.js';
import { Netns, vethPair } from './netns.js';

/** A fake address the daemon hands out: in 198.18.0.0/16, neither the network nor the gateway. */
export const inRange = (ip: string) => /^198\.18\.\d+\.\d+$/.test(ip) && ip !== '198.18.0.1' && ip !== '198.18.0.0';

export const HTTP_PORT = 8080;
export const ECHO_PORT = 9000;

export interface Topology {
  client: Netns;
  upstream: Netns;
  clientIp: string;
  upstreamIp: string;
  /** sha256 of /big?mib=64 as the origin computed it. */
  bigSha256: string;
  tmp: string;
  daemon?: DaemonProc;
  /** `prefix`: a command that execs the daemon (DaemonProc.start). */
  startDaemon(args: string[], prefix?: string[]): Promise<DaemonProc>;
  /** Starts a long-running helper in the upstream namespace and waits for `ready` in its output (or a short settle). */
  spawnUpstream(cmd: string, args: string[], ready?: RegExp): Promise<ChildProcess>;
  /** Everything dnsmasq (the upstream resolver, run with --log-queries) has written so far. */
  dnsmasqLog(): string;
  destroy(): Promise<void>;
}

async function waitOutput(child: ChildProcess, re: RegExp, what: string, timeoutMs = 10_000): Promise<string> {
  let out = '';
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} not ready in ${timeoutMs} ms: ${out}`)), timeoutMs);
    const on = (d: Buffer) => {
      out += d.toString();
      if (re.test(out)) {
        clearTimeout(t);
        resolve(out);
      }
    };
    child.stdout?.on('data', on);
    child.stderr?.on('data', on);
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`${what} exited (${code}) before ready: ${out}`));
    });
  });
}

/** Waits until something listens on ip:port (TCP) inside the namespace. */
export async function waitListening(ns: Netns, port: number, proto: 'tcp' | 'udp' = 'tcp', timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await ns.exec('ss', [proto === 'tcp' ? '-ltnH' : '-lunH', `sport = :${port}`]);
    if (r.stdout.trim()) return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`[${ns.name}] nothing listens on ${proto}/${port}`);
}

export interface TopologyOptions {
  /** Extra dnsmasq arguments (e.g. --address=/x.test/1.2.3.4). */
  dnsmasqArgs?: string[];
}

/**
 * A describe block's own topology: beforeAll creates it, afterAll destroys
 * it. Read `.t` inside tests and later hooks (it is set once beforeAll ran).
 */
export function topologyPerSuite(opts: TopologyOptions = {}): { t: Topology } {
  const s = {} as { t: Topology };
  beforeAll(async () => {
    s.t = await createTopology(opts);
  });
  afterAll(async () => {
    await s.t?.destroy();
  });
  return s;
}

export async function createTopology(opts: TopologyOptions = {}): Promise<Topology> {
  const client = await Netns.create('c');
  const upstream = await Netns.create('u');
  const tmp = mkdtempSync(join(tmpdir(), 'fpt-'));
  try {
    const { aIp: clientIp, bIp: upstreamIp } = await vethPair(client, upstream);
    // The client resolves through the daemon only.
    client.writeEtc('resolv.conf', 'nameserver 198.18.0.1\n');
    client.writeEtc('hosts', '127.0.0.1 localhost\n');
    upstream.writeEtc('hosts', `127.0.0.1 localhost\n${upstreamIp} origin.test\n`);
    upstream.writeEtc('resolv.conf', `nameserver ${upstreamIp}\n`);

    const dnsmasq = upstream.spawn(
      'dnsmasq',
      dnsmasqArgs(upstreamIp, [
        '--pid-file=',
        '--log-queries',
        '--log-facility=-',
        `--address=/origin.test/${upstreamIp}`,
        `--address=/echo.test/${upstreamIp}`,
        `--address=/printer.lan/${upstreamIp}`,
        `--address=/real.example/${upstreamIp}`,
        '--mx-host=origin.test,mail.origin.test,10',
        '--txt-record=origin.test,fakeproxy test',
        ...(opts.dnsmasqArgs ?? []),
      ]),
    );
    // Captured (its query log is evidence of what reached the real resolver);
    // reading it also keeps a chatty dnsmasq from filling an unread pipe.
    let dnsmasqOut = '';
    const onDnsmasq = (d: Buffer) => {
      dnsmasqOut += d.toString();
    };
    dnsmasq.stdout?.on('data', onDnsmasq);
    dnsmasq.stderr?.on('data', onDnsmasq);
    await waitListening(upstream, 53, 'udp');

    const origin = upstream.spawn('node', [
      join(ROOT, 'test/e2e/fixtures/origin.mjs'),
      upstreamIp,
      String(HTTP_PORT),
      String(ECHO_PORT),
    ]);
    const out = await waitOutput(origin, /origin ready sha256\(64MiB\)=([0-9a-f]{64})/, 'origin');
    const bigSha256 = /=([0-9a-f]{64})/.exec(out)?.[1] as string;

    const topo: Topology = {
      client,
      upstream,
      clientIp,
      upstreamIp,
      bigSha256,
      tmp,
      async startDaemon(args: string[], prefix?: string[]) {
        const d = startDaemonIn(client, upstreamIp, args, prefix);
        topo.daemon = d;
        await d.waitFor(/running; Ctrl-C to stop/, 20_000);
        return d;
      },
      async spawnUpstream(cmd: string, args: string[], ready?: RegExp) {
        const child = upstream.spawn(cmd, args);
        if (ready) await waitOutput(child, ready, cmd);
        return child;
      },
      dnsmasqLog: () => dnsmasqOut,
      async destroy() {
        if (topo.daemon) await topo.daemon.stop();
        await client.delete();
        await upstream.delete();
        rmSync(tmp, { recursive: true, force: true });
      },
    };
    return topo;
  } catch (e) {
    await client.delete();
    await upstream.delete();
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** Everything a long-running helper printed (stdout + stderr), as it arrives. */
export function capture(child: ChildProcess): { readonly text: string } {
  const c = { text: '' };
  const on = (d: Buffer) => {
    c.text += d.toString();
  };
  child.stdout?.on('data', on);
  child.stderr?.on('data', on);
  return c;
}

/** `fakeproxy start` in `ns` with no state dir and dnsmasq (at upstreamIp) as the real resolver; not yet waited for. */
export function startDaemonIn(ns: Netns, upstreamIp: string, args: string[], prefix?: string[]): DaemonProc {
  return DaemonProc.start(ns, ['start', '--state-dir', '', '--dns-upstream', `${upstreamIp}:53`, ...args], {}, prefix);
}

/**
 * A second client namespace (a second gateway) joined to upstream by its
 * own veth pair, reaching the resolver and everything on t.upstreamIp
 * through it; resolv.conf points at its own daemon. Returns the upstream
 * side's address of the new link too. Deleted by the caller.
 */
export async function addClient(t: Topology, tag: string): Promise<{ ns: Netns; upstreamSideIp: string }> {
  const ns = await Netns.create(tag);
  try {
    const { bIp: upstreamSideIp } = await vethPair(ns, t.upstream);
    await ns.must('ip', ['route', 'add', `${t.upstreamIp}/32`, 'via', upstreamSideIp]);
    ns.writeEtc('resolv.conf', 'nameserver 198.18.0.1\n');
    ns.writeEtc('hosts', '127.0.0.1 localhost\n');
    return { ns, upstreamSideIp };
  } catch (e) {
    await ns.delete();
    throw e;
  }
}

/** Ports of the two SOCKS5 servers startPickProxies runs. */
export const SOCKS_A = 1080;
export const SOCKS_B = 1081;

/**
 * Two microsocks in t.upstream (proxy a on SOCKS_A, b on SOCKS_B), listening,
 * and a Clash config in the temp dir whose select group `pick` [a, b] takes
 * origin.test, the rest DIRECT; `head` lines go first (e.g. controller keys).
 * Returns each server's log (a CONNECT shows there) and the config's path.
 */
export async function startPickProxies(
  t: Topology,
  file: string,
  head: string[] = [],
): Promise<{ a: { readonly text: string }; b: { readonly text: string }; cfg: string }> {
  const u = t.upstreamIp;
  const a = capture(t.upstream.spawn('/usr/bin/microsocks', ['-i', u, '-p', String(SOCKS_A)]));
  const b = capture(t.upstream.spawn('/usr/bin/microsocks', ['-i', u, '-p', String(SOCKS_B)]));
  await Promise.all([waitListening(t.upstream, SOCKS_A), waitListening(t.upstream, SOCKS_B)]);
  const cfg = tmpFile(
    t,
    file,
    [
      ...head,
      'proxies:',
      `  - {name: a, type: socks5, server: ${u}, port: ${SOCKS_A}}`,
      `  - {name: b, type: socks5, server: ${u}, port: ${SOCKS_B}}`,
      'proxy-groups:',
      '  - {name: pick, type: select, proxies: [a, b]}',
      'rules:',
      '  - DOMAIN-SUFFIX,origin.test,pick',
      '  - MATCH,DIRECT',
      '',
    ].join('\n'),
  );
  return { a, b, cfg };
}

/** Where global mode's test origins listen: whoami.mjs on every origin address, microsocks on the upstream address. */
export const GLOBAL_WHO = 8081;
export const GLOBAL_MIC = 1080;

/**
 * Global mode's origins: each of `ips` (public-looking TEST-NET-2/3 addresses,
 * since private ranges are excluded by default) on the upstream namespace's
 * loopback, routed from the client via the veth, with whoami.mjs on
 * GLOBAL_WHO writing the peer of every request (the client's own address:
 * direct; microsocks': proxied); microsocks on GLOBAL_MIC. Both listen when
 * this resolves; returns what each printed.
 */
export async function globalOrigins(
  t: Topology,
  ips: string[],
): Promise<{ who: { readonly text: string }; mic: { readonly text: string } }> {
  for (const ip of ips) {
    await t.upstream.must('ip', ['addr', 'add', `${ip}/32`, 'dev', 'lo']);
    await t.client.must('ip', ['route', 'add', `${ip}/32`, 'via', t.upstreamIp]);
  }
  const whoami = `${ROOT}/test/e2e/fixtures/whoami.mjs`;
  const who = capture(t.upstream.spawn('node', [whoami, ...ips.flatMap((ip) => [ip, String(GLOBAL_WHO)])]));
  const mic = capture(t.upstream.spawn('/usr/bin/microsocks', ['-i', t.upstreamIp, '-p', String(GLOBAL_MIC)]));
  await waitListening(t.upstream, GLOBAL_MIC);
  await waitListening(t.upstream, GLOBAL_WHO);
  return { who, mic };
}

/**
 * The daemon on a global-mode config in the temp dir (`file`): `head` lines
 * (exclusions, uids, controller), microsocks (globalOrigins) as proxy `mic`,
 * then `rules` and MATCH,mic.
 */
export function startGlobalDaemon(
  t: Topology,
  file: string,
  head: string[],
  rules: string[] = [],
): Promise<DaemonProc> {
  const config = tmpFile(
    t,
    file,
    [
      'mode: global',
      ...head,
      'proxies:',
      `  - {name: mic, type: socks5, server: ${t.upstreamIp}, port: ${GLOBAL_MIC}}`,
      'rules:',
      ...[...rules, 'MATCH,mic'].map((r) => `  - ${r}`),
      '',
    ].join('\n'),
  );
  return t.startDaemon(['--config', config]);
}

/** Writes a file into the topology's temp dir and returns its path. */
export function tmpFile(t: Topology, name: string, text: string): string {
  const p = join(t.tmp, name);
  writeFileSync(p, text);
  return p;
}

/** Polls `read()` until `ok` holds; returns the last value either way (the assertion decides). */
export async function eventually<T>(read: () => Promise<T> | T, ok: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await read();
    if (ok(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** A download curl reads slowly (`--limit-rate`), to the null device: a connection that stays open while a test looks. */
export function slowCurl(ns: Netns, url: string, rate: string, maxTimeSec: number): ChildProcess {
  return ns.spawn('curl', ['-sS', '-o', '/dev/null', '--limit-rate', rate, '--max-time', String(maxTimeSec), url]);
}
