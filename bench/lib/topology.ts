/**
 * The two-namespace topology of DESIGN.md "End-to-end test topology":
 *
 *   client ns (TUN + daemon + curl/ab/iperf3/dnsperf)  ──veth /30──  upstream ns
 *                                                                     dnsmasq  :53   (*.test → upstream IP)
 *                                                                     origin   :8080 (/big sendfile, /small)
 *                                                                     danted   :1080 (SOCKS5, connect + udpassociate)
 *                                                                     microsocks :1081, tinyproxy :8888
 *                                                                     iperf3 -s :5201
 *
 * Services start on demand (`await topo.start('dante', 'origin')`); everything
 * dies with the namespaces.
 */
import type { ChildProcess } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { closeSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { vethPair } from '../../test/e2e/harness/netns.js';
import { danteConf, dnsmasqArgs } from '../../test/support/confs.js';
import { type Ctx, deleteNetns, type Netns, need, newNetns, ROOT, run, sleep, waitListening } from './env.js';

export type Service = 'dnsmasq' | 'origin' | 'dante' | 'microsocks' | 'tinyproxy' | 'iperf3' | 'udpecho';

export const PORTS = {
  dns: 53,
  origin: 8080,
  dante: 1080,
  microsocks: 1081,
  tinyproxy: 8888,
  iperf3: 5201,
  udpecho: 9000,
} as const;
/** The name every TUN-path client asks for; dnsmasq in the upstream ns answers it with the upstream IP. */
export const ORIGIN_NAME = 'origin.test';
/** The name iperf3 clients (and the straight-to-dante UDP sender) ask for: the same answer, the upstream IP. */
export const IPERF_NAME = 'iperf.test';

export interface BigFile {
  path: string;
  size: number;
  sha256: string;
}

const bigFiles = new Map<number, BigFile>();

/**
 * A file of `size` pseudo-random bytes (AES-CTR keystream: incompressible, and a
 * reordered or corrupted segment changes the hash, unlike zeros) with its sha256.
 */
export function bigFile(ctx: Ctx, size: number): BigFile {
  const have = bigFiles.get(size);
  if (have) return have;
  const path = join(ctx.tmp, `big-${size}.bin`);
  const cipher = createCipheriv('aes-128-ctr', Buffer.alloc(16, 7), Buffer.alloc(16, 0));
  const hash = createHash('sha256');
  const zero = Buffer.alloc(4 << 20);
  const fd = openSync(path, 'w');
  for (let done = 0; done < size; ) {
    const n = Math.min(zero.length, size - done);
    const chunk = cipher.update(n === zero.length ? zero : zero.subarray(0, n));
    writeSync(fd, chunk);
    hash.update(chunk);
    done += n;
  }
  closeSync(fd);
  const f = { path, size, sha256: hash.digest('hex') };
  bigFiles.set(size, f);
  return f;
}

const built = new Map<string, string>();
/** Compiles bench/lib/<name>.c into the run's temp dir (fpbench-<name>) once per run. */
export async function benchBinary(ctx: Ctx, name: 'origin' | 'pacer' | 'socks-udp'): Promise<string> {
  const have = built.get(name);
  if (have) return have;
  const cc = need('cc', 'gcc');
  const out = join(ctx.tmp, `fpbench-${name}`);
  const r = await run(cc, ['-O2', '-pthread', '-o', out, join(ROOT, 'bench', 'lib', `${name}.c`)]);
  if (r.code !== 0) throw new Error(`building bench/lib/${name}.c: ${r.stderr.trim()}`);
  built.set(name, out);
  return out;
}

export class Topology {
  private readonly started = new Map<Service, ChildProcess | undefined>();
  big?: BigFile;

  private constructor(
    readonly ctx: Ctx,
    readonly client: Netns,
    readonly upstream: Netns,
    /** client-side veth address */
    readonly clientIp: string,
    /** upstream-side veth address: every upstream service listens here */
    readonly upIp: string,
  ) {}

  static async create(ctx: Ctx, tag: string): Promise<Topology> {
    const client = await newNetns(`${tag}-c`);
    let upstream: Netns | undefined;
    try {
      upstream = await newNetns(`${tag}-u`);
      const { aIp, bIp } = await vethPair(client, upstream);
      // The client resolves through the daemon (fake DNS on the gateway; Daemon.start rewrites this
      // for its range); the upstream through its own dnsmasq.
      client.writeEtc('resolv.conf', 'nameserver 198.18.0.1\n');
      upstream.writeEtc('resolv.conf', 'nameserver 127.0.0.1\n');
      client.writeEtc('hosts', '127.0.0.1 localhost\n');
      upstream.writeEtc('hosts', '127.0.0.1 localhost\n');
      // Connection-rate runs open ~10^5 connections a minute: widen the ephemeral range
      // (above every service port) and let TIME_WAIT pairs be reused. Per-namespace sysctls.
      for (const ns of [client, upstream]) {
        await ns.must('sysctl', ['-q', '-w', 'net.ipv4.ip_local_port_range=10000 65535', 'net.ipv4.tcp_tw_reuse=1']);
      }
      return new Topology(ctx, client, upstream, aIp, bIp);
    } catch (e) {
      await deleteNetns(client);
      if (upstream) await deleteNetns(upstream);
      throw e;
    }
  }

  async destroy(): Promise<void> {
    await Promise.allSettled([deleteNetns(this.client), deleteNetns(this.upstream)]);
  }

  /** Starts the given upstream services (idempotent) and waits until each listens. */
  async start(...services: Service[]): Promise<void> {
    for (const s of services) {
      if (this.started.has(s)) continue;
      this.started.set(s, await this.startOne(s));
    }
  }

  private spawnLogged(ns: Netns, name: string, cmd: string, args: string[]): ChildProcess {
    const child = ns.spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const keep = (d: Buffer) => {
      out = (out + d.toString()).slice(-4000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    child.once('exit', (code, sig) => {
      if (code !== 0 && sig !== 'SIGKILL' && sig !== 'SIGTERM')
        this.ctx.log(`${name} exited (${code ?? sig}): ${out.trim().slice(-500)}`);
    });
    return child;
  }

  private async startOne(s: Service): Promise<ChildProcess | undefined> {
    const { upstream: up, upIp, ctx } = this;
    switch (s) {
      case 'dnsmasq': {
        need('dnsmasq');
        const c = this.spawnLogged(
          up,
          'dnsmasq',
          'dnsmasq',
          dnsmasqArgs(`127.0.0.1,${upIp}`, [
            `--address=/test/${upIp}`,
            `--pid-file=${join(ctx.tmp, `dnsmasq-${up.name}.pid`)}`,
          ]),
        );
        await waitListening(up, 'udp', upIp, PORTS.dns);
        return c;
      }
      case 'origin': {
        if (!this.big) throw new Error('topology.big must be set before starting the origin');
        const bin = await benchBinary(ctx, 'origin');
        const c = this.spawnLogged(up, 'origin', bin, ['0.0.0.0', String(PORTS.origin), this.big.path]);
        await waitListening(up, 'tcp', '0.0.0.0', PORTS.origin);
        return c;
      }
      case 'dante': {
        need('danted', 'dante-server');
        const conf = join(ctx.tmp, `danted-${up.name}.conf`);
        writeFileSync(conf, danteConf({ ip: upIp, port: PORTS.dante }));
        const c = this.spawnLogged(up, 'danted', 'danted', ['-f', conf, '-p', join(ctx.tmp, `danted-${up.name}.pid`)]);
        await waitListening(up, 'tcp', upIp, PORTS.dante);
        return c;
      }
      case 'microsocks': {
        need('microsocks');
        const c = this.spawnLogged(up, 'microsocks', 'microsocks', ['-i', upIp, '-p', String(PORTS.microsocks)]);
        await waitListening(up, 'tcp', upIp, PORTS.microsocks);
        return c;
      }
      case 'tinyproxy': {
        need('tinyproxy');
        const conf = join(ctx.tmp, `tinyproxy-${up.name}.conf`);
        // No Allow and no ConnectPort lines: every client and every CONNECT port is allowed (namespace only).
        writeFileSync(
          conf,
          [
            `Port ${PORTS.tinyproxy}`,
            `Listen ${upIp}`,
            'Timeout 600',
            'MaxClients 1024',
            'LogLevel Critical',
            'DisableViaHeader Yes',
            `PidFile "${join(ctx.tmp, `tinyproxy-${up.name}.pid`)}"`,
            '',
          ].join('\n'),
        );
        const c = this.spawnLogged(up, 'tinyproxy', 'tinyproxy', ['-d', '-c', conf]);
        await waitListening(up, 'tcp', upIp, PORTS.tinyproxy);
        return c;
      }
      case 'iperf3': {
        need('iperf3');
        const c = this.spawnLogged(up, 'iperf3', 'iperf3', ['-s', '-p', String(PORTS.iperf3)]);
        await waitListening(up, 'tcp', '*', PORTS.iperf3).catch(() =>
          waitListening(up, 'tcp', '0.0.0.0', PORTS.iperf3),
        );
        return c;
      }
      case 'udpecho': {
        need('socat');
        const c = this.spawnLogged(up, 'udpecho', 'socat', [
          `UDP4-RECVFROM:${PORTS.udpecho},bind=${upIp},fork`,
          'EXEC:cat',
        ]);
        await sleep(200);
        return c;
      }
    }
  }
}
