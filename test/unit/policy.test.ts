import * as net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { resolveStartConfig } from '../../src/config.js';
import { type Runner, TeardownJournal } from '../../src/daemon/teardown.js';
import { upstreamAddresses } from '../../src/daemon.js';
import { FakeproxyError } from '../../src/errors.js';
import { native } from '../../src/native.js';
import { dialTcp } from '../../src/proxy/dial.js';
import {
  excludedCidrs,
  PolicyRouting,
  type PolicyRoutingOptions,
  parseCapture,
  parseFwmark,
  parseUidRange,
} from '../../src/tun/policy.js';
import { setOwnMark, tcpFd } from '../../src/util/sockmark.js';

describe('global mode options', () => {
  it('fake-ip by default; --mode global with the documented fwmark, table and priority', () => {
    const d = resolveStartConfig({});
    expect(d).toMatchObject({ mode: 'fake-ip', fwmark: 0x2d0, routeTable: 2022, rulePriority: 9000, exclude: [] });
    const g = resolveStartConfig({ mode: 'global', fwmark: '720', exclude: ['203.0.113.7/24'], capture: ['private'] });
    expect(g).toMatchObject({ mode: 'global', fwmark: 720, exclude: ['203.0.113.0/24'], capture: ['private'] });
    // config-file twins; Clash's own `mode: rule` is not ours (ignored by loadConfigFile)
    expect(resolveStartConfig({}, { mode: 'global', fwmark: '0x10' })).toMatchObject({ mode: 'global', fwmark: 16 });
  });

  it.each([
    [{ mode: 'tun' }, /--mode "tun": fake-ip or global/],
    [{ fwmark: '0' }, /--fwmark "0": a mark is 1-0xffffffff/],
    [{ fwmark: '0x1ffffffff' }, /--fwmark/],
    [{ fwmark: 'mark' }, /--fwmark/],
    [{ exclude: ['10.0.0.0/33'] }, /--exclude "10\.0\.0\.0\/33"/],
    [{ capture: ['lan'] }, /--capture "lan": one of loopback, link-local, multicast, private/],
    [{ routeTable: '0' }, /--route-table 0/],
  ])('%j is a usage error naming the flag', (flags, msg) => {
    expect(() => resolveStartConfig(flags)).toThrow(msg);
  });

  it('--bypass-uid / --only-uid: a uid or an ascending range', () => {
    expect(resolveStartConfig({ bypassUid: ['1000', '2000-2999'], onlyUid: '5' })).toMatchObject({
      bypassUid: ['1000-1000', '2000-2999'],
      onlyUid: ['5-5'],
    });
    expect(() => parseUidRange('9-1', '--bypass-uid')).toThrow(/--bypass-uid "9-1": a uid or an ascending range/);
    expect(() => parseUidRange('root', '--only-uid')).toThrow(/--only-uid/);
  });

  it('parseFwmark takes decimal and hex', () => {
    expect(parseFwmark('0x2D0')).toBe(720);
    expect(parseFwmark(4294967295)).toBe(0xffffffff);
    expect(parseCapture([])).toEqual([]);
  });

  it('excludes the defaults unless captured, then --exclude, then the upstreams, once each', () => {
    const all = excludedCidrs(['203.0.113.0/24'], [], ['10.1.2.3', '192.0.2.1']);
    expect(all).toEqual([
      '127.0.0.0/8',
      '169.254.0.0/16',
      '224.0.0.0/4',
      '255.255.255.255/32',
      '10.0.0.0/8',
      '172.16.0.0/12',
      '192.168.0.0/16',
      '100.64.0.0/10',
      '203.0.113.0/24',
      '10.1.2.3/32',
      '192.0.2.1/32',
    ]);
    expect(excludedCidrs([], ['private', 'multicast'])).toEqual(['127.0.0.0/8', '169.254.0.0/16']);
  });

  it('upstream addresses: DNS upstream, proxies (IPv4 literals only) and Redis', () => {
    const c = resolveStartConfig({ upstream: 'socks5://192.0.2.9:1080', redis: 'redis://u:p@192.0.2.10:6379/0' });
    expect(upstreamAddresses(c, '192.0.2.53')).toEqual(['192.0.2.53', '192.0.2.9', '192.0.2.10']);
    expect(upstreamAddresses(resolveStartConfig({ upstream: 'http://proxy.example:8080' }), '::1')).toEqual([]);
  });
});

describe('PolicyRouting', () => {
  /** A fake `ip` for the sweep and an in-memory teardown journal whose commands are recorded too. */
  const fake = (ruleShow = '') => {
    const calls: string[] = [];
    const ip = (args: string[]) => {
      calls.push(`ip ${args.join(' ')}`);
      return args.join(' ') === '-4 rule show' ? ruleShow : '';
    };
    // No table left (the usual case): nft's own error.
    const nft = (args: string[]): string => {
      calls.push(`nft ${args.join(' ')}`);
      throw new FakeproxyError('ENFT', 'nft: Error: Could not process rule: No such file or directory');
    };
    const run: Runner = (argv) => {
      calls.push(argv.join(' '));
      return { status: 0, stderr: '' };
    };
    const journal = TeardownJournal.open({ stateDir: null, tun: 'fp0', log: () => {}, run });
    return { calls, ip, nft, journal };
  };
  /** A PolicyRouting on `f`'s fakes: table 2022 at 9000, mark 1, nothing excluded, unless `o` says otherwise. */
  const make = (f: ReturnType<typeof fake>, o: Partial<PolicyRoutingOptions> = {}) =>
    new PolicyRouting({
      tun: 'fp0',
      mark: 1,
      table: 2022,
      priority: 9000,
      excluded: [],
      ip: f.ip,
      nft: f.nft,
      journal: f.journal,
      ...o,
    });

  it('sweeps leftovers, adds the table route, then the rules in priority order, each journaled', () => {
    const f = fake(
      '0:\tfrom all lookup local\n9001:\tfrom all to 10.0.0.0/8 lookup main\n32766:\tfrom all lookup main\n',
    );
    const p = make(f, { mark: 0x2d0, excluded: ['10.0.0.0/8', '192.0.2.1/32'] });
    p.install();
    const added = [
      'ip -4 route add default dev fp0 table 2022',
      'ip -4 rule add pref 9000 fwmark 0x2d0 lookup main',
      'ip -4 rule add pref 9001 to 10.0.0.0/8 lookup main',
      'ip -4 rule add pref 9001 to 192.0.2.1/32 lookup main',
      'ip -4 rule add pref 9009 lookup 2022',
    ];
    expect(f.calls).toEqual([
      'ip -4 rule show',
      'ip -4 rule del pref 9001',
      'ip -4 route flush table 2022',
      'nft delete table ip fakeproxy_fp0',
      ...added,
    ]);
    expect(f.journal.changes).toHaveLength(5);
    f.calls.length = 0;
    p.remove();
    // Each addition undone, newest first.
    expect(f.calls).toEqual(added.map((c) => c.replace(' add ', ' del ')).reverse());
    expect(f.journal.changes).toHaveLength(0);
    f.calls.length = 0;
    p.remove();
    expect(f.calls).toEqual([]);
  });

  it('bypassed uids keep main; --only-uid replaces the catch-all with one uidrange rule each', () => {
    const f = fake();
    const p = new PolicyRouting({
      tun: 'fp0',
      mark: 1,
      table: 7,
      priority: 100,
      excluded: [],
      bypassUids: ['0-0'],
      onlyUids: ['1000-1999', '3000-3000'],
      ip: f.ip,
      nft: f.nft,
      journal: f.journal,
    });
    expect(p.rules().map((r) => `${r.pref} ${r.selector.join(' ')}`)).toEqual([
      '100 fwmark 0x1 lookup main',
      '102 uidrange 0-0 lookup main',
      '109 uidrange 1000-1999 lookup 7',
      '109 uidrange 3000-3000 lookup 7',
    ]);
  });

  it('the sweep deletes only rules in its priority span', () => {
    const shown =
      '0:\tfrom all lookup local\n8999:\tfrom all lookup 7\n9000:\tfrom all fwmark 0x2d0 lookup main\n9009:\tfrom all lookup 2022\n9010:\tfrom all lookup 8\n';
    const f = fake(shown);
    expect(make(f).sweep()).toEqual([]);
    expect(f.calls).toEqual([
      'ip -4 rule show',
      'ip -4 rule del pref 9000',
      'ip -4 rule del pref 9009',
      'ip -4 route flush table 2022',
      'nft delete table ip fakeproxy_fp0',
    ]);
  });

  it('cgroups: the nftables table after the route and before the rules; --only-cgroup captures by the mark + 1', () => {
    const f = fake();
    const script = 'add table ip fakeproxy_fp0\n';
    const only = { given: '/o', cgroup: '/o', nftPath: 'o', level: 1 };
    const rules = { tun: 'fp0', tunAddress: '198.18.0.1', mark: 0x2d0, bypass: [], only: [only] };
    const p = make(f, { mark: 0x2d0, onlyUids: ['5-5'], cgroups: { rules, script } });
    p.install();
    expect(f.calls.slice(3)).toEqual([
      'ip -4 route add default dev fp0 table 2022',
      `nft ${script}`,
      'ip -4 rule add pref 9000 fwmark 0x2d0 lookup main',
      'ip -4 rule add pref 9009 uidrange 5-5 lookup 2022',
      'ip -4 rule add pref 9009 fwmark 0x2d1 lookup 2022',
    ]);
    f.calls.length = 0;
    p.remove();
    expect(f.calls.slice(-2)).toEqual([
      'nft delete table ip fakeproxy_fp0',
      'ip -4 route del default dev fp0 table 2022',
    ]);
  });

  it('the sweep reports a real nft failure, but not a missing table or a host without nft', () => {
    const f = fake();
    const p = (nft: (a: string[]) => string) => make(f, { nft });
    expect(p(f.nft).sweep()).toEqual([]);
    const missing = () => {
      throw new FakeproxyError('ENONFT', 'no nft');
    };
    expect(p(missing).sweep()).toEqual([]);
    const denied = () => {
      throw new FakeproxyError('ENFT', 'nft: Error: Operation not permitted');
    };
    expect(p(denied).sweep()).toEqual(['nft: Error: Operation not permitted']);
  });
});

// SO_MARK needs CAP_NET_ADMIN: CI runs as root.
describe.skipIf(process.getuid?.() !== 0)('SO_MARK on the daemon sockets', () => {
  afterEach(() => setOwnMark(0));

  it('dialTcp carries the mark from before connect (the route is chosen then), and data flows', async () => {
    const srv = net.createServer((s) => {
      s.on('error', () => {}); // the second client is destroyed unread: RST
      s.end('hello');
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as net.AddressInfo).port;
    setOwnMark(0x2d0);
    const s = await dialTcp('127.0.0.1', port, { signal: new AbortController().signal, what: 'test' });
    expect(native().socketMark(tcpFd(s))).toBe(0x2d0);
    const got = await new Promise<string>((resolve) => {
      let b = '';
      s.on('data', (d) => {
        b += d;
      });
      s.on('end', () => resolve(b));
    });
    expect(got).toBe('hello');
    s.destroy();
    setOwnMark(0);
    const plain = await dialTcp('127.0.0.1', port, { signal: new AbortController().signal, what: 'test' });
    expect(native().socketMark(tcpFd(plain))).toBe(0);
    plain.destroy();
    srv.close();
  });

  it('a refused connect through a marked socket is an ordinary ECONNREFUSED', async () => {
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as net.AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
    setOwnMark(7);
    await expect(dialTcp('127.0.0.1', port, { signal: new AbortController().signal, what: 'test' })).rejects.toThrow(
      /ECONNREFUSED/,
    );
  });

  it('bad marks are refused natively with a clear error', () => {
    expect(() => native().markedTcpSocket(4, 0)).toThrow(/mark must be an integer 1\.\.0xffffffff/);
    expect(() => native().setSocketMark(-1, 5)).toThrow(/EBADF/);
  });
});
