/**
 * --tun-congestion: the Listener's sockets (the TUN side of each proxied
 * connection) use the named TCP congestion control, inherited from the
 * listening socket; the daemon's upstream sockets and the apps keep the
 * system's. Seen with `ss -tni` on a download held open through the TUN.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { START_OPTIONS } from '../../src/options.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { createTopology, HTTP_PORT, slowCurl, type Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();

/** Congestion control of each established TCP socket in `ss -tni`, by "local peer". */
function ccBySocket(ss: string): Map<string, string> {
  const out = new Map<string, string>();
  const lines = ss.split('\n');
  for (let i = 0; i + 1 < lines.length; i++) {
    const f = lines[i].trim().split(/\s+/);
    if (f[0] !== 'ESTAB') continue;
    const cc = /^\s+([a-z0-9_]+)\s/.exec(lines[i + 1])?.[1];
    if (cc) out.set(`${f[3]} ${f[4]}`, cc);
  }
  return out;
}

describe.skipIf(skip)('--tun-congestion', () => {
  let t: Topology;
  let system: string;

  beforeAll(async () => {
    t = await createTopology();
    system = (await t.client.must('cat', ['/proc/sys/net/ipv4/tcp_congestion_control'])).trim();
  }, 60_000);

  afterAll(async () => {
    await t?.destroy();
  });

  /** Starts a daemon with `args`, holds a download open and returns the Listener's and the upstream socket's algorithm. */
  async function during(args: string[]): Promise<{ listener: string[]; upstream: string[]; log: string }> {
    const d = await t.startDaemon(args);
    const curl = slowCurl(t.client, `http://origin.test:${HTTP_PORT}/big?mib=64`, '1M', 30);
    try {
      const port = `:${START_OPTIONS.listenPort.default}`;
      for (let i = 0; i < 50; i++) {
        const cc = ccBySocket(await t.client.must('ss', ['-tni']));
        const listener = [...cc].filter(([k]) => k.split(' ')[0].endsWith(port)).map(([, v]) => v);
        const upstream = [...cc].filter(([k]) => k.split(' ')[1] === `${t.upstreamIp}:${HTTP_PORT}`).map(([, v]) => v);
        if (listener.length > 0 && upstream.length > 0) {
          expect(curl.exitCode).toBeNull();
          return { listener, upstream, log: d.output };
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      throw new Error(`no relayed connection in ss -tni: ${await t.client.must('ss', ['-tni'])}`);
    } finally {
      curl.kill('SIGKILL');
      await d.stop();
    }
  }

  it('default: the Listener side uses cubic, the upstream side the system default', async () => {
    expect(START_OPTIONS.tunCongestion.default).toBe('cubic');
    const r = await during([]);
    expect(r.listener).toEqual(['cubic']);
    expect(r.upstream).toEqual([system]);
  }, 60_000);

  it('a named algorithm other than the system default reaches the Listener side only', async () => {
    const name = system === 'reno' ? 'cubic' : 'reno';
    const r = await during(['--tun-congestion', name]);
    expect(r.listener).toEqual([name]);
    expect(r.upstream).toEqual([system]);
    expect(r.log).not.toMatch(/--tun-congestion/);
  }, 60_000);

  it('kernel, and an algorithm this kernel lacks (one warning line), keep the system default', async () => {
    const k = await during(['--tun-congestion', 'kernel']);
    expect(k.listener).toEqual([system]);
    const r = await during(['--tun-congestion', 'nosuchcc']);
    expect(r.listener).toEqual([system]);
    const warn = r.log.split('\n').filter((l) => l.includes('--tun-congestion'));
    expect(warn).toEqual([
      expect.stringMatching(/--tun-congestion nosuchcc: ENOENT: this kernel has no 'nosuchcc' .*system's congestion/),
    ]);
  }, 60_000);
});
