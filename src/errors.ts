/**
 * Errors with a stable `code` and a message that names the fix
 * (modelled on fastify's lib/errors.js). Every failure that reaches an
 * operator goes through one of these, so the CLI can print one line.
 */
export class FakeproxyError extends Error {
  readonly code: string;
  /** errno name / number and syscall when the cause is a system call (native errors). */
  readonly errno?: number;
  readonly syscall?: string;

  constructor(code: string, message: string, options?: { cause?: unknown; errno?: number; syscall?: string }) {
    super(message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'FakeproxyError';
    this.code = code;
    if (options?.errno !== undefined) this.errno = options.errno;
    if (options?.syscall !== undefined) this.syscall = options.syscall;
  }
}

/** Bad command-line or config input: the CLI exits 2. */
export class UsageError extends FakeproxyError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('EUSAGE', message, options);
    this.name = 'UsageError';
  }
}

/** Wrap a failure with the step that failed and keep the cause (STYLE.md habit 1). */
export function wrapError(step: string, cause: unknown): FakeproxyError {
  const c = cause as { code?: string; errno?: number; syscall?: string; message?: string } | undefined;
  const code = typeof c?.code === 'string' ? c.code : 'EFAKEPROXY';
  const msg = c?.message ?? String(cause);
  return new FakeproxyError(code, `${step}: ${msg}`, { cause, errno: c?.errno, syscall: c?.syscall });
}
