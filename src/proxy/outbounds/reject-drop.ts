/**
 * Clash's REJECT-DROP: never answers. The connection attempt fails only when
 * the Listener's connect budget runs out (or the app gives up), so a scanner
 * or a tracker retry loop learns nothing quickly — unlike REJECT, which
 * resets at once.
 */
import type * as net from 'node:net';
import { connectDeadline, hostPort } from '../dial.js';
import type { ConnectOptions, Destination, Outbound } from '../outbound.js';

export class RejectDropOutbound implements Outbound {
  readonly kind = 'reject' as const;
  readonly label = 'reject-drop';

  connect(dst: Destination, opts?: ConnectOptions): Promise<net.Socket> {
    const d = connectDeadline(`connect to ${hostPort(dst.host, dst.port)} via reject-drop`, opts);
    return new Promise((_resolve, reject) => {
      const fail = () => {
        d.dispose();
        reject(d.signal.reason);
      };
      if (d.signal.aborted) fail();
      else d.signal.addEventListener('abort', fail, { once: true });
    });
  }
}
