import { describe, expect, it } from 'vitest';
import { ProxyError } from '../../../src/proxy/errors.js';
import {
  address,
  addressLengthFromPrefix,
  bytesToIpv6,
  type Codec,
  greeting,
  ipv6ToBytes,
  methodSelection,
  REPLY_ERRORS,
  reply,
  replyError,
  request,
  udpHeader,
  userPassReply,
  userPassRequest,
} from '../../../src/proxy/socks5-codec.js';
import { roundTrip } from './helpers.js';

describe('socks5 codecs round-trip', () => {
  it.each([
    ['greeting no-auth', greeting, { methods: [0] }],
    ['greeting both', greeting, { methods: [0, 2] }],
    ['method selection', methodSelection, { method: 2 }],
    ['user/pass', userPassRequest, { username: 'user', password: 'p@ss wörd' }],
    ['auth reply', userPassReply, { status: 1 }],
    ['request name', request, { cmd: 1, host: 'example.com', port: 443 }],
    ['request v4', request, { cmd: 1, host: '198.18.2.2', port: 80 }],
    ['request v6', request, { cmd: 3, host: '2001:db8::1', port: 53 }],
    ['reply v4', reply, { rep: 0, host: '10.0.0.1', port: 65535 }],
    ['reply name', reply, { rep: 5, host: 'bnd.example', port: 1 }],
    ['udp header', udpHeader, { frag: 0, host: 'dns.example', port: 53 }],
    ['address v6 full', address, { host: '2001:db8:1:2:3:4:5:6', port: 9 }],
  ] as const)('%s', (_n, codec, value) => {
    roundTrip(codec as Codec<typeof value>, value);
  });
});

describe('socks5 wire bytes (RFC 1928 §4)', () => {
  it('sends a name as ATYP 3 so the proxy resolves it', () => {
    const b = request.encode({ cmd: 1, host: 'origin.test', port: 8080 });
    expect([...b.subarray(0, 5)]).toEqual([5, 1, 0, 3, 11]);
    expect(b.subarray(5, 16).toString()).toBe('origin.test');
    expect(b.readUInt16BE(16)).toBe(8080);
  });
  it('sends an IPv4 literal as ATYP 1', () => {
    expect([...request.encode({ cmd: 1, host: '1.2.3.4', port: 258 })]).toEqual([5, 1, 0, 1, 1, 2, 3, 4, 1, 2]);
  });
  it('RFC 1929 request layout', () => {
    expect([...userPassRequest.encode({ username: 'u', password: 'pw' })]).toEqual([1, 1, 0x75, 2, 0x70, 0x77]);
  });
  it.each([
    [[1, 0, 0, 0, 0, 0, 0], 7],
    [[4, 0], 19],
    [[3, 11], 15],
  ])('addressLengthFromPrefix %j → %i', (prefix, len) => {
    expect(addressLengthFromPrefix(Buffer.from(prefix))).toBe(len);
  });
});

describe('socks5 decode rejects bad input with ESOCKS5_PROTOCOL', () => {
  it.each([
    ['truncated reply', () => reply.decode(Buffer.from([5, 0, 0, 1, 127, 0]))],
    ['SOCKS4 reply', () => reply.decode(Buffer.from([0, 0x5a, 0, 0, 0, 0, 0, 0, 0, 0]))],
    ['HTTP instead of SOCKS', () => methodSelection.decode(Buffer.from('HT'))],
    ['unknown ATYP', () => reply.decode(Buffer.from([5, 0, 0, 9, 0, 0, 0, 0, 0, 0]))],
    ['truncated name', () => address.decode(Buffer.from([3, 10, 0x61]))],
  ])('%s', (_n, f) => {
    expect(f).toThrow(expect.objectContaining({ code: 'ESOCKS5_PROTOCOL' }));
  });
  it('refuses names longer than 255 bytes on encode', () => {
    expect(() => request.encode({ cmd: 1, host: 'a'.repeat(256), port: 1 })).toThrow(RangeError);
  });
});

describe('reply codes', () => {
  it.each(Object.entries(REPLY_ERRORS))('REP %s → %o', (rep, e) => {
    const err = replyError(Number(rep), 'ctx');
    expect(err).toBeInstanceOf(ProxyError);
    expect(err.code).toBe(e.code);
    expect(err.status).toBe(Number(rep));
    expect(err.message).toContain(`REP ${rep}`);
  });
  it('every RFC 1928 failure code 1–8 has its own stable code', () => {
    const codes = [1, 2, 3, 4, 5, 6, 7, 8].map((r) => replyError(r, '').code);
    expect(new Set(codes).size).toBe(8);
    expect(replyError(0x42, '').code).toBe('ESOCKS5_REPLY');
  });
});

describe('ipv6 text ⇄ bytes', () => {
  it.each([
    ['::', '::'],
    ['::1', '::1'],
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'],
    ['2001:db8:0:1:0:0:0:1', '2001:db8:0:1::1'],
    ['::ffff:1.2.3.4', '::ffff:102:304'],
    ['fe80::1%eth0', 'fe80::1'],
    ['1:0:1:0:1:0:1:0', '1:0:1:0:1:0:1:0'],
  ])('%s → %s', (text, canon) => {
    expect(bytesToIpv6(ipv6ToBytes(text))).toBe(canon);
  });
});
