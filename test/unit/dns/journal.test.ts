import { cpSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dnsPacket from 'dns-packet';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type FakeDns, type FakeDnsOptions, MAP_FILE } from '../../../src/dns/index.js';
import { JOURNAL_PREFIX } from '../../../src/dns/journal.js';
import { encodeQuery, fakeDnsOn } from './helpers.js';

let dir: string;
const open: FakeDns[] = [];
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fakedns-journal-'));
});
afterEach(async () => {
  for (const d of open.splice(0)) await d.close();
  await rm(dir, { recursive: true, force: true });
});

async function make(stateDir: string, extra: Partial<FakeDnsOptions> = {}, logs: string[] = []): Promise<FakeDns> {
  const d = fakeDnsOn(9, { stateDir, logger: (l) => logs.push(l), ...extra });
  await d.start();
  open.push(d);
  return d;
}

function dataOf(r: Buffer | undefined): string {
  const a = dnsPacket.decode(r as Buffer).answers ?? [];
  return (a[0] as { data: string }).data;
}

/** The A answer of a query handled in-process. */
async function ask(d: FakeDns, name: string): Promise<string> {
  return dataOf(await d.handleQuery(encodeQuery(name, 'A'), 'udp'));
}

/** What a kill -9 right now leaves on disk: a copy of the state dir (the running daemon keeps going). */
let crashN = 0;
function crashImage(): string {
  const img = join(dir, `crash-${++crashN}`);
  cpSync(join(dir, 'state'), img, { recursive: true });
  return img;
}

describe('fake-IP map journal: an answer leaves only after its mapping is on disk', () => {
  it('every name answered is in the crash image taken the moment its answer is ready', async () => {
    const a = await make(join(dir, 'state'), { persistIntervalMs: 0 });
    const held = new Map<string, string>();
    // Concurrent queries: several batches, some names asked twice in the same turn.
    const names = Array.from({ length: 60 }, (_, i) => `n${i}.example`);
    const images: { img: string; upto: Map<string, string> }[] = [];
    await Promise.all(
      [...names, ...names.slice(0, 10)].map(async (n) => {
        const ip = await ask(a, n);
        held.set(n, ip);
        if (held.size % 15 === 0) images.push({ img: crashImage(), upto: new Map(held) });
      }),
    );
    images.push({ img: crashImage(), upto: new Map(held) });
    expect(images.length).toBeGreaterThanOrEqual(4);
    for (const { img, upto } of images) {
      const logs: string[] = [];
      const b = await make(img, {}, logs);
      for (const [n, ip] of upto) expect(b.reverse(ip), `${n} in ${img}`).toBe(n);
      expect(logs.join('\n')).toMatch(/from the journal/);
    }
  });

  it('a name asked again in the same turn also waits for the batch that maps it', async () => {
    const a = await make(join(dir, 'state'), { persistIntervalMs: 0 });
    const first = a.handleQuery(encodeQuery('twice.example', 'A'), 'udp');
    const second = a.handleQuery(encodeQuery('twice.example', 'A'), 'udp');
    const r2 = await second;
    const img = crashImage();
    await first;
    const ip = dataOf(r2);
    const b = await make(img);
    expect(b.reverse(ip)).toBe('twice.example');
  });

  it('the snapshot compacts the journal; a crash after it still restores everything', async () => {
    const a = await make(join(dir, 'state'), { persistIntervalMs: 20 });
    const before = new Map<string, string>();
    for (const n of ['s1.example', 's2.example', 's3.example']) before.set(n, await ask(a, n));
    const gens = () => readdirSync(join(dir, 'state')).filter((f) => f.startsWith(JOURNAL_PREFIX));
    // Wait for a snapshot to cover them and for the first generation to be dropped.
    for (let i = 0; i < 200; i++) {
      const f = join(dir, 'state', MAP_FILE);
      const snap = existsSync(f) ? readFileSync(f, 'utf8') : '';
      if (snap.includes('s3.example') && !gens().includes(`${JOURNAL_PREFIX}1`)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(gens()).not.toContain(`${JOURNAL_PREFIX}1`);
    for (const n of ['s4.example', 's5.example']) before.set(n, await ask(a, n));
    const b = await make(crashImage());
    for (const [n, ip] of before) expect(b.reverse(ip)).toBe(n);
  });

  it('a journal record wins over the snapshot (the address was recycled to another name)', async () => {
    const state = join(dir, 'state');
    const a = await make(state, { persistIntervalMs: 0 });
    const ip = await ask(a, 'old.example');
    await a.close();
    open.splice(open.indexOf(a), 1);
    // As if the address was recycled to new.example after the snapshot; then a torn last line.
    writeFileSync(
      join(state, `${JOURNAL_PREFIX}99`),
      `${JSON.stringify({ n: 'new.example', i: ip, t: Date.now() })}\n{"n":"torn.exa`,
    );
    const logs: string[] = [];
    const b = await make(state, {}, logs);
    expect(b.reverse(ip)).toBe('new.example');
    expect(b.lookup('old.example')).toBeUndefined();
    expect(logs.join('\n')).toMatch(/skipped 1 invalid/);
  });

  it('a clean stop leaves only the snapshot', async () => {
    const state = join(dir, 'state');
    const a = await make(state, { persistIntervalMs: 0 });
    await ask(a, 'clean.example');
    await a.close();
    open.splice(open.indexOf(a), 1);
    expect(readdirSync(state)).toEqual([MAP_FILE]);
  });
});
