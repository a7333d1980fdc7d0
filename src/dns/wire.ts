/**
 * The small part of the DNS wire format (RFC 1035 §4) that the server touches
 * on every query, parsed and built by hand.
 *
 * Why not dns-packet here: `decode` allocates a whole object graph per
 * message, and on hostile input it can throw deep inside or walk compression
 * pointers for a long time. Queries are untrusted, so they are read through
 * one checked parser that validates the header, the question name (label
 * lengths, total length, no compression pointers, no extended label types),
 * and every additional record's bounds before anything else looks at them.
 * Answers we make ourselves (A, PTR, NODATA, errors) are tiny and built
 * directly from the query's own question bytes, which also preserves the
 * client's 0x20 case randomisation. dns-packet is used for responses coming
 * from the upstream resolver (validation) and in tests.
 */

export const HEADER_LEN = 12;
/** RFC 1035 §2.3.4 */
export const MAX_NAME_WIRE = 255;
/** RFC 1035 §4.2.1: the classic UDP limit, the floor for any EDNS payload size (RFC 6891 §6.2.5). */
export const MIN_UDP_PAYLOAD = 512;
/**
 * The payload size we advertise in our OPT record: 1232 is the DNS Flag Day
 * 2020 value, which fits an IPv6 minimum-MTU packet without fragmentation.
 */
export const OUR_UDP_PAYLOAD = 1232;

export const Rcode = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  /** Extended rcode 16 (RFC 6891 §9), carried in the OPT record. */
  BADVERS: 16,
} as const;

export const QType = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  OPT: 41,
  SVCB: 64,
  HTTPS: 65,
  ANY: 255,
} as const;
export const QCLASS_IN = 1;

// Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2)
export const FLAG_QR = 0x8000;
export const FLAG_AA = 0x0400;
export const FLAG_TC = 0x0200;
export const FLAG_RD = 0x0100;
export const FLAG_RA = 0x0080;
export const FLAG_CD = 0x0010;
/** DO bit in the OPT record's TTL field (RFC 3225). */
const EDNS_DO = 0x8000;

export interface Edns {
  /** Requested UDP payload size as sent (not yet clamped). */
  udpSize: number;
  version: number;
  dnssecOk: boolean;
}

export interface Query {
  id: number;
  flags: number;
  /** Lower-case presentation form without the trailing dot; '' for the root. */
  name: string;
  /**
   * False when a label holds bytes that have no plain presentation form
   * ('.', '\\', spaces, control or non-ASCII bytes). Such names are never
   * faked (they would alias another name in the pool); they are forwarded.
   */
  plain: boolean;
  /** Number of labels in the name. */
  labelCount: number;
  qtype: number;
  qclass: number;
  /** Offset just past the question section: query[12, questionEnd) is copied into answers. */
  questionEnd: number;
  /** Offset just past the last record we parsed; bytes after it are ignored. */
  end: number;
  edns: Edns | undefined;
}

export type ParseResult =
  | { kind: 'query'; q: Query }
  /** A header could be read but the rest is bad: answer `rcode` with a header-only message. */
  | { kind: 'error'; rcode: number }
  /** Not a query we should answer at all (no header, or a response). */
  | { kind: 'drop'; reason: 'short' | 'response' };

const SHORT: ParseResult = { kind: 'drop', reason: 'short' };
const RESPONSE: ParseResult = { kind: 'drop', reason: 'response' };
const FORMERR: ParseResult = { kind: 'error', rcode: Rcode.FORMERR };
const NOTIMP: ParseResult = { kind: 'error', rcode: Rcode.NOTIMP };

/**
 * Parse an untrusted query. Never throws, never loops: every read is bounds
 * checked, the question name may not use compression (it is the first name
 * in the message, so a pointer can only point into the header or forwards —
 * both invalid, and the classic pointer loop), and every record is skipped by
 * its declared length within the buffer.
 */
export function parseQuery(buf: Buffer): ParseResult {
  const len = buf.length;
  if (len < HEADER_LEN) return SHORT;
  const flags = buf.readUInt16BE(2);
  if (flags & FLAG_QR) return RESPONSE;
  const opcode = (flags >> 11) & 0xf;
  if (opcode !== 0) return NOTIMP; // RFC 1035 §4.1.1: only QUERY is implemented
  const qdcount = buf.readUInt16BE(4);
  if (qdcount !== 1) return FORMERR; // RFC 9619: QUERY has exactly one question
  const ancount = buf.readUInt16BE(6);
  const nscount = buf.readUInt16BE(8);
  const arcount = buf.readUInt16BE(10);

  // Question name
  let off = HEADER_LEN;
  let name = '';
  let plain = true;
  let labels = 0;
  for (;;) {
    if (off >= len) return FORMERR;
    const l = buf[off] as number;
    if (l === 0) {
      off++;
      break;
    }
    if (l & 0xc0) return FORMERR; // pointer (0xC0) or extended label type (0x40/0x80): label > 63 lands here
    const start = off + 1;
    const stop = start + l;
    if (stop > len) return FORMERR;
    if (stop + 1 - HEADER_LEN > MAX_NAME_WIRE) return FORMERR; // +1 for the root label that must follow
    let upper = false;
    for (let i = start; i < stop; i++) {
      const c = buf[i] as number;
      if (c <= 0x20 || c >= 0x7f || c === 0x2e || c === 0x5c) plain = false;
      else if (c >= 0x41 && c <= 0x5a) upper = true;
    }
    let label = buf.toString('latin1', start, stop);
    if (upper) label = label.toLowerCase();
    name = labels === 0 ? label : `${name}.${label}`;
    labels++;
    off = stop;
  }
  if (off + 4 > len) return FORMERR;
  const qtype = buf.readUInt16BE(off);
  const qclass = buf.readUInt16BE(off + 2);
  off += 4;
  const questionEnd = off;

  // Remaining sections: skip answer/authority, find OPT in additional.
  let edns: Edns | undefined;
  const total = ancount + nscount + arcount;
  for (let r = 0; r < total; r++) {
    const owner = off;
    off = skipName(buf, off);
    if (off < 0 || off + 10 > len) return FORMERR;
    const type = buf.readUInt16BE(off);
    const cls = buf.readUInt16BE(off + 2);
    const ttl = buf.readUInt32BE(off + 4);
    const rdlen = buf.readUInt16BE(off + 8);
    off += 10 + rdlen;
    if (off > len) return FORMERR;
    if (type === QType.OPT) {
      // RFC 6891 §6.1.1: one OPT, in the additional section, owned by the root.
      if (edns || r < ancount + nscount || buf[owner] !== 0) return FORMERR;
      edns = { udpSize: cls, version: (ttl >>> 16) & 0xff, dnssecOk: (ttl & EDNS_DO) !== 0 };
    }
  }
  return {
    kind: 'query',
    q: { id: buf.readUInt16BE(0), flags, name, plain, labelCount: labels, qtype, qclass, questionEnd, end: off, edns },
  };
}

/** Skip a (possibly compressed) owner name without following pointers; -1 when malformed. */
function skipName(buf: Buffer, off: number): number {
  const len = buf.length;
  let wire = 0;
  for (;;) {
    if (off >= len) return -1;
    const l = buf[off] as number;
    if (l === 0) return off + 1;
    if ((l & 0xc0) === 0xc0) return off + 2 <= len ? off + 2 : -1; // a pointer ends the name
    if (l & 0xc0) return -1;
    wire += l + 1;
    if (wire + 1 > MAX_NAME_WIRE) return -1;
    off += l + 1;
  }
}

/** The largest response we may send for this query over UDP (RFC 6891 §6.2.5), capped by `cap`. */
export function udpLimit(q: Query, cap: number): number {
  const asked = q.edns ? Math.max(MIN_UDP_PAYLOAD, q.edns.udpSize) : MIN_UDP_PAYLOAD;
  return Math.max(MIN_UDP_PAYLOAD, Math.min(asked, cap));
}

const OPT_LEN = 11;

function writeOpt(out: Buffer, off: number, q: Query, extRcode: number): number {
  out[off] = 0; // root owner
  out.writeUInt16BE(QType.OPT, off + 1);
  out.writeUInt16BE(OUR_UDP_PAYLOAD, off + 3);
  out[off + 5] = extRcode;
  out[off + 6] = 0; // version 0
  // RFC 3225 §3: the DO bit of the query is copied into the response.
  out.writeUInt16BE(q.edns?.dnssecOk ? EDNS_DO : 0, off + 7);
  out.writeUInt16BE(0, off + 9);
  return off + OPT_LEN;
}

function responseFlags(q: Query, rcode: number, extra = 0): number {
  return FLAG_QR | FLAG_RA | (q.flags & (FLAG_RD | FLAG_CD)) | extra | (rcode & 0xf);
}

/**
 * Build a response: the query's header id and question bytes, then `answer`
 * (already encoded RRs, `ancount` of them), then our OPT when the query had
 * one. When the result would exceed `limit`, the answer is dropped and TC set
 * (RFC 2181 §9: the client retries over TCP).
 */
export function buildResponse(
  query: Buffer,
  q: Query,
  rcode: number,
  answer?: Buffer,
  ancount = 0,
  limit = 65535,
): Buffer {
  const qlen = q.questionEnd - HEADER_LEN;
  const optLen = q.edns ? OPT_LEN : 0;
  let alen = answer ? answer.length : 0;
  let tc = 0;
  if (HEADER_LEN + qlen + alen + optLen > limit) {
    alen = 0;
    ancount = 0;
    tc = FLAG_TC;
  }
  const out = Buffer.allocUnsafe(HEADER_LEN + qlen + alen + optLen);
  out.writeUInt16BE(q.id, 0);
  out.writeUInt16BE(responseFlags(q, rcode, tc), 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(ancount, 6);
  out.writeUInt16BE(0, 8);
  out.writeUInt16BE(optLen ? 1 : 0, 10);
  query.copy(out, HEADER_LEN, HEADER_LEN, q.questionEnd);
  let off = HEADER_LEN + qlen;
  if (answer && alen) {
    answer.copy(out, off);
    off += alen;
  }
  if (optLen) writeOpt(out, off, q, rcode >> 4);
  return out;
}

/**
 * The hot path: one A record pointing at the question name (compression
 * pointer 0xC00C), built in a single allocation.
 */
export function buildAResponse(query: Buffer, q: Query, ip: number, ttl: number): Buffer {
  const qlen = q.questionEnd - HEADER_LEN;
  const optLen = q.edns ? OPT_LEN : 0;
  const out = Buffer.allocUnsafe(HEADER_LEN + qlen + 16 + optLen);
  out.writeUInt16BE(q.id, 0);
  out.writeUInt16BE(responseFlags(q, Rcode.NOERROR), 2);
  out.writeUInt16BE(1, 4);
  out.writeUInt16BE(1, 6);
  out.writeUInt16BE(0, 8);
  out.writeUInt16BE(optLen ? 1 : 0, 10);
  query.copy(out, HEADER_LEN, HEADER_LEN, q.questionEnd);
  let off = HEADER_LEN + qlen;
  out.writeUInt16BE(0xc00c, off);
  out.writeUInt16BE(QType.A, off + 2);
  out.writeUInt16BE(QCLASS_IN, off + 4);
  out.writeUInt32BE(ttl, off + 6);
  out.writeUInt16BE(4, off + 10);
  out.writeUInt32BE(ip >>> 0, off + 12);
  off += 16;
  if (optLen) writeOpt(out, off, q, 0);
  return out;
}

/** One RR owned by the question name (pointer 0xC00C) with the given rdata. */
export function encodeRR(type: number, ttl: number, rdata: Buffer): Buffer {
  const out = Buffer.allocUnsafe(12 + rdata.length);
  out.writeUInt16BE(0xc00c, 0);
  out.writeUInt16BE(type, 2);
  out.writeUInt16BE(QCLASS_IN, 4);
  out.writeUInt32BE(ttl, 6);
  out.writeUInt16BE(rdata.length, 10);
  rdata.copy(out, 12);
  return out;
}

/** Uncompressed wire form of a plain presentation name (labels already validated). */
export function encodeName(name: string): Buffer {
  if (name === '') return Buffer.from([0]);
  const parts = name.split('.');
  const out = Buffer.allocUnsafe(name.length + 2);
  let off = 0;
  for (const p of parts) {
    out[off++] = p.length;
    off += out.write(p, off, 'latin1');
  }
  out[off++] = 0;
  return out.subarray(0, off);
}

/**
 * A header-only error response for a message whose header was readable but
 * whose body was not (FORMERR, NOTIMP). RFC 1035 leaves the question out
 * when it could not be parsed; the opcode and RD are echoed.
 */
export function buildHeaderOnly(query: Buffer, rcode: number): Buffer {
  const out = Buffer.alloc(HEADER_LEN);
  query.copy(out, 0, 0, 2);
  const flags = query.readUInt16BE(2);
  out.writeUInt16BE(FLAG_QR | (flags & (0x7800 | FLAG_RD)) | (rcode & 0xf), 2);
  return out;
}

/**
 * Fit a response from the upstream resolver into `limit` bytes for the
 * client: its id replaced by the client's, and when it is too large, a
 * header-and-question message with TC set and the upstream's rcode.
 */
export function fitUpstreamResponse(resp: Buffer, query: Buffer, q: Query, limit: number): Buffer {
  if (resp.length <= limit) {
    const out = Buffer.from(resp);
    out.writeUInt16BE(q.id, 0);
    return out;
  }
  const rflags = resp.readUInt16BE(2);
  const out = buildResponse(query, q, rflags & 0xf, undefined, 0, limit);
  out.writeUInt16BE(out.readUInt16BE(2) | FLAG_TC | (rflags & FLAG_AA), 2);
  return out;
}

/** 'd.c.b.a.in-addr.arpa' → a.b.c.d as a uint32, or undefined. */
export function parseReverseV4(name: string): number | undefined {
  if (!name.endsWith('.in-addr.arpa')) return undefined;
  const parts = name.slice(0, -'.in-addr.arpa'.length).split('.');
  if (parts.length !== 4) return undefined;
  let ip = 0;
  for (let i = 3; i >= 0; i--) {
    const p = parts[i] as string;
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p)) return undefined;
    const v = Number(p);
    if (v > 255) return undefined;
    ip = ip * 256 + v;
  }
  return ip;
}
