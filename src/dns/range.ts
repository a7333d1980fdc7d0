import { Address4 } from 'ip-address';
import { FakeproxyError } from '../errors.js';
import { intToIp } from '../util/cidr.js';

// The dotted-quad conversions of src/util/cidr.ts, under the names this module always exported.
export { intToIp, parseIpv4 as ipToInt } from '../util/cidr.js';

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
