/**
 * The engine's own thread loop and its batched event delivery, without a TUN
 * and without root: a SOCK_SEQPACKET socketpair keeps packet boundaries like
 * a TUN fd, so the engine thread reads our packets from one end and writes
 * the rewritten ones back, exactly as it does on fp0.
 */
import { existsSync, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { describe, expect, it, vi } from 'vitest';
import { NatManager } from '../../../src/nat/NatManager.js';
import type { CloseReason, FlowEvent } from '../../../src/nat/types.js';
import { native } from '../../../src/native.js';
import { START_OPTIONS } from '../../../src/options.js';
import { F, ipChecksumOk, l4ChecksumOk, parse, tcpPacket, udpPacket } from './packets.js';

const GW = '198.18.0.1';
const N = 64;

function withLoop(fn: (io: { nat: NatManager; testFd: number }) => Promise<void>): () => Promise<void> {
  return async () => {
    const b = native();
    const [engineFd, testFd] = b.socketpairForTest();
    const nat = new NatManager({ logger: () => {} });
    try {
      nat.start([engineFd]);
      await fn({ nat, testFd });
    } finally {
      nat.stop();
      b.tunClose([engineFd, testFd]);
    }
  };
}

describe('engine thread loop over a socketpair (no TUN, no root)', () => {
  it(
    'rewrites every packet written to the device onto the Listener, with valid checksums',
    withLoop(async ({ nat, testFd }) => {
      const b = native();
      for (let i = 0; i < N; i++) {
        b.tunWritePacketForTest(
          testFd,
          tcpPacket({ src: GW, dst: `198.18.2.${1 + (i % 4)}`, sport: 20_000 + i, dport: 80, flags: F.SYN }),
        );
      }
      const seen = new Map<string, { natIp: string; natPort: number }>();
      for (let i = 0; i < N; i++) {
        const raw = b.tunReadPacketForTest(testFd, 10_000);
        expect(raw, `packet ${i} of ${N} did not come back`).toBeDefined();
        const p = parse(raw as Buffer);
        expect([p.dst, p.dport]).toEqual([GW, START_OPTIONS.listenPort.default]);
        expect(ipChecksumOk(raw as Buffer)).toBe(true);
        expect(l4ChecksumOk(raw as Buffer)).toBe(true);
        seen.set(`${p.src}:${p.sport}`, { natIp: p.src, natPort: p.sport });
      }
      // Every flow got its own NAT pair, and the Listener's lookup of it gives the original destination.
      expect(seen.size).toBe(N);
      const dsts = [...seen.values()].map(({ natIp, natPort }) => nat.lookup('tcp', natIp, natPort));
      expect(dsts.map((f) => f?.srcPort).sort()).toEqual(Array.from({ length: N }, (_, i) => 20_000 + i));
      expect(dsts.every((f) => f?.dstPort === 80 && f.dstIp.startsWith('198.18.2.'))).toBe(true);
    }),
  );

  it(
    'delivers the open events in batches (one JS call for many packets), each flow once and in order',
    withLoop(async ({ nat, testFd }) => {
      const b = native();
      const batches: FlowEvent[][] = [];
      nat.on('events', (evs) => batches.push(evs));
      // UDP: a datagram opens its flow (a TCP flow is reported once its handshake completes).
      for (let i = 0; i < N; i++) {
        b.tunWritePacketForTest(testFd, udpPacket({ src: GW, dst: '198.18.2.2', sport: 30_000 + i, dport: 443 }));
      }
      // Reading every answer blocks this (the JS) thread until the engine
      // handled all N packets, so their events are queued before JS can run
      // the delivery: batching, not one call per packet, is what we see.
      for (let i = 0; i < N; i++) expect(b.tunReadPacketForTest(testFd, 10_000)).toBeDefined();
      await vi.waitFor(() => expect(batches.flat()).toHaveLength(N), { timeout: 10_000 });
      expect(batches.length).toBeLessThan(N);
      const events = batches.flat();
      expect(events.every((e) => e.type === 'open' && e.flow.proto === 'udp')).toBe(true);
      expect(events.map((e) => e.flow.srcPort)).toEqual(Array.from({ length: N }, (_, i) => 30_000 + i));
    }),
  );

  it(
    'reads through io_uring where the kernel has multishot reads (Linux >= 6.7, io_uring enabled), else with read()',
    withLoop(async ({ nat, testFd }) => {
      const b = native();
      const [major, minor] = release().split('.').map(Number);
      const disabled = '/proc/sys/kernel/io_uring_disabled';
      const enabled = !existsSync(disabled) || readFileSync(disabled, 'utf8').trim() === '0';
      const ring = enabled && (major > 6 || (major === 6 && minor >= 7));
      for (let i = 0; i < N; i++) {
        b.tunWritePacketForTest(
          testFd,
          tcpPacket({ src: GW, dst: '198.18.2.3', sport: 21_000 + i, dport: 80, flags: F.SYN }),
        );
      }
      for (let i = 0; i < N; i++) expect(b.tunReadPacketForTest(testFd, 10_000), `packet ${i}`).toBeDefined();
      const s = nat.stats();
      expect(s.ringReads).toBe(ring ? N : 0);
      expect(s.readErrors).toBe(0);
      expect(s.pktsIn).toBe(N);
    }),
  );

  it(
    'coalesces its reads under a UDP load (io_uring min-wait, Linux >= 6.12), never under TCP, and a lone datagram after a burst is not held',
    withLoop(async ({ nat, testFd }) => {
      const b = native();
      const [major, minor] = release().split('.').map(Number);
      const disabled = '/proc/sys/kernel/io_uring_disabled';
      const enabled = !existsSync(disabled) || readFileSync(disabled, 'utf8').trim() === '0';
      const canCoalesce = enabled && (major > 6 || (major === 6 && minor >= 12));
      // A burst of SYNs: batches of TCP never make the next wait coalesce.
      for (let i = 0; i < N; i++)
        b.tunWritePacketForTest(
          testFd,
          tcpPacket({ src: GW, dst: '198.18.2.3', sport: 22_000 + i, dport: 80, flags: F.SYN }),
        );
      for (let i = 0; i < N; i++) expect(b.tunReadPacketForTest(testFd, 10_000), `SYN ${i}`).toBeDefined();
      expect(nat.stats().ringCoalesced).toBe(0);
      const lone: number[] = [];
      for (let round = 0; round < 5; round++) {
        // A burst of datagrams (written faster than the engine wakes: batches of several)...
        for (let i = 0; i < N; i++)
          b.tunWritePacketForTest(
            testFd,
            udpPacket({ src: GW, dst: '198.18.2.4', sport: 31_000, dport: 443, payload: Buffer.alloc(100, i) }),
          );
        for (let i = 0; i < N; i++) expect(b.tunReadPacketForTest(testFd, 10_000), `datagram ${i}`).toBeDefined();
        // ...then one alone, while the engine waits coalescing: it must come back once the short
        // min-wait is over, not when the wait's full timeout (20 or 250 ms) ends or 64 more arrive.
        const t0 = performance.now();
        b.tunWritePacketForTest(testFd, udpPacket({ src: GW, dst: '198.18.2.4', sport: 31_000, dport: 443 }));
        expect(b.tunReadPacketForTest(testFd, 10_000), 'the lone datagram').toBeDefined();
        lone.push(performance.now() - t0);
      }
      // The least of five: a busy test machine may delay one, not every one by the full timeout.
      expect(Math.min(...lone)).toBeLessThan(15);
      const s = nat.stats();
      if (canCoalesce) expect(s.ringCoalesced).toBeGreaterThan(0);
      else expect(s.ringCoalesced).toBe(0);
      expect(s.pktsIn).toBe(N + 5 * (N + 1));
    }),
  );

  it('stop() joins the thread and closes every flow with reason shutdown', async () => {
    const b = native();
    const [engineFd, testFd] = b.socketpairForTest();
    const nat = new NatManager({ logger: () => {} });
    const closed: CloseReason[] = [];
    nat.on('close', (_f, r) => closed.push(r));
    try {
      nat.start([engineFd]);
      for (let i = 0; i < 3; i++) {
        b.tunWritePacketForTest(testFd, udpPacket({ src: GW, dst: '198.18.2.2', sport: 40_000 + i, dport: 80 }));
        expect(b.tunReadPacketForTest(testFd, 10_000)).toBeDefined();
      }
      // A half-open TCP flow, never reported open: it goes without a close event.
      b.tunWritePacketForTest(
        testFd,
        tcpPacket({ src: GW, dst: '198.18.2.2', sport: 40_003, dport: 80, flags: F.SYN }),
      );
      expect(b.tunReadPacketForTest(testFd, 10_000)).toBeDefined();
      expect(nat.entries()).toHaveLength(4);
      nat.stop();
      expect(closed).toEqual(['shutdown', 'shutdown', 'shutdown']);
      expect(nat.entries()).toEqual([]);
      // The thread is gone: a packet written now is not answered.
      b.tunWritePacketForTest(
        testFd,
        tcpPacket({ src: GW, dst: '198.18.2.2', sport: 40_100, dport: 80, flags: F.SYN }),
      );
      expect(b.tunReadPacketForTest(testFd, 200)).toBeUndefined();
    } finally {
      nat.stop();
      b.tunClose([engineFd, testFd]);
    }
  });
});
