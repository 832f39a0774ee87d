/**
 * An error of the TVM client: the server's `{"error": {"code", "message"}}` answer
 * with its HTTP `status`, or a failure to reach the server or to read its answer.
 *
 * `code` is the API's error code (`unknown_language`, `unauthorized`, `at_capacity`,
 * `sandbox_ended`, `not_found`, ...), or one of the client's own:
 * - `connection_error` (status 0): `fetch` failed, the server was not reached or the
 *   connection broke; `cause` holds the underlying error;
 * - `protocol_error`: an answer the client could not read (not the JSON it expected,
 *   a stream that ended without its `exit` event);
 * - `http_<status>`: an error answer without the API's error body (a proxy's, say).
 *
 * An aborted request (its `AbortSignal` fired) rejects with the signal's reason (an
 * `AbortError` `DOMException` by default), never with a TvmError.
 */
export class TvmError extends Error {
  /** The API's error code, or the client's (see above). */
  readonly code: string;
  /** The HTTP status (0 when there was no answer). */
  readonly status: number;
  /** The answer's `Retry-After`, in ms, when it had one. */
  readonly retryAfterMs: number | undefined;
  /** The answer's `x-request-id`, to find it in the server's log. */
  readonly requestId: string | undefined;

  constructor(
    code: string,
    message: string,
    status: number,
    options: { retryAfterMs?: number; requestId?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "TvmError";
    this.code = code;
    this.status = status;
    this.retryAfterMs = options.retryAfterMs;
    this.requestId = options.requestId;
  }
}
