/**
 * fake-ip-filter: names that must get real answers from the upstream
 * resolver instead of a fake address (`--fake-ip-filter`, repeatable).
 *
 * Pattern syntax (as mihomo's fake-ip-filter / domain trie):
 *
 * | pattern         | matches                                           | does not match          |
 * |-----------------|---------------------------------------------------|-------------------------|
 * | `example.com`   | example.com                                       | www.example.com         |
 * | `+.lan`         | lan, router.lan, a.b.lan (the name and every subdomain) | lan.com           |
 * | `.lan`          | router.lan, a.b.lan (subdomains only)             | lan                     |
 * | `*.local`       | printer.local (exactly one label in place of `*`) | local, a.b.local        |
 * | `time.*.com`    | time.apple.com                                    | time.a.b.com            |
 * | `stun.*`        | stun.x (two labels)                               | stun.l.google.com       |
 * | `+.stun.*.*`    | stun.l.google.com, a.stun.l.google.com            |                         |
 *
 * `*` stands for exactly one label and may appear at any position; `+.` and
 * `.` are only allowed as a prefix. Matching is case-insensitive and ignores
 * a trailing dot.
 *
 * Matching walks a trie keyed by labels from the right (com → example → www),
 * so its cost is O(labels of the name), independent of the number of
 * patterns. At each level the exact child is tried before the `*` child; the
 * only backtracking is between those two, bounded by the wildcards on one
 * path of the patterns, not by how many patterns there are.
 */
import { FakeproxyError } from '../errors.js';

interface TrieNode {
  children: Map<string, TrieNode> | undefined;
  wild: TrieNode | undefined;
  /** A pattern ends exactly here. */
  exact: boolean;
  /** `+.` pattern: this node and everything below. */
  self: boolean;
  /** `.` or `+.` pattern: everything strictly below. */
  below: boolean;
}

function newNode(): TrieNode {
  return { children: undefined, wild: undefined, exact: false, self: false, below: false };
}

const LABEL_RE = /^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$|^\*$/;

export class FakeIpFilter {
  private readonly root = newNode();
  readonly patterns: readonly string[];

  constructor(patterns: readonly string[] = []) {
    const seen: string[] = [];
    for (const p of patterns) {
      this.add(p);
      seen.push(p);
    }
    this.patterns = seen;
  }

  get size(): number {
    return this.patterns.length;
  }

  /** Add one pattern; throws FakeproxyError EBADFILTER naming the flag when the syntax is wrong. */
  private add(pattern: string): void {
    let p = pattern.trim().toLowerCase();
    if (p.endsWith('.') && p.length > 1) p = p.slice(0, -1);
    let mode: 'exact' | 'plus' | 'below' = 'exact';
    if (p.startsWith('+.')) {
      mode = 'plus';
      p = p.slice(2);
    } else if (p.startsWith('.')) {
      mode = 'below';
      p = p.slice(1);
    }
    const labels = p.split('.');
    if (p === '' || !labels.every((l) => LABEL_RE.test(l))) {
      throw new FakeproxyError(
        'EBADFILTER',
        `bad --fake-ip-filter pattern "${pattern}": use a name (example.com), +.suffix (name and subdomains), .suffix (subdomains), or * for one label (*.local, time.*.com)`,
      );
    }
    let n = this.root;
    for (let i = labels.length - 1; i >= 0; i--) {
      const l = labels[i] as string;
      if (l === '*') {
        n.wild ??= newNode();
        n = n.wild;
      } else {
        n.children ??= new Map();
        let c = n.children.get(l);
        if (!c) {
          c = newNode();
          n.children.set(l, c);
        }
        n = c;
      }
    }
    if (mode === 'exact') n.exact = true;
    else {
      n.below = true;
      if (mode === 'plus') n.self = true;
    }
  }

  /** Whether `name` (any case, optional trailing dot) is filtered. */
  matches(name: string): boolean {
    if (this.patterns.length === 0) return false;
    let s = name.toLowerCase();
    if (s.endsWith('.')) s = s.slice(0, -1);
    if (s === '') return false;
    const labels = s.split('.');
    return walk(this.root, labels, labels.length - 1);
  }
}

/** Labels [0..i] remain to be matched, right to left. */
function walk(n: TrieNode, labels: string[], i: number): boolean {
  if (i < 0) return n.exact || n.self;
  if (n.below) return true;
  const l = labels[i] as string;
  const c = n.children?.get(l);
  if (c && walk(c, labels, i - 1)) return true;
  return n.wild !== undefined && walk(n.wild, labels, i - 1);
}
