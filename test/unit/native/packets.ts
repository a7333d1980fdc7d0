/**
 * Builds and parses IPv4 / TCP / UDP / ICMP packets for the engine tests.
 * Checksums are computed here independently of native/ (RFC 1071 in TS), so
 * the tests compare the engine's incremental updates against a full
 * recomputation that shares no code with it.
 */
export const TCP = 6;
export const UDP = 17;
export const ICMP = 1;
export const F = { FIN: 0x01, SYN: 0x02, RST: 0x04, PSH: 0x08, ACK: 0x10 } as const;

export function ip4(s: string): number {
  const p = s.split('.').map(Number);
  if (p.length !== 4 || p.some((x) => !Number.isInteger(x) || x < 0 || x > 255)) throw new Error(`bad ip ${s}`);
  return ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
}
export function ipStr(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/** RFC 1071 one's-complement sum of big-endian 16-bit words (not folded). */
export function sum16(buf: Uint8Array, start = 0, end = buf.length, initial = 0): number {
  let s = initial;
  let i = start;
  for (; i + 1 < end; i += 2) s += (buf[i] << 8) | buf[i + 1];
  if (i < end) s += buf[i] << 8;
  return s;
}
export function fold(s: number): number {
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}
export function finish(s: number): number {
  return ~fold(s) & 0xffff;
}
function pseudo(src: number, dst: number, proto: number, len: number): number {
  return (src >>> 16) + (src & 0xffff) + (dst >>> 16) + (dst & 0xffff) + proto + len;
}

export interface IpOpts {
  src: string;
  dst: string;
  ttl?: number;
  id?: number;
  /** flags+fragment offset word (default DF). */
  flagsFrag?: number;
  tos?: number;
  /** IP options bytes (multiple of 4). */
  options?: Buffer;
}

function ipHeader(o: IpOpts, proto: number, payloadLen: number): Buffer {
  const opt = o.options ?? Buffer.alloc(0);
  const hl = 20 + opt.length;
  const h = Buffer.alloc(hl);
  h[0] = 0x40 | (hl / 4);
  h[1] = o.tos ?? 0;
  h.writeUInt16BE(hl + payloadLen, 2);
  h.writeUInt16BE(o.id ?? 0x1234, 4);
  h.writeUInt16BE(o.flagsFrag ?? 0x4000, 6);
  h[8] = o.ttl ?? 64;
  h[9] = proto;
  h.writeUInt32BE(ip4(o.src), 12);
  h.writeUInt32BE(ip4(o.dst), 16);
  opt.copy(h, 20);
  h.writeUInt16BE(finish(sum16(h)), 10);
  return h;
}

export interface TcpOpts extends IpOpts {
  sport: number;
  dport: number;
  flags: number;
  seq?: number;
  ack?: number;
  window?: number;
  payload?: Buffer;
  /** TCP options bytes (multiple of 4). */
  tcpOptions?: Buffer;
}

export function tcpPacket(o: TcpOpts): Buffer {
  const opt = o.tcpOptions ?? Buffer.alloc(0);
  const payload = o.payload ?? Buffer.alloc(0);
  const thl = 20 + opt.length;
  const t = Buffer.alloc(thl + payload.length);
  t.writeUInt16BE(o.sport, 0);
  t.writeUInt16BE(o.dport, 2);
  t.writeUInt32BE((o.seq ?? 1000) >>> 0, 4);
  t.writeUInt32BE((o.ack ?? 0) >>> 0, 8);
  t[12] = (thl / 4) << 4;
  t[13] = o.flags;
  t.writeUInt16BE(o.window ?? 65535, 14);
  opt.copy(t, 20);
  payload.copy(t, thl);
  t.writeUInt16BE(finish(sum16(t, 0, t.length, pseudo(ip4(o.src), ip4(o.dst), TCP, t.length))), 16);
  return Buffer.concat([ipHeader(o, TCP, t.length), t]);
}

export interface UdpOpts extends IpOpts {
  sport: number;
  dport: number;
  payload?: Buffer;
  /** Send without a checksum (field 0, RFC 768). */
  noChecksum?: boolean;
}

export function udpPacket(o: UdpOpts): Buffer {
  const payload = o.payload ?? Buffer.alloc(0);
  const u = Buffer.alloc(8 + payload.length);
  u.writeUInt16BE(o.sport, 0);
  u.writeUInt16BE(o.dport, 2);
  u.writeUInt16BE(u.length, 4);
  payload.copy(u, 8);
  if (!o.noChecksum) {
    const c = finish(sum16(u, 0, u.length, pseudo(ip4(o.src), ip4(o.dst), UDP, u.length)));
    u.writeUInt16BE(c === 0 ? 0xffff : c, 6);
  }
  return Buffer.concat([ipHeader(o, UDP, u.length), u]);
}

export interface IcmpOpts extends IpOpts {
  type: number;
  code?: number;
  /** bytes 4..8 (echo: id<<16 | seq). */
  rest?: number;
  payload?: Buffer;
}

export function icmpPacket(o: IcmpOpts): Buffer {
  const payload = o.payload ?? Buffer.alloc(0);
  const m = Buffer.alloc(8 + payload.length);
  m[0] = o.type;
  m[1] = o.code ?? 0;
  m.writeUInt32BE((o.rest ?? 0) >>> 0, 4);
  payload.copy(m, 8);
  m.writeUInt16BE(finish(sum16(m)), 2);
  return Buffer.concat([ipHeader(o, ICMP, m.length), m]);
}

export interface Parsed {
  version: number;
  hl: number;
  totalLen: number;
  ttl: number;
  proto: number;
  src: string;
  dst: string;
  ipChecksum: number;
  l4: Buffer;
  sport: number;
  dport: number;
  seq: number;
  ack: number;
  flags: number;
  l4Checksum: number;
  payload: Buffer;
  icmpType: number;
  icmpCode: number;
}

export function parse(b: Buffer): Parsed {
  const hl = (b[0] & 15) * 4;
  const totalLen = b.readUInt16BE(2);
  const proto = b[9];
  const l4 = b.subarray(hl, totalLen);
  const p: Parsed = {
    version: b[0] >> 4,
    hl,
    totalLen,
    ttl: b[8],
    proto,
    src: ipStr(b.readUInt32BE(12)),
    dst: ipStr(b.readUInt32BE(16)),
    ipChecksum: b.readUInt16BE(10),
    l4,
    sport: 0,
    dport: 0,
    seq: 0,
    ack: 0,
    flags: 0,
    l4Checksum: 0,
    payload: Buffer.alloc(0),
    icmpType: -1,
    icmpCode: -1,
  };
  if (proto === TCP) {
    p.sport = l4.readUInt16BE(0);
    p.dport = l4.readUInt16BE(2);
    p.seq = l4.readUInt32BE(4);
    p.ack = l4.readUInt32BE(8);
    p.flags = l4[13];
    p.l4Checksum = l4.readUInt16BE(16);
    p.payload = l4.subarray((l4[12] >> 4) * 4);
  } else if (proto === UDP) {
    p.sport = l4.readUInt16BE(0);
    p.dport = l4.readUInt16BE(2);
    p.l4Checksum = l4.readUInt16BE(6);
    p.payload = l4.subarray(8);
  } else if (proto === ICMP) {
    p.icmpType = l4[0];
    p.icmpCode = l4[1];
    p.l4Checksum = l4.readUInt16BE(2);
    p.payload = l4.subarray(8);
  }
  return p;
}

/** The IPv4 header sums to 0xffff (RFC 1071 verification). */
export function ipChecksumOk(b: Buffer): boolean {
  return fold(sum16(b, 0, (b[0] & 15) * 4)) === 0xffff;
}

/** TCP / UDP (pseudo-header) or ICMP checksum verifies. UDP 0 = none. */
export function l4ChecksumOk(b: Buffer): boolean {
  const hl = (b[0] & 15) * 4;
  const total = b.readUInt16BE(2);
  const proto = b[9];
  if (proto === ICMP) return fold(sum16(b, hl, total)) === 0xffff;
  if (proto === UDP && b.readUInt16BE(hl + 6) === 0) return true;
  const s = sum16(b, hl, total, pseudo(b.readUInt32BE(12), b.readUInt32BE(16), proto, total - hl));
  return fold(s) === 0xffff;
}

/** Copy of `b` with its IP and L4 checksums recomputed from scratch (UDP 0 stays 0). */
export function withFreshChecksums(b: Buffer): Buffer {
  const c = Buffer.from(b);
  const hl = (c[0] & 15) * 4;
  const total = c.readUInt16BE(2);
  c.writeUInt16BE(0, 10);
  c.writeUInt16BE(finish(sum16(c, 0, hl)), 10);
  const proto = c[9];
  const off = proto === TCP ? 16 : proto === UDP ? 6 : 2;
  if (proto === UDP && c.readUInt16BE(hl + 6) === 0) return c;
  c.writeUInt16BE(0, hl + off);
  const init = proto === ICMP ? 0 : pseudo(c.readUInt32BE(12), c.readUInt32BE(16), proto, total - hl);
  let v = finish(sum16(c, hl, total, init));
  if (proto === UDP && v === 0) v = 0xffff;
  c.writeUInt16BE(v, hl + off);
  return c;
}

/** Copy of `b` as a NAT rewrite should leave it: addresses/ports replaced, checksums recomputed in full. */
export function rewritten(b: Buffer, src: string, sport: number, dst: string, dport: number): Buffer {
  const c = Buffer.from(b);
  const hl = (c[0] & 15) * 4;
  c.writeUInt32BE(ip4(src), 12);
  c.writeUInt32BE(ip4(dst), 16);
  c.writeUInt16BE(sport, hl);
  c.writeUInt16BE(dport, hl + 2);
  return withFreshChecksums(c);
}

/**
 * Checksums 0x0000 and 0xffff are the same one's-complement value (RFC 1624
 * section 3): compare two packets treating them as equal in checksum fields.
 */
export function sameModuloChecksumZero(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) return false;
  const hl = (a[0] & 15) * 4;
  const proto = a[9];
  const fields = [10, hl + (proto === TCP ? 16 : proto === UDP ? 6 : 2)];
  for (let i = 0; i < a.length; i++) {
    const f = fields.find((x) => i === x || i === x + 1);
    if (f === undefined) {
      if (a[i] !== b[i]) return false;
      continue;
    }
    if (i === f + 1) continue;
    const va = a.readUInt16BE(f);
    const vb = b.readUInt16BE(f);
    const norm = (v: number) => (v === 0xffff ? 0 : v);
    if (norm(va) !== norm(vb)) return false;
  }
  return true;
}
