import { readFileSync, writeFileSync } from 'node:fs';
import { FakeproxyError, UsageError } from '../errors.js';
import { type NativeBinding, native } from '../native.js';
import { START_OPTIONS as O } from '../options.js';
import { type Ipv4Range, intToIp, rangesOverlap } from '../util/cidr.js';

export interface TunOptions {
  /** Interface name, 1–15 bytes. @default `--tun`'s (src/options.ts) */
  name?: string;
  range: Ipv4Range;
  /**
   * MTU. Path MTU to the real Internet is the upstream socket's business.
   * @default and why: `--mtu` in src/options.ts
   */
  mtu?: number;
  /** TUN queues (IFF_MULTI_QUEUE), one engine thread each. @default `--queues`' (src/options.ts) */
  queues?: number;
  /**
   * TUN offloads (IFF_VNET_HDR + TSO/checksum offload, see TunOpenOptions):
   * the engine reads and writes 64 KiB super-packets instead of one MTU each.
   * Falls back to none when the kernel refuses (`offload` false, `offloadError`).
   * @default true (`--no-tun-offload`)
   */
  offload?: boolean;
  /** Kernel transmit queue length of the device. @default and why: `--tun-txqueuelen` in src/options.ts */
  txQueueLen?: number;
  /** Injectable for tests. */
  binding?: NativeBinding;
  /** Injectable for tests: text of /proc/net/route. */
  readRoutes?: () => string;
}

export interface KernelRoute {
  iface: string;
  network: number;
  broadcast: number;
  text: string;
}

/** Parses /proc/net/route (little-endian hex fields) into ranges, skipping default routes unless asked. */
export function parseProcRoutes(text: string, withDefault = false): KernelRoute[] {
  const out: KernelRoute[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const dst = Number.parseInt(f[1], 16);
    const mask = Number.parseInt(f[7], 16);
    if (!Number.isFinite(dst) || !Number.isFinite(mask) || (mask === 0 && !withDefault)) continue;
    const swap = (n: number) =>
      (((n & 255) << 24) | (((n >>> 8) & 255) << 16) | (((n >>> 16) & 255) << 8) | (n >>> 24)) >>> 0;
    const network = swap(dst);
    const m = swap(mask);
    let len = 0;
    for (let v = m; v !== 0; v = (v << 1) >>> 0) len++;
    out.push({
      iface: f[0],
      network,
      broadcast: (network | (~m >>> 0)) >>> 0,
      text: `${intToIp(network)}/${len}`,
    });
  }
  return out;
}

/**
 * Transmit drops of `iface` from /proc/net/dev (the reader's network
 * namespace): packets the kernel routed into the device and dropped because
 * its transmit queue was full. Undefined when the device is not listed.
 */
export function parseProcNetDevTxDropped(text: string, iface: string): number | undefined {
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0 || line.slice(0, colon).trim() !== iface) continue;
    // receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets errs drop ...
    const f = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/);
    const n = Number(f[11]);
    return Number.isSafeInteger(n) ? n : undefined;
  }
  return undefined;
}

/**
 * The TypeScript face of the native TUN device. `open` creates and configures
 * the device (address = first host of the range, prefix route by the kernel);
 * `close` removes it with everything `open` added (the device is not
 * persistent, so closing its fds is enough — even a SIGKILLed daemon leaves
 * nothing behind).
 */
export class TunDevice {
  readonly name: string;
  readonly mtu: number;
  readonly range: Ipv4Range;
  readonly ifindex: number;
  /** Offloads on: every packet on the fds carries a virtio_net_hdr. */
  readonly offload: boolean;
  /** Why offloads were asked for but are off; undefined when on or not asked for. */
  readonly offloadError?: string;
  private fdList: number[];
  private readonly binding: NativeBinding;

  private constructor(
    name: string,
    mtu: number,
    range: Ipv4Range,
    ifindex: number,
    fds: number[],
    b: NativeBinding,
    offload = false,
    offloadError?: string,
  ) {
    this.offload = offload;
    this.offloadError = offloadError;
    this.name = name;
    this.mtu = mtu;
    this.range = range;
    this.ifindex = ifindex;
    this.fdList = fds;
    this.binding = b;
  }

  /** Non-blocking fds, one per queue; empty once closed. */
  get fds(): readonly number[] {
    return this.fdList;
  }

  get address(): string {
    return this.range.gatewayIp;
  }

  get closed(): boolean {
    return this.fdList.length === 0;
  }

  /**
   * Precondition: root or CAP_NET_ADMIN, /dev/net/tun present, no route of
   * another interface overlapping the range (it would steal part of it).
   */
  static open(opts: TunOptions): TunDevice {
    const name = opts.name ?? O.tun.default;
    const mtu = opts.mtu ?? O.mtu.default;
    const queues = opts.queues ?? O.queues.default;
    const txQueueLen = opts.txQueueLen ?? O.tunTxqueuelen.default;
    if (Buffer.byteLength(name) < 1 || Buffer.byteLength(name) > 15 || /[\s/:]/.test(name)) {
      throw new UsageError(`--tun ${JSON.stringify(name)}: a device name is 1-15 bytes without spaces, '/' or ':'`);
    }
    const [mtuMin, mtuMax] = O.mtu.range;
    if (!Number.isInteger(mtu) || mtu < mtuMin || mtu > mtuMax) {
      throw new UsageError(`--mtu ${mtu}: must be an integer between ${mtuMin} and ${mtuMax}`);
    }
    const [qMin, qMax] = O.queues.range;
    if (!Number.isInteger(queues) || queues < qMin || queues > qMax) {
      throw new UsageError(`queues ${queues}: must be ${qMin}-${qMax}`);
    }
    const [tqMin, tqMax] = O.tunTxqueuelen.range;
    if (!Number.isInteger(txQueueLen) || txQueueLen < tqMin || txQueueLen > tqMax) {
      throw new UsageError(`--tun-txqueuelen ${txQueueLen}: must be an integer between ${tqMin} and ${tqMax}`);
    }
    const routes = parseProcRoutes((opts.readRoutes ?? (() => readFileSync('/proc/net/route', 'utf8')))());
    const clash = routes.find((r) => r.iface !== name && rangesOverlap(r, opts.range));
    if (clash) {
      throw new FakeproxyError(
        'EROUTECONFLICT',
        `range ${opts.range.text} overlaps route ${clash.text} of ${clash.iface}: pick another --cidr (e.g. 198.18.0.0/16)`,
      );
    }
    const b = opts.binding ?? native();
    const h = b.tunOpen({
      name,
      mtu,
      address: opts.range.gatewayIp,
      prefixLen: opts.range.prefixLen,
      queues,
      offload: opts.offload ?? O.tunOffload.default,
      txQueueLen,
    });
    // No IPv6 on the device until the engine handles it: otherwise the kernel
    // sends router solicitations and MLD reports into the TUN for nothing.
    try {
      writeFileSync(`/proc/sys/net/ipv6/conf/${h.name}/disable_ipv6`, '1');
    } catch {
      // IPv6 disabled system-wide, or /proc/sys read-only: nothing to turn off.
    }
    // Loose reverse-path filtering on the device: with full-cone UDP a reply
    // from a real remote the app never sent to enters the TUN with that real
    // source address, which strict rp_filter (the source's route is not via
    // the TUN) would drop. The effective value is max(all, dev), so 2 wins.
    try {
      writeFileSync(`/proc/sys/net/ipv4/conf/${h.name}/rp_filter`, '2');
    } catch {
      // read-only /proc/sys: strict filtering only costs unsolicited UDP replies.
    }
    return new TunDevice(h.name, mtu, opts.range, h.ifindex, h.fds, b, h.offload === true, h.offloadError);
  }

  /**
   * Packets the kernel dropped at the device's transmit queue (full: the
   * engine did not read them in time; `--tun-txqueuelen`). Read from
   * /proc/self/net/dev rather than /sys/class/net, which shows the namespace
   * sysfs was mounted in, not necessarily ours. Undefined once closed or unreadable.
   */
  kernelTxDropped(): number | undefined {
    if (this.closed) return undefined;
    try {
      return parseProcNetDevTxDropped(readFileSync('/proc/self/net/dev', 'utf8'), this.name);
    } catch {
      return undefined;
    }
  }

  /** Idempotent; synchronous so it can run from process 'exit'. */
  close(): void {
    if (this.fdList.length === 0) return;
    const fds = this.fdList;
    this.fdList = [];
    this.binding.tunClose(fds);
  }
}
