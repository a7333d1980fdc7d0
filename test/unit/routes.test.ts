import { describe, expect, it } from 'vitest';
import { DirectOutbound } from '../../src/proxy/outbounds/direct.js';
import { TunRouteCheck } from '../../src/tun/routes.js';

const TABLE = `Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
fp0\t000012C6\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0
fp0\t350200C0\t00000000\t0001\t0\t0\t0\tFFFFFFFF\t0\t0\t0
`;

describe('TunRouteCheck', () => {
  it.each([
    ['198.18.3.4', true],
    ['192.0.2.53', true],
    ['192.0.2.54', false],
    ['192.168.2.7', false],
    ['8.8.8.8', false],
    ['::1', false],
  ])('%s routed into fp0: %s (longest prefix wins, default route counts)', (ip, into) => {
    expect(new TunRouteCheck('fp0', () => TABLE).routesIntoTun(ip)).toBe(into);
  });

  it('a default route through the TUN (global mode) sends everything there', () => {
    const global = TABLE.replace('eth0\t00000000\t0102A8C0', 'fp0\t00000000\t00000000');
    expect(new TunRouteCheck('fp0', () => global).routesIntoTun('8.8.8.8')).toBe(true);
  });

  it('re-reads the table only after refreshMs', () => {
    let reads = 0;
    let now = 0;
    const c = new TunRouteCheck(
      'fp0',
      () => {
        reads++;
        return TABLE;
      },
      2000,
      () => now,
    );
    c.routesIntoTun('1.2.3.4');
    c.routesIntoTun('1.2.3.5');
    expect(reads).toBe(1);
    now = 2500;
    c.routesIntoTun('1.2.3.4');
    expect(reads).toBe(2);
  });
});

describe('direct outbound loop guard', () => {
  it('refuses an address the guard names with ELOOP and the reason, before any packet is sent', async () => {
    const d = new DirectOutbound({ loopGuard: (ip) => (ip === '192.0.2.53' ? `${ip} is routed into fp0` : undefined) });
    await expect(d.connect({ host: '192.0.2.53', port: 80 }, { timeoutMs: 1000 })).rejects.toMatchObject({
      code: 'ELOOP',
      message: expect.stringContaining('192.0.2.53 is routed into fp0'),
    });
  });
});
