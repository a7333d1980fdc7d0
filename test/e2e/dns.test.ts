import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './harness/daemon.js';
import { e2eUnavailableReason } from './harness/netns.js';
import { createTopology, inRange, type Topology } from './harness/topology.js';

const skip = e2eUnavailableReason();

describe.skipIf(skip)('fake-IP DNS end to end (dig, dnsmasq upstream)', () => {
  let t: Topology;
  const dig = async (...args: string[]) => {
    const r = await t.client.exec('dig', ['+time=2', '+tries=1', ...args]);
    return r.stdout;
  };
  const answers = (out: string) =>
    out
      .split('\n')
      .filter((l) => l && !l.startsWith(';'))
      .map((l) => l.split(/\s+/));

  beforeAll(async () => {
    t = await createTopology();
    await t.startDaemon(['--fake-ip-filter', '+.lan']);
  });
  afterAll(async () => {
    await t?.destroy();
  });

  it('A → an address in the range with TTL 1; the same name keeps it; case and trailing dot ignored', async () => {
    const out = await dig('@198.18.0.1', 'example.com', 'A', '+noall', '+answer');
    const [rr] = answers(out);
    expect(rr[0]).toBe('example.com.');
    expect(rr[1]).toBe('1');
    expect(rr[3]).toBe('A');
    expect(inRange(rr[4])).toBe(true);
    const again = answers(await dig('@198.18.0.1', 'EXAMPLE.com.', 'A', '+noall', '+answer'))[0];
    expect(again[4]).toBe(rr[4]);
    const other = answers(await dig('@198.18.0.1', 'other.example', 'A', '+noall', '+answer'))[0];
    expect(inRange(other[4])).toBe(true);
    expect(other[4]).not.toBe(rr[4]);
  });

  it('a known name asked from this machine is answered by the native fast path, with the same address', async () => {
    const fast = async () =>
      JSON.parse((await runCli(t.client, ['status', '--json'])).stdout).dns.fastAnswered as number;
    const first = answers(await dig('@198.18.0.1', 'fast.example', 'A', '+noall', '+answer'))[0];
    expect(inRange(first[4])).toBe(true);
    const before = await fast();
    for (let i = 0; i < 3; i++) {
      const again = answers(await dig('@198.18.0.1', 'fast.example', 'A', '+noall', '+answer'))[0];
      expect(again[4]).toBe(first[4]);
    }
    expect((await fast()) - before).toBe(3);
  });

  it('answers over TCP too (RFC 7766), with the same address', async () => {
    const udp = answers(await dig('@198.18.0.1', 'tcp.example', '+noall', '+answer'))[0][4];
    const tcp = answers(await dig('@198.18.0.1', '+tcp', 'tcp.example', '+noall', '+answer'))[0][4];
    expect(inRange(tcp)).toBe(true);
    expect(tcp).toBe(udp);
  });

  it('the system resolver of the client namespace is the daemon (getent)', async () => {
    const r = await t.client.exec('getent', ['ahostsv4', 'origin.test']);
    expect(r.code).toBe(0);
    const ip = r.stdout.trim().split(/\s+/)[0];
    expect(inRange(ip)).toBe(true);
  });

  it('AAAA and HTTPS for a fake name → NOERROR with no answer', async () => {
    for (const type of ['AAAA', 'TYPE65']) {
      const out = await dig('@198.18.0.1', 'example.com', type);
      expect(out).toMatch(/status: NOERROR/);
      expect(out).toMatch(/ANSWER: 0,/);
    }
  });

  it('PTR of a fake address → the name', async () => {
    const ip = answers(await dig('@198.18.0.1', 'ptr.example', '+noall', '+answer'))[0][4];
    const out = await dig('@198.18.0.1', '-x', ip, '+noall', '+answer');
    expect(out).toMatch(/PTR\s+ptr\.example\./);
  });

  it('a filtered name and an MX query get the real answers of dnsmasq', async () => {
    const a = answers(await dig('@198.18.0.1', 'printer.lan', '+noall', '+answer'))[0];
    expect(a[4]).toBe(t.upstreamIp);
    const mx = await dig('@198.18.0.1', 'origin.test', 'MX', '+noall', '+answer');
    expect(mx).toMatch(/MX\s+10 mail\.origin\.test\./);
    const txt = await dig('@198.18.0.1', 'origin.test', 'TXT', '+noall', '+answer');
    expect(txt).toMatch(/"fakeproxy test"/);
  });

  it('localhost is never faked', async () => {
    const out = await dig('@198.18.0.1', 'localhost', '+noall', '+answer');
    expect(out).not.toMatch(/198\.18\./);
  });

  it('the map survives a restart through --state-dir; a map made with another CIDR is discarded', async () => {
    await t.daemon?.stop();
    const state = `${t.tmp}/state`;
    let d = await t.startDaemon(['--fake-ip-filter', '+.lan', '--state-dir', state]);
    const first = answers(await dig('@198.18.0.1', 'persist.example', '+noall', '+answer'))[0][4];
    // Push the name off the allocation cursor so a fresh map would give it another address.
    for (const n of ['p1', 'p2', 'p3']) await dig('@198.18.0.1', `${n}.example`, '+short');
    expect(await d.stop()).toBe(0);
    d = await t.startDaemon(['--fake-ip-filter', '+.lan', '--state-dir', state]);
    expect(answers(await dig('@198.18.0.1', 'persist.example', '+noall', '+answer'))[0][4]).toBe(first);
    // The Listener can still map the address back: PTR answers the saved name.
    expect(await dig('@198.18.0.1', '-x', first, '+short')).toMatch(/^persist\.example\.$/m);
    expect(await d.stop()).toBe(0);
    d = await t.startDaemon(['--fake-ip-filter', '+.lan', '--state-dir', state, '--cidr', '198.19.0.0/16']);
    expect(d.stderr).toMatch(/discard/i);
    const other = answers(await dig('@198.19.0.1', 'persist.example', '+noall', '+answer'))[0][4];
    expect(other).toMatch(/^198\.19\./);
    await d.stop();
    // Back to the default range for the tests below.
    await t.startDaemon(['--fake-ip-filter', '+.lan']);
  });

  it('malformed packets get FORMERR/NOTIMP or are dropped, and dig still answers', async () => {
    // A small sender inside the client namespace: one datagram per case, prints what came back.
    const script = `
const dgram = require('node:dgram');
const hdr = (id, flags, qd) => { const b = Buffer.alloc(12); b.writeUInt16BE(id,0); b.writeUInt16BE(flags,2); b.writeUInt16BE(qd,4); return b; };
const q = (name) => Buffer.concat([...name.split('.').map(l => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)])), Buffer.from([0,0,1,0,1])]);
const cases = {
  garbage: Buffer.from('\\xff\\x00garbage-bytes-that-are-not-dns'),
  truncatedHeader: Buffer.from([1,2,3,4,5]),
  qdcount2: Buffer.concat([hdr(3, 0x0100, 2), q('a.example'), q('b.example')]),
  pointerLoop: Buffer.concat([hdr(4, 0x0100, 1), Buffer.from([0xc0, 12, 0, 1, 0, 1])]),
  longLabel: Buffer.concat([hdr(5, 0x0100, 1), Buffer.from([64]), Buffer.alloc(64, 97), Buffer.from([0, 0, 1, 0, 1])]),
  longName: Buffer.concat([hdr(6, 0x0100, 1), ...Array(5).fill(Buffer.concat([Buffer.from([60]), Buffer.alloc(60, 98)])), Buffer.from([0,0,1,0,1])]),
  opcodeStatus: Buffer.concat([hdr(7, 0x1100, 1), q('x.example')]),
  response: Buffer.concat([hdr(8, 0x8180, 1), q('x.example')]),
};
const s = dgram.createSocket('udp4');
const got = {};
s.on('message', (m) => { got[m.readUInt16BE(0)] = m.length >= 4 ? (m[3] & 15) : -1; });
let i = 0;
for (const [k, b] of Object.entries(cases)) s.send(b, 53, '198.18.0.1');
setTimeout(() => { console.log(JSON.stringify(got)); s.close(); }, 1500);
`;
    const r = await t.client.exec('node', ['-e', script]);
    expect(r.code).toBe(0);
    const got = JSON.parse(r.stdout.trim()) as Record<string, number>;
    expect(got['3']).toBe(1); // FORMERR for qdcount 2
    expect(got['5']).toBe(1); // FORMERR for a 64-byte label
    expect(got['6']).toBe(1); // FORMERR for a name > 255 bytes
    expect(got['7']).toBe(4); // NOTIMP for opcode STATUS
    expect(got['8']).toBeUndefined(); // responses are ignored
    // The server keeps serving.
    const a = answers(await dig('@198.18.0.1', 'still.example', '+noall', '+answer'))[0];
    expect(inRange(a[4])).toBe(true);
    expect(t.daemon?.child.exitCode).toBeNull();
  });
});
