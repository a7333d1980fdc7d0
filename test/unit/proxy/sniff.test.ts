/**
 * Sniffing (src/proxy/sniff.ts): ClientHellos captured from curl 7.88 and
 * openssl 3.0 s_client (test/unit/fixtures/clienthello), whole, cut at every
 * byte, split over TLS records, grown past a record and past the limit;
 * HTTP/1 request heads; and sniffSocket on a real socket pair.
 */
import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { hostName, SNIFF_MAX_BYTES, sniffName, sniffSocket } from '../../../src/proxy/sniff.js';

const fixture = (f: string) => readFileSync(new URL(`../fixtures/clienthello/${f}`, import.meta.url));
const CURL = fixture('curl-www.example.com.bin');
const OPENSSL = fixture('openssl-sni.test.example.bin');
const NOSNI = fixture('openssl-nosni.bin');

/** The handshake message inside one captured record. */
function handshake(rec: Buffer): Buffer {
  expect(rec[0]).toBe(0x16);
  expect(rec.length).toBe(5 + rec.readUInt16BE(3));
  return rec.subarray(5);
}

/** Wrap handshake bytes in TLS records of at most `size` payload bytes each. */
function records(hs: Buffer, size: number): Buffer {
  const out: Buffer[] = [];
  for (let p = 0; p < hs.length; p += size) {
    const part = hs.subarray(p, Math.min(hs.length, p + size));
    const h = Buffer.from([0x16, 0x03, 0x01, 0, 0]);
    h.writeUInt16BE(part.length, 3);
    out.push(h, part);
  }
  return Buffer.concat(out);
}

/** The ClientHello with a padding extension (RFC 7685, type 21) of `pad` bytes appended. */
function padded(hs: Buffer, pad: number): Buffer {
  const body = hs.subarray(4);
  // Find the extensions block: version, random, session id, suites, compression.
  let p = 34;
  p += 1 + (body[p] as number);
  p += 2 + body.readUInt16BE(p);
  p += 1 + (body[p] as number);
  const extLen = body.readUInt16BE(p);
  const ext = Buffer.alloc(4 + pad);
  ext.writeUInt16BE(21, 0);
  ext.writeUInt16BE(pad, 2);
  const newBody = Buffer.concat([body.subarray(0, p), Buffer.from([0, 0]), body.subarray(p + 2), ext]);
  newBody.writeUInt16BE(extLen + ext.length, p);
  const head = Buffer.from([1, 0, 0, 0]);
  head.writeUIntBE(newBody.length, 1, 3);
  return Buffer.concat([head, newBody]);
}

describe('sniffName: TLS', () => {
  it('reads the SNI of real ClientHellos', () => {
    expect(sniffName(CURL)).toEqual({ kind: 'name', name: 'www.example.com', proto: 'tls' });
    expect(sniffName(OPENSSL)).toEqual({ kind: 'name', name: 'sni.test.example', proto: 'tls' });
  });

  it('a hello without SNI has no name', () => {
    expect(sniffName(NOSNI)).toEqual({ kind: 'none' });
  });

  it('every truncation of a hello asks for more, never a wrong answer', () => {
    for (const hello of [CURL, OPENSSL, NOSNI]) {
      for (let n = 0; n < hello.length; n++) expect(sniffName(hello.subarray(0, n))).toEqual({ kind: 'more' });
    }
  });

  it('a hello split over TLS records of 1, 7 and 100 bytes', () => {
    for (const size of [1, 7, 100]) {
      const split = records(handshake(CURL), size);
      expect(sniffName(split)).toEqual({ kind: 'name', name: 'www.example.com', proto: 'tls' });
      // Cut inside the records too.
      expect(sniffName(split.subarray(0, split.length - 1))).toEqual({ kind: 'more' });
    }
  });

  it('a hello larger than one record (20 KiB of padding, two records) is read whole', () => {
    const big = padded(handshake(OPENSSL), 20_000);
    expect(sniffName(records(big, 16_384))).toEqual({ kind: 'name', name: 'sni.test.example', proto: 'tls' });
  });

  it('a hello past the sniff limit is given up at once, not waited for', () => {
    const huge = padded(handshake(OPENSSL), SNIFF_MAX_BYTES);
    const wire = records(huge, 16_384);
    expect(sniffName(wire.subarray(0, 100))).toEqual({ kind: 'none' });
  });

  it('malformed hellos answer none, never throw', () => {
    const hs = handshake(CURL);
    // Not a ClientHello (ServerHello type), bad record version, empty and oversized records.
    const notHello = Buffer.from(hs);
    notHello[0] = 2;
    expect(sniffName(records(notHello, 16_384))).toEqual({ kind: 'none' });
    const badVer = Buffer.from(CURL);
    badVer[1] = 0x02;
    expect(sniffName(badVer)).toEqual({ kind: 'none' });
    expect(sniffName(Buffer.from([0x16, 3, 1, 0, 0]))).toEqual({ kind: 'none' });
    expect(sniffName(Buffer.from([0x16, 3, 1, 0x40, 1]))).toEqual({ kind: 'none' });
    // Lengths inside the hello that point past its end: flip every byte of the body in turn.
    for (let i = 5; i < CURL.length; i++) {
      const b = Buffer.from(CURL);
      b[i] = (b[i] as number) ^ 0xff;
      const r = sniffName(b);
      if (r.kind === 'name') expect(r.name).toMatch(/^[a-z0-9_.-]+$/);
    }
    // A random-bytes fuzz behind a valid record header.
    let seed = 1;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed & 0xff;
    };
    for (let k = 0; k < 500; k++) {
      const body = Buffer.from(Array.from({ length: 200 }, rnd));
      body[0] = 1;
      body.writeUIntBE(196, 1, 3);
      expect(() => sniffName(records(body, 16_384))).not.toThrow();
    }
  });

  it('an SNI that is not a host name is ignored', () => {
    const hs = Buffer.from(handshake(CURL));
    const at = hs.indexOf('www.example.com');
    hs.write('www.exa/ple.com', at, 'latin1');
    expect(sniffName(records(hs, 16_384))).toEqual({ kind: 'none' });
    hs.write('192.168.100.200', at, 'latin1');
    expect(sniffName(records(hs, 16_384))).toEqual({ kind: 'none' });
  });
});

describe('sniffName: HTTP', () => {
  const req = 'GET /x HTTP/1.1\r\nUser-Agent: curl/7.88.1\r\nhOsT: Web.Example.ORG:8080\r\nAccept: */*\r\n\r\n';

  it('reads Host (case-insensitive, port dropped, lower-cased)', () => {
    expect(sniffName(Buffer.from(req))).toEqual({ kind: 'name', name: 'web.example.org', proto: 'http' });
  });

  it('every prefix up to the Host line asks for more', () => {
    const hostEnd = req.indexOf('\r\nAccept');
    for (let n = 0; n <= hostEnd; n++) expect(sniffName(Buffer.from(req.slice(0, n)))).toEqual({ kind: 'more' });
  });

  it('not HTTP, HTTP/2, no Host, an IP Host: none', () => {
    for (const s of [
      'SSH-2.0-OpenSSH_9.2\r\n',
      'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
      'GET / HTTP/1.0\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n',
      'GET /\r\n\r\n',
      '\x00\x01\x02',
    ]) {
      expect(sniffName(Buffer.from(s)), JSON.stringify(s)).toEqual({ kind: 'none' });
    }
  });

  it('a head that never ends is given up at the limit', () => {
    const b = Buffer.from(`GET / HTTP/1.1\r\nX: ${'a'.repeat(SNIFF_MAX_BYTES)}`);
    expect(sniffName(b)).toEqual({ kind: 'none' });
  });
});

describe('hostName', () => {
  it('accepts DNS names, refuses literals and junk', () => {
    expect(hostName('Example.COM.')).toBe('example.com');
    expect(hostName('_dmarc.a-b.example')).toBe('_dmarc.a-b.example');
    for (const bad of ['', '1.2.3.4', 'a..b', '-a.b', 'a b', `${'a'.repeat(64)}.com`, `${'a.'.repeat(127)}com`]) {
      expect(hostName(bad), bad).toBeUndefined();
    }
  });
});

describe('sniffSocket', () => {
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const c of cleanup.splice(0)) c();
  });

  /** A connected pair: [what the listener accepted (paused), the client]. */
  async function pair(): Promise<[net.Socket, net.Socket]> {
    const srv = net.createServer({ pauseOnConnect: true });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const accepted = new Promise<net.Socket>((r) => srv.once('connection', r));
    const client = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
    const app = await accepted;
    cleanup.push(() => {
      app.destroy();
      client.destroy();
      srv.close();
    });
    return [app, client];
  }

  /** Everything the app socket yields after sniffing, until the client ends. */
  function rest(app: net.Socket): Promise<Buffer> {
    return new Promise((resolve) => {
      const bufs: Buffer[] = [];
      app.on('data', (d: Buffer) => bufs.push(d));
      app.once('end', () => resolve(Buffer.concat(bufs)));
      app.resume();
    });
  }

  it('a hello sent in three segments: the name, and every byte still there in order', async () => {
    const [app, client] = await pair();
    const sniffed = sniffSocket(app, 5000);
    client.setNoDelay(true);
    client.write(CURL.subarray(0, 3));
    await new Promise((r) => setTimeout(r, 20));
    client.write(CURL.subarray(3, 200));
    await new Promise((r) => setTimeout(r, 20));
    client.write(CURL.subarray(200));
    expect(await sniffed).toEqual({ name: 'www.example.com', proto: 'tls' });
    client.end(Buffer.from('after'));
    expect(await rest(app)).toEqual(Buffer.concat([CURL, Buffer.from('after')]));
  });

  it('a server-speaks-first client: no name after the wait, nothing lost', async () => {
    const [app, client] = await pair();
    expect(await sniffSocket(app, 50)).toBeUndefined();
    client.end('late');
    expect((await rest(app)).toString()).toBe('late');
  });

  it('a half-close in the middle of a hello: ended', async () => {
    const [app, client] = await pair();
    const sniffed = sniffSocket(app, 5000);
    client.end(CURL.subarray(0, 50));
    expect(await sniffed).toBe('ended');
  });
});
