/**
 * A/B of the tcp-connect measurements between builds, interleaved in one
 * topology so that machine load drifts hit every build alike:
 *
 *   node dist/bench/ab-connect.js [--rounds N] [--n REQS] [--paced SECS] NAME=/path/to/dist/src/cli.js ...
 *
 * Each round measures the plain veth, then every build in the order given (a
 * fresh daemon each): ab (64 concurrent, closed loop) and the open-loop pacer
 * at PACED_RATE. Prints per-round rows and per-build medians: conn/s, the
 * conn/s ratio to the same round's veth, paced p99 and added p99 (the build's
 * paced p99 minus the same round's veth paced p99). Needs root.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { abCtx, parseAbArgs, type ThreadTicks, threadTicks } from './lib/ab.js';
import { Daemon, probeTun } from './lib/daemon.js';
import { deleteAllNetns, removeStale, removeTmp } from './lib/env.js';
import { median } from './lib/report.js';
import { abRun, pacedRun } from './lib/tools.js';
import { bigFile, ORIGIN_NAME, PORTS, Topology } from './lib/topology.js';
import { CONCURRENCY, PACED_RATE } from './scenarios/tcpConnect.js';

/** Per thread name (comm): CPU ticks (user + system) and context switches, summed over the daemon's threads. */
function perConn(a: ThreadTicks, b: ThreadTicks, n: number): string {
  return [...b]
    .map(([k, v]) => {
      const o = a.get(k) ?? { ticks: 0, csw: 0 };
      return `${k} ${(((v.ticks - o.ticks) * 1e4) / n).toFixed(0)}µs ${((v.csw - o.csw) / n).toFixed(2)}cs`;
    })
    .filter((x) => !/ 0µs 0.00cs$/.test(x))
    .join(', ');
}

interface Sample {
  rps: number;
  pacedP99: number;
  jsUs: number;
}

/**
 * The daemon's young-generation collections while `stop` is pending, from
 * its --trace-gc lines (FAKEPROXY_BENCH_NODE_ARGS="--trace-gc …"; nothing
 * without it): how many, their pauses, and the bytes allocated between them
 * (each one's heap before it minus the previous one's after).
 */
function scavenges(d: Daemon): { stop(): { n: number; pauseMs: number; maxMs: number; allocMb: number } } {
  const r = { n: 0, pauseMs: 0, maxMs: 0, allocMb: 0 };
  let rest = '';
  let after: number | undefined;
  const line = (l: string) => {
    const m =
      /: (Scavenge|Mark-Compact|Mark-sweep)[^\d]*([\d.]+) \([\d.]+\) -> ([\d.]+) \([\d.]+\) MB, (?:pooled: [\d.]+ MB, )?([\d.]+) \/ [\d.]+ ms/.exec(
        l,
      );
    if (!m) return;
    const before = Number(m[2]);
    if (m[1] === 'Scavenge') {
      const ms = Number(m[4]);
      r.n++;
      r.pauseMs += ms;
      r.maxMs = Math.max(r.maxMs, ms);
      if (after !== undefined && before > after) r.allocMb += before - after;
    }
    after = Number(m[3]);
  };
  const on = (chunk: string) => {
    rest += chunk;
    for (let i = rest.indexOf('\n'); i >= 0; i = rest.indexOf('\n')) {
      line(rest.slice(0, i));
      rest = rest.slice(i + 1);
    }
  };
  d.child.stdout?.on('data', on);
  return {
    stop() {
      d.child.stdout?.off('data', on);
      return r;
    },
  };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const { opts, builds } = parseAbArgs(argv, { rounds: 3, n: 20_000, paced: 8 });
  const { rounds, n, paced: pacedSecs } = opts;
  const ctx = abCtx();
  await removeStale();
  const topo = await Topology.create(ctx, 'abc');
  const csv = join(ctx.tmp, 'ab.csv');
  const results = new Map<string, Sample[]>([['veth', []], ...builds.map(([b]) => [b, []] as [string, Sample[]])]);
  const ratio = new Map<string, number[]>(builds.map(([b]) => [b, []]));
  const added = new Map<string, number[]>(builds.map(([b]) => [b, []]));
  try {
    topo.big = bigFile(ctx, 1024 * 1024);
    await topo.start('dnsmasq', 'origin');
    const measure = async (url: string, d?: Daemon, name = ''): Promise<Sample> => {
      await abRun(topo.client, url, Math.min(1000, n), CONCURRENCY, csv, 20);
      const cpu0 = d?.jsThreadCpuSecs() ?? 0;
      const r = await abRun(topo.client, url, n, CONCURRENCY, csv, 15);
      const jsUs = d ? ((d.jsThreadCpuSecs() - cpu0) * 1e6) / r.complete : 0;
      const t0 = d ? threadTicks(d.pid) : undefined;
      // AB_PROFILE="perf stat -p %PID% -- sleep 3": a command run beside the daemon's paced run (it must end by
      // itself); %PID% is the daemon, %NAME% the build's name.
      const prof =
        d && process.env.AB_PROFILE
          ? spawn('sh', ['-c', process.env.AB_PROFILE.replaceAll('%PID%', String(d.pid)).replaceAll('%NAME%', name)], {
              stdio: 'inherit',
            })
          : undefined;
      const gc = d ? scavenges(d) : undefined;
      const p = await pacedRun(ctx, topo.client, url, PACED_RATE, pacedSecs);
      const g = gc?.stop();
      if (prof && prof.exitCode === null) await new Promise((r) => prof.once('exit', r));
      if (d && t0) console.log(`    paced per conn: ${perConn(t0, threadTicks(d.pid), p.ok)}`);
      if (g && g.n > 0)
        console.log(
          `    paced scavenges: ${g.n} (${((g.n * 1000) / p.ok).toFixed(2)} per 1000 conn), pauses ${g.pauseMs.toFixed(1)} ms total, max ${g.maxMs.toFixed(2)} ms; ~${((g.allocMb * 1024 * 1024) / p.ok).toFixed(0)} B allocated per conn`,
        );
      console.log(
        `    paced p50 ${p.p50ms.toFixed(2)} p99 ${p.p99ms.toFixed(2)} connect p99 ${p.connectP99ms.toFixed(2)} ms, late ${p.late}`,
      );
      return { rps: r.rps, pacedP99: p.p99ms, jsUs };
    };
    for (let i = 0; i < rounds; i++) {
      const v = await measure(`http://${topo.upIp}:${PORTS.origin}/small`);
      results.get('veth')?.push(v);
      console.log(`round ${i} veth: ${v.rps.toFixed(0)} conn/s, paced p99 ${v.pacedP99.toFixed(2)} ms`);
      for (const [name, cli] of builds) {
        const d = await Daemon.start(topo, { upstream: 'direct', cli });
        try {
          const why = await probeTun(topo, d);
          if (why) throw new Error(`${name}: the TUN path does not work: ${why}`);
          const s = await measure(`http://${ORIGIN_NAME}:${PORTS.origin}/small`, d, name);
          results.get(name)?.push(s);
          ratio.get(name)?.push(s.rps / v.rps);
          added.get(name)?.push(s.pacedP99 - v.pacedP99);
          console.log(
            `round ${i} ${name} (pid ${d.pid}): ${s.rps.toFixed(0)} conn/s (${(s.rps / v.rps).toFixed(2)}×), paced p99 ${s.pacedP99.toFixed(2)} ms (+${(s.pacedP99 - v.pacedP99).toFixed(2)}), JS ${s.jsUs.toFixed(0)} µs/conn`,
          );
        } finally {
          await d.stop();
        }
      }
    }
    console.log('\nmedians:');
    for (const [name, ss] of results) {
      const line = `${name.padEnd(10)} ${median(ss.map((s) => s.rps)).toFixed(0)} conn/s, paced p99 ${median(ss.map((s) => s.pacedP99)).toFixed(2)} ms`;
      const extra =
        name === 'veth'
          ? ''
          : `, ratio ${median(ratio.get(name) ?? []).toFixed(2)}×, added p99 +${median(added.get(name) ?? []).toFixed(2)} ms, JS ${median(ss.map((s) => s.jsUs)).toFixed(0)} µs/conn`;
      console.log(line + extra);
    }
  } finally {
    await topo.destroy();
    await deleteAllNetns();
    removeTmp();
  }
}

main().catch((e) => {
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
