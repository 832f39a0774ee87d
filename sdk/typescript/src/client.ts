// `Sandbox[Symbol.asyncDispose]` is typed with this lib (TypeScript >= 5.2); kept in the
// declarations so that projects without it (a browser's `lib: ["ES2022", "DOM"]`) compile.
/// <reference lib="esnext.disposable" preserve="true" />
import { TvmError } from "./errors.js";
import { abortReason, Transport } from "./http.js";
import { SseParser } from "./sse.js";
import type {
  ClientOptions,
  ExecuteOptions,
  ExecuteResult,
  ExecutionOutcome,
  ExecutionState,
  ExecutionSummary,
  ExecuteRequest,
  FileListing,
  FileWritten,
  GetOptions,
  LanguageInfo,
  RequestOptions,
  SandboxInfo,
  SandboxOptions,
  StreamEvent,
} from "./types.js";
import {
  camelize,
  executeToWire,
  exitFromWire,
  isObject,
  resultFromWire,
  sandboxToWire,
  toBytes,
} from "./wire.js";

const DEFAULT_BASE_URL = "http://127.0.0.1:8080";
const ASYNC_STATUSES = new Set(["queued", "running", "rejected"]);

/** `process.env[name]` where there is a `process` (Node, Bun, Deno's compat), else undefined. */
function envVar(name: string): string | undefined {
  try {
    const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
    const v = proc?.env?.[name];
    return v === "" ? undefined : v;
  } catch {
    return undefined; // Deno without --allow-env throws
  }
}

/** A path inside the work dir, each segment escaped, the slashes kept. */
function encodePath(path: string): string {
  return path.split("/").map(encodeURIComponent).join("/");
}

function signalOf(opts: RequestOptions | undefined): AbortSignal | undefined {
  return opts?.signal;
}

function expectArray(json: unknown, key: string | undefined, what: string): unknown[] {
  const v = key === undefined ? json : isObject(json) ? json[key] : undefined;
  if (!Array.isArray(v)) throw new TvmError("protocol_error", `${what}: expected a list`, 200);
  return v;
}

/**
 * A client of one TVM server (pyroshell or pyrovm). Every method returns a promise
 * (or, for `stream`, an async iterable) and takes an optional `signal` to abort it;
 * failures reject with a {@link TvmError}.
 */
export class Client {
  /** The server's base URL, without a trailing slash. */
  readonly baseUrl: string;
  readonly #t: Transport;

  constructor(options: ClientOptions = {}) {
    const baseUrl = (options.baseUrl ?? envVar("TVM_SERVER") ?? DEFAULT_BASE_URL).replace(/\/+$/, "");
    const maxRetries = options.maxRetries ?? 3;
    const maxRetryDelayMs = options.maxRetryDelayMs ?? 30_000;
    if (!Number.isInteger(maxRetries) || maxRetries < 0) {
      throw new RangeError("maxRetries must be an integer >= 0");
    }
    if (!(maxRetryDelayMs >= 0)) throw new RangeError("maxRetryDelayMs must be >= 0");
    const fetchImpl = options.fetch ?? globalThis.fetch?.bind(globalThis);
    if (typeof fetchImpl !== "function") {
      throw new TypeError("no fetch: use Node >= 18, a browser or Deno, or pass options.fetch");
    }
    this.baseUrl = baseUrl;
    this.#t = new Transport({
      baseUrl,
      token: options.token ?? envVar("TVM_TOKEN"),
      maxRetries,
      maxRetryDelayMs,
      fetch: fetchImpl,
      headers: { ...options.headers },
    });
  }

  /** `GET /v1/languages`: the languages this server runs. */
  async languages(opts?: RequestOptions): Promise<LanguageInfo[]> {
    const json = await this.#t.json("GET", "/v1/languages", { signal: signalOf(opts) });
    return expectArray(json, undefined, "languages").map(camelize) as LanguageInfo[];
  }

  /** `POST /v1/execute`: runs code in a fresh microVM and returns its result. */
  async execute(opts: ExecuteOptions): Promise<ExecuteResult> {
    return execute(this.#t, "/v1/execute", opts);
  }

  /**
   * `POST /v1/execute/stream`: the output as it happens, then one `exit` event whose
   * data is the result (without the output). The request is sent when iteration
   * starts. Aborting `signal`, or leaving the loop early, closes the connection and
   * the server kills the VM.
   */
  stream(opts: ExecuteOptions): AsyncIterable<StreamEvent> {
    return stream(this.#t, "/v1/execute/stream", opts);
  }

  /** `POST /v1/sandboxes`: a microVM kept for a session (delete it when done). */
  async sandbox(opts: SandboxOptions = {}): Promise<Sandbox> {
    const json = await this.#t.json("POST", "/v1/sandboxes", {
      json: sandboxToWire(opts),
      signal: opts.signal,
    });
    return new Sandbox(this.#t, sandboxInfo(json));
  }

  /** `GET /v1/sandboxes/{id}`: a handle on an existing sandbox of this token. */
  async getSandbox(id: string, opts?: RequestOptions): Promise<Sandbox> {
    const json = await this.#t.json("GET", `/v1/sandboxes/${encodeURIComponent(id)}`, {
      signal: signalOf(opts),
    });
    return new Sandbox(this.#t, sandboxInfo(json));
  }

  /** `GET /v1/sandboxes`: this token's live sandboxes, oldest first. */
  async sandboxes(opts?: RequestOptions): Promise<SandboxInfo[]> {
    const json = await this.#t.json("GET", "/v1/sandboxes", { signal: signalOf(opts) });
    return expectArray(json, "sandboxes", "sandboxes").map(camelize) as SandboxInfo[];
  }

  /** `POST /v1/executions`: queues an execution; read its result later with `get`. */
  async submit(opts: ExecuteOptions): Promise<ExecutionState> {
    const json = await this.#t.json("POST", "/v1/executions", {
      json: executeToWire(opts),
      signal: opts.signal,
    });
    return camelize(json) as ExecutionState;
  }

  /** `POST /v1/executions/batch`: queues several executions; all are accepted or none. */
  async submitBatch(requests: ExecuteRequest[], opts?: RequestOptions): Promise<ExecutionState[]> {
    const json = await this.#t.json("POST", "/v1/executions/batch", {
      json: { executions: requests.map(executeToWire) },
      signal: signalOf(opts),
    });
    return expectArray(json, "executions", "batch").map(camelize) as ExecutionState[];
  }

  /**
   * `GET /v1/executions/{id}`: `{done: true, result}` once it ran, else
   * `{done: false, state}`. With `wait`, the server holds the request until it ran
   * (at most `timeoutMs`, bounded by the server's `max_wait_ms`).
   */
  async get(id: string, opts: GetOptions = {}): Promise<ExecutionOutcome> {
    const query: Record<string, string | undefined> = {};
    if (opts.wait) {
      query["wait"] = "true";
      if (opts.timeoutMs !== undefined) query["timeout_ms"] = String(Math.max(0, Math.round(opts.timeoutMs)));
    }
    const json = await this.#t.json("GET", `/v1/executions/${encodeURIComponent(id)}`, {
      query,
      signal: opts.signal,
    });
    if (isObject(json) && typeof json["status"] === "string" && ASYNC_STATUSES.has(json["status"])) {
      return { done: false, state: camelize(json) as ExecutionState };
    }
    return { done: true, result: resultFromWire(json, "execution") };
  }

  /** `DELETE /v1/executions/{id}`: cancels it (or forgets its result). */
  async cancel(id: string, opts?: RequestOptions): Promise<void> {
    await this.#t.empty("DELETE", `/v1/executions/${encodeURIComponent(id)}`, { signal: signalOf(opts) });
  }

  /** `GET /v1/executions`: this token's async executions on the server, oldest first. */
  async executions(opts?: RequestOptions): Promise<ExecutionSummary[]> {
    const json = await this.#t.json("GET", "/v1/executions", { signal: signalOf(opts) });
    return expectArray(json, "executions", "executions").map(camelize) as ExecutionSummary[];
  }
}

function sandboxInfo(json: unknown): SandboxInfo {
  if (!isObject(json) || typeof json["id"] !== "string") {
    throw new TvmError("protocol_error", "sandbox: expected its description", 200);
  }
  return camelize(json) as SandboxInfo;
}

async function execute(t: Transport, path: string, opts: ExecuteOptions): Promise<ExecuteResult> {
  const json = await t.json("POST", path, { json: executeToWire(opts), signal: opts.signal });
  return resultFromWire(json);
}

async function* stream(t: Transport, path: string, opts: ExecuteOptions): AsyncGenerator<StreamEvent, void, undefined> {
  const signal = opts.signal;
  const res = await t.send("POST", path, {
    json: executeToWire(opts),
    signal,
    accept: "text/event-stream",
  });
  if (res.body === null) throw new TvmError("protocol_error", "the stream has no body", res.status);
  const reader = res.body.getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (signal?.aborted) throw abortReason(signal);
        const why = e instanceof Error ? e.message : String(e);
        throw new TvmError("connection_error", `the stream broke off: ${why}`, res.status, { cause: e });
      }
      const messages = chunk.done ? parser.finish() : parser.push(chunk.value);
      for (const m of messages) {
        if (m.event === "stdout" || m.event === "stderr") {
          yield { event: m.event, data: m.data };
        } else if (m.event === "exit") {
          let data: unknown;
          try {
            data = JSON.parse(m.data);
          } catch {
            throw new TvmError("protocol_error", "the exit event's data is not JSON", res.status);
          }
          yield { event: "exit", data: exitFromWire(data) };
          return;
        }
        // Other events (none today) are skipped.
      }
      if (chunk.done) {
        throw new TvmError("protocol_error", "the stream ended without an exit event", res.status);
      }
    }
  } finally {
    // After `exit`, on an error, an abort or a consumer that left the loop: close the
    // connection (the server then kills a job still running).
    reader.cancel().catch(() => undefined);
  }
}

/**
 * A sandbox: one microVM kept for a session. Files written and processes started in
 * one exec are there for the next. It ends on `delete()`, at its TTL, after its idle
 * timeout, or when the server restarts; later calls then reject with a TvmError
 * (`not_found` after a delete, `sandbox_ended` otherwise). `await using sb = await
 * client.sandbox()` deletes it at the end of the scope where `Symbol.asyncDispose`
 * exists.
 */
export class Sandbox {
  readonly id: string;
  /** As of creation, or of the last `refresh()`. */
  info: SandboxInfo;
  readonly #t: Transport;
  readonly #base: string;

  /** Use `client.sandbox()` or `client.getSandbox(id)`. */
  constructor(transport: Transport, info: SandboxInfo) {
    this.#t = transport;
    this.id = info.id;
    this.info = info;
    this.#base = `/v1/sandboxes/${encodeURIComponent(info.id)}`;
  }

  /** `GET /v1/sandboxes/{id}`: its current description. */
  async refresh(opts?: RequestOptions): Promise<SandboxInfo> {
    this.info = sandboxInfo(await this.#t.json("GET", this.#base, { signal: signalOf(opts) }));
    return this.info;
  }

  /**
   * Runs code in the sandbox (the request and result of `Client.execute`; `limits`
   * may set only `timeoutMs` and `maxOutputBytes`, the rest belong to the sandbox).
   */
  async execute(opts: ExecuteOptions): Promise<ExecuteResult> {
    return execute(this.#t, `${this.#base}/execute`, opts);
  }

  /** As `Client.stream`, in the sandbox (leaving early does not end the sandbox). */
  stream(opts: ExecuteOptions): AsyncIterable<StreamEvent> {
    return stream(this.#t, `${this.#base}/execute/stream`, opts);
  }

  /** Writes a file (parents are made, an existing file replaced). A string is written as UTF-8. */
  async writeFile(path: string, data: Uint8Array | string, opts?: RequestOptions): Promise<FileWritten> {
    const json = await this.#t.json("PUT", `${this.#base}/files/${encodePath(path)}`, {
      bytes: toBytes(data),
      signal: signalOf(opts),
    });
    return camelize(json) as FileWritten;
  }

  /** Reads a file's bytes (`new TextDecoder().decode(bytes)` for text). */
  async readFile(path: string, opts?: RequestOptions): Promise<Uint8Array> {
    const signal = signalOf(opts);
    const res = await this.#t.send("GET", `${this.#base}/files/${encodePath(path)}`, {
      accept: "application/octet-stream",
      signal,
    });
    try {
      return new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      if (signal?.aborted) throw abortReason(signal);
      throw new TvmError("connection_error", `reading ${path}: the answer broke off`, res.status, { cause: e });
    }
  }

  /** Lists a directory (default: the work dir itself). */
  async list(path = "", opts?: RequestOptions): Promise<FileListing> {
    const dir = path.replace(/\/+$/, "");
    const url = dir === "" ? `${this.#base}/files/` : `${this.#base}/files/${encodePath(dir)}/`;
    return camelize(await this.#t.json("GET", url, { signal: signalOf(opts) })) as FileListing;
  }

  /** `DELETE /v1/sandboxes/{id}`: ends it now; its VM is gone when this resolves. */
  async delete(opts?: RequestOptions): Promise<void> {
    await this.#t.empty("DELETE", this.#base, { signal: signalOf(opts) });
  }

  /** `delete()`, where a sandbox already gone (404, 410) is no error. */
  declare [Symbol.asyncDispose]: () => Promise<void>;
}

// Defined only where the runtime has the symbol (Node >= 18.18/20.4, Deno, recent browsers).
if (typeof Symbol.asyncDispose === "symbol") {
  Object.defineProperty(Sandbox.prototype, Symbol.asyncDispose, {
    configurable: true,
    writable: true,
    value: async function (this: Sandbox): Promise<void> {
      try {
        await this.delete();
      } catch (e) {
        if (!(e instanceof TvmError && (e.status === 404 || e.status === 410))) throw e;
      }
    },
  });
}
