/**
 * HTTP CONNECT messages (RFC 9110 §9.3.6, RFC 9112) as codecs in the same
 * `encodingLength / encode / decode` shape as ./socks5-codec.ts.
 */
import { hostPort } from './dial.js';
import { ProxyError } from './errors.js';
import type { Codec } from './socks5-codec.js';

export interface ConnectRequest {
  host: string;
  port: number;
  /** Basic credentials (RFC 7617) sent as Proxy-Authorization. */
  auth?: { username: string; password: string } | undefined;
}

function requestText(m: ConnectRequest): string {
  if (/[\s@/?#]/.test(m.host) || m.host === '') throw new RangeError(`bad CONNECT host ${JSON.stringify(m.host)}`);
  const target = hostPort(m.host, m.port);
  let s = `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n`;
  if (m.auth) {
    if (m.auth.username.includes(':')) throw new RangeError('RFC 7617 §2: a Basic user-id cannot contain ":"');
    const token = Buffer.from(`${m.auth.username}:${m.auth.password}`, 'utf8').toString('base64');
    s += `Proxy-Authorization: Basic ${token}\r\n`;
  }
  return `${s}\r\n`;
}

/** A message written as the text `toText` gives, in `encoding`; `decode` reads it back. */
function textCodec<T>(toText: (m: T) => string, encoding: BufferEncoding, decode: Codec<T>['decode']): Codec<T> {
  return {
    encodingLength: (m) => Buffer.byteLength(toText(m)),
    encode(m, buf, offset = 0) {
      const text = toText(m);
      const b = buf ?? Buffer.allocUnsafe(offset + Buffer.byteLength(text));
      b.write(text, offset, encoding);
      return b;
    },
    decode,
  };
}

export const connectRequest: Codec<ConnectRequest> = textCodec(requestText, 'utf8', (buf, offset = 0) => {
  const text = buf.toString('latin1', offset);
  const m = /^CONNECT (\S+) HTTP\/1\.[01]\r?\n/.exec(text);
  if (!m) throw new ProxyError('EHTTP_PROXY_PROTOCOL', 'not a CONNECT request line');
  const target = m[1] as string;
  const colon = target.lastIndexOf(':');
  let host = target.slice(0, colon);
  if (host.startsWith('[')) host = host.slice(1, -1);
  const out: ConnectRequest = { host, port: Number(target.slice(colon + 1)) };
  const auth = /\r?\nProxy-Authorization:[ \t]*Basic[ \t]+(\S+)/i.exec(text);
  if (auth) {
    const cred = Buffer.from(auth[1] as string, 'base64').toString('utf8');
    const i = cred.indexOf(':');
    out.auth = { username: cred.slice(0, i), password: cred.slice(i + 1) };
  }
  return out;
});

/** A response head: status line + header fields, without the body. */
export interface ResponseHead {
  version: string;
  status: number;
  reason: string;
  /** Field names lowercased; repeated fields joined with ", " (RFC 9110 §5.3). */
  headers: Record<string, string>;
}

function responseText(m: ResponseHead): string {
  let s = `HTTP/${m.version} ${m.status} ${m.reason}\r\n`;
  for (const [k, v] of Object.entries(m.headers)) s += `${k}: ${v}\r\n`;
  return `${s}\r\n`;
}

/** `decode` takes exactly one head (as returned by readHead), CRLF or bare-LF line ends. */
export const responseHead: Codec<ResponseHead> = textCodec(responseText, 'latin1', (buf, offset = 0) => {
  // latin1: header bytes are opaque octets (RFC 9110 §5.5); never throws on bad UTF-8.
  const lines = buf.toString('latin1', offset).split(/\r?\n/);
  const statusLine = lines[0] ?? '';
  const m = /^HTTP\/(\d\.\d) (\d{3})(?: (.*))?$/.exec(statusLine);
  if (!m) {
    throw new ProxyError(
      'EHTTP_PROXY_PROTOCOL',
      `bad status line ${JSON.stringify(statusLine.slice(0, 80))} (is the upstream an HTTP proxy?)`,
    );
  }
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    if (line === '') break;
    const c = line.indexOf(':');
    if (c <= 0 || /[\s]/.test(line.slice(0, c))) {
      // RFC 9112 §5.1: no whitespace between name and colon; obs-fold is rejected too.
      throw new ProxyError('EHTTP_PROXY_PROTOCOL', `bad header line ${JSON.stringify(line.slice(0, 80))}`);
    }
    const k = line.slice(0, c).toLowerCase();
    const v = line.slice(c + 1).trim();
    headers[k] = k in headers ? `${headers[k]}, ${v}` : v;
  }
  return { version: m[1] as string, status: Number(m[2]), reason: m[3] ?? '', headers };
});
