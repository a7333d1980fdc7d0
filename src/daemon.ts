import { resolve as resolvePath } from 'node:path';
import { generalConfig, planPatch } from './api/configs.js';
import { ConnectionTracker } from './api/connections.js';
import { LOG_LEVELS, LogBus, type LogLevel, levelOf } from './api/logs.js';
import { ApiServer } from './api/server.js';
import { type CommandReply, type CommandRequest, CommandServer } from './command.js';
import type { StartConfig } from './config.js';
import { ControlServer, type Status } from './control.js';
import { pointSystemDns, RESOLVED_UPLINKS, systemDnsMode } from './daemon/systemDns.js';
import { TeardownJournal } from './daemon/teardown.js';
import { FakeDns } from './dns/FakeDns.js';
import { findUpstream } from './dns/resolvconf.js';
import { UsageError } from './errors.js';
import { type Logger, stderrLogger } from './log.js';
import { describeThreadExit, NatManager } from './nat/NatManager.js';
import { CLOSE_REASONS, FLOW_EVENT, FLOW_EVENT_FIELDS } from './native.js';
import { upstreamResolver } from './proxy/dial.js';
import { TcpListener } from './proxy/listener.js';
import { Router } from './proxy/router.js';
import { buildRouteTable, explainRoute, type RoutingDeps } from './proxy/routing.js';
import { UdpListener } from './proxy/udp/udpListener.js';
import { redactRedisUrl } from './redis/client.js';
import { RedisMirror, sessionAnnotation } from './redis/mirror.js';
import { nodePrefix } from './redis/schema.js';
import { RedisSharedPool } from './redis/sharedPool.js';
import { type CgroupMatch, nftTableName, prepareCgroupRules, runNft } from './tun/cgroup.js';
import { excludedCidrs, PolicyRouting } from './tun/policy.js';
import { TunRouteCheck } from './tun/routes.js';
import { rpMarkScript, SRC_VALID_MARK, strictRpFilter } from './tun/rpfilter.js';
import { TunDevice } from './tun/TunDevice.js';
import { isIpv4, isPublicSpace } from './util/cidr.js';
import { resourceAlarm } from './util/exhaustion.js';
import { readFdLimit } from './util/fdLimit.js';
import { ownMark, setOwnMark } from './util/sockmark.js';

export interface DaemonDeps {
  log?: Logger;
  /** Start-up report lines (stdout). */
  say?: (line: string) => void;
  /** Re-reads --config and the flags (SIGHUP); absent → reload is refused. */
  reloadConfig?: () => StartConfig;
  /**
   * A part died and the daemon cannot go on (an engine thread ended on an
   * error): called once with the line already logged. The CLI stops the
   * daemon and exits 1. @default log only
   */
  onFatal?: (line: string) => void;
}

/**
 * Wires the parts together; owns nothing but their lifetimes. Start-up order
 * follows the data path's needs: the TUN first (its address must exist before
 * anything binds to the gateway), then DNS and the Listener, then the engine
 * (so no captured SYN meets a closed port). Teardown runs in reverse and is
 * safe to call twice.
 */
export class Daemon {
  tun?: TunDevice;
  dns?: FakeDns;
  nat?: NatManager;
  tcp?: TcpListener;
  udp?: UdpListener;
  mirror?: RedisMirror;
  router?: Router;
  /**
   * Every change outside the process (resolver, routes, ip rules, nftables,
   * sysctls) goes through this journal: recorded before it is made, undone
   * on every exit path and after a kill -9 (src/daemon/teardown.ts).
   */
  teardown?: TeardownJournal;
  policy?: PolicyRouting;
  api?: ApiServer;
  connections?: ConnectionTracker;
  /** Every log line, for the controller's /logs stream. */
  readonly logs = new LogBus();
  #logLevel: LogLevel;
  /** Where log lines go (stderr), before the level filter. */
  readonly #out: Logger;
  private routingDeps: RoutingDeps = {};
  private readonly reloadConfig: (() => StartConfig) | undefined;
  private readonly closers: (() => void | Promise<void>)[] = [];
  private stopping?: Promise<void>;
  private resolveStopped!: () => void;
  /** Resolves once stop() has finished. */
  readonly stopped = new Promise<void>((r) => {
    this.resolveStopped = r;
  });
  readonly log: Logger;
  private readonly say: (line: string) => void;
  private readonly onFatal: (line: string) => void;

  constructor(
    readonly config: StartConfig,
    deps: DaemonDeps = {},
  ) {
    this.#out = deps.log ?? stderrLogger;
    this.#logLevel = config.debug ? 'debug' : 'info';
    const tee = this.logs.tee(this.#out);
    // mihomo's log-level (PATCH /configs): lines below it reach neither stderr nor /logs.
    this.log = (line) => {
      if (LOG_LEVELS.indexOf(levelOf(line)) >= LOG_LEVELS.indexOf(this.#logLevel)) tee(line);
    };
    this.say = deps.say ?? ((l) => process.stdout.write(`${l}\n`));
    this.reloadConfig = deps.reloadConfig;
    this.onFatal = deps.onFatal ?? (() => {});
  }

  async start(): Promise<void> {
    try {
      await this.startParts();
      // Loading modules and parsing the config leave V8's young generation at its peak (~10 MiB
      // resident): give it back once start-up is over (docs/memory.md).
      this.tcp?.collectWhenQuiet();
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  private async startParts(): Promise<void> {
    const c = this.config;
    if (isPublicSpace(c.cidr)) {
      this.log(
        `warning: ${c.cidr.text} is public address space: real hosts in it are unreachable while fakeproxy runs (198.18.0.0/16 is reserved and safe)`,
      );
    }
    // Resolve configuration that can fail before touching the system.
    const stateDir = c.stateDir === '' ? null : c.stateDir;
    // With resolved forwarding every name to us, its stub (127.0.0.53) would
    // loop: the real servers are in its uplink list.
    const sysDnsMode = c.systemDns ? systemDnsMode() : undefined;
    const dnsUpstream =
      c.dnsUpstream ??
      findUpstream(c.dnsListen, stateDir, this.log, sysDnsMode === 'resolved' ? RESOLVED_UPLINKS : undefined);
    const resolve = upstreamResolver(`${dnsUpstream.host}:${dnsUpstream.port}`);
    // --bypass-cgroup / --only-cgroup: cgroups, nft and the kernel's support, checked before anything is made.
    const cgroups =
      c.mode === 'global'
        ? prepareCgroupRules({
            tun: c.tun,
            tunAddress: c.cidr.gatewayIp,
            mark: c.fwmark,
            bypass: c.bypassCgroup,
            only: c.onlyCgroup,
          })
        : undefined;
    // Strict rp_filter would drop the replies of everything global mode sends to main by mark or uid.
    const rpStrict = c.mode === 'global' ? strictRpFilter(c.tun) : [];
    let rpMark = false;
    if (rpStrict.length) {
      try {
        runNft(['--check', rpMarkScript(nftTableName(c.tun), c.tun, c.fwmark, c.bypassUid)]);
        rpMark = true;
      } catch (e) {
        this.log(
          `warning: global mode: strict rp_filter (=1) on ${rpStrict.join(', ')} drops the replies of fakeproxy's own direct connections and of --bypass-uid/--bypass-cgroup sockets, and their marks cannot be restored (${(e as Error).message}): install nftables with conntrack, or set net.ipv4.conf.{all,<uplink>}.rp_filter=2`,
        );
      }
    }
    // Global mode: every socket the daemon opens from here on carries the mark.
    setOwnMark(c.mode === 'global' ? c.fwmark : 0);
    const routes = new TunRouteCheck(c.tun);
    const loopGuard = (ip: string) =>
      routes.routesIntoTun(ip)
        ? `${ip} is routed into ${c.tun}: a direct connection would come back to fakeproxy (route it via another interface, or use a proxy --upstream)`
        : undefined;
    for (const w of c.configWarnings) this.log(`warning: ${w}`);
    this.routingDeps = { resolve, loopGuard, log: this.log };
    const router = new Router({ table: buildRouteTable(c, this.routingDeps) });
    this.router = router;
    const outbound = router.final;
    const routesTo = c.routing
      ? `${c.routing.rules.length} rules, ${c.routing.groups.length} groups, ${c.routing.proxies.length} proxies`
      : outbound.label;

    // First, so a second instance is refused before it touches anything.
    const control = new ControlServer(c.tun, () => this.status(), this.log);
    await control.start();
    this.closers.push(() => control.close());
    const commands = new CommandServer(c.tun, (req) => this.command(req), this.log);
    await commands.start();
    this.closers.push(() => commands.close());
    // After the second-instance check: undo what a killed daemon left, then journal ours.
    const teardown = TeardownJournal.open({ stateDir, tun: c.tun, log: this.log });
    this.teardown = teardown;
    this.closers.push(() => teardown.undoAll());

    const fds = readFdLimit();
    if (fds) this.say(`fd limit ${fds.soft} (hard ${fds.hard}): each proxied connection holds 2-3`);
    const tun = TunDevice.open({
      name: c.tun,
      range: c.cidr,
      mtu: c.mtu,
      queues: c.queues,
      offload: c.tunOffload,
      txQueueLen: c.tunTxqueuelen,
    });
    this.tun = tun;
    this.closers.push(() => tun.close());
    this.say(
      `device ${tun.name} up (mtu ${tun.mtu}, ${tun.fds.length} queue${tun.fds.length > 1 ? 's' : ''}, offload ${tun.offload ? 'on' : 'off'})`,
    );
    if (tun.offloadError) this.log(`tun offload refused by the kernel, running without: ${tun.offloadError}`);
    this.say(`address ${tun.address}/${c.cidr.prefixLen}`);
    this.say(`route ${c.cidr.text} dev ${tun.name}`);

    const redisLog = { info: this.log, warn: this.log };
    let shared: RedisSharedPool | undefined;
    if (c.redisSharedPool) {
      if (!c.redis) throw new UsageError('--redis-shared-pool needs --redis URL');
      const pool = new RedisSharedPool({
        url: c.redis,
        cidr: c.cidr.text,
        gateway: c.cidr.gatewayIp,
        logger: redisLog,
      });
      shared = pool;
      // Waits up to 5 s for a first connection; a refused password rejects (exit 1).
      await pool.start();
      this.closers.push(() => pool.close());
      this.say(`fake-IP pool shared through ${redactRedisUrl(c.redis)}`);
    }

    if (c.mode === 'global') {
      const policy = new PolicyRouting({
        tun: tun.name,
        mark: c.fwmark,
        table: c.routeTable,
        priority: c.rulePriority,
        excluded: excludedCidrs(c.exclude, c.capture, upstreamAddresses(c, dnsUpstream.host)),
        journal: teardown,
        bypassUids: c.bypassUid,
        onlyUids: c.onlyUid,
        cgroups,
        rpMark,
      });
      this.policy = policy;
      // Before the TUN closes (its going takes the table's route with it).
      this.closers.push(() => policy.remove());
      policy.install();
      this.say(
        `global mode: table ${c.routeTable} default dev ${tun.name}, rules ${c.rulePriority}+ (fwmark 0x${c.fwmark.toString(16)}, ${policy.rules().length} rules)`,
      );
      if (rpMark) {
        this.say(
          `global mode: strict rp_filter on ${rpStrict.join(', ')}: ${SRC_VALID_MARK}=1 and reply marks restored by nftables table ip ${nftTableName(tun.name)} (undone on exit)`,
        );
      }
      if (cgroups) {
        const list = (ms: readonly CgroupMatch[]) => ms.map((m) => `${m.cgroup} (level ${m.level})`).join(', ');
        this.say(
          `global mode: nftables table ip ${nftTableName(tun.name)}:${cgroups.rules.bypass.length ? ` bypass ${list(cgroups.rules.bypass)}` : ''}${cgroups.rules.only.length ? ` only ${list(cgroups.rules.only)}` : ''}`,
        );
      }
    }

    const dns = new FakeDns({
      shared,
      cidr: c.cidr.text,
      listen: c.dnsListen,
      upstream: dnsUpstream,
      ttl: c.fakeIpTtl,
      filters: c.fakeIpFilter,
      stateDir,
      logger: this.log,
      // Who may ask: the same rule as the engine's (NatManager), once it exists.
      sources: {
        client: (addr, port, proto) => this.nat?.dnsClient(addr, port, proto) ?? -1,
        trusted: (client) => this.nat?.isLocal(client) ?? false,
        // None before the NAT exists: client() serves nobody then either.
        trustedSources: () => this.nat?.trustedSources(),
      },
    });
    this.dns = dns;
    await dns.start();
    this.closers.push(() => dns.close());
    for (const a of dns.addresses)
      this.say(`dns ${a.host}:${a.port} (udp+tcp), upstream ${dnsUpstream.host}:${dnsUpstream.port}`);
    if (sysDnsMode) {
      // Once DNS answers; restored before it closes (closers run in reverse).
      const l =
        c.dnsListen.find((a) => a.host === c.cidr.gatewayIp && a.port === 53) ?? c.dnsListen.find((a) => a.port === 53);
      const server = !l || l.host === '0.0.0.0' ? '127.0.0.1' : l.host;
      const sys = pointSystemDns({ teardown, tun: c.tun, server, mode: sysDnsMode });
      this.closers.push(() => teardown.undo(sys.change));
      this.say(sys.line);
    }

    const nat = new NatManager({
      range: c.cidr,
      listenPort: c.listenPort,
      dnsPort: c.dnsListen.find((l) => l.host === c.cidr.gatewayIp)?.port ?? 53,
      dnsHijack: c.dnsHijack,
      maxFlows: c.maxFlows,
      lan: c.lan,
      timeouts: c.natTimeouts,
      logger: this.log,
    });
    this.nat = nat;
    // A live flow pins its fake address (never recycled) and counts as use.
    // From the packed batch: two events per connection, no FlowEntry objects.
    nat.on('packed', (r) => {
      for (let i = 0; i + FLOW_EVENT_FIELDS <= r.length; i += FLOW_EVENT_FIELDS) {
        const dst = r[i + FLOW_EVENT.dstIp] as number;
        if (!dns.isFakeU32(dst)) continue;
        if (r[i + FLOW_EVENT.kind] === 0) {
          dns.acquireU32(dst);
          dns.touchU32(dst);
        } else dns.releaseU32(dst);
      }
    });

    if (c.redis) {
      // Inspection only: the mirror never blocks the packet path or the
      // Listener, and an unreachable Redis is retried in the background.
      const mirror = new RedisMirror({ url: c.redis, nodeId: c.nodeId, logger: redisLog });
      this.mirror = mirror;
      mirror.attachNat(nat);
      mirror.attachDns(dns);
      mirror.start();
      this.closers.push(() => mirror.close());
      this.say(`redis mirror ${redactRedisUrl(c.redis)} as ${nodePrefix(c.nodeId)}`);
    }

    // What the TCP and UDP Listeners share; device: only what came through
    // the TUN (DESIGN.md "Who may use it").
    const listen = {
      host: c.cidr.gatewayIp,
      port: c.listenPort,
      nat,
      names: dns,
      router,
      logger: this.log,
      device: c.tun,
    };
    const mirror = this.mirror;
    /** Rule and chain of each new session onto its Redis flow row. */
    const annotate = (l: TcpListener | UdpListener) => {
      if (!mirror) return;
      l.on('session', (e: Parameters<typeof sessionAnnotation>[0] & { phase: string; flowId: number }) => {
        if (e.phase === 'open') mirror.annotate(e.flowId, sessionAnnotation(e));
      });
    };
    const tcp = new TcpListener({
      ...listen,
      ...(c.tunCongestion !== undefined ? { congestion: c.tunCongestion } : {}),
      ...(c.relayThreads !== undefined ? { relayThreads: c.relayThreads } : {}),
      sniffTimeoutMs: c.sniff === 'on' || (c.sniff === 'auto' && c.mode === 'global') ? c.sniffTimeout : 0,
    });
    this.tcp = tcp;
    annotate(tcp);
    // A TCP flow that left the table by idle timeout or eviction can carry no
    // more data: end its session now rather than at the relay's idle timeout.
    nat.on('packed', (r) => {
      for (let i = 0; i + FLOW_EVENT_FIELDS <= r.length; i += FLOW_EVENT_FIELDS) {
        const reason = CLOSE_REASONS[(r[i + FLOW_EVENT.kind] as number) - 1];
        if (r[i + FLOW_EVENT.proto] === 6 && (reason === 'timeout' || reason === 'evicted'))
          tcp.closeFlow(r[i + FLOW_EVENT.id] as number);
      }
    });
    // One line per connection at log-level debug (--debug, or PATCH /configs from a dashboard).
    if (c.debug || c.controller)
      tcp.on('session', (e) => {
        if (e.phase === 'open' && this.#logLevel === 'debug') {
          const line = `tcp ${e.name ?? e.ip}:${e.port} rule ${e.rule} chain ${e.chain} → ${e.outbound}`;
          this.#out(line);
          this.logs.publish(line, 'debug');
        }
      });
    await tcp.start();
    this.closers.push(() => tcp.close());
    this.say(`listener ${c.cidr.gatewayIp}:${c.listenPort} (tcp) → ${routesTo}`);

    const udp = new UdpListener({
      ...listen,
      // Global mode: the native relay's association sockets carry the mark too.
      mark: ownMark(),
      // Replies larger than the TUN MTU would be IP-fragmented on their way
      // into the TUN, and the engine does not reassemble fragments.
      maxPayloadBytes: c.mtu - 28,
      // The TUN's own overflow (kernel drops before the engine reads) on the same overload line.
      tunKernelDrops: () => this.tun?.kernelTxDropped() ?? 0,
      // One knob for UDP idleness: the NAT flow and the upstream association.
      ...(c.natTimeouts.udpMs ? { idleTimeoutMs: c.natTimeouts.udpMs } : {}),
      ...(c.natTimeouts.udpDnsMs ? { dnsIdleTimeoutMs: c.natTimeouts.udpDnsMs } : {}),
    });
    this.udp = udp;
    annotate(udp);
    await udp.start();
    this.closers.push(() => udp.close());
    this.say(
      `listener ${c.cidr.gatewayIp}:${c.listenPort} (udp) → ${routesTo}${c.routing || outbound.udpAssociate ? '' : ' (cannot carry UDP: datagrams dropped)'}`,
    );
    if (c.controller) await this.startController(c.controller, tcp, udp, dns);
    router.table.start();
    this.closers.push(() => this.router?.table.stop());

    let fatal = false;
    nat.on('threadExit', (errno, queue) => {
      if (fatal) return;
      fatal = true;
      const line = describeThreadExit(errno, queue, tun.name);
      this.log(line);
      this.onFatal(line);
    });
    nat.start([...tun.fds]);
    this.closers.push(async () => {
      // Teardown runs in reverse, so this comes first: the apps behind the
      // TUN get the Listener's FIN (RST for a connection still dialing) only
      // through the engine, so close the Listener's connections while it
      // still runs, let it forward those segments, then stop it.
      await tcp.close();
      await nat.settle();
      nat.stop();
    });
    this.say(`engine ${tun.fds.length} thread${tun.fds.length > 1 ? 's' : ''}, max ${c.maxFlows} flows`);
  }

  /**
   * The controller API. Proxying matters more than the dashboard: a port
   * that is taken costs one log line, not the daemon (as mihomo does).
   */
  private async startController(
    at: { host: string; port: number },
    tcp: TcpListener,
    udp: UdpListener,
    dns: FakeDns,
  ): Promise<void> {
    const c = this.config;
    const connections = new ConnectionTracker(tcp, { udp });
    const api = new ApiServer({
      host: at.host,
      port: at.port,
      secret: c.secret,
      uiDir: c.ui,
      log: this.log,
      version: `fakeproxy ${VERSION}`,
      backend: {
        table: () => (this.router as Router).table,
        connections,
        logs: this.logs,
        configs: () => this.clashConfigs(),
        patchConfigs: (b) => this.patchConfigs(b),
        reload: (path) => {
          const own = c.configPath;
          // mihomo reads any file in its SAFE_PATHS; fakeproxy only its own --config.
          if (path !== undefined && (own === undefined || resolvePath(path) !== resolvePath(own))) {
            return {
              ok: false,
              error: `fakeproxy reloads its own --config only (${own ?? 'none given'}): send {"path": ""}`,
            };
          }
          return this.reload();
        },
        global: {
          now: () => (this.router as Router).globalNow(),
          select: (name) => (this.router as Router).selectGlobal(name),
        },
        flushFakeIp: () => {
          const r = dns.flushUnpinned();
          if (!r) {
            return 'the fake-IP pool is shared through Redis (--redis-shared-pool): every gateway uses it, so it is not flushed from one controller';
          }
          this.log(
            `dns: fake-IP flush (controller): dropped ${r.dropped} mappings no live connection holds, kept ${r.kept} in use`,
          );
          return undefined;
        },
        dnsQuery: (msg) => dns.handleQuery(msg, 'tcp'),
      },
    });
    try {
      await api.start();
    } catch (e) {
      connections.detach();
      this.log(
        `controller ${at.host}:${at.port}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}: running without it (free the port or pick another --controller)`,
      );
      return;
    }
    this.api = api;
    this.connections = connections;
    this.closers.push(async () => {
      connections.detach();
      await api.close();
    });
    this.say(
      `controller http://${at.host}:${api.address().port}${c.secret ? ' (secret set)' : ''}${c.ui ? `, dashboard at /ui/` : ''}`,
    );
  }

  /** GET /configs in mihomo's shape (executor.GetGeneral); fakeproxy has one inbound: the TUN. */
  private clashConfigs(): Record<string, unknown> {
    const c = this.config;
    return generalConfig(
      {
        lan: c.lan,
        tun: c.tun,
        mtu: c.mtu,
        dnsHijack: c.dnsHijack,
        cidr: c.cidr.text,
        gateway: c.cidr.gatewayIp,
        prefixLen: c.cidr.prefixLen,
        routingMark: c.mode === 'global' ? c.fwmark : 0,
      },
      {
        mode: this.router?.mode ?? 'rule',
        logLevel: this.#logLevel,
        sniffing: (this.tcp?.sniffTimeoutMs ?? 0) > 0,
      },
    );
  }

  /** PATCH /configs: all or nothing; every key it cannot apply is named in the error (and the log). */
  private patchConfigs(b: Record<string, unknown>): string | undefined {
    const router = this.router;
    const plan = planPatch(b, this.clashConfigs(), (m) => router?.refuseMode(m));
    if (plan.refused.length) {
      const line = `controller: PATCH /configs refused, nothing changed: ${plan.refused.join('; ')}`;
      this.log(line);
      return line.slice('controller: '.length);
    }
    const { mode, logLevel, sniffing } = plan.set;
    const changed: string[] = [];
    if (mode !== undefined && router && router.mode !== mode) {
      router.setMode(mode);
      changed.push(`mode ${mode}`);
    }
    if (sniffing !== undefined && this.tcp && sniffing !== this.tcp.sniffTimeoutMs > 0) {
      this.tcp.sniffTimeoutMs = sniffing ? this.config.sniffTimeout : 0;
      changed.push(`sniffing ${sniffing ? `on (${this.config.sniffTimeout} ms)` : 'off'}`);
    }
    if (logLevel !== undefined && logLevel !== this.#logLevel) {
      changed.push(`log-level ${logLevel}`);
      // Said before a quieter level would hide it.
      this.log(`controller: ${changed.join(', ')} (new connections; live ones keep their route)`);
      this.#logLevel = logLevel;
    } else if (changed.length) {
      this.log(`controller: ${changed.join(', ')} (new connections; live ones keep their route)`);
    }
    return undefined;
  }

  /**
   * SIGHUP: re-read the config; new connections take the new rules, live
   * ones keep their outbound, the fake-IP map is untouched. A broken file
   * keeps the old rules. `select` choices carry over by group name.
   */
  reload(): CommandReply {
    const router = this.router;
    if (!router) return { ok: false, error: 'not started' };
    if (!this.reloadConfig) return { ok: false, error: 'started without --config: nothing to reload' };
    let table: ReturnType<typeof buildRouteTable>;
    let next: StartConfig;
    try {
      next = this.reloadConfig();
      table = buildRouteTable(next, this.routingDeps);
    } catch (e) {
      const why = (e as Error).message;
      this.log(`reload failed, keeping the old config: ${why}`);
      return { ok: false, error: why };
    }
    for (const w of next.configWarnings) this.log(`warning: ${w}`);
    for (const [name, g] of router.table.groups) {
      const ng = table.groups.get(name);
      if (g.type === 'select' && ng?.type === 'select') ng.select(g.selected);
    }
    const old = router.replace(table);
    old.stop();
    table.start();
    const r = next.routing;
    const summary = r
      ? `${r.rules.length} rules, ${r.groups.length} groups, ${r.proxies.length} proxies`
      : `everything via ${router.final.label}`;
    this.log(`reloaded ${next.configPath ?? 'config'}: ${summary} (routing only; other settings take a restart)`);
    return { ok: true, summary };
  }

  /** The control-socket commands (src/command.ts). */
  command(req: CommandRequest): CommandReply {
    const table = this.router?.table;
    if (!table) return { ok: false, error: 'not started' };
    switch (req.cmd) {
      case 'route':
        return { ok: true, ...explainRoute(table, { ...req, src: req.src }) };
      case 'select': {
        const g = table.groups.get(req.group);
        if (!g) return { ok: false, error: `no group '${req.group}' (groups: ${[...table.groups.keys()].join(', ')})` };
        if (g.type !== 'select') return { ok: false, error: `group '${req.group}' is ${g.type}, not select` };
        if (!g.select(req.proxy)) {
          return { ok: false, error: `'${req.proxy}' is not a member of '${req.group}' (${g.members.join(', ')})` };
        }
        this.log(`group ${g.name}: selected ${req.proxy}`);
        return { ok: true, group: g.name, selected: req.proxy };
      }
      case 'reload':
        return this.reload();
      case 'groups':
        return { ok: true, groups: this.groupsStatus() };
      default:
        return { ok: false, error: `unknown command ${JSON.stringify((req as { cmd?: unknown }).cmd)}` };
    }
  }

  private groupsStatus(): Record<string, unknown>[] {
    const table = this.router?.table;
    if (!table) return [];
    return [...table.groups.values()].map((g) => ({
      name: g.name,
      type: g.type,
      now: g.pick(''),
      members: g.members.map((m) => ({ name: m, ...g.state.get(m) })),
    }));
  }

  /** Counters of every part, for `fakeproxy status`. */
  status(): Status {
    return {
      pid: process.pid,
      uptimeSec: Math.round(process.uptime()),
      rssBytes: rssOrNull(),
      tun: this.tun
        ? {
            name: this.tun.name,
            range: this.config.cidr.text,
            mtu: this.tun.mtu,
            queues: this.tun.fds.length,
            offload: this.tun.offload,
            txQueueLen: this.config.tunTxqueuelen,
            kernelTxDropped: this.tun.kernelTxDropped() ?? null,
          }
        : null,
      upstream: this.tcp ? this.config.upstream.replace(/\/\/[^@/]*@/, '//***@') : null,
      engine: this.nat?.stats() ?? null,
      dns: this.dns?.stats() ?? null,
      tcp: this.tcp?.stats() ?? null,
      /** V8 collections run when the daemon went quiet after a burst, and their pauses (src/util/quietGc.ts). */
      quietGc: this.tcp?.gcStats() ?? null,
      udp: this.udp?.stats() ?? null,
      redis: this.mirror?.stats() ?? null,
      groups: this.groupsStatus(),
      /** Failures from resource exhaustion since start, by code (EMFILE, ENFILE, ENOMEM, ENOBUFS). */
      exhaustion: resourceAlarm.totals(),
    };
  }

  /** Synchronous last-resort teardown for process 'exit' (uncaught errors). */
  closeSync(): void {
    try {
      this.nat?.stop();
    } catch {
      // best effort
    }
    this.policy?.remove();
    this.tun?.close();
    this.teardown?.undoAll();
  }

  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = (async () => {
        for (const close of this.closers.reverse()) {
          try {
            await close();
          } catch (e) {
            this.log(`teardown: ${(e as Error).message}`);
          }
        }
        this.resolveStopped();
      })();
    }
    return this.stopping;
  }
}

/** package.json's version (the CLI's --version says the same). */
export const VERSION = '0.1.0';

/** RSS, or null when it cannot be read (it opens /proc/self/stat: fails at EMFILE). */
function rssOrNull(): number | null {
  try {
    return process.memoryUsage.rss();
  } catch {
    return null;
  }
}

/**
 * IPv4 literals the daemon itself talks to that global mode must leave on
 * the main table even without the mark: the upstream proxies (belt and
 * braces), the DNS upstream (the outbounds' resolver is c-ares, whose sockets
 * cannot be marked) and Redis (ioredis' sockets are not marked either).
 */
export function upstreamAddresses(c: StartConfig, dnsUpstreamHost: string): string[] {
  const hosts = [dnsUpstreamHost];
  const fromUrl = (u: string) => {
    try {
      return new URL(u).hostname;
    } catch {
      return undefined;
    }
  };
  if (c.routing) {
    for (const p of c.routing.proxies) if (p.server) hosts.push(p.server);
  } else if (c.upstream !== 'direct') hosts.push(fromUrl(c.upstream) ?? '');
  if (c.redis) {
    for (const h of c.redis.replace(/^[a-z+]+:\/\/([^@/]*@)?/, '').split(/[,/]/)) hosts.push(h.split(':')[0] ?? '');
  }
  return [...new Set(hosts.filter((h) => isIpv4(h)))];
}
