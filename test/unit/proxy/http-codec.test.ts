import { describe, expect, it } from 'vitest';
import { headEnd } from '../../../src/proxy/handshake-io.js';
import { connectRequest, responseHead } from '../../../src/proxy/http-codec.js';
import type { Codec } from '../../../src/proxy/socks5-codec.js';
import { roundTrip } from './helpers.js';

describe('HTTP CONNECT codecs round-trip', () => {
  it.each([
    ['name', connectRequest, { host: 'origin.test', port: 443 }],
    ['v6 literal', connectRequest, { host: '2001:db8::1', port: 80 }],
    ['basic auth', connectRequest, { host: 'a.b', port: 1, auth: { username: 'usér', password: 'pä:ss' } }],
    ['200', responseHead, { version: '1.1', status: 200, reason: 'Connection established', headers: {} }],
    [
      '407',
      responseHead,
      { version: '1.0', status: 407, reason: 'Proxy Auth', headers: { 'proxy-authenticate': 'Basic realm="x"' } },
    ],
  ] as const)('%s', (_n, codec, value) => {
    roundTrip(codec as Codec<typeof value>, value);
  });

  it('brackets IPv6 in the request target and sends Basic credentials', () => {
    const text = connectRequest.encode({ host: '::1', port: 8080, auth: { username: 'u', password: 'p' } }).toString();
    expect(text).toBe('CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\nProxy-Authorization: Basic dTpw\r\n\r\n');
  });
  it('refuses a user-id with a colon (RFC 7617 §2: the first colon splits user and password)', () => {
    expect(() => connectRequest.encode({ host: 'a', port: 1, auth: { username: 'a:b', password: 'c' } })).toThrow(
      RangeError,
    );
  });
  it('refuses a host that would inject a header', () => {
    expect(() => connectRequest.encode({ host: 'a\r\nX: y', port: 1 })).toThrow(RangeError);
  });
});

describe('response head parsing', () => {
  it('accepts bare LF, no reason phrase, repeated fields, odd spacing', () => {
    const h = responseHead.decode(Buffer.from('HTTP/1.0 200\nVia: a\nvia:b  \nX-Empty:\n\n'));
    expect(h).toEqual({ version: '1.0', status: 200, reason: '', headers: { via: 'a, b', 'x-empty': '' } });
  });
  it.each([
    ['SOCKS bytes', '\x05\x00'],
    ['garbage status', 'HTTP/1.1 2x0 OK\r\n\r\n'],
    ['space before colon', 'HTTP/1.1 200 OK\r\nBad : x\r\n\r\n'],
    ['obs-fold', 'HTTP/1.1 200 OK\r\nA: b\r\n  folded\r\n\r\n'],
  ])('rejects %s with EHTTP_PROXY_PROTOCOL', (_n, text) => {
    expect(() => responseHead.decode(Buffer.from(text, 'latin1'))).toThrow(
      expect.objectContaining({ code: 'EHTTP_PROXY_PROTOCOL' }),
    );
  });
  it.each([
    ['HTTP/1.1 200 OK\r\n\r\nrest', 19],
    ['HTTP/1.1 200 OK\n\nrest', 17],
    ['HTTP/1.1 200 OK\r\nA: b\r\n\r\n', 25],
    ['HTTP/1.1 200 OK\r\nA: b\r\n', -1],
  ])('headEnd(%j) = %i', (text, end) => {
    expect(headEnd(Buffer.from(text))).toBe(end);
  });
});
