import { Address4 } from 'ip-address';
import { FakeproxyError } from '../errors.js';

/** Dotted quad → uint32, or undefined when not a plain IPv4 address. */
export function ipToInt(ip: string): number | undefined {
  let n = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 0x2e) {
      if (digits === 0 || dots === 3) return undefined;
      n = n * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 0x30 && c <= 0x39) {
      if (digits === 3) return undefined;
      part = part * 10 + (c - 0x30);
      if (part > 255) return undefined;
      digits++;
    } else return undefined;
  }
  if (digits === 0 || dots !== 3) return undefined;
  return n * 256 + part;
}

export function intToIp(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 0xff}.${(n >>> 8) & 0xff}.${n & 0xff}`;
}

/**
 * The fake range: every host address of the CIDR except the network and
 * broadcast addresses and the gateway (the first host, which carries the
 * TUN address, the DNS server and the Listener — DESIGN.md "Addresses").
 */
export class FakeRange {
  readonly cidr: string;
  readonly network: number;
  readonly broadcast: number;
  readonly prefix: number;
  readonly gateway: number;
  /** First and last address handed out by the pool (inclusive). */
  readonly first: number;
  readonly last: number;
  /** Number of addresses in the pool (hosts minus the gateway). */
  readonly size: number;

  constructor(cidr: string) {
    let addr: Address4;
    try {
      if (!/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(cidr)) throw new Error('not an IPv4 CIDR');
      addr = new Address4(cidr);
    } catch (cause) {
      throw new FakeproxyError(
        'EBADCIDR',
        `bad fake-IP range "${cidr}": give an IPv4 CIDR such as --cidr 198.18.0.0/16`,
        { cause },
      );
    }
    const prefix = addr.subnetMask;
    if (prefix > 30 || prefix < 8) {
      throw new FakeproxyError(
        'EBADCIDR',
        `bad fake-IP range "${cidr}": the prefix must be /8 to /30 (a /30 leaves one fake address); e.g. --cidr 198.18.0.0/16`,
      );
    }
    this.prefix = prefix;
    this.network = Number(addr._startAddress());
    this.broadcast = Number(addr._endAddress());
    this.cidr = `${intToIp(this.network)}/${prefix}`;
    this.gateway = this.network + 1;
    this.first = this.gateway + 1;
    this.last = this.broadcast - 1;
    this.size = this.last - this.first + 1;
  }

  /** Inside the pool: in the CIDR and not network, broadcast or gateway. */
  contains(ip: number): boolean {
    return ip >= this.first && ip <= this.last;
  }
}
