// Between the client's camelCase types and the API's snake_case JSON. Requests are
// built field by field (the server refuses unknown fields, and `env` keys are the
// user's own); answers are converted key by key (they hold no user-chosen keys).

import { TvmError } from "./errors.js";
import type {
  ExecuteRequest,
  ExecuteResult,
  ExitResult,
  InputFile,
  Limits,
  NetworkRequest,
  OutputFile,
  SandboxOptions,
  TestCase,
} from "./types.js";

type Json = Record<string, unknown>;

const encoder = new TextEncoder();

/** Base64 of bytes, with nothing but `btoa` (Node >= 16, browsers, Deno). */
export function toBase64(bytes: Uint8Array): string {
  let bin = "";
  const step = 0x8000;
  for (let i = 0; i < bytes.length; i += step) {
    bin += String.fromCharCode(...bytes.subarray(i, i + step));
  }
  return btoa(bin);
}

export function fromBase64(text: string): Uint8Array {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function toBytes(data: Uint8Array | string): Uint8Array {
  return typeof data === "string" ? encoder.encode(data) : data;
}

/** Sets `obj[key] = value` unless `value` is undefined. */
function put(obj: Json, key: string, value: unknown): void {
  if (value !== undefined) obj[key] = value;
}

function limitsToWire(l: Limits | undefined): Json | undefined {
  if (l === undefined) return undefined;
  const o: Json = {};
  put(o, "timeout_ms", l.timeoutMs);
  put(o, "memory_mb", l.memoryMb);
  put(o, "vcpus", l.vcpus);
  put(o, "max_output_bytes", l.maxOutputBytes);
  put(o, "max_processes", l.maxProcesses);
  put(o, "compile_timeout_ms", l.compileTimeoutMs);
  put(o, "compile_memory_mb", l.compileMemoryMb);
  return o;
}

function fileToWire(f: InputFile): Json {
  if (typeof f.content === "string") {
    const o: Json = { path: f.path, content: f.content };
    put(o, "encoding", f.encoding);
    return o;
  }
  return { path: f.path, content: toBase64(f.content), encoding: "base64" };
}

function testToWire(t: TestCase): Json {
  const o: Json = {};
  put(o, "stdin", t.stdin);
  put(o, "args", t.args);
  put(o, "expected_stdout", t.expectedStdout);
  if (t.limits !== undefined) {
    const l: Json = {};
    put(l, "timeout_ms", t.limits.timeoutMs);
    put(l, "memory_mb", t.limits.memoryMb);
    put(l, "max_output_bytes", t.limits.maxOutputBytes);
    put(l, "max_processes", t.limits.maxProcesses);
    o["limits"] = l;
  }
  return o;
}

function networkToWire(n: NetworkRequest | undefined): Json | undefined {
  if (n === undefined) return undefined;
  const o: Json = { allow: n.allow };
  put(o, "max_bytes_in", n.maxBytesIn);
  put(o, "max_bytes_out", n.maxBytesOut);
  put(o, "max_connections", n.maxConnections);
  return o;
}

/** The JSON body of an execute request (only the request's fields: not `signal`). */
export function executeToWire(r: ExecuteRequest): Json {
  const o: Json = { language: r.language, code: r.code };
  put(o, "stdin", r.stdin);
  put(o, "args", r.args);
  put(o, "env", r.env);
  put(o, "files", r.files?.map(fileToWire));
  put(o, "files_out", r.filesOut);
  put(o, "limits", limitsToWire(r.limits));
  put(o, "network", networkToWire(r.network));
  put(o, "tests", r.tests?.map(testToWire));
  return o;
}

export function sandboxToWire(s: SandboxOptions): Json {
  const o: Json = {};
  put(o, "ttl_s", s.ttlS);
  put(o, "idle_timeout_s", s.idleTimeoutS);
  if (s.limits !== undefined) {
    const l: Json = {};
    put(l, "memory_mb", s.limits.memoryMb);
    put(l, "vcpus", s.limits.vcpus);
    put(l, "max_processes", s.limits.maxProcesses);
    put(l, "disk_mb", s.limits.diskMb);
    o["limits"] = l;
  }
  put(o, "env", s.env);
  put(o, "network", networkToWire(s.network));
  return o;
}

function camel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** A JSON answer with every object key in camelCase. */
export function camelize(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(camelize);
  if (value !== null && typeof value === "object") {
    const out: Json = {};
    for (const [k, v] of Object.entries(value)) out[camel(k)] = camelize(v);
    return out;
  }
  return value;
}

export function isObject(value: unknown): value is Json {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function expectObject(value: unknown, what: string): Json {
  if (!isObject(value)) {
    throw new TvmError("protocol_error", `${what}: expected a JSON object`, 200);
  }
  return value;
}

/** An exit event's data (a StreamExit) or an execute answer, typed, with `raw`. */
export function exitFromWire(json: unknown, what = "exit"): ExitResult {
  const raw = expectObject(json, what);
  if (typeof raw["id"] !== "string" || typeof raw["status"] !== "string") {
    throw new TvmError("protocol_error", `${what}: not an execution result`, 200);
  }
  const out = camelize(raw) as Json;
  if (Array.isArray(raw["files"])) {
    out["files"] = (raw["files"] as Json[]).map(
      (f): OutputFile => ({
        path: String(f["path"]),
        size: Number(f["size"]),
        content:
          f["encoding"] === "base64"
            ? fromBase64(String(f["content"]))
            : encoder.encode(String(f["content"])),
      }),
    );
  }
  out["raw"] = raw;
  return out as unknown as ExitResult;
}

export function resultFromWire(json: unknown, what = "result"): ExecuteResult {
  const r = exitFromWire(json, what);
  if (typeof r.raw["stdout"] !== "string" || typeof r.raw["stderr"] !== "string") {
    throw new TvmError("protocol_error", `${what}: no stdout/stderr`, 200);
  }
  return r as ExecuteResult;
}
