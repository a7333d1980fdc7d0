import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfigFile, resolveStartConfig } from '../../src/config.js';
import { UsageError } from '../../src/errors.js';
import { parseProcNetDevTxDropped, parseProcRoutes } from '../../src/tun/TunDevice.js';
import { isPublicSpace, parseCidr, parseHostPort } from '../../src/util/cidr.js';

describe('parseCidr', () => {
  it.each([
    ['198.18.0.0/16', '198.18.0.0/16', '198.18.0.1', 16],
    ['198.18.0.1/16', '198.18.0.0/16', '198.18.0.1', 16],
    ['198.10.0.0/16', '198.10.0.0/16', '198.10.0.1', 16],
    ['10.0.0.0/30', '10.0.0.0/30', '10.0.0.1', 30],
    ['10.0.0.0/8', '10.0.0.0/8', '10.0.0.1', 8],
  ])('%s → %s gateway %s', (text, canon, gw, len) => {
    const r = parseCidr(text);
    expect(r.text).toBe(canon);
    expect(r.gatewayIp).toBe(gw);
    expect(r.prefixLen).toBe(len);
    expect(r.broadcast - r.network + 1).toBe(2 ** (32 - len));
  });
  it.each([
    'banana',
    '198.18.0.0',
    '198.18.0.0/33',
    '300.1.1.1/16',
    '198.18.0.0/31',
    '198.18.0.0/32',
    '1.0.0.0/4',
    '198.18.0.0/16x',
  ])('%s is a usage error', (text) => {
    expect(() => parseCidr(text)).toThrow(UsageError);
  });
  it.each([
    ['198.18.0.0/16', false],
    ['198.19.0.0/16', false],
    ['10.8.0.0/16', false],
    ['198.10.0.0/16', true],
    ['198.16.0.0/14', true],
  ])('%s public space: %s', (text, pub) => {
    expect(isPublicSpace(parseCidr(text))).toBe(pub);
  });
});

describe('parseHostPort', () => {
  it('defaults the port', () => expect(parseHostPort('10.0.0.2', 53, '--x')).toEqual({ host: '10.0.0.2', port: 53 }));
  it('takes a port', () =>
    expect(parseHostPort('127.0.0.1:5353', 53, '--x')).toEqual({ host: '127.0.0.1', port: 5353 }));
  it.each(['127.0.0.1:0', '127.0.0.1:70000', 'example.com:53', '::1'])('%s is rejected', (t) => {
    expect(() => parseHostPort(t, 53, '--x')).toThrow(UsageError);
  });
});

describe('resolveStartConfig', () => {
  it('has the documented defaults', () => {
    const c = resolveStartConfig({});
    expect(c.cidr.text).toBe('198.18.0.0/16');
    expect(c.tun).toBe('fp0');
    expect(c.mtu).toBe(65535);
    expect(c.listenPort).toBe(1313);
    expect(c.dnsListen).toEqual([{ host: '198.18.0.1', port: 53 }]);
    expect(c.upstream).toBe('direct');
    expect(c.dnsHijack).toBe(true);
    expect(c.fakeIpTtl).toBe(1);
    expect(c.maxFlows).toBe(1_048_576);
  });
  it('flags win over the config file', () => {
    const c = resolveStartConfig({ mtu: '1500' }, { mtu: 4000, tun: 'fpx', fakeIpFilter: ['+.lan', '*.local'] });
    expect(c.mtu).toBe(1500);
    expect(c.tun).toBe('fpx');
    expect(c.fakeIpFilter).toEqual(['+.lan', '*.local']);
  });
  it('TUN offloads are on unless --no-tun-offload (or tunOffload: false in the file)', () => {
    expect(resolveStartConfig({}).tunOffload).toBe(true);
    expect(resolveStartConfig({ tunOffload: false }).tunOffload).toBe(false);
    expect(resolveStartConfig({}, { tunOffload: false }).tunOffload).toBe(false);
    expect(resolveStartConfig({ tunOffload: true }, { tunOffload: false }).tunOffload).toBe(true);
  });
  it('--lan: repeatable CIDRs or addresses, canonical, config twin; default this machine only', () => {
    expect(resolveStartConfig({}).lan).toEqual([]);
    expect(resolveStartConfig({ lan: ['192.168.1.77/24', '10.0.0.5'] }).lan).toEqual(['192.168.1.0/24', '10.0.0.5/32']);
    expect(resolveStartConfig({}, { lan: '172.16.0.0/12' }).lan).toEqual(['172.16.0.0/12']);
    expect(resolveStartConfig({ lan: ['10.1.0.0/16'] }, { lan: ['172.16.0.0/12'] }).lan).toEqual(['10.1.0.0/16']);
  });
  it.each(['192.168.1.0/33', 'lan', '192.168.1/24', '300.1.1.1', '10.0.0.0/'])('--lan %s is a usage error', (t) => {
    expect(() => resolveStartConfig({ lan: [t] })).toThrow(UsageError);
    expect(() => resolveStartConfig({ lan: [t] })).toThrow(
      /--lan .* is not an IPv4 network such as 192\.168\.1\.0\/24/,
    );
  });
  it('--tun-congestion: cubic by default, config twin, kernel keeps the system default', () => {
    expect(resolveStartConfig({}).tunCongestion).toBe('cubic');
    expect(resolveStartConfig({}, { tunCongestion: 'reno' }).tunCongestion).toBe('reno');
    expect(resolveStartConfig({ tunCongestion: 'bbr' }, { tunCongestion: 'reno' }).tunCongestion).toBe('bbr');
    expect(resolveStartConfig({ tunCongestion: 'kernel' }).tunCongestion).toBeUndefined();
  });
  it.each(['', 'Cubic', 'cu bic', 'a'.repeat(16), 'bbr;reno'])('--tun-congestion %j is a usage error', (t) => {
    expect(() => resolveStartConfig({ tunCongestion: t })).toThrow(UsageError);
    expect(() => resolveStartConfig({ tunCongestion: t })).toThrow(/--tun-congestion .*: a congestion control name/);
  });
  it('--redis-shared-pool without --redis is a usage error, caught before anything is created', () => {
    expect(() => resolveStartConfig({ redisSharedPool: true })).toThrow(/--redis-shared-pool needs --redis/);
  });
  it('--redis-cluster h:p,… is --redis redis+cluster://h:p,…; one of the two; a flag overrides the file', () => {
    expect(resolveStartConfig({ redisCluster: 'a:7000,b:7001' }).redis).toBe('redis+cluster://a:7000,b:7001');
    expect(resolveStartConfig({}, { redisCluster: ':pw@a:7000' }).redis).toBe('redis+cluster://:pw@a:7000');
    expect(resolveStartConfig({ redisCluster: 'a:7000', redisSharedPool: true }).redisSharedPool).toBe(true);
    expect(() => resolveStartConfig({ redis: 'redis://r:6379', redisCluster: 'a:7000' })).toThrow(
      /--redis and --redis-cluster both given: use one/,
    );
    expect(resolveStartConfig({ redis: 'redis://r:6379' }, { redisCluster: 'a:7000' }).redis).toBe('redis://r:6379');
    expect(resolveStartConfig({ redisCluster: 'a:7000' }, { redis: 'redis://r:6379' }).redis).toBe(
      'redis+cluster://a:7000',
    );
    expect(() => resolveStartConfig({ redisCluster: 'a:7000,b:99999' })).toThrow(/"b:99999" is not host:port/);
  });
  it('the DNS listener follows the range', () => {
    expect(resolveStartConfig({ cidr: '198.10.0.0/16' }).dnsListen).toEqual([{ host: '198.10.0.1', port: 53 }]);
  });
});

describe('parseProcRoutes', () => {
  const text = `Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
fp0\t000012C6\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
`;
  it('decodes little-endian routes and skips the default route', () => {
    const r = parseProcRoutes(text);
    expect(r.map((x) => `${x.iface} ${x.text}`)).toEqual(['eth0 192.168.2.0/24', 'fp0 198.18.0.0/16']);
  });
});

describe('parseProcNetDevTxDropped', () => {
  const text = `Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     840      10    0    0    0     0          0         0      840      10    0    0    0     0       0          0
   fp0: 1234567    8901    0    7    0     0          0         0 99887766   55443    0 12345    0     0       0          0
`;
  it('reads the transmit drop column of the named device only', () => {
    expect(parseProcNetDevTxDropped(text, 'fp0')).toBe(12345);
    expect(parseProcNetDevTxDropped(text, 'lo')).toBe(0);
    expect(parseProcNetDevTxDropped(text, 'fp')).toBeUndefined();
  });
});

describe('--nat-timeout', () => {
  it('maps NAME=SECONDS to engine timeouts in ms, flags and config mapping alike', () => {
    expect(resolveStartConfig({ natTimeout: ['udp=30', 'tcp-closed=2.5'] }).natTimeouts).toEqual({
      udpMs: 30_000,
      tcpClosedMs: 2_500,
    });
    expect(resolveStartConfig({}, { natTimeout: { 'tcp-established': 600 } }).natTimeouts).toEqual({
      tcpEstablishedMs: 600_000,
    });
    expect(resolveStartConfig({}).natTimeouts).toEqual({});
  });
  it.each([['udp'], ['bogus=1'], ['udp=0'], ['udp=-3'], ['udp=abc']])('%s is a usage error', (t) => {
    expect(() => resolveStartConfig({ natTimeout: [t] })).toThrow(UsageError);
  });
});

describe('usage errors found while merging the config (before the daemon creates anything)', () => {
  it.each([
    [{ fakeIpFilter: ['ok.lan', 'bad pattern!'] }, /--fake-ip-filter pattern "bad pattern!"/],
    [{ upstream: 'ftp://x:1' }, /--upstream scheme "ftp"/],
    [{ upstream: 'socks5://host' }, /has no port/],
    [{ redis: 'http://r:6379' }, /scheme must be redis/],
    [{ redis: 'redis://r:6379', nodeId: 'a:b' }, /invalid node id/],
    [{ cidr: '198.18.0.0/33' }, /198\.18\.0\.0\/33/],
    [{ natTimeout: ['tcp-established=0'] }, /--nat-timeout/],
  ])('%j → UsageError naming the value', (flags, re) => {
    let err: unknown;
    try {
      resolveStartConfig(flags as Record<string, unknown>);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect((err as Error).message).toMatch(re);
    expect((err as Error).message).not.toContain('\n');
  });
  it('a bad filter in the config file is a usage error too', () => {
    expect(() => resolveStartConfig({}, { fakeIpFilter: ['+.'] })).toThrow(UsageError);
  });
});

describe('controller options', () => {
  it('default 127.0.0.1:9090 without a secret; off disables; Clash `:9090` means every address', () => {
    expect(resolveStartConfig({})).toMatchObject({ controller: { host: '127.0.0.1', port: 9090 }, secret: '' });
    expect(resolveStartConfig({ controller: 'off' }).controller).toBeUndefined();
    expect(resolveStartConfig({ controller: ':9091', secret: 's' }).controller).toEqual({
      host: '0.0.0.0',
      port: 9091,
    });
  });
  it('a non-loopback controller without a secret is a usage error naming the fix', () => {
    for (const c of ['0.0.0.0:9090', '10.0.0.1:9090', ':9090']) {
      expect(() => resolveStartConfig({ controller: c })).toThrow(/without --secret.*set --secret TOKEN/);
    }
    expect(resolveStartConfig({ controller: '10.0.0.1:9090', secret: 'x' }).controller?.host).toBe('10.0.0.1');
    expect(() => resolveStartConfig({ controller: 'nope' })).toThrow(UsageError);
  });
  it('--ui must be a directory', () => {
    expect(() => resolveStartConfig({ ui: '/nonexistent-dashboard' })).toThrow(/--ui .*not a directory/);
    expect(resolveStartConfig({ ui: '/tmp' }).ui).toBe('/tmp');
  });
  it('Clash keys external-controller, secret and external-ui are the twins of ours; flags win', () => {
    const dir = mkdtempSync(join(tmpdir(), 'fp-cfg-'));
    const f = join(dir, 'c.yaml');
    writeFileSync(f, `external-controller: 0.0.0.0:9999\nsecret: s3\nexternal-ui: ${dir}\n`);
    try {
      expect(resolveStartConfig({}, loadConfigFile(f))).toMatchObject({
        controller: { host: '0.0.0.0', port: 9999 },
        secret: 's3',
        ui: dir,
      });
      expect(resolveStartConfig({ controller: '127.0.0.1:1' }, loadConfigFile(f)).controller?.port).toBe(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
