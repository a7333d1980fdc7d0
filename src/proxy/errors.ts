/**
 * Errors raised by src/proxy. Every one carries a stable `code` (tests and
 * the daemon's log filters match on it) and a message that names the fix.
 * Socket-level failures keep Node's own code (ECONNREFUSED, EHOSTUNREACH, …)
 * through `wrapError`, so only protocol outcomes get codes of our own.
 */
import { FakeproxyError } from '../errors.js';

export type ProxyErrorCode =
  // RFC 1928 §6 reply codes 0x01–0x08, then anything else.
  | 'ESOCKS5_GENERAL_FAILURE'
  | 'ESOCKS5_NOT_ALLOWED'
  | 'ESOCKS5_NET_UNREACHABLE'
  | 'ESOCKS5_HOST_UNREACHABLE'
  | 'ESOCKS5_REFUSED'
  | 'ESOCKS5_TTL_EXPIRED'
  | 'ESOCKS5_CMD_UNSUPPORTED'
  | 'ESOCKS5_ATYP_UNSUPPORTED'
  | 'ESOCKS5_REPLY'
  // Method negotiation / RFC 1929.
  | 'ESOCKS5_NO_METHOD'
  | 'ESOCKS5_AUTH_FAILED'
  | 'ESOCKS5_PROTOCOL'
  // HTTP CONNECT.
  | 'EHTTP_PROXY_AUTH'
  | 'EHTTP_PROXY_STATUS'
  | 'EHTTP_PROXY_PROTOCOL'
  | 'EHTTP_PROXY_HEADER_TOO_LARGE'
  // Any outbound.
  | 'ETIMEDOUT'
  | 'EABORTED'
  | 'EUPSTREAM_CLOSED'
  | 'EREJECT'
  | 'ENORESOLVER'
  // The destination is routed into our own TUN: connecting would loop.
  | 'ELOOP'
  | 'ENOTFOUND';

export class ProxyError extends FakeproxyError {
  declare readonly code: ProxyErrorCode;
  /** SOCKS5 REP byte or HTTP status, when the upstream answered with one. */
  readonly status?: number;

  constructor(code: ProxyErrorCode, message: string, options?: { cause?: unknown; status?: number }) {
    super(code, message, options?.cause !== undefined ? { cause: options.cause } : undefined);
    this.name = 'ProxyError';
    if (options?.status !== undefined) this.status = options.status;
  }
}
