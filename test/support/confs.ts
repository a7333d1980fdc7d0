/**
 * Configuration files of the real proxy servers the tests and benches run
 * (dante, tinyproxy): one writer each, so a directive every user needs is
 * fixed once. Text only; the caller writes and spawns. No vitest here.
 */

export interface DanteOptions {
  /** Address dante listens on (`internal`). */
  ip: string;
  port: number;
  /** `external`: an address or an interface name; default `ip`. */
  external?: string;
  /** `user.unprivileged`; root where the test's files are root's own. Default nobody. */
  unprivileged?: string;
  /** `log:` of the client/socks pass blocks, e.g. `connect` (one line per CONNECT); default `error`. */
  log?: string;
  /** SO_RCVBUF for dante's UDP sockets, both sides (capped by rmem_max). */
  udpRcvbuf?: number;
}

/** dante (danted 1.4) as a no-auth SOCKS5 server for CONNECT and UDP ASSOCIATE. */
export function danteConf(o: DanteOptions): string {
  const log = o.log ?? 'error';
  const rcvbuf =
    o.udpRcvbuf === undefined
      ? []
      : [`internal.udp.so_rcvbuf: ${o.udpRcvbuf}`, `external.udp.so_rcvbuf: ${o.udpRcvbuf}`];
  return [
    'logoutput: stderr',
    `internal: ${o.ip} port = ${o.port}`,
    `external: ${o.external ?? o.ip}`,
    'clientmethod: none',
    'socksmethod: none',
    'user.privileged: root',
    `user.unprivileged: ${o.unprivileged ?? 'nobody'}`,
    ...rcvbuf,
    'client pass {',
    '  from: 0.0.0.0/0 to: 0.0.0.0/0',
    `  log: ${log}`,
    '}',
    'socks pass {',
    '  from: 0.0.0.0/0 to: 0.0.0.0/0',
    '  command: connect udpassociate udpreply bindreply',
    `  log: ${log}`,
    '}',
    '',
  ].join('\n');
}

export interface TinyproxyOptions {
  ip: string;
  port: number;
  /** `Allow` lines; default the listen address only. */
  allow?: string[];
  /** `ConnectPort` lines (none: tinyproxy allows CONNECT to 443 and 563 only). */
  connectPorts?: number[];
  /** `LogFile`; without it tinyproxy logs to stderr. */
  logFile?: string;
  /** Any further directives, verbatim. */
  extra?: string[];
}

/** tinyproxy as an HTTP CONNECT proxy, in the foreground (`tinyproxy -d -c FILE`). */
export function tinyproxyConf(o: TinyproxyOptions): string {
  return [
    `Port ${o.port}`,
    `Listen ${o.ip}`,
    ...(o.allow ?? [o.ip]).map((a) => `Allow ${a}`),
    ...(o.connectPorts ?? []).map((p) => `ConnectPort ${p}`),
    'Syslog Off',
    'LogLevel Info',
    ...(o.logFile ? [`LogFile "${o.logFile}"`] : []),
    ...(o.extra ?? []),
    '',
  ].join('\n');
}

/**
 * dnsmasq as a local authoritative-only server in the foreground: no
 * resolv.conf, no hosts file, no config file, bound to `listen` only, as
 * root (the tests' namespaces and files are root's); `extra` adds records.
 */
export function dnsmasqArgs(listen: string, extra: string[] = []): string[] {
  return [
    '--keep-in-foreground',
    '--conf-file=/dev/null',
    '--no-resolv',
    '--no-hosts',
    '--user=root',
    '--bind-interfaces',
    `--listen-address=${listen}`,
    ...extra,
  ];
}
