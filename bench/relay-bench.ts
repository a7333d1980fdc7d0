/**
 * Relay throughput and memory on loopback, and what glibc malloc tunables do
 * to each relay path. Not part of `npm run bench` (no topology, no root):
 *   npm run build && node dist/bench/relay-bench.js [GiB] [runs]
 * Origin (source), relay and client (sink) are three processes, so the relay
 * has its event loop to itself, as in the daemon; the relay process is
 * started afresh per run with the malloc environment under test, and reports
 * its CPU seconds and peak RSS (getrusage) after the transfer.
 * Relay modes:
 *   none    client straight to the origin (the ceiling)
 *   pipe    `a.pipe(b)`: Node's 'data' path, a fresh 64 KiB Buffer per read
 *           (what the JS Relay did before it read into one reused buffer)
 *   js      the JS `Relay` (src/proxy/relay.ts): one reused read buffer per direction
 *   splice  the native `SpliceRelay` (native/relay.cc): splice(2), no byte in JS
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import * as net from 'node:net';
import { Relay, SpliceRelay } from '../src/proxy/relay.js';

type Mode = 'none' | 'pipe' | 'js' | 'splice';
const MODES: Mode[] = ['none', 'pipe', 'js', 'splice'];

/** glibc malloc environments compared (mallopt(3) names in parentheses). */
const MALLOC_ENVS: Record<string, Record<string, string>> = {
  default: {},
  // M_ARENA_MAX 1: every thread shares the main arena
  'arena-max-1': { MALLOC_ARENA_MAX: '1' },
  // M_TOP_PAD 256 MiB + M_TRIM_THRESHOLD 1 GiB: the pair, never give heap top back
  'top-pad+trim': { MALLOC_TOP_PAD_: '268435456', MALLOC_TRIM_THRESHOLD_: '1073741824' },
  // M_MMAP_THRESHOLD 32 KiB: every 64 KiB read buffer is its own mmap/munmap
  'mmap-32k': { MALLOC_MMAP_THRESHOLD_: '32768' },
};

const ORIGIN = `
const net = require('node:net');
const total = Number(process.argv[1]);
const chunk = Buffer.alloc(65536, 7);
const srv = net.createServer((s) => {
  let left = total;
  const pump = () => { while (left > 0) { left -= chunk.length; if (!s.write(chunk)) return s.once('drain', pump); } s.end(); };
  pump();
  s.on('error', () => {});
}).listen(0, '127.0.0.1', () => console.log(srv.address().port));
`;
const SINK = `
const net = require('node:net');
const s = net.connect(Number(process.argv[1]), '127.0.0.1');
let n = 0; const t0 = process.hrtime.bigint();
s.on('data', (b) => { n += b.length; });
s.on('end', () => { const ms = Number(process.hrtime.bigint() - t0) / 1e6; console.log(JSON.stringify({ n, ms })); process.exit(0); });
`;

async function firstLine(p: ChildProcess): Promise<string> {
  const [d] = (await once(p.stdout as NodeJS.ReadableStream, 'data')) as [Buffer];
  return d.toString().trim();
}

/** Child role: relay one connection to the origin, then print CPU s and peak RSS. */
async function relayChild(mode: Mode, originPort: number): Promise<void> {
  const splice = mode === 'splice' ? new SpliceRelay({ threads: 1 }) : undefined;
  const server = net.createServer({ allowHalfOpen: true }, (a) => {
    const b = net.connect({ port: originPort, host: '127.0.0.1', allowHalfOpen: true });
    b.once('connect', async () => {
      if (mode === 'pipe') {
        a.pipe(b);
        b.pipe(a);
        a.on('error', () => b.destroy());
        b.on('error', () => a.destroy());
        await once(a, 'close');
      } else if (mode === 'js') {
        await new Relay(a, b, { idleTimeoutMs: 0 }).done;
      } else {
        const h = splice?.handOff(a, b);
        if (!h) throw new Error('hand-off refused');
        await h.done;
      }
      const u = process.resourceUsage();
      console.log(JSON.stringify({ cpu: (u.userCPUTime + u.systemCPUTime) / 1e6, maxRssKiB: u.maxRSS }));
      splice?.stop();
      server.close();
    });
  });
  server.listen(0, '127.0.0.1', () => console.log((server.address() as net.AddressInfo).port));
}

interface Sample {
  gbps: number;
  cpu?: number;
  maxRssKiB?: number;
}

async function run(mode: Mode, env: Record<string, string>, originPort: number, total: number): Promise<Sample> {
  let port = originPort;
  let relay: ChildProcess | undefined;
  if (mode !== 'none') {
    relay = spawn(process.execPath, [process.argv[1] as string, '--relay', mode, String(originPort)], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, ...env },
    });
    port = Number(await firstLine(relay));
  }
  const sink = spawn(process.execPath, ['-e', SINK, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const { n, ms } = JSON.parse(await firstLine(sink)) as { n: number; ms: number };
  if (n < total) throw new Error(`short transfer ${n}`);
  const gbps = (n * 8) / (ms / 1000) / 1e9;
  if (!relay) return { gbps };
  const usage = JSON.parse(await firstLine(relay)) as { cpu: number; maxRssKiB: number };
  await once(relay, 'exit');
  return { gbps, ...usage };
}

async function main(): Promise<void> {
  const gib = Number(process.argv[2] ?? 1);
  const runs = Number(process.argv[3] ?? 3);
  const total = Math.round(gib * 2 ** 30);
  const origin = spawn(process.execPath, ['-e', ORIGIN, String(total)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const originPort = Number(await firstLine(origin));
  const res = new Map<string, Sample[]>();
  // Interleaved: every mode × environment once per round, so load drift hits all rows alike.
  for (let i = 0; i < runs; i++) {
    for (const mode of MODES) {
      for (const [name, env] of Object.entries(MALLOC_ENVS)) {
        if (mode === 'none' && name !== 'default') continue;
        const key = `${mode} ${name}`;
        const s = await run(mode, env, originPort, total);
        res.set(key, [...(res.get(key) ?? []), s]);
      }
    }
  }
  origin.kill();
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  const ceiling = med((res.get('none default') ?? []).map((s) => s.gbps));
  console.log(`${gib} GiB per run, medians of ${runs}; relay CPU s/GB and peak RSS of the relay process`);
  for (const [key, xs] of res) {
    const g = med(xs.map((s) => s.gbps));
    const cpu =
      xs[0]?.cpu === undefined ? '' : `  ${(med(xs.map((s) => s.cpu ?? 0)) / (gib * 1.073741824)).toFixed(2)} CPU s/GB`;
    const rss =
      xs[0]?.maxRssKiB === undefined
        ? ''
        : `  peak RSS ${(med(xs.map((s) => s.maxRssKiB ?? 0)) / 1024).toFixed(1)} MiB`;
    console.log(
      `${key.padEnd(22)} ${g.toFixed(2)} Gbit/s (${(g / ceiling).toFixed(2)}× none)${cpu}${rss}  runs ${xs.map((s) => s.gbps.toFixed(2)).join(' ')}`,
    );
  }
}

if (process.argv[2] === '--relay') void relayChild(process.argv[3] as Mode, Number(process.argv[4]));
else void main();
