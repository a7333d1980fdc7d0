/**
 * A minimal MaxMind DB writer for tests (format: maxmind.github.io/MaxMind-DB,
 * version 2.0): an IPv4-only search tree with 24-bit records, a data section
 * of maps and strings, and the metadata map. Enough for a country database
 * that real readers (mmdb-lib) open.
 */
type Value = string | number | bigint | Value[] | { [k: string]: Value };

function ctrl(type: number, size: number): Buffer {
  // Sizes < 29 fit in the control byte; longer ones take one more byte (29 + n).
  const sizeBytes = size < 29 ? [] : [size - 29];
  const s = size < 29 ? size : 29;
  if (type <= 7) return Buffer.from([(type << 5) | s, ...sizeBytes]);
  return Buffer.from([s, type - 7, ...sizeBytes]);
}

function uint(type: number, n: bigint): Buffer {
  const bytes: number[] = [];
  for (let v = n; v > 0n; v >>= 8n) bytes.unshift(Number(v & 0xffn));
  return Buffer.concat([ctrl(type, bytes.length), Buffer.from(bytes)]);
}

function encode(v: Value, uintType = 6): Buffer {
  if (typeof v === 'string') {
    const b = Buffer.from(v, 'utf8');
    if (b.length > 284) throw new Error('test writer: string too long');
    return Buffer.concat([ctrl(2, b.length), b]);
  }
  if (typeof v === 'number') return uint(uintType, BigInt(v));
  if (typeof v === 'bigint') return uint(9, v);
  if (Array.isArray(v)) return Buffer.concat([ctrl(11, v.length), ...v.map((x) => encode(x))]);
  const entries = Object.entries(v);
  return Buffer.concat([
    ctrl(7, entries.length),
    ...entries.flatMap(([k, x]) => [
      encode(k),
      encode(x, k.startsWith('binary_') || k === 'record_size' || k === 'ip_version' ? 5 : 6),
    ]),
  ]);
}

/** `networks`: IPv4 CIDR → ISO country code. */
export function buildCountryMmdb(networks: Record<string, string>): Buffer {
  interface TNode {
    kids: [TNode | number | undefined, TNode | number | undefined];
  }
  const root: TNode = { kids: [undefined, undefined] };
  const data: Buffer[] = [];
  let dataLen = 0;
  for (const [cidr, iso] of Object.entries(networks)) {
    const [ip, len] = cidr.split('/') as [string, string];
    const n = ip.split('.').reduce((a, o) => a * 256 + Number(o), 0);
    const off = dataLen;
    const rec = encode({ country: { iso_code: iso } });
    data.push(rec);
    dataLen += rec.length;
    let node = root;
    for (let i = 0; i < Number(len); i++) {
      const bit = Math.floor(n / 2 ** (31 - i)) % 2;
      if (i === Number(len) - 1) {
        node.kids[bit] = off;
        break;
      }
      let next = node.kids[bit];
      if (typeof next !== 'object') {
        next = { kids: [undefined, undefined] };
        node.kids[bit] = next;
      }
      node = next;
    }
  }
  const order: TNode[] = [];
  const index = new Map<TNode, number>();
  const walk = (t: TNode) => {
    index.set(t, order.length);
    order.push(t);
    for (const k of t.kids) if (typeof k === 'object') walk(k);
  };
  walk(root);
  const nodeCount = order.length;
  const tree = Buffer.alloc(nodeCount * 6);
  order.forEach((t, i) => {
    t.kids.forEach((k, side) => {
      const rec = k === undefined ? nodeCount : typeof k === 'number' ? nodeCount + 16 + k : (index.get(k) as number);
      tree.writeUIntBE(rec, i * 6 + side * 3, 3);
    });
  });
  const meta = encode({
    node_count: nodeCount,
    record_size: 24,
    ip_version: 4,
    database_type: 'fakeproxy-test-country',
    languages: ['en'],
    binary_format_major_version: 2,
    binary_format_minor_version: 0,
    build_epoch: 1_700_000_000n,
    description: { en: 'test' },
  });
  return Buffer.concat([
    tree,
    Buffer.alloc(16),
    ...data,
    Buffer.from([0xab, 0xcd, 0xef]),
    Buffer.from('MaxMind.com'),
    meta,
  ]);
}
