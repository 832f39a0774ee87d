// The one place requests go out: the bearer token, the error answers, and the only
// retries there are (429 and 503, which the server sends for requests that did not
// run: a full queue, a node not ready, a VM that failed to start).

import { TvmError } from "./errors.js";
import { isObject } from "./wire.js";

export interface TransportConfig {
  baseUrl: string;
  token: string | undefined;
  maxRetries: number;
  maxRetryDelayMs: number;
  fetch: typeof globalThis.fetch;
  headers: Record<string, string>;
}

export interface SendOptions {
  /** A JSON body (serialized here). */
  json?: unknown;
  /** A raw body, sent as application/octet-stream. */
  bytes?: Uint8Array;
  query?: Record<string, string | undefined>;
  accept?: string;
  signal?: AbortSignal | undefined;
}

const RETRY_STATUSES = new Set([429, 503]);
/** Without a Retry-After: 0.5 s, 1 s, 2 s, ... (bounded by maxRetryDelayMs). */
const BACKOFF_BASE_MS = 500;

/** What an aborted signal rejects with: its reason, or an AbortError. */
export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException("This operation was aborted", "AbortError");
}

/** `Retry-After` in ms: delta-seconds or an HTTP date; undefined if absent or unreadable. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value === null) return undefined;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortReason(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** The TvmError of a non-2xx answer (its body is read here). */
export async function errorFrom(res: Response): Promise<TvmError> {
  const retryAfterMs = parseRetryAfter(res.headers.get("retry-after"));
  const requestId = res.headers.get("x-request-id") ?? undefined;
  let text = "";
  try {
    text = await res.text();
  } catch {
    // The body is gone; the status says enough.
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  const err = isObject(parsed) ? parsed["error"] : undefined;
  if (isObject(err) && typeof err["code"] === "string") {
    const message = typeof err["message"] === "string" ? err["message"] : err["code"];
    return new TvmError(err["code"], message, res.status, { retryAfterMs, requestId });
  }
  const snippet = text.trim().slice(0, 200);
  const message = `HTTP ${res.status}${res.statusText ? ` ${res.statusText}` : ""}${snippet ? `: ${snippet}` : ""}`;
  return new TvmError(`http_${res.status}`, message, res.status, { retryAfterMs, requestId });
}

export class Transport {
  constructor(readonly config: TransportConfig) {}

  /**
   * Sends one request and returns its 2xx answer (body unread); any other answer
   * becomes a TvmError. 429 and 503 are retried up to `maxRetries` times after their
   * `Retry-After` (a longer one than `maxRetryDelayMs` is not waited for).
   */
  async send(method: string, path: string, opts: SendOptions = {}): Promise<Response> {
    const c = this.config;
    let url = c.baseUrl + path;
    if (opts.query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(opts.query)) if (v !== undefined) q.set(k, v);
      const s = q.toString();
      if (s) url += `?${s}`;
    }
    const headers: Record<string, string> = { ...c.headers, accept: opts.accept ?? "application/json" };
    if (c.token) headers["authorization"] = `Bearer ${c.token}`;
    let body: string | Uint8Array<ArrayBuffer> | undefined;
    if (opts.json !== undefined) {
      body = JSON.stringify(opts.json);
      headers["content-type"] = "application/json";
    } else if (opts.bytes !== undefined) {
      // A copy on its own ArrayBuffer: what every fetch accepts as a body.
      body = new Uint8Array(opts.bytes);
      headers["content-type"] = "application/octet-stream";
    }
    const signal = opts.signal;
    const doFetch = c.fetch;
    for (let attempt = 0; ; attempt++) {
      let res: Response;
      try {
        const init: RequestInit = { method, headers };
        if (body !== undefined) init.body = body;
        if (signal !== undefined) init.signal = signal;
        res = await doFetch(url, init);
      } catch (e) {
        if (signal?.aborted) throw abortReason(signal);
        const why = e instanceof Error ? e.message : String(e);
        throw new TvmError("connection_error", `${method} ${url}: ${why}`, 0, { cause: e });
      }
      if (res.ok) return res;
      const err = await errorFrom(res);
      if (RETRY_STATUSES.has(res.status) && attempt < c.maxRetries) {
        const delay = err.retryAfterMs ?? Math.min(BACKOFF_BASE_MS * 2 ** attempt, c.maxRetryDelayMs);
        if (delay <= c.maxRetryDelayMs) {
          await sleep(delay, signal);
          continue;
        }
      }
      throw err;
    }
  }

  /** `send`, then the answer's JSON (a TvmError `protocol_error` if it is not JSON). */
  async json(method: string, path: string, opts: SendOptions = {}): Promise<unknown> {
    const res = await this.send(method, path, opts);
    let text: string;
    try {
      text = await res.text();
    } catch (e) {
      if (opts.signal?.aborted) throw abortReason(opts.signal);
      throw new TvmError("connection_error", `${method} ${path}: the answer broke off`, res.status, {
        cause: e,
      });
    }
    try {
      return JSON.parse(text);
    } catch {
      throw new TvmError("protocol_error", `${method} ${path}: the answer is not JSON`, res.status);
    }
  }

  /** `send` of a request whose answer has no body (204). */
  async empty(method: string, path: string, opts: SendOptions = {}): Promise<void> {
    const res = await this.send(method, path, opts);
    await res.body?.cancel().catch(() => undefined);
  }
}
