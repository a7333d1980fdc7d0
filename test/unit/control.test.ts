/**
 * `fakeproxy status` against a daemon that cannot answer (issue 16): an
 * out-of-fds daemon accepts and closes at once (libuv's EMFILE trick), or
 * reports an error object; the client names the cause instead of printing
 * `pid undefined … rss NaN MiB`.
 */
import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { controlPath, formatStatus, listenAbstract, readStatus } from '../../src/control.js';
import { resourceAlarm } from '../../src/util/exhaustion.js';

let server: net.Server | undefined;
afterEach(() => new Promise<void>((r) => (server ? server.close(() => r()) : r())));

function serve(tun: string, onConn: (s: net.Socket) => void): Promise<void> {
  server = net.createServer(onConn);
  return new Promise((r) => server?.listen(controlPath(tun), () => r()));
}

describe('readStatus', () => {
  it('a connection closed without an answer names fd exhaustion', async () => {
    const tun = `fpt-st-${process.pid}-a`;
    await serve(tun, (s) => s.end());
    await expect(readStatus(tun)).rejects.toMatchObject({
      code: 'EMFILE',
      message: expect.stringMatching(/closed the status connection without answering: .*out of file descriptors/),
    });
  });

  it('an error object from the daemon is an error, not a status with undefined fields', async () => {
    const tun = `fpt-st-${process.pid}-b`;
    await serve(tun, (s) =>
      s.end(`${JSON.stringify({ error: 'EMFILE: too many open files, uv_resident_set_memory' })}\n`),
    );
    await expect(readStatus(tun)).rejects.toMatchObject({
      code: 'ESTATUS',
      message: expect.stringMatching(/could not report its status: EMFILE/),
    });
  });

  it('kernel drops at the TUN transmit queue print on the drops line', async () => {
    const tun = `fpt-st-${process.pid}-d`;
    const base = { pid: 42, uptimeSec: 3, rssBytes: 1, engine: { dropBadChecksum: 2 } };
    const tunOf = (kernelTxDropped: number) => ({
      name: 'fp0',
      range: '198.18.0.0/16',
      mtu: 1500,
      queues: 1,
      kernelTxDropped,
    });
    await serve(tun, (s) => s.end(`${JSON.stringify({ ...base, tun: tunOf(321) })}\n`));
    expect(formatStatus(await readStatus(tun))).toMatch(/^drops: badChecksum 2, tun kernel tx queue 321$/m);
    expect(formatStatus({ ...base, tun: tunOf(0) } as never)).toMatch(/^drops: badChecksum 2$/m);
  });

  it('the dns line says how many fake answers the native fast path made', () => {
    const dns = {
      queries: 10,
      fakeA: 9,
      fastAnswered: 7,
      forwarded: 1,
      upstreamFailures: 0,
      poolMapped: 3,
      poolCapacity: 65533,
    };
    expect(formatStatus({ pid: 42, uptimeSec: 3, rssBytes: 1, dns } as never)).toMatch(
      /^dns: 10 queries, 9 fake answers \(7 of them native\), 1 forwarded, 0 upstream failures, 3\/65533 names mapped$/m,
    );
  });

  it('an unknown RSS prints as unknown, not NaN', async () => {
    const tun = `fpt-st-${process.pid}-c`;
    await serve(tun, (s) => s.end(`${JSON.stringify({ pid: 42, uptimeSec: 3, rssBytes: null, tun: null })}\n`));
    const text = formatStatus(await readStatus(tun));
    expect(text).toMatch(/pid 42, up 3s, rss unknown/);
    expect(text).not.toMatch(/NaN|undefined/);
  });
});

describe('listenAbstract', () => {
  it('accept failures after listening are counted or logged, never an unhandled error that ends the daemon', async () => {
    const tun = `fpt-st-${process.pid}-l`;
    const lines: string[] = [];
    server = await listenAbstract(
      controlPath(tun),
      (s) => s.end('ok\n'),
      'status',
      (l) => lines.push(l),
    );
    const before = resourceAlarm.totals().EMFILE ?? 0;
    // What net.Server emits when libuv's reserve fd is spent: 'error' from accept, as often as it happens.
    const emfile = () => Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', syscall: 'accept' });
    for (let i = 0; i < 3; i++) expect(() => server?.emit('error', emfile())).not.toThrow();
    expect((resourceAlarm.totals().EMFILE ?? 0) - before).toBe(3);
    expect(() => server?.emit('error', Object.assign(new Error('accept EPROTO'), { code: 'EPROTO' }))).not.toThrow();
    expect(lines).toEqual(['status socket: accept EPROTO']);
    // And it still serves.
    const got = await new Promise<string>((r) => {
      let b = '';
      net
        .connect(controlPath(tun))
        .on('data', (d) => (b += d))
        .on('end', () => r(b));
    });
    expect(got).toBe('ok\n');
  });
});
