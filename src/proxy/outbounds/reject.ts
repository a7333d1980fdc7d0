/** Refuses every connection: the Router's target for blocked destinations. */
import type * as net from 'node:net';
import { hostPort } from '../dial.js';
import { ProxyError } from '../errors.js';
import type { Destination, Outbound } from '../outbound.js';

export class RejectOutbound implements Outbound {
  readonly kind = 'reject' as const;
  readonly label = 'reject';

  connect(dst: Destination): Promise<net.Socket> {
    return Promise.reject(
      new ProxyError(
        'EREJECT',
        `connect to ${hostPort(dst.host, dst.port)}: rejected by a routing rule (edit the rules to allow it)`,
      ),
    );
  }
}
