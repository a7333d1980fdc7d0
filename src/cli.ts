#!/usr/bin/env -S node --max-semi-space-size=1
import { Command, CommanderError } from 'commander';
import { closeConnection, formatConnections, listConnections } from './api/client.js';
import { sendCommand } from './command.js';
import { loadConfigFile, resolveStartConfig } from './config.js';
import { formatStatus, readStatus } from './control.js';
import { undoLeftover } from './daemon/teardown.js';
import { Daemon } from './daemon.js';
import { FakeproxyError, UsageError } from './errors.js';
import { dnsLookup, dnsLs, natLs, natWatch } from './inspect/index.js';
import { flagName, helpLine, START_OPTIONS, type StartOption } from './options.js';
import { buildRouteTable, explainRoute, type RouteAnswer } from './proxy/routing.js';
import { cliNodeFlags, missingNodeFlags } from './util/nodeFlags.js';

/** Exit codes: 0 ok, 1 runtime failure, 2 usage (bad flag or value). */
const EXIT_RUNTIME = 1;
const EXIT_USAGE = 2;

const collect = (v: string, prev: string[] = []) => [...prev, v];

function fail(e: unknown, debug: boolean): never {
  const err = e as Error & { code?: string };
  if (debug && err.stack) process.stderr.write(`${err.stack}\n`);
  const code = e instanceof UsageError || err.code === 'EUSAGE' ? EXIT_USAGE : EXIT_RUNTIME;
  process.stderr.write(`fakeproxy: ${err.message ?? String(e)}\n`);
  process.exit(code);
}

/** Started as `node cli.js` without the `#!` line's flags (src/util/nodeFlags.ts): say what it costs. */
function warnMissingNodeFlags(log: (line: string) => void): void {
  const script = process.argv[1];
  if (script === undefined) return;
  const missing = missingNodeFlags(cliNodeFlags(script), process.execArgv, process.env.NODE_OPTIONS);
  if (missing.length === 0) return;
  log(
    `node was started without ${missing.join(' ')} (cli.js's #! line): garbage collection may stall new ` +
      `connections for 5-25 ms; start it as \`fakeproxy start\` or \`node ${missing.join(' ')} ${script} start\``,
  );
}

async function runStart(opts: Record<string, unknown>): Promise<void> {
  const debug = Boolean(opts.debug);
  let daemon: Daemon | undefined;
  try {
    const file = typeof opts.config === 'string' ? loadConfigFile(opts.config) : {};
    const { config: _c, ...flags } = opts;
    const cfg = resolveStartConfig(flags, file);
    const path = typeof opts.config === 'string' ? opts.config : undefined;
    daemon = new Daemon(cfg, {
      reloadConfig: path === undefined ? undefined : () => resolveStartConfig(flags, loadConfigFile(path)),
      // A dead engine thread: tear down (restoring what we changed) and exit 1,
      // so a supervisor restarts the daemon.
      onFatal: () => {
        void d.stop().finally(() => process.exit(EXIT_RUNTIME));
      },
    });
    const d = daemon;
    // Teardown on every way out: signals (clean, exit 0), uncaught errors (exit 1),
    // and process exit (synchronous native close as a last resort).
    process.on('exit', () => d.closeSync());
    const onSignal = (sig: string) => {
      d.log(`${sig}: shutting down`);
      d.stop().then(
        () => process.exit(0),
        () => process.exit(EXIT_RUNTIME),
      );
    };
    process.once('SIGINT', () => onSignal('SIGINT'));
    process.once('SIGTERM', () => onSignal('SIGTERM'));
    // SIGHUP re-reads --config (routing); a broken file keeps the old rules.
    process.on('SIGHUP', () => {
      d.log('SIGHUP: reloading the config');
      d.reload();
    });
    process.on('uncaughtException', (e) => {
      d.log(`internal error: ${e.stack ?? e.message}`);
      d.closeSync();
      process.exit(EXIT_RUNTIME);
    });
    await d.start();
    warnMissingNodeFlags(d.log);
    // Holds the event loop open until a signal stops the daemon, even before
    // any socket is listening.
    const keepAlive = setInterval(() => {}, 1 << 30);
    void d.stopped.then(() => clearInterval(keepAlive));
    d.log('running; Ctrl-C to stop');
  } catch (e) {
    daemon?.closeSync();
    fail(e, debug);
  }
}

export function buildProgram(): Command {
  const program = new Command('fakeproxy')
    .description('Transparent proxy: fake-IP DNS + TUN NAT onto the kernel TCP/UDP stack')
    .version('0.1.0')
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      // One line, our prefix: "fakeproxy: unknown option '--bogus'".
      writeErr: (s) => process.stderr.write(s.startsWith('error: ') ? `fakeproxy: ${s.slice(7)}` : s),
    });

  const start = program.command('start').description('create the TUN device and run the daemon until SIGINT/SIGTERM');
  for (const o of Object.values(START_OPTIONS) as StartOption[]) {
    if (o.repeatable) start.option(o.flag, helpLine(o), collect);
    else start.option(o.flag, helpLine(o));
  }
  start.action(async (opts: Record<string, unknown>) => {
    // commander sets a --no-x option's attribute to true by default; keep it
    // undefined unless given so the config file can set it.
    for (const [key, o] of Object.entries(START_OPTIONS) as [string, StartOption][]) {
      const f = flagName(o);
      if (f.startsWith('--no-') && opts[key] === true && !process.argv.includes(f)) opts[key] = undefined;
    }
    await runStart(opts);
  });

  const inspect = (cmd: Command) =>
    cmd
      .requiredOption('--redis <url>', 'the Redis the daemon mirrors to (redis://[user:pass@]host:port[/db])')
      .option('--node <id>', 'one daemon by node id (default: every node found)')
      .option('--json', 'stable JSON for scripts');
  const runInspect = async (fn: () => Promise<unknown>, opts: { debug?: boolean }) => {
    try {
      await fn();
    } catch (e) {
      fail(e, Boolean(opts.debug));
    }
  };
  const base = (o: Record<string, unknown>) => ({
    redis: String(o.redis),
    node: typeof o.node === 'string' ? o.node : undefined,
    json: Boolean(o.json),
    out: process.stdout,
  });

  program
    .command('status')
    .description('counters of the daemon running in this network namespace (no Redis needed)')
    .option('--tun <name>', 'the daemon serving this device (default fp0)', 'fp0')
    .option('--json', 'the whole status object as JSON')
    .option('--debug', 'stack traces on errors')
    .action((o: { tun: string; json?: boolean; debug?: boolean }) =>
      runInspect(async () => {
        const s = await readStatus(o.tun);
        process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : formatStatus(s));
      }, o),
    );

  program
    .command('route <name[:port]>')
    .description(
      'which rule a new connection to NAME (or an IP) takes and the outbound chain: asks the running daemon, or evaluates --config FILE offline',
    )
    .option('--udp', 'a UDP flow (default TCP)')
    .option('--src <ip[:port]>', 'the app address, for SRC-IP-CIDR / SRC-PORT rules')
    .option('--config <file.yaml>', 'evaluate this file offline instead of asking the daemon')
    .option('--geoip-db <file.mmdb>', 'with --config: the database for GEOIP rules')
    .option('--tun <name>', 'the daemon serving this device (default fp0)', 'fp0')
    .option('--json', 'the answer as JSON')
    .option('--debug', 'stack traces on errors')
    .action((target: string, o: Record<string, unknown>) =>
      runInspect(async () => {
        const q = routeQuery(target, o);
        let a: RouteAnswer;
        let source: string;
        if (typeof o.config === 'string') {
          const raw = loadConfigFile(o.config);
          const cfg = resolveStartConfig(o.geoipDb === undefined ? {} : { geoipDb: o.geoipDb }, raw);
          a = explainRoute(buildRouteTable(cfg), q);
          source = `${o.config} (offline: health is not checked; fallback/url-test show their first member)`;
        } else {
          const r = await sendCommand(String(o.tun), { cmd: 'route', ...q });
          if (!r.ok) throw new UsageError(`route: ${r.error}`);
          a = r as unknown as RouteAnswer;
          source = `the daemon serving ${String(o.tun)}`;
        }
        if (o.json) {
          process.stdout.write(
            `${JSON.stringify({ rule: a.rule, line: a.line, chain: a.chain, outbound: a.outbound })}\n`,
          );
          return;
        }
        process.stdout.write(
          `${q.udp ? 'udp' : 'tcp'} ${target.includes(':') ? target : `${target}:${q.port}`}\n` +
            `rule: ${a.rule}${a.line ? ` (line ${a.line})` : ''}\n` +
            `chain: ${a.chain.join(' → ')} (${a.outbound})\n` +
            `from: ${source}\n`,
        );
      }, o),
    );

  program
    .command('select <group> <proxy>')
    .description('switch a select group of the running daemon to another member (until the next restart)')
    .option('--tun <name>', 'the daemon serving this device (default fp0)', 'fp0')
    .option('--debug', 'stack traces on errors')
    .action((group: string, proxy: string, o: { tun: string; debug?: boolean }) =>
      runInspect(async () => {
        const r = await sendCommand(o.tun, { cmd: 'select', group, proxy });
        if (!r.ok) throw new UsageError(`select: ${r.error}`);
        process.stdout.write(`${group}: ${proxy}\n`);
      }, o),
    );

  program
    .command('reload')
    .description("re-read the running daemon's --config (same as SIGHUP); a broken file keeps the old rules")
    .option('--tun <name>', 'the daemon serving this device (default fp0)', 'fp0')
    .option('--debug', 'stack traces on errors')
    .action((o: { tun: string; debug?: boolean }) =>
      runInspect(async () => {
        const r = await sendCommand(o.tun, { cmd: 'reload' });
        if (!r.ok) throw new FakeproxyError('ERELOAD', `reload refused, the old config stays: ${r.error}`);
        process.stdout.write(`reloaded: ${String(r.summary)}\n`);
      }, o),
    );

  program
    .command('cleanup')
    .description(
      'undo what a killed daemon left (resolver, routes, rules, nftables, sysctls), from its journal in the state dir; the next start does the same',
    )
    .option('--state-dir <dir>', 'the state dir the daemon ran with', START_OPTIONS.stateDir.default)
    .option('--tun <name>', 'the device the daemon ran with', START_OPTIONS.tun.default)
    .option('--debug', 'stack traces on errors')
    .action((o: { stateDir: string; tun: string; debug?: boolean }) =>
      runInspect(async () => {
        const log = (line: string) => process.stdout.write(`${line}\n`);
        const n = undoLeftover({ stateDir: o.stateDir, tun: o.tun, log });
        log(
          n
            ? `cleanup: undid ${n} change${n > 1 ? 's' : ''}`
            : `cleanup: nothing to undo for ${o.tun} in ${o.stateDir}`,
        );
      }, o),
    );

  program
    .command('connections [action] [id]')
    .description(
      "live connections from the daemon's controller API: ls (default) or close ID (resets the app's connection)",
    )
    .option('--controller <addr:port>', 'the controller to ask', START_OPTIONS.controller.default)
    .option('--secret <token>', 'its secret (--secret of the daemon)')
    .option('--json', "ls: the controller's JSON (mihomo's shape)")
    .option('--debug', 'stack traces on errors')
    .action((action: string | undefined, id: string | undefined, o: Record<string, unknown>) =>
      runInspect(async () => {
        const api = {
          controller: String(o.controller),
          secret: typeof o.secret === 'string' ? o.secret : undefined,
        };
        const what = action ?? 'ls';
        if (what === 'ls' && id === undefined) {
          const s = await listConnections(api);
          process.stdout.write(o.json ? `${JSON.stringify(s)}\n` : formatConnections(s));
        } else if (what === 'close' && id !== undefined) {
          await closeConnection(api, id);
          process.stdout.write(`closed ${id}\n`);
        } else {
          throw new UsageError('connections: write `connections ls` or `connections close ID`');
        }
      }, o),
    );

  const nat = program.command('nat').description('inspect the live NAT table (needs a daemon started with --redis)');
  inspect(
    nat.command('ls').description('list live flows: proto, app, destination, NAT address, outbound, state, age, bytes'),
  ).action((o: Record<string, unknown>) => runInspect(() => natLs(base(o)), o));
  inspect(nat.command('watch').description('print flow open/close events as they happen (Ctrl-C to stop)')).action(
    (o: Record<string, unknown>) => {
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort());
      process.once('SIGTERM', () => ac.abort());
      return runInspect(() => natWatch({ ...base(o), signal: ac.signal }), o);
    },
  );
  const dns = program.command('dns').description('inspect the fake-IP map (needs a daemon started with --redis)');
  inspect(dns.command('ls').description('list name → fake IP mappings')).action((o: Record<string, unknown>) =>
    runInspect(() => dnsLs(base(o)), o),
  );
  inspect(dns.command('lookup <name|ip>').description('look a name or fake IP up in the map')).action(
    (query: string, o: Record<string, unknown>) => runInspect(() => dnsLookup({ ...base(o), query }), o),
  );

  return program;
}

/** `NAME[:PORT]` (port defaults to 443), `[v6]:port`, `--src IP[:PORT]`. */
function routeQuery(target: string, o: Record<string, unknown>) {
  let name = target;
  let port = 443;
  let portText: string | undefined;
  const v6 = /^\[(.+)\](?::(.*))?$/.exec(target);
  if (v6) {
    name = v6[1] as string;
    portText = v6[2];
  } else if (target.split(':').length === 2) {
    [name, portText] = target.split(':') as [string, string];
  }
  if (portText !== undefined) port = /^\d{1,5}$/.test(portText) ? Number(portText) : Number.NaN;
  if (!Number.isInteger(port) || port < 1 || port > 65535 || name === '') {
    throw new UsageError(`route ${JSON.stringify(target)}: write NAME[:PORT] with a port 1-65535`);
  }
  let src: string | undefined;
  let srcPort: number | undefined;
  if (typeof o.src === 'string') {
    const s = /^(\d{1,3}(?:\.\d{1,3}){3})(?::(\d{1,5}))?$/.exec(o.src);
    if (!s) throw new UsageError(`--src ${JSON.stringify(o.src)}: write IPv4[:PORT]`);
    src = s[1];
    if (s[2] !== undefined) srcPort = Number(s[2]);
  }
  return { name, port, udp: Boolean(o.udp), src, srcPort };
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') {
        process.exit(0);
      }
      process.exit(EXIT_USAGE);
    }
    fail(e instanceof FakeproxyError ? e : e, argv.includes('--debug'));
  }
}

main(process.argv);
