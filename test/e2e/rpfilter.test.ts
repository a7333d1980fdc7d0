/**
 * Global mode with strict reverse-path filtering on the uplink (rp_filter=1,
 * the RHEL/Fedora default). The replies of the sockets global mode keeps on
 * the main table by a mark or a uid — the daemon's own DIRECT dial, a
 * --bypass-uid user's — arrive on the uplink; the kernel's reverse-path
 * lookup runs without the mark and as uid 0, so our catch-all rule would
 * answer "via the TUN" and the reply would be dropped
 * (TcpExtIPReversePathFilter). The daemon sets src_valid_mark and restores
 * the mark onto the replies (src/tun/rpfilter.ts); SIGTERM undoes both.
 *
 * Topology as test/e2e/global.test.ts: public-looking origins on the
 * upstream namespace's loopback, routed via the veth. Nothing here touches
 * the root namespace.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eUnavailableReason } from './harness/netns.js';
import {
  createTopology,
  globalOrigins,
  startGlobalDaemon,
  type Topology,
  GLOBAL_WHO as WHO,
} from './harness/topology.js';

const skip = e2eUnavailableReason();

const CAPTURED = '203.0.113.10'; // MATCH → the SOCKS5 upstream
const DIRECT_RULE = '203.0.113.20'; // IP-CIDR → DIRECT: the daemon's own marked dial
const BYPASS_UID = 4242;
const SVM = '/proc/sys/net/ipv4/conf/all/src_valid_mark';

describe.skipIf(skip)('global mode under strict rp_filter', () => {
  let t: Topology;
  let mic: { readonly text: string };
  let uplink = '';
  let before = '';

  const dumps = async () =>
    [
      await t.client.must('ip', ['-4', 'rule', 'show']),
      await t.client.must('ip', ['-4', 'route', 'show', 'table', 'all']),
      await t.client.must('nft', ['list', 'ruleset']),
      `src_valid_mark=${(await t.client.must('cat', [SVM])).trim()}`,
      `rp_filter=${(await t.client.must('cat', [`/proc/sys/net/ipv4/conf/${uplink}/rp_filter`])).trim()}`,
    ].join('\n--\n');
  /** TcpExtIPReversePathFilter of the client namespace. */
  const rpDrops = async () => {
    const text = await t.client.must('cat', ['/proc/net/netstat']);
    const lines = text.split('\n').filter((l) => l.startsWith('TcpExt:'));
    const names = (lines[0] ?? '').split(/\s+/);
    const values = (lines[1] ?? '').split(/\s+/);
    const i = names.indexOf('IPReversePathFilter');
    if (i < 0) throw new Error('no TcpExt IPReversePathFilter in /proc/net/netstat');
    return Number(values[i]);
  };
  const curl = (url: string) => t.client.exec('curl', ['-sS', '--max-time', '6', url], { timeoutMs: 10_000 });
  const curlAs = (uid: number, url: string) =>
    t.client.exec(
      'setpriv',
      [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', 'curl', '-sS', '--max-time', '6', url],
      { timeoutMs: 10_000 },
    );

  beforeAll(async () => {
    t = await createTopology();
    uplink = /\bdev (\S+)/.exec(await t.client.must('ip', ['-4', 'route', 'get', t.upstreamIp]))?.[1] ?? '';
    expect(uplink).not.toBe('');
    await t.client.must('sysctl', ['-qw', `net.ipv4.conf.${uplink}.rp_filter=1`]);
    ({ mic } = await globalOrigins(t, [CAPTURED, DIRECT_RULE]));
    before = await dumps();
    expect(before).toContain('src_valid_mark=0');
    await startGlobalDaemon(t, 'rp.yaml', [`bypassUid: ['${BYPASS_UID}']`], [`IP-CIDR,${DIRECT_RULE}/32,DIRECT`]);
  }, 60_000);

  afterAll(async () => {
    await t?.destroy();
  });

  it('says so at start, sets src_valid_mark and restores the mark on replies from its own table', async () => {
    expect(t.daemon?.output).toMatch(
      new RegExp(`global mode: strict rp_filter on ${uplink}: net\\.ipv4\\.conf\\.all\\.src_valid_mark=1`),
    );
    expect((await t.client.must('cat', [SVM])).trim()).toBe('1');
    const table = await t.client.must('nft', ['list', 'table', 'ip', 'fakeproxy_fp0']);
    expect(table).toMatch(/iifname != "fp0" ct mark 0x000002d0 meta mark set 0x000002d0/);
    expect(table).toMatch(new RegExp(`meta skuid ${BYPASS_UID} ct mark set 0x000002d0`));
  });

  it("a captured address routed DIRECT: the daemon's own marked dial gets its reply", async () => {
    const drops = await rpDrops();
    const r = await curl(`http://${DIRECT_RULE}:${WHO}/`);
    expect(r.stdout.trim()).toBe(`peer=${t.clientIp} host=${DIRECT_RULE}:${WHO}`);
    expect(mic.text).not.toContain(DIRECT_RULE);
    expect(await rpDrops()).toBe(drops);
  });

  it('a --bypass-uid user goes direct and gets its reply', async () => {
    const drops = await rpDrops();
    const r = await curlAs(BYPASS_UID, `http://${CAPTURED}:${WHO}/`);
    expect(r.stdout.trim()).toBe(`peer=${t.clientIp} host=${CAPTURED}:${WHO}`);
    expect(await rpDrops()).toBe(drops);
  });

  it('a captured connection still goes through the SOCKS5 upstream', async () => {
    const r = await curl(`http://${CAPTURED}:${WHO}/proxied`);
    expect(r.stdout).toMatch(new RegExp(`^peer=\\S+ host=${CAPTURED.replace(/\./g, '\\.')}:${WHO}$`, 'm'));
    expect(r.stdout).not.toContain(`peer=${t.clientIp} `);
    expect(mic.text).toContain(`connected to ${CAPTURED}:${WHO}`);
  });

  it('SIGTERM restores src_valid_mark, rules, routes and nftables exactly', async () => {
    await t.daemon?.stop('SIGTERM');
    expect(await dumps()).toBe(before);
  });
});
