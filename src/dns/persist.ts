/**
 * The fake-IP map on disk, so apps and OS caches that still hold a fake
 * address keep working after the daemon restarts.
 *
 * One JSON file, `<stateDir>/fake-ip-map.json`, written atomically: a
 * temporary file in the same directory, fsync, rename over the old one
 * (rename within a file system is atomic, so a crash leaves the old map or
 * the new one, never half of either). A map made with another CIDR, or that
 * cannot be read, is discarded with a log line — never a start-up failure.
 *
 * Between snapshots, new mappings go to the journal (journal.ts); the
 * snapshot records `journalGen`, the first journal generation it does not
 * cover.
 */
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDirSync } from '../util/stateFile.js';

export const MAP_FILE = 'fake-ip-map.json';
const FORMAT = 1;

export interface SavedEntry {
  name: string;
  ip: string;
  lastUsedMs: number;
}

interface SavedMap {
  format: number;
  cidr: string;
  savedAtMs: number;
  /** Journal generations >= this are newer than the snapshot (absent: 0, replay all). */
  journalGen?: number;
  /** Least recently used first, so reloading in order rebuilds the LRU list. */
  entries: SavedEntry[];
}

export async function saveMap(
  stateDir: string,
  cidr: string,
  entries: SavedEntry[],
  nowMs: number,
  journalGen?: number,
): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o755 });
  const file = join(stateDir, MAP_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  const body: SavedMap = { format: FORMAT, cidr, savedAtMs: nowMs, entries };
  if (journalGen !== undefined) body.journalGen = journalGen;
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(JSON.stringify(body));
    await fh.sync();
  } catch (err) {
    await fh.close();
    await unlink(tmp).catch(() => {});
    throw err;
  }
  await fh.close();
  await rename(tmp, file);
  // The rename is durable only once the directory is (older journal
  // generations are deleted on the strength of it).
  fsyncDirSync(stateDir);
}

/**
 * Read the saved map. Undefined (and a log line) when there is none usable:
 * missing is silent, unreadable / another format / another CIDR are logged.
 */
export async function loadMap(
  stateDir: string,
  cidr: string,
  log: (line: string) => void,
): Promise<SavedEntry[] | undefined> {
  const snap = await loadSnapshot(stateDir, cidr, log);
  return snap?.otherCidr ? undefined : snap?.entries;
}

/** The saved map and the first journal generation it does not cover; undefined as loadMap. */
export async function loadSnapshot(
  stateDir: string,
  cidr: string,
  log: (line: string) => void,
): Promise<{ entries: SavedEntry[]; journalGen: number; otherCidr?: boolean } | undefined> {
  const file = join(stateDir, MAP_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as { code?: string }).code !== 'ENOENT')
      log(`dns: cannot read saved fake-IP map ${file}: ${(err as Error).message}; starting empty`);
    return undefined;
  }
  let body: Partial<SavedMap>;
  try {
    body = JSON.parse(text) as Partial<SavedMap>;
  } catch {
    log(`dns: saved fake-IP map ${file} is not valid JSON; discarded, starting empty`);
    return undefined;
  }
  if (body.format !== FORMAT || !Array.isArray(body.entries)) {
    log(`dns: saved fake-IP map ${file} has an unknown format; discarded, starting empty`);
    return undefined;
  }
  if (body.cidr !== cidr) {
    log(`dns: saved fake-IP map ${file} was made for ${String(body.cidr)}, not ${cidr}; discarded, starting empty`);
    return { entries: [], journalGen: Number.POSITIVE_INFINITY, otherCidr: true };
  }
  const entries = body.entries.filter(
    (e): e is SavedEntry =>
      typeof e === 'object' &&
      e !== null &&
      typeof e.name === 'string' &&
      typeof e.ip === 'string' &&
      typeof e.lastUsedMs === 'number',
  );
  return { entries, journalGen: typeof body.journalGen === 'number' ? body.journalGen : 0 };
}
