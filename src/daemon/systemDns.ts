/**
 * `--system-dns`: point the host's resolver at the daemon, through the
 * teardown journal (src/daemon/teardown.ts) so every exit path — and a
 * kill -9 followed by `fakeproxy cleanup` or the next start — puts back
 * exactly what was there.
 *
 * Two ways, chosen by what the machine uses:
 * - systemd-resolved with its stub (`/etc/resolv.conf` → stub-resolv.conf,
 *   resolved running in this network namespace): `resolvectl dns|domain|
 *   default-route` on the TUN link, so every name (`~.`) goes to us; undone
 *   by `resolvectl revert` (and forgotten by resolved anyway when the
 *   non-persistent TUN disappears). resolv.conf itself is not touched.
 * - otherwise the file: `/etc/resolv.conf` rewritten in place (it may be a
 *   bind mount: `ip netns exec`, containers) to name only us, keeping its
 *   `search`/`domain`/`options` lines; its old bytes come back byte-identical.
 */
import { existsSync, lstatSync, readlinkSync, realpathSync } from 'node:fs';
import { readIfExistsSync } from '../util/stateFile.js';
import type { Change, TeardownJournal } from './teardown.js';

export const RESOLVED_STUB = '/run/systemd/resolve/stub-resolv.conf';
/** resolved's list of the real uplink servers (what we must forward to when resolved forwards to us). */
export const RESOLVED_UPLINKS = '/run/systemd/resolve/resolv.conf';
const RESOLVED_SOCKET = '/run/systemd/resolve/io.systemd.Resolve';

export type SystemDnsMode = 'resolved' | 'file';

/** Injectable facts about the machine, for tests. */
export interface SystemDnsProbe {
  /** Where resolv.conf leads (realpath), or undefined when it is missing. */
  resolvConfTarget(path: string): string | undefined;
  /** systemd-resolved answers in this network namespace. */
  resolvedRunning(): boolean;
}

const netnsOf = (pid: string) => {
  try {
    return readlinkSync(`/proc/${pid}/ns/net`);
  } catch {
    return undefined;
  }
};

export const hostProbe: SystemDnsProbe = {
  resolvConfTarget(path) {
    try {
      return lstatSync(path).isSymbolicLink() ? realpathSync(path) : path;
    } catch {
      return undefined;
    }
  },
  // resolved serves the namespace of pid 1; a TUN in another namespace is a link it cannot see.
  resolvedRunning: () => existsSync(RESOLVED_SOCKET) && netnsOf('self') === netnsOf('1'),
};

/** 'resolved' when resolv.conf is resolved's stub and resolved runs here; else 'file'. */
export function systemDnsMode(resolvConf = '/etc/resolv.conf', probe: SystemDnsProbe = hostProbe): SystemDnsMode {
  return probe.resolvConfTarget(resolvConf) === RESOLVED_STUB && probe.resolvedRunning() ? 'resolved' : 'file';
}

/** resolv.conf naming only `server`, with the old file's search/domain/options lines. */
export function resolvConfFor(server: string, old: string, pid = process.pid): string {
  const kept = old
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /^(search|domain|options)\s/.test(l));
  return [
    `# fakeproxy --system-dns (pid ${pid}): the previous file comes back when fakeproxy stops; after a crash run \`fakeproxy cleanup\``,
    `nameserver ${server}`,
    ...kept,
    '',
  ].join('\n');
}

export interface SystemDnsOptions {
  teardown: TeardownJournal;
  /** The TUN device (the link resolved sends names to). */
  tun: string;
  /** Where our DNS answers on port 53. */
  server: string;
  mode: SystemDnsMode;
  resolvConf?: string;
}

/** Point the system resolver at `server`; returns the change (for an early undo) and a line for the start-up report. */
export function pointSystemDns(o: SystemDnsOptions): { change: Change; line: string } {
  if (o.mode === 'resolved') {
    const change = o.teardown.execSeq(
      [
        ['resolvectl', 'dns', o.tun, o.server],
        ['resolvectl', 'domain', o.tun, '~.'],
        ['resolvectl', 'default-route', o.tun, 'yes'],
      ],
      ['resolvectl', 'revert', o.tun],
      `systemd-resolved DNS on ${o.tun}`,
    );
    return { change, line: `system dns: systemd-resolved sends every name to ${o.server} (link ${o.tun})` };
  }
  const path = o.resolvConf ?? '/etc/resolv.conf';
  const old = readIfExistsSync(path)?.toString() ?? '';
  const change = o.teardown.writeFile(path, resolvConfFor(o.server, old), `system resolver ${path}`);
  return { change, line: `system dns: ${path} names ${o.server} (restored on exit)` };
}
