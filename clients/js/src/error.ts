import { redact } from "./redact.js";

/** Field errors of an `invalid` reply: the top-level field of `data` to its messages. */
export type FieldErrors = Record<string, string[]>;

/**
 * Why a request failed. `code` is the server's error code (docs/protocol.md, Errors) or one
 * of the client's own: `timeout` (no reply in time), `closed` (after `close()`),
 * `disconnected` (the link dropped before the reply of a request that is not safe to
 * send twice), `queue_full` (more than 100 requests waiting for a socket), `too_big`
 * (the server closed the link with 1009 while the request was in flight) and
 * `bad_token` (getToken() gave a token that is not a JWT: `connect()` rejects with it).
 * `detail` never holds a token: anything shaped like one reads `<redacted>`.
 */
export class TaxiError extends Error {
  readonly code: string;
  readonly detail: string;
  readonly errors: FieldErrors;

  constructor(code: string, detail: string, errors: FieldErrors = {}) {
    detail = redact(detail);
    super(`${code}: ${detail}`);
    this.name = "TaxiError";
    this.code = code;
    this.detail = detail;
    this.errors = errors;
  }
}
