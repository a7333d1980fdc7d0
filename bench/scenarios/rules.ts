/**
 * rules: what a long rule list costs. (1) In process: the compiled Router
 * match per connection with 1 and with 10 000 Clash rules of every indexable
 * and scanned kind, every answer checked against a plain in-order scan
 * first. (2) Through the TUN: new connections per second (ab, no keep-alive)
 * with a config of one rule against one of 10 000 rules where the origin's
 * name falls through to MATCH (the most work per connection).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CompiledRules, type Cond, type MatchInput, matchLinear, parseRule } from '../../src/proxy/rules.js';
import type { Ctx } from '../lib/env.js';
import { percentile, type Section } from '../lib/report.js';
import { abRun } from '../lib/tools.js';
import { bigFile, ORIGIN_NAME, PORTS, Topology } from '../lib/topology.js';
import { path, repeat, row, rows, type Scenario } from './common.js';
import { withDaemon } from './tcp.js';
import { CONCURRENCY } from './tcpConnect.js';

/** Deterministic PRNG (mulberry32): the same rule list every run. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const WORDS = ['mail', 'cdn', 'api', 'img', 'video', 'shop', 'cloud', 'auth', 'pay', 'stats', 'push', 'news'];
const TLDS = ['com', 'net', 'org', 'io', 'de', 'jp'];

/**
 * `n` rules with the mix of a large real-world list (mostly suffixes and
 * CIDRs, some exact names, a few keywords, regexes and logical rules), none
 * matching ORIGIN_NAME, ending with MATCH,DIRECT.
 */
export function ruleList(n: number): string[] {
  const r = rng(13);
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)] as T;
  const out: string[] = [];
  for (let i = 0; out.length < n - 1; i++) {
    const k = r();
    const dom = `${pick(WORDS)}${i}.brand${Math.floor(r() * 5000)}.${pick(TLDS)}`;
    if (k < 0.45) out.push(`DOMAIN-SUFFIX,${dom},DIRECT`);
    else if (k < 0.6) out.push(`DOMAIN,${dom},REJECT`);
    else if (k < 0.62) out.push(`DOMAIN-KEYWORD,kw${i}x,REJECT`);
    else if (k < 0.621) out.push(`DOMAIN-REGEX,^ad${i}[0-9]+\\.,REJECT`);
    else if (k < 0.9)
      out.push(`IP-CIDR,${11 + Math.floor(r() * 180)}.${Math.floor(r() * 256)}.${Math.floor(r() * 256)}.0/24,DIRECT`);
    else if (k < 0.95) out.push(`IP-CIDR6,2001:db8:${Math.floor(r() * 65535).toString(16)}::/48,DIRECT`);
    else if (k < 0.98) out.push(`SRC-IP-CIDR,10.${Math.floor(r() * 256)}.${Math.floor(r() * 256)}.0/24,DIRECT`);
    else if (k < 0.99) out.push(`DST-PORT,${20000 + i},DIRECT`);
    else out.push(`AND,((NETWORK,udp),(DOMAIN-SUFFIX,${dom})),REJECT`);
  }
  out.push('MATCH,DIRECT');
  return out;
}

/** Connections to look up: names that hit rules, names that miss, IP literals. */
function queries(rules: string[], count: number): MatchInput[] {
  const r = rng(7);
  const out: MatchInput[] = [];
  for (let i = 0; i < count; i++) {
    const k = i % 3;
    const rule = rules[Math.floor(r() * rules.length)] as string;
    const [, v] = rule.split(',');
    let name: string | undefined;
    let ip = '198.18.3.4';
    if (k === 0 && rule.startsWith('DOMAIN')) name = rule.startsWith('DOMAIN-SUFFIX') ? `www.${v}` : v;
    else if (k === 1) name = `host${i}.miss${i % 97}.example`;
    else if (k === 2 && rule.startsWith('IP-CIDR,')) ip = (v as string).replace(/0\/24$/, '7');
    else if (k === 2) ip = `${11 + (i % 180)}.${i % 256}.1.1`;
    else name = ORIGIN_NAME;
    out.push({ name, ip, port: 443, proto: i % 5 === 0 ? 'udp' : 'tcp', srcIp: '192.168.1.2', srcPort: 40000 });
  }
  return out;
}

/** Per-call times in µs of `compiled.match` over `qs`, after a warm-up pass. */
function timeMatches(compiled: CompiledRules, qs: MatchInput[]): number[] {
  let sink = 0;
  for (const q of qs) sink += compiled.match(q);
  const us: number[] = new Array(qs.length);
  for (let i = 0; i < qs.length; i++) {
    const t0 = process.hrtime.bigint();
    sink += compiled.match(qs[i] as MatchInput);
    us[i] = Number(process.hrtime.bigint() - t0) / 1000;
  }
  if (sink === Number.MIN_SAFE_INTEGER) console.log(sink); // keep the calls
  return us;
}

export const rules: Scenario = {
  name: 'rules',
  describe: 'compiled rule match cost with 1 and 10 000 rules; TUN connection rate with 1 vs 10 000 rules',
  async run(ctx: Ctx): Promise<Section[]> {
    const N = 10_000;
    const m: Section = {
      scenario: 'rules',
      title: `Router match per connection, ${N} Clash rules vs 1 (in process, every answer verified against an in-order scan)`,
      notes: [],
      rows: rows(
        { id: 'm1-p50', label: '1 rule', metric: 'p50', unit: 'µs', higherIsBetter: false },
        { id: 'm1-p99', label: '1 rule', metric: 'p99', unit: 'µs', higherIsBetter: false },
        { id: 'm10k-p50', label: `${N} rules`, metric: 'p50', unit: 'µs', higherIsBetter: false },
        {
          id: 'm10k-p99',
          label: `${N} rules`,
          metric: 'p99',
          unit: 'µs',
          higherIsBetter: false,
          compare: [{ to: 'm1-p99' }],
          goal: { value: 5, text: '< 5 µs' },
        },
      ),
    };
    await path(ctx, m, ['m1-p50', 'm1-p99', 'm10k-p50', 'm10k-p99'], 'rules: match cost', async () => {
      const list = ruleList(N);
      const conds: Cond[] = list.map((t) => parseRule(t).cond);
      const one: Cond[] = [parseRule('MATCH,DIRECT').cond];
      const big = new CompiledRules(conds);
      const small = new CompiledRules(one);
      const qs = queries(list, ctx.quick ? 30_000 : 200_000);
      // Verify before timing: the compiled answer equals the first rule that matches in order.
      const check = qs.slice(0, 3000);
      let hits = 0;
      for (const q of check) {
        const want = matchLinear(conds, q);
        const got = big.match(q);
        if (got !== want) throw new Error(`compiled match ${got} ≠ in-order ${want} for ${JSON.stringify(q)}`);
        if (got < N - 1) hits++;
      }
      if (hits < check.length / 4) throw new Error(`only ${hits} of ${check.length} queries hit a rule before MATCH`);
      m.notes.push(
        `verified: ${check.length} queries, compiled = in-order scan for every one; ${hits} hit a rule before MATCH`,
      );
      const r1 = await repeat(ctx, async () => timeMatches(small, qs));
      const rN = await repeat(ctx, async () => timeMatches(big, qs));
      row(m, 'm1-p50').samples = r1.map((u) => percentile(u, 50));
      row(m, 'm1-p99').samples = r1.map((u) => percentile(u, 99));
      row(m, 'm10k-p50').samples = rN.map((u) => percentile(u, 50));
      row(m, 'm10k-p99').samples = rN.map((u) => percentile(u, 99));
      m.notes.push(
        `${qs.length} lookups per repetition (a third names that hit, a third names that miss, a third IP literals), each timed alone with hrtime (~0.1 µs of the figure is the clock)`,
      );
    });

    const n = ctx.quick ? 2_000 : 20_000;
    const limit = ctx.quick ? 4 : 15;
    const c: Section = {
      scenario: 'rules',
      title: `TUN connection rate with ${N} rules vs 1: ab -n ${n} -c ${CONCURRENCY}, GET /small, the name falls through to MATCH,DIRECT`,
      notes: [],
      rows: rows(
        { id: 'tun-1', label: 'TUN, 1 rule', metric: 'rate', unit: 'conn/s' },
        {
          id: 'tun-10k',
          label: `TUN, ${N} rules`,
          metric: 'rate',
          unit: 'conn/s',
          compare: [{ to: 'tun-1', goal: 0.95 }],
        },
      ),
    };
    const topo = await Topology.create(ctx, 'rules');
    try {
      topo.big = bigFile(ctx, 1024 * 1024);
      await topo.start('dnsmasq', 'origin');
      const csv = join(ctx.tmp, 'ab-rules.csv');
      const url = `http://${ORIGIN_NAME}:${PORTS.origin}/small`;
      const conf = (name: string, list: string[]) => {
        const p = join(ctx.tmp, name);
        writeFileSync(p, `rules:\n${list.map((x) => `  - ${x}`).join('\n')}\n`);
        return p;
      };
      const files = { 'tun-1': conf('rules-1.yaml', ['MATCH,DIRECT']), 'tun-10k': conf('rules-10k.yaml', ruleList(N)) };
      // Alternate the two configs each repetition so drift on a shared machine hits both alike.
      for (let i = 0; i < ctx.reps && !ctx.aborted; i++) {
        for (const id of ['tun-1', 'tun-10k'] as const) {
          await path(ctx, c, [id], `rules: ${id} rep ${i + 1}`, () =>
            withDaemon(
              topo,
              '',
              async (d) => {
                if (!/→ \d+ rules/.test(d.out))
                  throw new Error(`the daemon did not load the rules: ${d.out.slice(-300)}`);
                await abRun(topo.client, url, Math.min(1000, n), CONCURRENCY, csv, 20);
                const r = await abRun(topo.client, url, n, CONCURRENCY, csv, limit);
                row(c, id).samples.push(r.rps);
              },
              { extra: ['--config', files[id]] },
            ),
          );
        }
      }
      c.notes.push(
        'ab checks every response (complete = n, 0 failed, 0 non-2xx); a daemon that did not load its rules fails the row',
      );
      return [m, c];
    } finally {
      await topo.destroy();
    }
  },
};
