import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../../src/errors.js';
import { parseUpstream } from '../../../src/proxy/outbound.js';
import { type Daemon, echoOrigin, echoThrough, LO, startMicrosocks, startTinyproxy } from './helpers.js';

describe('parseUpstream', () => {
  it.each([
    ['direct', 'direct', 'direct'],
    ['reject', 'reject', 'reject'],
    ['socks5://127.0.0.1:1080', 'socks5', 'socks5://127.0.0.1:1080'],
    ['socks5://user:p%40ss@proxy.lan:1080', 'socks5', 'socks5://proxy.lan:1080'],
    ['socks5h://[::1]:9050', 'socks5', 'socks5://[::1]:9050'],
    ['http://u:p@10.0.0.1:3128', 'http', 'http://10.0.0.1:3128'],
    ['http://10.0.0.1:3128/', 'http', 'http://10.0.0.1:3128'],
  ])('%s → %s, label %s (no password)', (url, kind, label) => {
    const o = parseUpstream(url);
    expect(o.kind).toBe(kind);
    expect(o.label).toBe(label);
    expect(o.label).not.toContain('p@ss');
  });

  it.each([
    ['not a url', 'socks://', /not a URL|scheme/],
    ['unknown scheme', 'https://proxy:443', /scheme "https" is not supported/],
    ['no port', 'socks5://proxy', /has no port/],
    ['path', 'http://proxy:3128/x', /must not have a path/],
    ['port out of range', 'socks5://h:70000', /not a URL/],
    ['garbage', 'socks5 proxy', /not a URL/],
    ['empty socks5 password', 'socks5://user@h:1080', /password must be 1–255 bytes/],
    ['http user with colon', 'http://a%3Ab:c@h:1', /must not contain ":"/],
  ])('%s → UsageError (one line)', (_n, url, msg) => {
    let err: unknown;
    try {
      parseUpstream(url);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as UsageError).code).toBe('EUSAGE');
    expect((err as Error).message).toMatch(msg);
    expect((err as Error).message).not.toContain('\n');
  });
});

describe('every proxy --upstream CONNECTs by name: the proxy resolves it (we have no resolver at all)', () => {
  let socks: Daemon;
  let tiny: Daemon;
  let origin: Awaited<ReturnType<typeof echoOrigin>>;
  beforeAll(async () => {
    [socks, tiny, origin] = await Promise.all([startMicrosocks(), startTinyproxy(), echoOrigin()]);
  });
  afterAll(async () => {
    await Promise.all([socks?.stop(), tiny?.stop(), origin?.close()]);
  });

  it.each([
    ['socks5', () => `socks5://${LO}:${socks.port}`],
    ['http', () => `http://${LO}:${tiny.port}`],
  ])('%s (microsocks, tinyproxy): a half-open socket that relays', async (kind, url) => {
    // No `resolve` given: had we tried to resolve 'localhost' ourselves, connect would fail with ENORESOLVER.
    const out = parseUpstream(url());
    const sock = await out.connect({ host: 'localhost', port: origin.port }, { timeoutMs: 3000 });
    expect(sock.allowHalfOpen).toBe(true);
    expect(await echoThrough(sock, `by name through ${kind}`)).toBe(`by name through ${kind}`);
  });
});
