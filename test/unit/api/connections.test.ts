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
  closeFlow(_flowId: number): boolean {
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

describe('ConnectionTracker ids', () => {
  it('an id is stable from the first snapshot on; close(id) and closeAll() reach listed and unlisted connections alike', () => {
    const closed: number[] = [];
    const src = new Sessions();
    src.closeFlow = (flowId: number) => {
      closed.push(flowId);
      return true;
    };
    const t = new ConnectionTracker(src);
    src.open(1, { chains: ['Proxy', 'hk-1'], startMs: Date.UTC(2026, 0, 2, 3, 4, 5) });
    const [a] = t.snapshot().connections;
    src.open(2, {});
    const [a2, b] = t.snapshot().connections;
    expect(a2?.id).toBe(a?.id);
    expect(b?.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-/);
    expect(b?.id).not.toBe(a?.id);
    expect(a).toMatchObject({ start: '2026-01-02T03:04:05.000Z', chains: ['hk-1', 'Proxy'] });
    expect(b?.chains).toEqual(['direct']);
    expect(t.close(a?.id as string)).toBe(true);
    expect(closed).toEqual([1]);
    expect(t.close('not-an-id')).toBe(false);
    src.open(3, {});
    expect(t.size).toBe(3);
    expect(t.closeAll()).toBe(3);
    expect(closed).toEqual([1, 1, 2, 3]);
    src.emit('session', { phase: 'close', flowId: 1, ip: '', port: 0, outbound: 'direct', bytesUp: 0, bytesDown: 0 });
    expect(t.close(a?.id as string)).toBe(false);
    expect(t.size).toBe(2);
    t.detach();
  });
});
