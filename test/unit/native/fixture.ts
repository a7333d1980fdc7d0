/** A native Engine with test defaults (198.18.0.0/16, gateway .0.1, Listener 1313, DNS 53). */
import { type EngineOptions, type NativeEngine, native } from '../../../src/native.js';

export const GW = '198.18.0.1';
export const LISTEN = 1313;
export const DNS = 53;
export const T0 = 1_700_000_000_000;
/** An app's source (the kernel's source address for the fake range here is the gateway) and a fake destination. */
export const APP = GW;
export const FAKE = '198.18.2.2';

export const TIMEOUTS = {
  tcpSynMs: 60_000,
  tcpEstablishedMs: 7_440_000,
  tcpFinMs: 240_000,
  tcpClosedMs: 10_000,
  udpMs: 60_000,
  udpDnsMs: 10_000,
};

export function engineOptions(over: Partial<EngineOptions> = {}): EngineOptions {
  return {
    network: '198.18.0.0',
    prefixLen: 16,
    gateway: GW,
    listenPort: LISTEN,
    dnsPort: DNS,
    dnsHijack: true,
    maxFlows: 4096,
    timeouts: { ...TIMEOUTS },
    reuseDelayMs: 60_000,
    ...over,
  };
}

export function makeEngine(over: Partial<EngineOptions> = {}): NativeEngine {
  return new (native().Engine)(engineOptions(over));
}

/** Run one packet; expect exactly one packet back. */
export function one(e: NativeEngine, pkt: Buffer, now = T0): Buffer {
  const out = e.processPacket(pkt, now);
  if (out.length !== 1)
    throw new Error(`expected one packet out, got ${out.length}; stats ${JSON.stringify(e.stats())}`);
  return out[0];
}

/** The Listener's side of the NAT pair the engine wrote `fwd` to: a packet with these goes back to the app. */
export function fromListener(fwd: { src: string; sport: number }) {
  return { src: GW, dst: fwd.src, sport: LISTEN, dport: fwd.sport };
}
