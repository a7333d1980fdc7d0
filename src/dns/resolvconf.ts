import { readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { FakeproxyError } from '../errors.js';
import { readIfExistsSync, writeFileDurableSync } from '../util/stateFile.js';

/** `<stateDir>/real-resolver.json`: the last real resolver found in resolv.conf. */
export const REAL_RESOLVER_FILE = 'real-resolver.json';

const WILDCARD = new Set(['0.0.0.0', '::', '']);

/** Addresses of this machine (loopback included) — what a wildcard listen address covers. */
function localAddresses(): Set<string> {
  const out = new Set<string>(['127.0.0.1', '::1']);
  for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) out.add(a.address);
  return out;
}

/**
 * The real resolver to forward to when `--dns-upstream` is not given: the
 * first `nameserver` in resolv.conf that is not one of our own listen
 * addresses. Once the host's DNS points at the daemon, resolv.conf names
 * the daemon itself (DESIGN.md "The system resolver is us"); forwarding to it
 * would loop. 127.0.0.0/8 other than our exact address (e.g. systemd-resolved's
 * 127.0.0.53) is fine unless we listen there or on a wildcard.
 */
export function defaultUpstream(
  listen: readonly { host: string; port: number }[],
  resolvConfPath = '/etc/resolv.conf',
): { host: string; port: number } {
  let text = '';
  try {
    text = readFileSync(resolvConfPath, 'utf8');
  } catch (cause) {
    throw new FakeproxyError(
      'ENOUPSTREAM',
      `cannot read ${resolvConfPath} to find the real resolver: give it with --dns-upstream ADDR[:PORT]`,
      {
        cause,
      },
    );
  }
  let locals: Set<string> | undefined;
  const ours = (host: string): boolean =>
    listen.some((l) => {
      if (l.port !== 53) return false;
      if (l.host === host) return true;
      if (WILDCARD.has(l.host)) {
        locals ??= localAddresses();
        return locals.has(host);
      }
      return false;
    });
  const skipped: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.replace(/[#;].*$/, '').trim();
    const m = /^nameserver\s+(\S+)/.exec(line);
    if (!m) continue;
    const host = (m[1] as string).replace(/%.*$/, ''); // drop an IPv6 zone id
    if (!net.isIP(host)) continue;
    if (ours(host)) {
      skipped.push(host);
      continue;
    }
    return { host, port: 53 };
  }
  const why = skipped.length
    ? `its nameservers (${skipped.join(', ')}) are fakeproxy's own DNS listen addresses`
    : 'it lists no nameserver';
  throw new FakeproxyError(
    'ENOUPSTREAM',
    `no real resolver in ${resolvConfPath}: ${why}; give one with --dns-upstream ADDR[:PORT]`,
  );
}

export interface HostPort {
  host: string;
  port: number;
}

/**
 * The real resolver when `--dns-upstream` is not given: resolv.conf's first
 * nameserver that is not us (defaultUpstream), remembered in the state
 * directory; when resolv.conf names only the daemon (the host's DNS already
 * points at it, e.g. a second run of the quick start or a restart after a
 * crash with --system-dns), the remembered one.
 */
export function findUpstream(
  listen: readonly HostPort[],
  stateDir: string | null,
  log: (line: string) => void,
  resolvConfPath = '/etc/resolv.conf',
): HostPort {
  const file = stateDir ? join(stateDir, REAL_RESOLVER_FILE) : undefined;
  let found: HostPort;
  try {
    found = defaultUpstream(listen, resolvConfPath);
  } catch (e) {
    const remembered = file ? readRemembered(file, log) : undefined;
    if (!remembered) {
      const err = e as FakeproxyError;
      const hint = file
        ? ` (none remembered in ${file} either: fakeproxy remembers the real resolver the first time it finds one)`
        : '';
      throw new FakeproxyError(err.code, `${err.message}${hint}`, { cause: e });
    }
    log(
      `dns: ${resolvConfPath} names no real resolver (only fakeproxy); using ${remembered.host}:${remembered.port} remembered in ${file}`,
    );
    return remembered;
  }
  if (file) {
    const text = `${JSON.stringify({ host: found.host, port: found.port })}\n`;
    try {
      if (readIfExistsSync(file)?.toString() !== text) writeFileDurableSync(file, text);
    } catch (e) {
      log(`dns: cannot remember the real resolver in ${file}: ${(e as Error).message} (check --state-dir)`);
    }
  }
  return found;
}

function readRemembered(file: string, log: (line: string) => void): HostPort | undefined {
  let raw: Buffer | undefined;
  try {
    raw = readIfExistsSync(file);
  } catch (e) {
    log(`dns: cannot read ${file}: ${(e as Error).message}`);
    return undefined;
  }
  if (!raw) return undefined;
  try {
    const v = JSON.parse(raw.toString()) as Partial<HostPort>;
    if (typeof v.host === 'string' && net.isIP(v.host) && Number.isInteger(v.port) && (v.port as number) > 0)
      return { host: v.host, port: v.port as number };
  } catch {
    // fall through
  }
  log(`dns: ${file} is not a remembered resolver ({"host","port"}); ignored`);
  return undefined;
}
