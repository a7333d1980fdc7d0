/**
 * udp: iperf3 -u at increasing offered rates, 1200-byte datagrams: datagrams/s
 * delivered to the server and loss, straight over the veth vs through the TUN
 * with direct and via dante (SOCKS5 UDP ASSOCIATE); and, to show what dante
 * itself carries, the same rates straight through dante without fakeproxy
 * (bench/lib/socks-udp.c: iperf3 speaks no SOCKS).
 */

import { readFileSync } from 'node:fs';
import { probeUdp } from '../lib/daemon.js';
import { type Ctx, waitListening } from '../lib/env.js';
import type { Row, Section } from '../lib/report.js';
import { iperfUdp, socksUdp, udpSnmp, VerifyError } from '../lib/tools.js';
import { bigFile, IPERF_NAME, PORTS, Topology } from '../lib/topology.js';
import { alternate, path, repeat, rows, type Scenario } from './common.js';
import { withDaemon } from './tcp.js';

const LEN = 1200;
const FIRST_PORT = 5300;
/**
 * The socket buffers (iperf3 -w, the receiver's too) of the rows that run
 * 1 Gbit/s as a QUIC stack would: quic-go asks the kernel for a 7 MiB
 * receive buffer, Chromium for 1 MiB. At the 208 KiB default a receiver that
 * waits ~1 ms for a CPU overflows at this rate on every path.
 */
const WINDOW_MIB = 4;
const WINDOW = `${WINDOW_MIB}M`;
const WINDOW_RATE = '1G';

/** net.core.rmem_max, the cap on what -w gets (SO_RCVBUF): a namespace starts with the host's value. */
function rmemMax(): string {
  try {
    return `${(Number(readFileSync('/proc/sys/net/core/rmem_max', 'utf8')) / 2 ** 20).toFixed(2)} MiB`;
  } catch {
    return 'unknown';
  }
}

export const udp: Scenario = {
  name: 'udp',
  describe: 'iperf3 -u at increasing rates: datagrams/s and loss, TUN (direct, dante) vs veth',
  async run(ctx: Ctx): Promise<Section[]> {
    const rates = ctx.quick ? ['1G'] : ['100M', '500M', '1G', '2G'];
    const secs = 2;
    const paths = [
      { id: 'veth', label: 'veth, no proxy' },
      { id: 'tun', label: 'TUN → fakeproxy direct' },
      { id: 'tun-dante', label: 'TUN → fakeproxy → dante' },
      { id: 'dante', label: 'client → dante, no fakeproxy' },
    ] as const;
    // The same two paths with QUIC-sized socket buffers, at one rate.
    const windowed = [
      { id: `veth-w${WINDOW}`, label: `veth, no proxy, -w ${WINDOW}` },
      { id: `tun-w${WINDOW}`, label: `TUN → fakeproxy direct, -w ${WINDOW}` },
    ] as const;
    const s: Section = {
      scenario: 'udp',
      title: `iperf3 -u ${secs} s, ${LEN}-byte datagrams, server-side counts`,
      notes: [],
      rows: [],
    };
    // One path at one rate: delivered (compared with `baseline`), loss, and (not on the dante-only path) the
    // share lost at a full receive buffer.
    const pathRows = (id: string, label: string, rate: string, baseline: string | undefined, rcvbuf = true) =>
      rows(
        {
          id: `${id}@${rate}`,
          label: `${label} @ ${rate}bit/s`,
          metric: 'delivered',
          unit: 'dgram/s',
          compare: baseline === undefined ? undefined : [{ to: `${baseline}@${rate}` }],
        },
        {
          id: `${id}@${rate}-loss`,
          label: `${label} @ ${rate}bit/s`,
          metric: 'loss',
          unit: '%',
          higherIsBetter: false,
        },
        ...(rcvbuf
          ? [
              {
                id: `${id}@${rate}-rcvbuf`,
                label: `${label} @ ${rate}bit/s`,
                metric: 'of it at a full rcvbuf',
                unit: '%',
                higherIsBetter: false,
              },
            ]
          : []),
      );
    for (const rate of rates)
      for (const p of paths)
        s.rows.push(...pathRows(p.id, p.label, rate, p.id === 'veth' ? undefined : 'veth', p.id !== 'dante'));
    const [vethW, tunW] = windowed;
    s.rows.push(
      ...pathRows(vethW.id, vethW.label, WINDOW_RATE, undefined),
      ...pathRows(tunW.id, tunW.label, WINDOW_RATE, vethW.id),
    );
    const topo = await Topology.create(ctx, 'udp');
    try {
      topo.big = bigFile(ctx, 1024 * 1024);
      await topo.start('dnsmasq', 'origin', 'dante', 'udpecho');
      const get = (id: string): Row => s.rows.find((r) => r.id === id) as Row;
      // A fresh one-shot server on a fresh port per run: a proxy may still be flushing queued
      // datagrams of the previous run, and iperf3 -s pairs its UDP socket with the first sender
      // it hears, so a stray late datagram on a shared port would hijack the next test.
      let port = FIRST_PORT;
      const oneRun = async (host: string, rate: string, window?: string) => {
        port = port >= FIRST_PORT + 500 ? FIRST_PORT : port + 1;
        const srv = topo.upstream.spawn('iperf3', ['-s', '-1', '-p', String(port)], { stdio: 'ignore' });
        try {
          await waitListening(topo.upstream, 'tcp', '*', port).catch(() =>
            waitListening(topo.upstream, 'tcp', '0.0.0.0', port),
          );
          const before = await udpSnmp(topo.upstream);
          const r = await iperfUdp(topo.client, host, port, secs, rate, LEN, window);
          const after = await udpSnmp(topo.upstream);
          return { ...r, rcvbufPct: (100 * (after.RcvbufErrors - before.RcvbufErrors)) / r.packets };
        } finally {
          srv.kill('SIGKILL');
        }
      };
      interface Leg {
        pid: string;
        host: string;
        window?: string;
      }
      const ids = (pid: string, at = rates) =>
        at.flatMap((r) => [`${pid}@${r}`, `${pid}@${r}-loss`, `${pid}@${r}-rcvbuf`]);
      /**
       * Each rate on every leg, the legs' repetitions alternating (leg 1, leg 2, leg 1, …); a leg
       * that fails at one rate loses that rate's rows only.
       */
      const sweep = async (legs: Leg[], at = rates) => {
        for (const rate of at) {
          if (ctx.aborted) return;
          const rs = await alternate(
            ctx,
            legs,
            (l) => ({ section: s, ids: ids(l.pid, [rate]), what: `udp: ${l.pid} at ${rate}` }),
            (l) => oneRun(l.host, rate, l.window),
          );
          for (const [l, r] of rs) {
            get(`${l.pid}@${rate}`).samples = r.map((x) => x.pps);
            get(`${l.pid}@${rate}-loss`).samples = r.map((x) => x.lossPct);
            get(`${l.pid}@${rate}-rcvbuf`).samples = r.map((x) => x.rcvbufPct);
          }
        }
      };
      // The plain veth and TUN → direct alternate run by run with the daemon up (the veth path does
      // not touch the TUN): the ratios the goals use pair runs taken one right after the other.
      await path(
        ctx,
        s,
        [...ids('veth'), ...ids(vethW.id, [WINDOW_RATE]), ...ids('tun'), ...ids(tunW.id, [WINDOW_RATE])],
        'udp: veth and TUN → fakeproxy direct, alternating',
        () =>
          withDaemon(topo, 'direct', async () => {
            const overVeth = await probeUdp(topo, topo.upIp);
            if (overVeth) throw new Error(`UDP echo server check over the veth: ${overVeth}`);
            const why = await probeUdp(topo);
            if (why) throw new VerifyError(`UDP through the TUN does not work (direct): ${why}`);
            await sweep([
              { pid: 'veth', host: topo.upIp },
              { pid: 'tun', host: IPERF_NAME },
            ]);
            await sweep(
              [
                { pid: vethW.id, host: topo.upIp, window: WINDOW },
                { pid: tunW.id, host: IPERF_NAME, window: WINDOW },
              ],
              [WINDOW_RATE],
            );
          }),
      );
      await path(ctx, s, ids('dante'), 'udp: straight to dante', async () => {
        for (const rate of rates) {
          if (ctx.aborted) return;
          const rs = await repeat(ctx, () => {
            port = port >= FIRST_PORT + 500 ? FIRST_PORT : port + 1;
            const proxy = { ip: topo.upIp, port: PORTS.dante };
            // Addressed by name, as fakeproxy addresses a fake IP's datagrams: dante resolves it per datagram.
            const sink = { ip: topo.upIp, port, name: IPERF_NAME };
            return socksUdp(ctx, topo.client, topo.upstream, proxy, sink, secs, rate, LEN);
          });
          get(`dante@${rate}`).samples = rs.map((r) => r.pps);
          get(`dante@${rate}-loss`).samples = rs.map((r) => r.lossPct);
        }
      });
      await path(ctx, s, ids('tun-dante'), 'udp: TUN → fakeproxy → dante', () =>
        withDaemon(topo, 'dante', async () => {
          const why = await probeUdp(topo);
          if (why) throw new VerifyError(`UDP through the TUN does not work (dante): ${why}`);
          await sweep([{ pid: 'tun-dante', host: IPERF_NAME }]);
        }),
      );
      s.notes.push(
        'veth and tun (and their -w rows) alternate run by run, with the daemon up for both',
        'iperf3 UDP: the control connection is TCP (through the TUN too); datagrams/s = (sent − lost) / seconds as counted by the server; a run that delivers nothing fails',
        `offered rate is paced by the iperf3 client; loss is what the path could not carry (socket buffers at their defaults on every hop, except the "-w ${WINDOW}" rows: iperf3's sockets at both ends ${WINDOW_MIB} MiB, as QUIC stacks ask — quic-go 7 MiB, Chromium 1 MiB — within net.core.rmem_max, here ${rmemMax()}; the daemon's own sockets as always); each run uses a fresh one-shot iperf3 -s on a new port`,
        '"of it at a full rcvbuf": Udp RcvbufErrors of the upstream namespace during the run (/proc/net/snmp) per datagram sent, i.e. the share lost at the receiver\'s full socket buffer (208 KiB default), not on the way; on dante paths dante\'s own sockets count too',
        `"client → dante, no fakeproxy": bench/lib/socks-udp.c does UDP ASSOCIATE with dante and sends the same rate and size (paced in 1 ms slices, sendmmsg) to a counting sink beside iperf3 -s, addressed as fakeproxy addresses them, by name (ATYP 3, ${IPERF_NAME}: dante resolves it for every datagram); what dante delivers there bounds TUN → fakeproxy → dante`,
      );
      return [s];
    } finally {
      await topo.destroy();
    }
  },
};
