// Public types of the client. Every field is the HTTP API's field in camelCase,
// mechanically (`exit_code` -> `exitCode`, `timings_ms.vm_start` -> `timingsMs.vmStart`,
// `ttl_s` -> `ttlS`); results also carry `raw`, the JSON exactly as the server sent it
// (snake_case). The server's contract: crates/tvm-api/src/*.rs and /openapi.json.

/** How an execution ended. */
export type ExecutionStatus =
  | "completed"
  | "timeout"
  | "memory_limit"
  | "output_limit"
  | "sandbox_error"
  | "compile_error";

/** A test case's judgement. */
export type Verdict = "accepted" | "wrong_answer" | "time_limit" | "memory_limit" | "runtime_error";

/** Where an async execution is before it has a result (or instead of one: `rejected`). */
export type AsyncStatus = "queued" | "running" | "rejected";

/** Limits of one execution; absent ones take the server's defaults. */
export interface Limits {
  timeoutMs?: number;
  memoryMb?: number;
  vcpus?: number;
  /** Per stream (stdout, stderr). */
  maxOutputBytes?: number;
  maxProcesses?: number;
  /** Deadline of the compile stage (languages that compile). */
  compileTimeoutMs?: number;
  /** Memory limit of the compile stage. */
  compileMemoryMb?: number;
}

/** The limits one test case may set for itself (absent ones are the request's). */
export interface CaseLimits {
  timeoutMs?: number;
  memoryMb?: number;
  maxOutputBytes?: number;
  maxProcesses?: number;
}

/** One test case: the program is compiled once and run once per case. */
export interface TestCase {
  stdin?: string;
  args?: string[];
  /** Compared with trailing whitespace normalised; without it, exiting 0 is `accepted`. */
  expectedStdout?: string;
  limits?: CaseLimits;
}

/**
 * A file written into the work dir before the program runs. A string is sent as UTF-8
 * text (or as base64 if `encoding` says so); a `Uint8Array` is sent as base64.
 */
export interface InputFile {
  /** Relative to the work dir, e.g. `data/in.txt`. */
  path: string;
  content: string | Uint8Array;
  /** Only for string content: `"base64"` if the string is already base64. */
  encoding?: "utf8" | "base64";
}

/** Egress through the server's proxy to these destinations only (off by default). */
export interface NetworkRequest {
  /** `host`, `*.suffix`, an IP literal, each with an optional `:port`. */
  allow: string[];
  maxBytesIn?: number;
  maxBytesOut?: number;
  maxConnections?: number;
}

/** Cancels the request (and, for a stream, the running job). */
export interface RequestOptions {
  signal?: AbortSignal;
}

/** The body of `POST /v1/execute` (also of a sandbox's execute and of async executions). */
export interface ExecuteRequest {
  language: string;
  code: string;
  stdin?: string;
  args?: string[];
  env?: Record<string, string>;
  files?: InputFile[];
  /** Globs relative to the work dir (`out/*.png`, `**\/*.json`); matches come back in `files`. */
  filesOut?: string[];
  limits?: Limits;
  network?: NetworkRequest;
  /** Compile once, run each case (not with `stdin`, `args` or `filesOut`). */
  tests?: TestCase[];
}

export interface ExecuteOptions extends ExecuteRequest, RequestOptions {}

export interface Timings {
  queued: number;
  vmStart: number;
  exec: number;
  total: number;
}

/** A file `filesOut` matched, decoded. */
export interface OutputFile {
  path: string;
  /** Bytes (decoded). */
  size: number;
  /** The file's bytes (`new TextDecoder().decode(f.content)` for text). */
  content: Uint8Array;
}

/** How the compile stage ended. */
export interface StageResult {
  status: ExecutionStatus;
  exitCode: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  durationMs: number;
}

/** The result of one test case, in the order of `tests`. */
export interface CaseResult extends StageResult {
  /** `null` only when the case could not be judged (`sandbox_error`). */
  verdict: Verdict | null;
  error?: string;
}

export interface RefusedDestination {
  host: string;
  port: number;
  reason: string;
}

/** What the job's egress did (only with `network`). */
export interface NetworkUsage {
  bytesIn: number;
  bytesOut: number;
  connections: number;
  refused: RefusedDestination[];
}

/** The data of a stream's final `exit` event: the result without the output. */
export interface ExitResult {
  id: string;
  status: ExecutionStatus;
  exitCode: number | null;
  /** Signal name (`SIGKILL`) when the program was killed by one. */
  signal: string | null;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  timingsMs: Timings;
  backend: string;
  /** Why the sandbox failed (`sandbox_error` only). */
  error?: string;
  files?: OutputFile[];
  filesTruncated?: boolean;
  compile?: StageResult;
  tests?: CaseResult[];
  verdict?: Verdict;
  network?: NetworkUsage;
  /** The JSON as the server sent it. */
  raw: Record<string, unknown>;
}

/** The result of an execution (a program's own failure is still a result). */
export interface ExecuteResult extends ExitResult {
  stdout: string;
  stderr: string;
}

/** One event of `stream()`. */
export type StreamEvent =
  | { event: "stdout"; data: string }
  | { event: "stderr"; data: string }
  | { event: "exit"; data: ExitResult };

/** One entry of `languages()`. */
export interface LanguageInfo {
  name: string;
  version: string;
  fileName: string;
  aliases: string[];
  extensions: string[];
  compiled: boolean;
}

/** `POST /v1/sandboxes` body; every field is optional. */
export interface SandboxOptions extends RequestOptions {
  /** Seconds the sandbox may live at most. */
  ttlS?: number;
  /** Seconds without any request after which it ends. */
  idleTimeoutS?: number;
  limits?: SandboxLimitsRequest;
  /** Environment of every exec in it (an exec's own `env` wins). */
  env?: Record<string, string>;
  network?: NetworkRequest;
}

export interface SandboxLimitsRequest {
  memoryMb?: number;
  vcpus?: number;
  maxProcesses?: number;
  /** Size of the work dir (guest memory). */
  diskMb?: number;
}

export interface SandboxLimits {
  memoryMb: number;
  vcpus: number;
  maxProcesses: number;
  diskMb: number;
}

/** What the server says about a live sandbox. */
export interface SandboxInfo {
  id: string;
  /** RFC 3339, UTC. */
  createdAt: string;
  expiresAt: string;
  lastActiveAt: string;
  ttlS: number;
  idleTimeoutS: number;
  limits: SandboxLimits;
  /** Names of the environment variables set at creation (values are not echoed). */
  envKeys: string[];
  execs: number;
  backend: string;
  vmStartMs: number;
}

export interface FileWritten {
  path: string;
  size: number;
}

export interface FileEntry {
  name: string;
  /** `file`, `dir`, `symlink` or `other`. */
  type: "file" | "dir" | "symlink" | "other";
  /** Bytes, for files (0 otherwise). */
  size: number;
}

export interface FileListing {
  /** The directory, relative to the work dir (`""` for the work dir itself). */
  path: string;
  entries: FileEntry[];
  /** Whether entries were left out (a listing holds at most 10,000). */
  truncated: boolean;
}

/** An async execution without a result (yet, or ever: `rejected`). */
export interface ExecutionState {
  id: string;
  status: AsyncStatus;
  /** Milliseconds since it was submitted. */
  ageMs: number;
  /** Why it was rejected. */
  error?: { code: string; message: string };
}

/** `get()`: the result once the execution ran, else where it is. */
export type ExecutionOutcome =
  | { done: true; result: ExecuteResult }
  | { done: false; state: ExecutionState };

export interface GetOptions extends RequestOptions {
  /** Hold the request until the execution finishes (at most `timeoutMs`). */
  wait?: boolean;
  /** With `wait`: how long the server holds it (default and maximum: its `max_wait_ms`). */
  timeoutMs?: number;
}

/** One entry of `executions()`: `status` is an AsyncStatus or, once it ran, its ExecutionStatus. */
export interface ExecutionSummary {
  id: string;
  status: AsyncStatus | ExecutionStatus;
  ageMs: number;
}

export interface ClientOptions {
  /** Default: `$TVM_SERVER` where `process.env` exists, else `http://127.0.0.1:8080`. */
  baseUrl?: string;
  /** Bearer token. Default: `$TVM_TOKEN` where `process.env` exists, else none. */
  token?: string;
  /** Retries of a 429 or 503 answer (nothing else is retried). Default 3. */
  maxRetries?: number;
  /**
   * The longest wait before one retry, in ms (default 30000). A `Retry-After` longer
   * than this is not waited for: the error is thrown (its `retryAfterMs` says how long).
   */
  maxRetryDelayMs?: number;
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /** Extra headers sent with every request. */
  headers?: Record<string, string>;
}
