/**
 * SOCKS5 wire messages (RFC 1928, RFC 1929) as codecs in the dns-packet
 * shape: `encodingLength / encode / decode`, all bounds-checked. Shared by
 * the CONNECT outbound and, later, UDP ASSOCIATE (`udpHeader`).
 *
 * Addresses: an IPv4 literal → ATYP 1, an IPv6 literal → ATYP 4, anything
 * else → ATYP 3 (domain name, so the proxy resolves it — the point of
 * fake-IP: the name, not our fake address, reaches the proxy).
 */
import * as net from 'node:net';
import { ProxyError } from './errors.js';

export interface Codec<T> {
  encodingLength(v: T): number;
  /** Writes at `offset` into `buf` (allocated when absent) and returns `buf`. */
  encode(v: T, buf?: Buffer, offset?: number): Buffer;
  decode(buf: Buffer, offset?: number): T;
}

export const VERSION = 0x05;
export const AUTH_VERSION = 0x01; // RFC 1929 §2 subnegotiation version
export const Method = { NO_AUTH: 0x00, GSSAPI: 0x01, USER_PASS: 0x02, NO_ACCEPTABLE: 0xff } as const;
export const Cmd = { CONNECT: 0x01, BIND: 0x02, UDP_ASSOCIATE: 0x03 } as const;
export const Atyp = { IPV4: 0x01, DOMAIN: 0x03, IPV6: 0x04 } as const;
export type AtypValue = (typeof Atyp)[keyof typeof Atyp];

function truncated(what: string): ProxyError {
  return new ProxyError('ESOCKS5_PROTOCOL', `socks5 ${what} is truncated (is the upstream a SOCKS5 server?)`);
}
function need(buf: Buffer, end: number, what: string): void {
  if (buf.length < end) throw truncated(what);
}
function checkVersion(got: number | undefined, want: number, what: string): void {
  if (got !== want) {
    throw new ProxyError(
      'ESOCKS5_PROTOCOL',
      `socks5 ${what} has version ${got}, expected ${want} (is the upstream a SOCKS5 server, not SOCKS4/HTTP?)`,
    );
  }
}

// ---------------------------------------------------------------- addresses

export interface Address {
  host: string;
  port: number;
}

export function atypOf(host: string): AtypValue {
  const f = net.isIP(host);
  return f === 4 ? Atyp.IPV4 : f === 6 ? Atyp.IPV6 : Atyp.DOMAIN;
}

/** ATYP + DST.ADDR + DST.PORT (RFC 1928 §4/§5), the common tail of requests, replies and UDP headers. */
export const address: Codec<Address> = {
  encodingLength(a) {
    const t = atypOf(a.host);
    return 1 + (t === Atyp.IPV4 ? 4 : t === Atyp.IPV6 ? 16 : 1 + Buffer.byteLength(a.host)) + 2;
  },
  encode(a, buf, offset = 0) {
    const len = address.encodingLength(a);
    const b = buf ?? Buffer.allocUnsafe(len + offset);
    if (!Number.isInteger(a.port) || a.port < 0 || a.port > 65535) throw new RangeError(`port ${a.port} out of range`);
    const t = atypOf(a.host);
    let o = offset;
    b[o++] = t;
    if (t === Atyp.IPV4) {
      for (const part of a.host.split('.')) b[o++] = Number(part);
    } else if (t === Atyp.IPV6) {
      ipv6ToBytes(a.host).copy(b, o);
      o += 16;
    } else {
      const n = Buffer.byteLength(a.host);
      if (n < 1 || n > 255) throw new RangeError(`socks5 domain name must be 1–255 bytes, got ${n}`);
      b[o++] = n;
      o += b.write(a.host, o, 'utf8');
    }
    b.writeUInt16BE(a.port, o);
    return b;
  },
  decode(buf, offset = 0) {
    need(buf, offset + 1, 'address');
    const t = buf[offset];
    let o = offset + 1;
    let host: string;
    if (t === Atyp.IPV4) {
      need(buf, o + 6, 'address');
      host = `${buf[o]}.${buf[o + 1]}.${buf[o + 2]}.${buf[o + 3]}`;
      o += 4;
    } else if (t === Atyp.IPV6) {
      need(buf, o + 18, 'address');
      host = bytesToIpv6(buf.subarray(o, o + 16));
      o += 16;
    } else if (t === Atyp.DOMAIN) {
      need(buf, o + 1, 'address');
      const n = buf[o] as number;
      need(buf, o + 1 + n + 2, 'address');
      host = buf.toString('utf8', o + 1, o + 1 + n);
      o += 1 + n;
    } else {
      throw new ProxyError('ESOCKS5_PROTOCOL', `socks5 address type ${t} is unknown (RFC 1928 defines 1, 3, 4)`);
    }
    return { host, port: buf.readUInt16BE(o) };
  },
};

/**
 * Length of the address at `offset` from its first two bytes (ATYP and, for
 * names, the length byte), or undefined when those are not there yet. Lets a
 * reader take exactly one reply off the stream.
 */
export function addressLengthFromPrefix(buf: Buffer, offset = 0): number | undefined {
  if (buf.length < offset + 2) return undefined;
  const t = buf[offset];
  if (t === Atyp.IPV4) return 1 + 4 + 2;
  if (t === Atyp.IPV6) return 1 + 16 + 2;
  if (t === Atyp.DOMAIN) return 1 + 1 + (buf[offset + 1] as number) + 2;
  throw new ProxyError('ESOCKS5_PROTOCOL', `socks5 address type ${t} is unknown (RFC 1928 defines 1, 3, 4)`);
}

export function ipv6ToBytes(text: string): Buffer {
  const out = Buffer.alloc(16);
  let s = text;
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct); // zone id has no wire form
  // Trailing dotted quad (::ffff:1.2.3.4) → two hex groups.
  const m = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(s);
  if (m) {
    const [a, b, c, d] = m.slice(1).map(Number) as [number, number, number, number];
    s = `${s.slice(0, m.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = s.split('::') as [string, string | undefined];
  const h = head === '' ? [] : head.split(':');
  const t = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((g, i) => {
    out.writeUInt16BE(Number.parseInt(g, 16), i * 2);
  });
  return out;
}

/** RFC 5952 text: lowercase, longest run (≥ 2) of zero groups compressed. */
export function bytesToIpv6(b: Buffer): string {
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push(b.readUInt16BE(i));
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (xs: number[]) => xs.map((x) => x.toString(16)).join(':');
  if (best < 0) return hex(g);
  return `${hex(g.slice(0, best))}::${hex(g.slice(best + bestLen))}`;
}

// ---------------------------------------------------------------- messages

/** Client greeting, RFC 1928 §3: VER NMETHODS METHODS. */
export interface Greeting {
  methods: number[];
}
export const greeting: Codec<Greeting> = {
  encodingLength: (m) => 2 + m.methods.length,
  encode(m, buf, offset = 0) {
    const b = buf ?? Buffer.allocUnsafe(offset + greeting.encodingLength(m));
    if (m.methods.length < 1 || m.methods.length > 255) throw new RangeError('socks5 greeting needs 1–255 methods');
    b[offset] = VERSION;
    b[offset + 1] = m.methods.length;
    m.methods.forEach((x, i) => {
      b[offset + 2 + i] = x;
    });
    return b;
  },
  decode(buf, offset = 0) {
    need(buf, offset + 2, 'greeting');
    checkVersion(buf[offset], VERSION, 'greeting');
    const n = buf[offset + 1] as number;
    need(buf, offset + 2 + n, 'greeting');
    return { methods: [...buf.subarray(offset + 2, offset + 2 + n)] };
  },
};

/**
 * A two-byte message VER X (method selection, auth reply): writes `version`;
 * a decode takes `version` (or `alsoAccepts`) and names `what` / `whatVersion`
 * in its errors.
 */
function twoBytes<K extends string>(
  key: K,
  version: number,
  what: string,
  whatVersion: string,
  alsoAccepts?: number,
): Codec<Record<K, number>> {
  return {
    encodingLength: () => 2,
    encode(m, buf, offset = 0) {
      const b = buf ?? Buffer.allocUnsafe(offset + 2);
      b[offset] = version;
      b[offset + 1] = m[key];
      return b;
    },
    decode(buf, offset = 0) {
      need(buf, offset + 2, what);
      if (buf[offset] !== alsoAccepts) checkVersion(buf[offset], version, whatVersion);
      return { [key]: buf[offset + 1] as number } as Record<K, number>;
    },
  };
}

/** Server's method choice, RFC 1928 §3: VER METHOD. */
export interface MethodSelection {
  method: number;
}
export const methodSelection: Codec<MethodSelection> = twoBytes(
  'method',
  VERSION,
  'method selection',
  'method selection',
);

/** RFC 1929 §2: VER ULEN UNAME PLEN PASSWD. */
export interface UserPassRequest {
  username: string;
  password: string;
}
export const userPassRequest: Codec<UserPassRequest> = {
  encodingLength: (m) => 3 + Buffer.byteLength(m.username) + Buffer.byteLength(m.password),
  encode(m, buf, offset = 0) {
    const b = buf ?? Buffer.allocUnsafe(offset + userPassRequest.encodingLength(m));
    let o = offset;
    b[o++] = AUTH_VERSION;
    for (const v of [m.username, m.password]) {
      const n = Buffer.byteLength(v);
      if (n < 1 || n > 255) throw new RangeError('RFC 1929 username and password must be 1–255 bytes');
      b[o++] = n;
      o += b.write(v, o, 'utf8');
    }
    return b;
  },
  decode(buf, offset = 0) {
    need(buf, offset + 2, 'username/password request');
    checkVersion(buf[offset], AUTH_VERSION, 'username/password request');
    const ul = buf[offset + 1] as number;
    need(buf, offset + 2 + ul + 1, 'username/password request');
    const username = buf.toString('utf8', offset + 2, offset + 2 + ul);
    const pl = buf[offset + 2 + ul] as number;
    need(buf, offset + 3 + ul + pl, 'username/password request');
    const password = buf.toString('utf8', offset + 3 + ul, offset + 3 + ul + pl);
    return { username, password };
  },
};

/** RFC 1929 §2: VER STATUS (0 = success). */
export interface UserPassReply {
  status: number;
}
// Some servers answer the subnegotiation with VER=5; the status byte is what matters.
export const userPassReply: Codec<UserPassReply> = twoBytes(
  'status',
  AUTH_VERSION,
  'username/password reply',
  'auth reply',
  VERSION,
);

/** Request, RFC 1928 §4: VER CMD RSV ATYP DST.ADDR DST.PORT. */
export interface Request extends Address {
  cmd: number;
}
/** Reply, RFC 1928 §6: VER REP RSV ATYP BND.ADDR BND.PORT. */
export interface Reply extends Address {
  rep: number;
}

function headed<T extends Address>(what: string, key: 'cmd' | 'rep'): Codec<T> {
  const c: Codec<T> = {
    encodingLength: (m) => 3 + address.encodingLength(m),
    encode(m, buf, offset = 0) {
      const b = buf ?? Buffer.allocUnsafe(offset + c.encodingLength(m));
      b[offset] = VERSION;
      b[offset + 1] = (m as unknown as Record<string, number>)[key] as number;
      b[offset + 2] = 0x00;
      address.encode(m, b, offset + 3);
      return b;
    },
    decode(buf, offset = 0) {
      need(buf, offset + 3, what);
      checkVersion(buf[offset], VERSION, what);
      const a = address.decode(buf, offset + 3);
      return { [key]: buf[offset + 1] as number, host: a.host, port: a.port } as unknown as T;
    },
  };
  return c;
}
export const request: Codec<Request> = headed<Request>('request', 'cmd');
export const reply: Codec<Reply> = headed<Reply>('reply', 'rep');

/** UDP ASSOCIATE datagram header, RFC 1928 §7: RSV(2) FRAG ATYP DST.ADDR DST.PORT; DATA follows. */
export interface UdpHeader extends Address {
  frag: number;
}
export const udpHeader: Codec<UdpHeader> = {
  encodingLength: (m) => 3 + address.encodingLength(m),
  encode(m, buf, offset = 0) {
    const b = buf ?? Buffer.allocUnsafe(offset + udpHeader.encodingLength(m));
    b.writeUInt16BE(0, offset);
    b[offset + 2] = m.frag;
    address.encode(m, b, offset + 3);
    return b;
  },
  decode(buf, offset = 0) {
    need(buf, offset + 3, 'udp header');
    const a = address.decode(buf, offset + 3);
    return { frag: buf[offset + 2] as number, host: a.host, port: a.port };
  },
};

// ---------------------------------------------------------------- reply codes

/** RFC 1928 §6 REP → stable code + what the operator can do about it. */
export const REPLY_ERRORS: Readonly<Record<number, { code: ProxyError['code']; text: string }>> = {
  1: { code: 'ESOCKS5_GENERAL_FAILURE', text: 'general SOCKS server failure (see the proxy log)' },
  2: { code: 'ESOCKS5_NOT_ALLOWED', text: 'connection not allowed by ruleset (check the proxy ACL)' },
  3: { code: 'ESOCKS5_NET_UNREACHABLE', text: 'network unreachable from the proxy' },
  4: {
    code: 'ESOCKS5_HOST_UNREACHABLE',
    text: 'host unreachable from the proxy (or the proxy could not resolve the name)',
  },
  5: { code: 'ESOCKS5_REFUSED', text: 'connection refused by the destination (nothing listens on that port)' },
  6: { code: 'ESOCKS5_TTL_EXPIRED', text: 'TTL expired (the destination did not answer the proxy in time)' },
  7: { code: 'ESOCKS5_CMD_UNSUPPORTED', text: 'command not supported by the proxy' },
  8: {
    code: 'ESOCKS5_ATYP_UNSUPPORTED',
    text: 'address type not supported by the proxy (it may not accept domain names)',
  },
};

export function replyError(rep: number, context: string): ProxyError {
  const e = REPLY_ERRORS[rep] ?? { code: 'ESOCKS5_REPLY' as const, text: `unassigned reply code ${rep}` };
  return new ProxyError(e.code, `${context}: ${e.text} (RFC 1928 REP ${rep})`, { status: rep });
}
