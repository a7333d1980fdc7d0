/**
 * A/B of the udp measurements between builds, interleaved in one topology so
 * that machine load drifts hit every build alike, with where the datagrams
 * died:
 *
 *   node dist/bench/ab-udp.js [--rounds N] [--secs S] [--rate 1G] [--window 4M] NAME=/path/to/dist/src/cli.js ...
 *
 * Each round measures the plain veth, then every build in the order given (a
 * fresh daemon each, `direct`): iperf3 -u at --rate, 1200-byte datagrams, as
 * `npm run bench -- udp` does (--window: iperf3's -w, both ends' socket
 * buffers, on every path alike). Per run it prints delivered datagrams/s, the
 * ratio to the same round's veth, loss, and the counters that say where the
 * lost datagrams went: Udp RcvbufErrors of each namespace (client: the
 * Listener's socket; upstream: iperf3 -s), the TUN's and the veths' drops, and
 * the daemon's CPU per datagram sent, per thread. Needs root.
 *
 * AB_PROFILE="perf record -g -o /tmp/p.%NAME%.data -p %PID% -- sleep 1.5": a command run
 * beside each build's iperf3 (it must end by itself).
 */
import { spawn } from 'node:child_process';
import { abCtx, parseAbArgs, threadTicks } from './lib/ab.js';
import { Daemon, probeUdp } from './lib/daemon.js';
import { deleteAllNetns, type Netns, removeStale, removeTmp, waitListening } from './lib/env.js';
import { median } from './lib/report.js';
import { iperfUdp, udpSnmp } from './lib/tools.js';
import { bigFile, IPERF_NAME, Topology } from './lib/topology.js';

const CLEAN_VETH_LOSS = 3;

/** RX/TX packet and drop counters of every link in `ns` (ip -s -j link). */
async function links(ns: Netns): Promise<Map<string, Record<string, number>>> {
  const r = await ns.exec('ip', ['-s', '-j', 'link', 'show']);
  const out = new Map<string, Record<string, number>>();
  for (const l of JSON.parse(r.stdout) as {
    ifname: string;
    stats64?: { rx: Record<string, number>; tx: Record<string, number> };
  }[]) {
    if (!l.stats64) continue;
    out.set(l.ifname, {
      rxp: l.stats64.rx.packets,
      rxd: l.stats64.rx.dropped,
      txp: l.stats64.tx.packets,
      txd: l.stats64.tx.dropped,
    });
  }
  return out;
}

function linkDelta(a: Map<string, Record<string, number>>, b: Map<string, Record<string, number>>): string {
  const parts: string[] = [];
  for (const [k, v] of b) {
    if (k === 'lo') continue;
    const o = a.get(k) ?? {};
    const d = (f: string) => v[f] - (o[f] ?? 0);
    parts.push(`${k} rx ${d('rxp')}/drop ${d('rxd')} tx ${d('txp')}/drop ${d('txd')}`);
  }
  return parts.join('; ');
}

function snmpDelta(a: Record<string, number>, b: Record<string, number>): string {
  return ['InDatagrams', 'RcvbufErrors', 'InErrors', 'SndbufErrors', 'NoPorts']
    .map((k) => `${k} ${b[k] - a[k]}`)
    .join(' ');
}

interface Sample {
  pps: number;
  loss: number;
  rcvbufPct: number;
  usPerDgram: number;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const { opts, builds } = parseAbArgs(argv, {
    rounds: 3,
    secs: 2,
    rate: '1G',
    window: undefined as string | undefined,
  });
  const { rounds, secs, rate, window } = opts;
  const ctx = abCtx();
  await removeStale();
  const topo = await Topology.create(ctx, 'abu');
  const results = new Map<string, Sample[]>([['veth', []], ...builds.map(([b]) => [b, []] as [string, Sample[]])]);
  const ratio = new Map<string, number[]>(builds.map(([b]) => [b, []]));
  let port = 5300;
  try {
    topo.big = bigFile(ctx, 1024 * 1024);
    await topo.start('dnsmasq', 'origin', 'udpecho');
    const measure = async (host: string, name: string, d?: Daemon): Promise<Sample> => {
      port++;
      const srv = topo.upstream.spawn('iperf3', ['-s', '-1', '-p', String(port)], { stdio: 'ignore' });
      try {
        await waitListening(topo.upstream, 'tcp', '*', port).catch(() =>
          waitListening(topo.upstream, 'tcp', '0.0.0.0', port),
        );
        const [u0, c0, lu0, lc0] = await Promise.all([
          udpSnmp(topo.upstream),
          udpSnmp(topo.client),
          links(topo.upstream),
          links(topo.client),
        ]);
        const t0 = d ? threadTicks(d.pid) : undefined;
        const prof =
          d && process.env.AB_PROFILE
            ? spawn(
                'sh',
                ['-c', `${process.env.AB_PROFILE.replaceAll('%PID%', String(d.pid)).replaceAll('%NAME%', name)}`],
                { stdio: 'inherit' },
              )
            : undefined;
        const r = await iperfUdp(topo.client, host, port, secs, rate, 1200, window);
        if (prof && prof.exitCode === null) await new Promise((res) => prof.once('exit', res));
        const t1 = d ? threadTicks(d.pid) : undefined;
        const [u1, c1, lu1, lc1] = await Promise.all([
          udpSnmp(topo.upstream),
          udpSnmp(topo.client),
          links(topo.upstream),
          links(topo.client),
        ]);
        let usPerDgram = 0;
        let per = '';
        if (t0 && t1) {
          let tot = 0;
          per = [...t1]
            .map(([k, v]) => {
              const dt = v.ticks - (t0.get(k)?.ticks ?? 0);
              tot += dt;
              return dt ? `${k} ${((dt * 1e4) / r.packets).toFixed(2)}` : '';
            })
            .filter(Boolean)
            .join(', ');
          usPerDgram = (tot * 1e4) / r.packets;
        }
        const rcvbufPct = (100 * (u1.RcvbufErrors - u0.RcvbufErrors)) / r.packets;
        console.log(
          `    ${name}: sent ${r.packets}, ${r.pps.toFixed(0)} dgram/s, loss ${r.lossPct.toFixed(2)} % (rcvbuf at iperf3 -s ${rcvbufPct.toFixed(2)} %)`,
        );
        console.log(`      upstream snmp: ${snmpDelta(u0, u1)}`);
        console.log(`      client   snmp: ${snmpDelta(c0, c1)}`);
        console.log(`      upstream links: ${linkDelta(lu0, lu1)}`);
        console.log(`      client   links: ${linkDelta(lc0, lc1)}`);
        if (d) console.log(`      daemon µs/dgram ${usPerDgram.toFixed(2)} (${per})`);
        return { pps: r.pps, loss: r.lossPct, rcvbufPct, usPerDgram };
      } finally {
        srv.kill('SIGKILL');
      }
    };
    for (let i = 0; i < rounds; i++) {
      const v = await measure(topo.upIp, 'veth');
      results.get('veth')?.push(v);
      for (const [name, cli] of builds) {
        const d = await Daemon.start(topo, { upstream: 'direct', cli });
        try {
          const why = await probeUdp(topo);
          if (why) throw new Error(`${name}: UDP through the TUN does not work: ${why}`);
          const s = await measure(IPERF_NAME, name, d);
          results.get(name)?.push(s);
          ratio.get(name)?.push(s.pps / v.pps);
          if (process.env.AB_STATUS) {
            const st = await d.status(topo);
            console.log(`      status: ${JSON.stringify(st).slice(0, 4000)}`);
          }
        } finally {
          await d.stop();
        }
        console.log(`round ${i} ${name}: ratio ${(ratio.get(name)?.at(-1) ?? 0).toFixed(2)}×`);
      }
    }
    // A round whose veth run lost more than CLEAN_VETH_LOSS % ran on a busy machine (another
    // process took a CPU): its medians are printed apart.
    const vloss = results.get('veth')?.map((s) => s.loss) ?? [];
    const clean = vloss.map((l) => l <= CLEAN_VETH_LOSS);
    for (const [title, keep] of [
      ['all rounds', vloss.map(() => true)],
      [`rounds with veth loss ≤ ${CLEAN_VETH_LOSS} %`, clean],
    ] as const) {
      const n = keep.filter(Boolean).length;
      console.log(`\nmedians (${rate}, ${secs} s), ${title}: ${n} of ${rounds}`);
      if (!n) continue;
      for (const [name, all] of results) {
        const ss = all.filter((_, i) => keep[i]);
        const rs = (ratio.get(name) ?? []).filter((_, i) => keep[i]);
        const extra = name === 'veth' ? '' : `, ratio ${median(rs).toFixed(3)}×`;
        console.log(
          `${name.padEnd(10)} ${median(ss.map((s) => s.pps)).toFixed(0)} dgram/s, loss ${median(ss.map((s) => s.loss)).toFixed(2)} %, rcvbuf ${median(ss.map((s) => s.rcvbufPct)).toFixed(2)} %, daemon ${median(ss.map((s) => s.usPerDgram)).toFixed(2)} µs/dgram${extra}`,
        );
      }
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
