/**
 * Sniffing: the name a connection to a real address is for, read from the
 * first bytes the app sends — the SNI of a TLS ClientHello or the Host of an
 * HTTP/1 request (global mode: an app that connected to an IP literal, or
 * resolved with its own DNS). The Listener routes by that name (domain rules
 * apply) and hands it to a proxy upstream (SOCKS5 ATYP domain, HTTP CONNECT
 * host). The bytes themselves are handed on unchanged.
 *
 * `sniffName` is a pure function of the bytes seen so far: it answers 'more'
 * while a prefix could still become a ClientHello or request that names a
 * host, so a hello split across TCP segments or TLS records is read whole.
 * Anything malformed, oversized or nameless answers 'none' — never a throw.
 */
import type { Socket } from 'node:net';

/** What the first bytes say so far. */
export type SniffResult =
  | { kind: 'name'; name: string; proto: 'tls' | 'http' }
  /** A prefix of something that may still name a host: wait for more bytes (up to the limits below). */
  | { kind: 'more' }
  | { kind: 'none' };

/**
 * Most bytes read while sniffing. A ClientHello with a post-quantum key share
 * and many extensions is ~2 KiB (Chrome 124+); a TLS record holds at most
 * 16 KiB, and a hello spread over several records is read up to this bound.
 * Browsers' request headers stay far below it too (cookies included, most
 * servers refuse > 8–16 KiB).
 */
export const SNIFF_MAX_BYTES = 32 * 1024;

const MORE: SniffResult = { kind: 'more' };
const NONE: SniffResult = { kind: 'none' };

export function sniffName(b: Buffer): SniffResult {
  if (b.length === 0) return MORE;
  if (b[0] === 0x16) return sniffTls(b);
  return sniffHttp(b);
}

/**
 * TLS: records of type handshake (22) carry the ClientHello, possibly split
 * over several records (RFC 8446 §5.1 allows it); their payloads are joined
 * until the handshake message is whole.
 */
function sniffTls(b: Buffer): SniffResult {
  // Handshake bytes gathered from the records seen so far.
  const parts: Buffer[] = [];
  let have = 0;
  let need = -1;
  let off = 0;
  for (;;) {
    if (b.length - off < 5) return off >= SNIFF_MAX_BYTES ? NONE : MORE;
    if (b[off] !== 0x16 || b[off + 1] !== 0x03) return NONE;
    const len = b.readUInt16BE(off + 3);
    // RFC 8446 §5.1: at most 2^14 bytes, and a handshake record is never empty.
    if (len === 0 || len > 16_384) return NONE;
    const end = off + 5 + len;
    const payload = b.subarray(off + 5, Math.min(end, b.length));
    parts.push(payload);
    have += payload.length;
    if (need < 0 && have >= 4) {
      const hs = parts.length === 1 ? payload : Buffer.concat(parts);
      if (hs[0] !== 0x01) return NONE; // not a ClientHello
      need = 4 + hs.readUIntBE(1, 3);
      if (need > SNIFF_MAX_BYTES) return NONE;
    }
    if (need >= 0 && have >= need) {
      const hs = parts.length === 1 ? payload : Buffer.concat(parts);
      return clientHelloSni(hs.subarray(4, need));
    }
    if (end > b.length) return end > SNIFF_MAX_BYTES ? NONE : MORE;
    off = end;
  }
}

/** The SNI host_name of a ClientHello body (RFC 8446 §4.1.2, RFC 6066 §3). */
function clientHelloSni(h: Buffer): SniffResult {
  let p = 2 + 32; // legacy_version, random
  if (h.length < p + 1) return NONE;
  p += 1 + (h[p] as number); // legacy_session_id
  if (h.length < p + 2) return NONE;
  p += 2 + h.readUInt16BE(p); // cipher_suites
  if (h.length < p + 1) return NONE;
  p += 1 + (h[p] as number); // legacy_compression_methods
  if (h.length < p + 2) return NONE; // no extensions: no SNI
  const extEnd = p + 2 + h.readUInt16BE(p);
  if (extEnd > h.length) return NONE;
  p += 2;
  while (p + 4 <= extEnd) {
    const type = h.readUInt16BE(p);
    const len = h.readUInt16BE(p + 2);
    p += 4;
    if (p + len > extEnd) return NONE;
    if (type === 0) return serverNameList(h.subarray(p, p + len));
    p += len;
  }
  return NONE;
}

function serverNameList(e: Buffer): SniffResult {
  if (e.length < 2) return NONE;
  const end = 2 + e.readUInt16BE(0);
  if (end > e.length) return NONE;
  let p = 2;
  while (p + 3 <= end) {
    const type = e[p] as number;
    const len = e.readUInt16BE(p + 1);
    p += 3;
    if (p + len > end) return NONE;
    if (type === 0) {
      const name = hostName(e.toString('latin1', p, p + len));
      return name === undefined ? NONE : { kind: 'name', name, proto: 'tls' };
    }
    p += len;
  }
  return NONE;
}

const METHODS = ['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'CONNECT', 'TRACE'];

/** HTTP/1.x: a known method, then the Host header of the request head (RFC 9112 §3.2). */
function sniffHttp(b: Buffer): SniffResult {
  const sp = b.indexOf(0x20);
  const method = b.toString('latin1', 0, sp < 0 ? Math.min(b.length, 8) : sp);
  if (sp < 0) return METHODS.some((m) => m.startsWith(method)) ? MORE : NONE;
  if (!METHODS.includes(method)) return NONE;
  const headEnd = b.indexOf('\r\n\r\n');
  const head = b.toString('latin1', 0, headEnd < 0 ? Math.min(b.length, SNIFF_MAX_BYTES) : headEnd);
  const lines = head.split('\r\n');
  // Complete header lines only: the last one may still be arriving.
  const whole = headEnd < 0 ? lines.slice(0, -1) : lines;
  if (whole.length > 0 && !/^\S+ \S+ HTTP\/1\.[01]$/.test(whole[0] as string)) return NONE;
  for (let i = 1; i < whole.length; i++) {
    const l = whole[i] as string;
    const colon = l.indexOf(':');
    if (colon !== 4 || l.slice(0, 4).toLowerCase() !== 'host') continue;
    const name = hostName(stripPort(l.slice(5).trim()));
    return name === undefined ? NONE : { kind: 'name', name, proto: 'http' };
  }
  if (headEnd >= 0 || b.length >= SNIFF_MAX_BYTES) return NONE;
  return MORE;
}

/** `host:port` → host; an IPv6 literal (`[::1]:80`) stays bracketed and is not a name. */
function stripPort(h: string): string {
  if (h.startsWith('[')) return h;
  const c = h.lastIndexOf(':');
  return c < 0 ? h : h.slice(0, c);
}

/**
 * A DNS host name (letters, digits, `-`, `_`, dots; labels of 1–63, ≤ 253 in
 * all), lower-cased, trailing dot dropped; undefined for anything else —
 * including IP literals, which say nothing the destination address does not.
 */
export function hostName(s: string): string | undefined {
  const n = (s.endsWith('.') ? s.slice(0, -1) : s).toLowerCase();
  if (n.length === 0 || n.length > 253) return undefined;
  if (!/^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/.test(n)) {
    return undefined;
  }
  // All-numeric last label: an IPv4 literal (or nonsense), not a name.
  if (/^[0-9]+$/.test(n.slice(n.lastIndexOf('.') + 1))) return undefined;
  return n;
}

/**
 * Read the first bytes `app` sends, for at most `timeoutMs`, until they name
 * a host or cannot; then pause the socket and put every byte read back
 * (unshift), so the relay sends them upstream unchanged. Resolves with the
 * name, or undefined (no name, timeout: a server-speaks-first protocol).
 * 'ended': the app half-closed before its bytes said anything; what it sent
 * can no longer be put back (the caller resets it).
 */
export function sniffSocket(
  app: Socket,
  timeoutMs: number,
): Promise<{ name: string; proto: 'tls' | 'http' } | undefined | 'ended'> {
  return new Promise((resolve) => {
    let buf: Buffer | undefined;
    let done = false;
    const finish = (r: SniffResult | 'ended') => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      app.off('data', onData);
      app.off('end', onEnd);
      app.off('close', onEnd);
      app.pause();
      if (r === 'ended') {
        resolve(buf === undefined ? undefined : 'ended');
        return;
      }
      if (buf !== undefined) app.unshift(buf);
      resolve(r.kind === 'name' ? { name: r.name, proto: r.proto } : undefined);
    };
    const onData = (c: Buffer) => {
      buf = buf === undefined ? c : Buffer.concat([buf, c]);
      const r = sniffName(buf);
      if (r.kind !== 'more' || buf.length >= SNIFF_MAX_BYTES) finish(r.kind === 'more' ? NONE : r);
    };
    const onEnd = () => finish('ended');
    const timer = setTimeout(() => finish(NONE), timeoutMs);
    app.on('data', onData);
    app.once('end', onEnd);
    app.once('close', onEnd);
    app.resume();
  });
}
