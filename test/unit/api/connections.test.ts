/**
 * The tracker's metadata as mihomo shows it, from the Listener's session
 * events: a name learned by sniffing (the address was real) is `sniffHost`
 * as well as `host`, with dnsMode "normal"; a name behind a fake address is
 * `host` only, dnsMode "fake-ip".
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ConnectionTracker, type SessionSource } from '../../../src/api/connections.js';
import type { SessionEvent } from '../../../src/proxy/listener.js';

class Sessions extends EventEmitter implements SessionSource {
  sessionBytes() {
    return { bytesUp: 1, bytesDown: 2 };
  }
  closeFlow(): boolean {
    return false;
  }
  stats() {
    return { bytesUp: 0, bytesDown: 0 };
  }
  open(flowId: number, o: Partial<SessionEvent>): void {
    this.emit('session', {
      phase: 'open',
      flowId,
      ip: '203.0.113.10',
      port: 443,
      outbound: 'direct',
      bytesUp: 0,
      bytesDown: 0,
      ...o,
    } satisfies SessionEvent);
  }
}

describe('ConnectionTracker metadata', () => {
  it.each([
    [
      'sniffed TLS SNI',
      { name: 'tls.sniff.test', sniffed: 'tls' as const },
      'tls.sniff.test',
      'tls.sniff.test',
      'normal',
    ],
    [
      'sniffed HTTP Host',
      { name: 'web.sniff.test', sniffed: 'http' as const },
      'web.sniff.test',
      'web.sniff.test',
      'normal',
    ],
    ['name behind a fake address', { name: 'origin.test' }, 'origin.test', '', 'fake-ip'],
    ['no name at all', {}, '', '', 'normal'],
  ])('%s: host, sniffHost, dnsMode', (_what, ev, host, sniffHost, dnsMode) => {
    const src = new Sessions();
    const t = new ConnectionTracker(src);
    src.open(7, ev);
    const [c] = t.snapshot().connections;
    expect(c?.metadata).toMatchObject({ host, sniffHost, dnsMode });
    t.detach();
  });
});
