import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type FakeDns, type FakeDnsOptions, MAP_FILE } from '../../../src/dns/index.js';
import { dig, fakeDnsOn, must, portOf } from './helpers.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'fakedns-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function make(extra: Partial<FakeDnsOptions> = {}, logs: string[] = []): FakeDns {
  return fakeDnsOn(9, { stateDir: dir, logger: (l) => logs.push(l), ...extra });
}

async function mapNames(d: FakeDns, names: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const n of names) out.set(n, (await dig(portOf(d), [n, 'A'])).answers[0]?.data as string);
  return out;
}

describe('persistence', () => {
  it('saves on close and reloads the same map at start (same answers after restart)', async () => {
    const a = make();
    await a.start();
    const before = await mapNames(a, ['one.example', 'two.example', 'three.example']);
    await a.close();
    expect((await readdir(dir)).sort()).toEqual([MAP_FILE]); // no temporary file left behind

    const logs: string[] = [];
    const b = make({}, logs);
    const restored: string[] = [];
    b.on('mapped', (n) => restored.push(n));
    await b.start();
    try {
      expect(logs.some((l) => /restored 3 fake-IP mappings/.test(l))).toBe(true);
      expect(restored.sort()).toEqual(['one.example', 'three.example', 'two.example']);
      for (const [n, ip] of before) expect(b.reverse(ip)).toBe(n);
      expect(await mapNames(b, [...before.keys()])).toEqual(before);
      // a new name gets a new address, not one of the restored
      const fresh = (await mapNames(b, ['four.example'])).get('four.example');
      expect([...before.values()]).not.toContain(fresh);
    } finally {
      await b.close();
    }
  });

  it('keeps LRU order across a restart', async () => {
    let now = 1000; // 10.7.0.0/29: 5 addresses
    const b0 = make({ cidr: '10.7.0.0/29', clock: () => now++ });
    await b0.start();
    const ips = await mapNames(b0, ['a.test', 'b.test', 'c.test', 'd.test', 'e.test']);
    await mapNames(b0, ['a.test']); // a now most recent: b is the LRU
    await b0.close();
    const b1 = make({ cidr: '10.7.0.0/29', clock: () => now++ });
    await b1.start();
    try {
      const f = await mapNames(b1, ['f.test']);
      expect(f.get('f.test')).toBe(ips.get('b.test'));
      expect(b1.lookup('b.test')).toBeUndefined();
      expect(b1.lookup('a.test')).toBe(ips.get('a.test'));
    } finally {
      await b1.close();
    }
  });

  it('discards a map made with another CIDR, with a log line', async () => {
    const a = make();
    await a.start();
    await mapNames(a, ['one.example']);
    await a.close();
    const logs: string[] = [];
    const b = make({ cidr: '198.19.0.0/16' }, logs);
    await b.start();
    try {
      expect(b.entries()).toHaveLength(0);
      expect(logs.some((l) => /made for 198\.18\.0\.0\/16, not 198\.19\.0\.0\/16; discarded/.test(l))).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('drops names that are now filtered at reload', async () => {
    const a = make();
    await a.start();
    const ips = await mapNames(a, ['nas.lan', 'keep.example', 'x.corp.example']);
    await a.close();
    const logs: string[] = [];
    const b = make({ filters: ['+.lan', '.corp.example'] }, logs);
    await b.start();
    try {
      expect(b.entries().map((e) => e.name)).toEqual(['keep.example']);
      expect(b.reverse(must(ips.get('nas.lan')))).toBeUndefined();
      expect(logs.some((l) => /dropped 2 now matched by --fake-ip-filter/.test(l))).toBe(true);
    } finally {
      await b.close();
    }
  });

  it.each([
    ['not JSON', '{oops', /not valid JSON/],
    ['another format', JSON.stringify({ format: 99, cidr: '198.18.0.0/16', entries: [] }), /unknown format/],
  ])('discards a saved map that is %s, with a log line', async (_n, body, re) => {
    await writeFile(join(dir, MAP_FILE), body);
    const logs: string[] = [];
    const b = make({}, logs);
    await b.start();
    try {
      expect(b.entries()).toHaveLength(0);
      expect(logs.some((l) => re.test(l))).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('skips invalid entries (outside the range, gateway, duplicate address)', async () => {
    const entries = [
      { name: 'ok.example', ip: '198.18.0.9', lastUsedMs: 1 },
      { name: 'gw.example', ip: '198.18.0.1', lastUsedMs: 2 },
      { name: 'out.example', ip: '10.0.0.1', lastUsedMs: 3 },
      { name: 'dup.example', ip: '198.18.0.9', lastUsedMs: 4 },
      { name: 'bad.example', ip: 'nope', lastUsedMs: 5 },
    ];
    await writeFile(join(dir, MAP_FILE), JSON.stringify({ format: 1, cidr: '198.18.0.0/16', savedAtMs: 0, entries }));
    const logs: string[] = [];
    const b = make({}, logs);
    await b.start();
    try {
      expect(b.entries().map((e) => e.name)).toEqual(['ok.example']);
      expect(logs.some((l) => /restored 1 .*skipped 4 invalid/.test(l))).toBe(true);
    } finally {
      await b.close();
    }
  });

  it('saves periodically while running', async () => {
    const a = make({ persistIntervalMs: 20 });
    await a.start();
    try {
      await mapNames(a, ['periodic.example']);
      let text = '';
      for (let i = 0; i < 200 && !text.includes('periodic.example'); i++) {
        await new Promise((r) => setTimeout(r, 20));
        text = await readFile(join(dir, MAP_FILE), 'utf8').catch(() => '');
      }
      expect(JSON.parse(text).entries.map((e: { name: string }) => e.name)).toEqual(['periodic.example']);
    } finally {
      await a.close();
    }
  });

  it('logs and keeps serving when the state dir cannot be written', async () => {
    const file = join(dir, 'not-a-dir');
    await writeFile(file, 'x');
    const logs: string[] = [];
    const a = make({ stateDir: join(file, 'sub') }, logs);
    await a.start();
    await mapNames(a, ['x.example']);
    await a.close();
    expect(logs.some((l) => /cannot save the fake-IP map/.test(l))).toBe(true);
  });
});
