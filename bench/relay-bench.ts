/**
 * Relay throughput on loopback: hand loop (Relay) vs stream.pipeline vs pipe.
 * Not a test (no *.test.ts): run by hand, numbers go in src/proxy/relay.ts.
 *   npx tsc -p test/unit/proxy/tsconfig.bench.json && node /tmp/fpbench/test/unit/proxy/relay-bench.js [GiB] [runs]
 * Origin (source) and client (sink) run in child processes so the relay has
 * its event loop to itself, as in the daemon.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import * as net from 'node:net';
import { pipeline } from 'node:stream';
import { Relay } from '../src/proxy/relay.js';

const GIB = Number(process.argv[2] ?? 2);
const RUNS = Number(process.argv[3] ?? 3);
const TOTAL = Math.round(GIB * 2 ** 30);

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

type Mode = 'hand' | 'pipeline' | 'pipe' | 'none';

async function run(mode: Mode, originPort: number): Promise<number> {
  let port = originPort;
  let server: net.Server | undefined;
  if (mode !== 'none') {
    server = net.createServer({ allowHalfOpen: true }, (a) => {
      const b = net.connect({ port: originPort, host: '127.0.0.1', allowHalfOpen: true });
      if (mode === 'hand') new Relay(a, b, { idleTimeoutMs: 0 });
      else if (mode === 'pipeline') {
        pipeline(a, b, () => {});
        pipeline(b, a, () => {});
      } else {
        a.pipe(b);
        b.pipe(a);
        a.on('error', () => b.destroy());
        b.on('error', () => a.destroy());
      }
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as net.AddressInfo).port;
  }
  const sink = spawn(process.execPath, ['-e', SINK, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const { n, ms } = JSON.parse(await firstLine(sink)) as { n: number; ms: number };
  server?.close();
  if (n < TOTAL) throw new Error(`short transfer ${n}`);
  return (n * 8) / (ms / 1000) / 1e9;
}

async function main() {
  const origin = spawn(process.execPath, ['-e', ORIGIN, String(TOTAL)], { stdio: ['ignore', 'pipe', 'inherit'] });
  const originPort = Number(await firstLine(origin));
  const res: Record<Mode, number[]> = { none: [], hand: [], pipeline: [], pipe: [] };
  for (let i = 0; i < RUNS; i++) {
    for (const m of ['none', 'hand', 'pipeline', 'pipe'] as Mode[]) res[m].push(await run(m, originPort));
  }
  origin.kill();
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;
  for (const [m, xs] of Object.entries(res)) {
    console.log(`${m.padEnd(9)} median ${med(xs).toFixed(2)} Gbit/s  runs ${xs.map((x) => x.toFixed(2)).join(' ')}`);
  }
}
void main();
