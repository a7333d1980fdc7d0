/**
 * Redis commands encoded straight into RESP bytes, for the mirror's hot
 * writes (one HSET of 33 arguments, a PEXPIRE and PUBLISHes per flow).
 *
 * ioredis builds a command's RESP by string concatenation, several short
 * strings per argument, and a pipeline joins them into one more string: for
 * the mirror's rows that came to ~6 KB of garbage per HSET, most of the
 * daemon's allocation at a few thousand new connections a second with
 * --redis, and each scavenge on this VM kind costs milliseconds. Here the
 * arguments are written into one reused scratch buffer and each command
 * leaves as a single Buffer. The command still travels as an ioredis
 * Command (its reply, promise, pipeline order, Cluster slot from its key):
 * only its encoding is ours.
 */
import { Command } from 'ioredis';

/** The scratch buffer's size, and the most it keeps between commands. */
const SCRATCH = 16 * 1024;
const SCRATCH_MAX = 1024 * 1024;

/** A Command whose RESP bytes were encoded by RespWriter; ioredis sends them as they are. */
class EncodedCommand extends Command {
  readonly #bytes: Buffer;
  readonly #key: string;

  constructor(name: string, key: string, bytes: Buffer) {
    super(name, [key]);
    this.#bytes = bytes;
    this.#key = key;
  }

  override toWritable(): Buffer {
    return this.#bytes;
  }

  /** The key begin() named, whatever the command: ioredis routes by it (a Cluster's slot; every mirror key of a node shares one). */
  override getKeys(): string[] {
    return [this.#key];
  }
}

/**
 * Builds one command at a time: begin(name, key, argc) writes the header and
 * the command name (argc counts it), then exactly argc - 1 str()/num()
 * arguments follow (the key among them, where the command wants it), and
 * end() returns the Command.
 */
export class RespWriter {
  #buf = Buffer.allocUnsafeSlow(SCRATCH);
  #len = 0;
  #name = '';
  #key = '';
  #left = 0;

  begin(name: string, key: string, argc: number): this {
    // A batch's UNLINK or ZADD may have grown the scratch buffer; do not keep a big one.
    if (this.#buf.length > SCRATCH_MAX) this.#buf = Buffer.allocUnsafeSlow(SCRATCH);
    this.#len = 0;
    this.#name = name;
    this.#key = key;
    this.#left = argc;
    this.#room(24);
    this.#buf[this.#len++] = 0x2a; // '*'
    this.#uint(argc, digitsOf(argc));
    this.#crlf();
    return this.str(name);
  }

  /** A bulk string argument (UTF-8). */
  str(s: string): this {
    const n = Buffer.byteLength(s);
    this.#room(n + 32);
    this.#bulkHeader(n);
    this.#len += this.#buf.write(s, this.#len);
    this.#crlf();
    this.#left--;
    return this;
  }

  /** A number argument, as Redis reads it: its decimal digits (String(n) for all but non-negative safe integers). */
  num(n: number): this {
    if (!Number.isSafeInteger(n) || n < 0) return this.str(String(n));
    const len = digitsOf(n);
    this.#room(48);
    this.#bulkHeader(len);
    this.#uint(n, len);
    this.#crlf();
    this.#left--;
    return this;
  }

  /** The finished command: a copy of its bytes, so the scratch buffer serves the next one. */
  end(): Command {
    if (this.#left !== 0)
      throw new Error(`RespWriter: ${this.#name} is off by ${this.#left} from the arguments begin() announced`);
    const bytes = Buffer.allocUnsafe(this.#len);
    this.#buf.copy(bytes, 0, 0, this.#len);
    return new EncodedCommand(this.#name, this.#key, bytes);
  }

  /** `$<n>` CRLF: a bulk string of n bytes follows. */
  #bulkHeader(n: number): void {
    this.#buf[this.#len++] = 0x24; // '$'
    this.#uint(n, digitsOf(n));
    this.#crlf();
  }

  /** The `len` decimal digits of n. */
  #uint(n: number, len: number): void {
    let t = n;
    for (let i = this.#len + len - 1; i >= this.#len; i--) {
      this.#buf[i] = 0x30 + (t % 10);
      t = Math.floor(t / 10);
    }
    this.#len += len;
  }

  #crlf(): void {
    this.#buf[this.#len++] = 0x0d;
    this.#buf[this.#len++] = 0x0a;
  }

  #room(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    const next = Buffer.allocUnsafeSlow(Math.max(this.#buf.length * 2, this.#len + n));
    this.#buf.copy(next, 0, 0, this.#len);
    this.#buf = next;
  }
}

/** Decimal digits of a non-negative integer. */
function digitsOf(n: number): number {
  let len = 1;
  for (let t = n; t >= 10; t = Math.floor(t / 10)) len++;
  return len;
}
