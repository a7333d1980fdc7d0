import { readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { FakeproxyError } from '../errors.js';

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
