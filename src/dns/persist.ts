/**
 * The fake-IP map on disk, so apps and OS caches that still hold a fake
 * address keep working after the daemon restarts.
 *
 * One JSON file, `<stateDir>/fake-ip-map.json`, written atomically: a
 * temporary file in the same directory, fsync, rename over the old one
 * (rename within a file system is atomic, so a crash leaves the old map or
 * the new one, never half of either). A map made with another CIDR, or that
 * cannot be read, is discarded with a log line — never a start-up failure.
 */
import { mkdir, open, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';

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
  /** Least recently used first, so reloading in order rebuilds the LRU list. */
  entries: SavedEntry[];
}

export async function saveMap(stateDir: string, cidr: string, entries: SavedEntry[], nowMs: number): Promise<void> {
  await mkdir(stateDir, { recursive: true, mode: 0o755 });
  const file = join(stateDir, MAP_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  const body: SavedMap = { format: FORMAT, cidr, savedAtMs: nowMs, entries };
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
    return undefined;
  }
  return body.entries.filter(
    (e): e is SavedEntry =>
      typeof e === 'object' &&
      e !== null &&
      typeof e.name === 'string' &&
      typeof e.ip === 'string' &&
      typeof e.lastUsedMs === 'number',
  );
}
