import { readFileSync } from 'node:fs';
import { dottedToU32 } from '../util/cidr.js';
import { type KernelRoute, parseProcRoutes } from './TunDevice.js';

/**
 * Answers "would a packet to this address be routed into our TUN?" from the
 * kernel's main IPv4 table (/proc/net/route), longest prefix first, re-read
 * at most every `refreshMs`. The direct outbound asks it before connecting:
 * an address routed into the TUN (a user route, or global mode) would bring
 * our own upstream connection straight back to the Listener, a loop that
 * opens flows until the table is full.
 *
 * Policy routing (ip rule) is not modelled; the main table is what a plain
 * `ip route add … dev fp0` changes.
 */
export class TunRouteCheck {
  #routes: (KernelRoute & { len: number })[] = [];
  #readAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly tun: string,
    private readonly read: () => string = () => readFileSync('/proc/net/route', 'utf8'),
    private readonly refreshMs = 2000,
    private readonly clock: () => number = Date.now,
  ) {}

  /** True when the best route to `ip` (IPv4 text) goes out through the TUN. */
  routesIntoTun(ip: string): boolean {
    // The direct outbound asks once per connection: one pass over the text, no regex, split or substrings.
    const n = dottedToU32(ip);
    if (n < 0) return false;
    const now = this.clock();
    if (now - this.#readAt >= this.refreshMs) {
      this.#readAt = now;
      try {
        this.#routes = parseProcRoutes(this.read(), true)
          .map((r) => ({ ...r, len: Number(r.text.split('/')[1]) }))
          .sort((a, b) => b.len - a.len);
      } catch {
        this.#routes = [];
      }
    }
    const best = this.#routes.find((r) => n >= r.network && n <= r.broadcast);
    return best?.iface === this.tun;
  }
}
