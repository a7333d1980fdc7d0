/**
 * Small files in the state directory that must survive a crash: written to a
 * temporary file in the same directory, fsync'd, renamed over the old one,
 * and the directory fsync'd (so the rename itself is on disk). A kill -9 at
 * any point leaves the old content or the new, never a mix. Synchronous on
 * purpose: used at start-up and on the way out (process 'exit' handlers).
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

export function writeFileDurableSync(path: string, data: string | Buffer, mode = 0o644): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', mode);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      // best effort
    }
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
  fsyncDirSync(dir);
}

/** fsync a directory so entries created, renamed or removed in it are durable. */
export function fsyncDirSync(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The file's bytes, or undefined when it does not exist (other errors throw). */
export function readIfExistsSync(path: string): Buffer | undefined {
  try {
    return readFileSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}
