// Unit tests: the client against a test double of `fetch` (test/fetch-double.ts).
// What goes on the wire, errors, the 429/503 retries, SSE parsing with chunks cut
// anywhere, aborts. The integration tests run the same client against a real pyrovm.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { Client, TvmError, type StreamEvent } from "tvm-client";

import { apiError, bytes, FetchDouble, hangingSse, json, noContent, sse } from "./fetch-double.js";

const enc = new TextEncoder();
const BASE = "http://tvm.test:8080";

const RESULT = {
  id: "01KEXAMPLE",
  status: "completed",
  exit_code: 0,
  signal: null,
  stdout: "42\n",
  stderr: "",
  stdout_truncated: false,
  stderr_truncated: false,
  timings_ms: { queued: 1, vm_start: 2, exec: 3, total: 6 },
  backend: "qemu-tcg",
  files: [{ path: "out/o.bin", content: "AP8B", encoding: "base64", size: 3 }],
  files_truncated: false,
};

function client(double: FetchDouble, extra: Partial<ConstructorParameters<typeof Client>[0]> = {}): Client {
  return new Client({ baseUrl: BASE, token: "secret", fetch: double.fetch, ...extra });
}

async function rejects(p: Promise<unknown>): Promise<TvmError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof TvmError, `expected a TvmError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected a rejection");
}

async function collect(events: AsyncIterable<StreamEvent>): Promise<StreamEvent[]> {
  const out: StreamEvent[] = [];
  for await (const e of events) out.push(e);
  return out;
}

describe("requests", () => {
  it("execute sends the API's snake_case body with the bearer token and types the answer", async () => {
    const d = new FetchDouble([json(200, RESULT)]);
    const r = await client(d).execute({
      language: "python",
      code: "print(6*7)",
      stdin: "in\n",
      args: ["--flag"],
      env: { MY_VAR: "x", lower_case: "y" },
      files: [
        { path: "a.txt", content: "héllo" },
        { path: "b.bin", content: new Uint8Array([0, 255, 1]) },
        { path: "c.txt", content: "aGk=", encoding: "base64" },
      ],
      filesOut: ["out/*"],
      limits: { timeoutMs: 5000, memoryMb: 128, maxOutputBytes: 1000, compileTimeoutMs: 9000 },
      network: { allow: ["pypi.org"], maxConnections: 2 },
    });
    assert.equal(d.requests.length, 1);
    const req = d.requests[0]!;
    assert.equal(req.method, "POST");
    assert.equal(req.url.href, `${BASE}/v1/execute`);
    assert.equal(req.headers.get("authorization"), "Bearer secret");
    assert.equal(req.headers.get("content-type"), "application/json");
    assert.deepEqual(d.json(0), {
      language: "python",
      code: "print(6*7)",
      stdin: "in\n",
      args: ["--flag"],
      env: { MY_VAR: "x", lower_case: "y" },
      files: [
        { path: "a.txt", content: "héllo" },
        { path: "b.bin", content: "AP8B", encoding: "base64" },
        { path: "c.txt", content: "aGk=", encoding: "base64" },
      ],
      files_out: ["out/*"],
      limits: { timeout_ms: 5000, memory_mb: 128, max_output_bytes: 1000, compile_timeout_ms: 9000 },
      network: { allow: ["pypi.org"], max_connections: 2 },
    });
    assert.equal(r.status, "completed");
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, "42\n");
    assert.deepEqual(r.timingsMs, { queued: 1, vmStart: 2, exec: 3, total: 6 });
    assert.equal(r.filesTruncated, false);
    assert.deepEqual(r.files, [{ path: "out/o.bin", size: 3, content: new Uint8Array([0, 255, 1]) }]);
    assert.deepEqual(r.raw, RESULT);
  });

  it("tests are sent as the API's test cases", async () => {
    const d = new FetchDouble([json(200, { ...RESULT, verdict: "wrong_answer", tests: [] })]);
    const r = await client(d).execute({
      language: "c",
      code: "int main(){}",
      tests: [{ stdin: "1", expectedStdout: "2", args: ["a"] }, { limits: { timeoutMs: 700, maxProcesses: 3 } }],
    });
    assert.deepEqual(d.json(0), {
      language: "c",
      code: "int main(){}",
      tests: [
        { stdin: "1", args: ["a"], expected_stdout: "2" },
        { limits: { timeout_ms: 700, max_processes: 3 } },
      ],
    });
    assert.equal(r.verdict, "wrong_answer");
  });

  it("defaults come from TVM_SERVER and TVM_TOKEN; explicit options win", async () => {
    const saved = { s: process.env["TVM_SERVER"], t: process.env["TVM_TOKEN"] };
    try {
      process.env["TVM_SERVER"] = "http://from-env:9/";
      process.env["TVM_TOKEN"] = "env-token";
      const d = new FetchDouble([], json(200, []));
      const c = new Client({ fetch: d.fetch });
      assert.equal(c.baseUrl, "http://from-env:9");
      await c.languages();
      assert.equal(d.requests[0]!.url.href, "http://from-env:9/v1/languages");
      assert.equal(d.requests[0]!.headers.get("authorization"), "Bearer env-token");
      await new Client({ fetch: d.fetch, baseUrl: "http://explicit:1", token: "t2" }).languages();
      assert.equal(d.requests[1]!.url.href, "http://explicit:1/v1/languages");
      assert.equal(d.requests[1]!.headers.get("authorization"), "Bearer t2");
      delete process.env["TVM_SERVER"];
      delete process.env["TVM_TOKEN"];
      const c3 = new Client({ fetch: d.fetch });
      assert.equal(c3.baseUrl, "http://127.0.0.1:8080");
      await c3.languages();
      assert.equal(d.requests[2]!.headers.get("authorization"), null);
    } finally {
      for (const [k, v] of [["TVM_SERVER", saved.s], ["TVM_TOKEN", saved.t]] as const) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it("languages are typed in camelCase", async () => {
    const d = new FetchDouble([
      json(200, [
        { name: "python", version: "3.11.2", file_name: "main.py", aliases: ["py"], extensions: ["py"], compiled: false },
      ]),
    ]);
    const langs = await client(d).languages();
    assert.deepEqual(langs, [
      { name: "python", version: "3.11.2", fileName: "main.py", aliases: ["py"], extensions: ["py"], compiled: false },
    ]);
  });

  it("sandbox routes: create, files (raw bytes, escaped paths), list, execute, delete, dispose", async () => {
    const info = {
      id: "sb-1",
      created_at: "2026-01-01T00:00:00Z",
      expires_at: "2026-01-01T00:10:00Z",
      last_active_at: "2026-01-01T00:00:00Z",
      ttl_s: 600,
      idle_timeout_s: 120,
      limits: { memory_mb: 256, vcpus: 1, max_processes: 64, disk_mb: 64 },
      env_keys: ["A"],
      execs: 0,
      backend: "qemu-tcg",
      vm_start_ms: 7,
    };
    const listing = { path: "data", entries: [{ name: "a b.txt", type: "file", size: 3 }], truncated: false };
    const d = new FetchDouble([
      json(201, info),
      json(200, { path: "data/a b.txt", size: 3 }),
      bytes(new Uint8Array([1, 2, 3])),
      json(200, listing),
      json(200, { ...listing, path: "" }),
      json(200, RESULT),
      noContent(),
      apiError(404, "not_found"),
    ]);
    const sb = await client(d).sandbox({ ttlS: 60, idleTimeoutS: 30, limits: { diskMb: 32 }, env: { A: "1" } });
    assert.deepEqual(d.json(0), { ttl_s: 60, idle_timeout_s: 30, limits: { disk_mb: 32 }, env: { A: "1" } });
    assert.equal(sb.id, "sb-1");
    assert.equal(sb.info.ttlS, 600);
    assert.equal(sb.info.limits.diskMb, 64);
    assert.deepEqual(sb.info.envKeys, ["A"]);

    const w = await sb.writeFile("data/a b.txt", "héllo");
    assert.deepEqual(w, { path: "data/a b.txt", size: 3 });
    const put = d.requests[1]!;
    assert.equal(put.method, "PUT");
    assert.equal(put.url.pathname, "/v1/sandboxes/sb-1/files/data/a%20b.txt");
    assert.equal(put.headers.get("content-type"), "application/octet-stream");
    assert.deepEqual(put.bytes, enc.encode("héllo"));

    assert.deepEqual(await sb.readFile("data/a b.txt"), new Uint8Array([1, 2, 3]));
    assert.equal(d.requests[2]!.url.pathname, "/v1/sandboxes/sb-1/files/data/a%20b.txt");
    assert.deepEqual(await sb.list("data/"), listing);
    assert.equal(d.requests[3]!.url.pathname, "/v1/sandboxes/sb-1/files/data/");
    await sb.list();
    assert.equal(d.requests[4]!.url.pathname, "/v1/sandboxes/sb-1/files/");
    const r = await sb.execute({ language: "bash", code: "ls", limits: { timeoutMs: 100 } });
    assert.equal(r.stdout, "42\n");
    assert.equal(d.requests[5]!.url.pathname, "/v1/sandboxes/sb-1/execute");
    await sb.delete();
    assert.equal(d.requests[6]!.method, "DELETE");
    assert.equal(d.requests[6]!.url.pathname, "/v1/sandboxes/sb-1");
    // Disposing a sandbox that is already gone is no error.
    await sb[Symbol.asyncDispose]();
    assert.equal(d.requests.length, 8);
  });

  it("get() tells a pending execution from a result, and sends wait and timeout_ms", async () => {
    const d = new FetchDouble([
      json(200, { id: "e1", status: "running", age_ms: 5 }),
      json(200, { ...RESULT, id: "e1" }),
      json(200, { id: "e2", status: "rejected", age_ms: 9, error: { code: "queue_timeout", message: "m" } }),
    ]);
    const c = client(d);
    const a = await c.get("e1");
    assert.deepEqual(a, { done: false, state: { id: "e1", status: "running", ageMs: 5 } });
    assert.equal(d.requests[0]!.url.search, "");
    const b = await c.get("e1", { wait: true, timeoutMs: 2500 });
    assert.ok(b.done);
    assert.equal(b.result.stdout, "42\n");
    assert.equal(d.requests[1]!.url.search, "?wait=true&timeout_ms=2500");
    const e = await c.get("e2");
    assert.ok(!e.done);
    assert.equal(e.state.status, "rejected");
    assert.equal(e.state.error?.code, "queue_timeout");
  });

  it("submit, submitBatch, cancel and executions use their routes", async () => {
    const d = new FetchDouble([
      json(202, { id: "e1", status: "queued", age_ms: 0 }, { location: "/v1/executions/e1" }),
      json(202, { executions: [{ id: "e2", status: "queued", age_ms: 0 }, { id: "e3", status: "queued", age_ms: 0 }] }),
      noContent(),
      json(200, { executions: [{ id: "e2", status: "completed", age_ms: 40 }] }),
    ]);
    const c = client(d);
    assert.deepEqual(await c.submit({ language: "bash", code: "true" }), { id: "e1", status: "queued", ageMs: 0 });
    assert.deepEqual(d.json(0), { language: "bash", code: "true" });
    const batch = await c.submitBatch([
      { language: "bash", code: "echo 1" },
      { language: "python", code: "print(2)", stdin: "x" },
    ]);
    assert.deepEqual(batch.map((s) => s.id), ["e2", "e3"]);
    assert.equal(d.requests[1]!.url.pathname, "/v1/executions/batch");
    assert.deepEqual(d.json(1), {
      executions: [
        { language: "bash", code: "echo 1" },
        { language: "python", code: "print(2)", stdin: "x" },
      ],
    });
    await c.cancel("e 1");
    assert.equal(d.requests[2]!.method, "DELETE");
    assert.equal(d.requests[2]!.url.pathname, "/v1/executions/e%201");
    assert.deepEqual(await c.executions(), [{ id: "e2", status: "completed", ageMs: 40 }]);
  });
});

describe("errors", () => {
  it("an API error carries its code, message, status and request id", async () => {
    const d = new FetchDouble([
      () =>
        new Response(JSON.stringify({ error: { code: "unknown_language", message: "unknown language: cobol" } }), {
          status: 400,
          headers: { "content-type": "application/json", "x-request-id": "req-1" },
        }),
    ]);
    const e = await rejects(client(d).execute({ language: "cobol", code: "x" }));
    assert.equal(e.code, "unknown_language");
    assert.equal(e.message, "unknown language: cobol");
    assert.equal(e.status, 400);
    assert.equal(e.requestId, "req-1");
    assert.equal(e.name, "TvmError");
    assert.equal(d.requests.length, 1);
  });

  it("an error answer without the API's body becomes http_<status>", async () => {
    const d = new FetchDouble([() => new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" })]);
    const e = await rejects(client(d).languages());
    assert.equal(e.code, "http_502");
    assert.equal(e.status, 502);
    assert.match(e.message, /502 Bad Gateway: <html>bad gateway/);
  });

  it("a fetch that fails is a connection_error with the cause", async () => {
    const boom = new TypeError("fetch failed");
    const d = new FetchDouble([
      () => {
        throw boom;
      },
    ]);
    const e = await rejects(client(d).languages());
    assert.equal(e.code, "connection_error");
    assert.equal(e.status, 0);
    assert.equal(e.cause, boom);
    assert.equal(d.requests.length, 1, "not retried");
  });

  it("a 200 that is not what was expected is a protocol_error", async () => {
    const d = new FetchDouble([() => new Response("not json", { status: 200 }), json(200, { nope: 1 })]);
    assert.equal((await rejects(client(d).languages())).code, "protocol_error");
    assert.equal((await rejects(client(d).execute({ language: "bash", code: "true" }))).code, "protocol_error");
  });
});

describe("retries", () => {
  it("429 and 503 are retried after Retry-After, then succeed", async () => {
    const d = new FetchDouble([
      apiError(429, "at_capacity", { "retry-after": "0" }),
      apiError(503, "not_ready", { "retry-after": "0" }),
      json(200, RESULT),
    ]);
    const r = await client(d).execute({ language: "python", code: "print(42)" });
    assert.equal(r.stdout, "42\n");
    assert.equal(d.requests.length, 3);
    // The same body each time.
    assert.deepEqual(d.json(2), d.json(0));
  });

  it("honours Retry-After in seconds", async () => {
    const d = new FetchDouble([apiError(429, "at_capacity", { "retry-after": "1" }), json(200, [])]);
    await client(d).languages();
    const waited = d.requests[1]!.at - d.requests[0]!.at;
    assert.ok(waited >= 950, `retried after ${waited} ms`);
  });

  it("honours Retry-After as an HTTP date", async () => {
    const past = new Date(Date.now() - 5000).toUTCString();
    const d = new FetchDouble([apiError(503, "no_space", { "retry-after": past }), json(200, [])]);
    await client(d).languages();
    assert.equal(d.requests.length, 2);
    assert.ok(d.requests[1]!.at - d.requests[0]!.at < 500);
  });

  it("without Retry-After, backs off (500 ms first)", async () => {
    const d = new FetchDouble([apiError(503, "not_ready"), json(200, [])]);
    await client(d).languages();
    const waited = d.requests[1]!.at - d.requests[0]!.at;
    assert.ok(waited >= 450, `retried after ${waited} ms`);
  });

  it("gives up after maxRetries with the last error", async () => {
    const d = new FetchDouble([], apiError(429, "at_capacity", { "retry-after": "0" }));
    const e = await rejects(client(d, { maxRetries: 2 }).execute({ language: "bash", code: "true" }));
    assert.equal(d.requests.length, 3);
    assert.equal(e.status, 429);
    assert.equal(e.code, "at_capacity");
    assert.equal(e.retryAfterMs, 0);
    const d0 = new FetchDouble([], apiError(429, "at_capacity", { "retry-after": "0" }));
    await rejects(client(d0, { maxRetries: 0 }).languages());
    assert.equal(d0.requests.length, 1);
  });

  it("does not wait for a Retry-After beyond maxRetryDelayMs", async () => {
    const d = new FetchDouble([], apiError(429, "at_capacity", { "retry-after": "600" }));
    const t0 = Date.now();
    const e = await rejects(client(d, { maxRetryDelayMs: 10_000 }).languages());
    assert.equal(d.requests.length, 1);
    assert.equal(e.retryAfterMs, 600_000);
    assert.ok(Date.now() - t0 < 1000);
  });

  it("retries nothing else: 400, 404, 409 with Retry-After, 500", async () => {
    for (const [status, code] of [
      [400, "invalid_json"],
      [404, "not_found"],
      [409, "sandbox_busy"],
      [500, "internal"],
    ] as const) {
      const d = new FetchDouble([], apiError(status, code, { "retry-after": "0" }));
      const e = await rejects(client(d).languages());
      assert.equal(e.code, code);
      assert.equal(d.requests.length, 1, `${status} was retried`);
    }
  });

  it("an abort during the wait rejects at once with the AbortError", async () => {
    const d = new FetchDouble([], apiError(429, "at_capacity", { "retry-after": "10" }));
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const t0 = Date.now();
    await assert.rejects(client(d).languages({ signal: ac.signal }), { name: "AbortError" });
    assert.ok(Date.now() - t0 < 2000);
    assert.equal(d.requests.length, 1);
  });
});

// What pyrovm (axum) writes for these events, keep-alive comments included.
const EXIT = {
  id: "01KSTREAM",
  status: "completed",
  exit_code: 3,
  signal: null,
  stdout_truncated: false,
  stderr_truncated: false,
  timings_ms: { queued: 0, vm_start: 5, exec: 7, total: 12 },
  backend: "qemu-tcg",
  files: [{ path: "o.bin", content: "AP8B", encoding: "base64", size: 3 }],
};
const STREAM =
  "event: stdout\ndata: one\ndata: \n\n" + // "one\n"
  ":\n\n" + // keep-alive
  "event: stderr\ndata: héllo € 😀\ndata: \n\n" +
  "event: stdout\ndata: a\rdata: \ndata: b\n\n" + // "a\r\nb" as axum splits it
  "event: stdout\ndata:no-space\n\n" +
  "event: stdout\ndata:  two spaces\n\n" +
  ": a comment\nid: 7\nretry: 10\nevent: stdout\ndata: x\n\n" +
  "event: future_event\ndata: skipped\n\n" +
  "data: a message without an event name\n\n" +
  `event: exit\ndata: ${JSON.stringify(EXIT)}\n\n` +
  "event: stdout\ndata: after exit\n\n";

function expectStream(events: StreamEvent[], label: string): void {
  const simple = events.slice(0, -1);
  assert.deepEqual(
    simple,
    [
      { event: "stdout", data: "one\n" },
      { event: "stderr", data: "héllo € 😀\n" },
      { event: "stdout", data: "a\n\nb" },
      { event: "stdout", data: "no-space" },
      { event: "stdout", data: " two spaces" },
      { event: "stdout", data: "x" },
    ],
    label,
  );
  const last = events[events.length - 1];
  assert.ok(last?.event === "exit", `${label}: exit last`);
  assert.equal(last.data.exitCode, 3);
  assert.equal(last.data.timingsMs.vmStart, 5);
  assert.deepEqual(last.data.files?.[0]?.content, new Uint8Array([0, 255, 1]));
  assert.deepEqual(last.data.raw, EXIT);
}

/** Cuts `data` at the given offsets. */
function cut(data: Uint8Array, at: number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const i of [...at, data.length]) {
    out.push(data.slice(prev, i));
    prev = i;
  }
  return out;
}

/** A small deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("streaming (SSE)", () => {
  const variants: [string, string][] = [
    ["LF", STREAM],
    ["CRLF", STREAM.replace(/\n/g, "\r\n")],
    ["CR", STREAM.replace(/\n/g, "\r")],
  ];

  it("parses the events whatever the line endings, in one chunk", async () => {
    for (const [name, text] of variants) {
      const d = new FetchDouble([sse([enc.encode(text)])]);
      const events = await collect(client(d).stream({ language: "bash", code: "x" }));
      expectStream(events, name);
      assert.equal(d.requests[0]!.headers.get("accept"), "text/event-stream");
      assert.equal(d.requests[0]!.url.pathname, "/v1/execute/stream");
    }
  });

  it("parses the same events with the stream cut at every byte (mid-line, CR|LF, mid-UTF-8)", async () => {
    for (const [name, text] of variants) {
      const data = enc.encode(text);
      for (let i = 1; i < data.length; i++) {
        const d = new FetchDouble([sse(cut(data, [i]))]);
        expectStream(await collect(client(d).stream({ language: "bash", code: "x" })), `${name} cut at ${i}`);
      }
      const d1 = new FetchDouble([sse(cut(data, Array.from({ length: data.length - 1 }, (_, i) => i + 1)))]);
      expectStream(await collect(client(d1).stream({ language: "bash", code: "x" })), `${name} byte by byte`);
    }
  });

  it("parses the same events in random chunkings", async () => {
    const next = rng(17);
    for (const [name, text] of variants) {
      const data = enc.encode(text);
      for (let run = 0; run < 100; run++) {
        const at = [...new Set(Array.from({ length: 1 + Math.floor(next() * 12) }, () => 1 + Math.floor(next() * (data.length - 1))))].sort(
          (a, b) => a - b,
        );
        const d = new FetchDouble([sse(cut(data, at))]);
        expectStream(await collect(client(d).stream({ language: "bash", code: "x" })), `${name} cut at ${at.join(",")}`);
      }
    }
  });

  it("a stream that ends without exit is a protocol_error; a final event without its blank line is dropped", async () => {
    const d = new FetchDouble([sse([enc.encode("event: stdout\ndata: hi\n\nevent: exit\ndata: {}")])]);
    const seen: StreamEvent[] = [];
    const e = await rejects(
      (async () => {
        for await (const ev of client(d).stream({ language: "bash", code: "x" })) seen.push(ev);
      })(),
    );
    assert.equal(e.code, "protocol_error");
    assert.deepEqual(seen, [{ event: "stdout", data: "hi" }]);
  });

  it("a refusal before the stream is a TvmError; 429 is retried first", async () => {
    const d = new FetchDouble([
      apiError(429, "at_capacity", { "retry-after": "0" }),
      sse([enc.encode(`event: stdout\ndata: ok\n\nevent: exit\ndata: ${JSON.stringify(EXIT)}\n\n`)]),
    ]);
    const events = await collect(client(d).stream({ language: "bash", code: "x" }));
    assert.equal(events.length, 2);
    assert.equal(d.requests.length, 2);
    const d2 = new FetchDouble([apiError(400, "unknown_language")]);
    assert.equal((await rejects(collect(client(d2).stream({ language: "cobol", code: "x" })))).code, "unknown_language");
  });

  it("an AbortSignal ends the stream with an AbortError and closes the body", async () => {
    const state = { cancelled: false };
    const d = new FetchDouble([hangingSse(enc.encode("event: stdout\ndata: start\n\n"), state)]);
    const ac = new AbortController();
    const seen: StreamEvent[] = [];
    const t0 = Date.now();
    await assert.rejects(
      (async () => {
        for await (const ev of client(d).stream({ language: "bash", code: "sleep 100", signal: ac.signal })) {
          seen.push(ev);
          setTimeout(() => ac.abort(), 20);
        }
      })(),
      { name: "AbortError" },
    );
    assert.deepEqual(seen, [{ event: "stdout", data: "start" }]);
    assert.ok(Date.now() - t0 < 2000);
  });

  it("leaving the loop early cancels the body (the server then kills the job)", async () => {
    const state = { cancelled: false };
    const d = new FetchDouble([hangingSse(enc.encode("event: stdout\ndata: start\n\n"), state)]);
    for await (const ev of client(d).stream({ language: "bash", code: "sleep 100" })) {
      assert.equal(ev.event, "stdout");
      break;
    }
    await new Promise((r) => setTimeout(r, 10));
    assert.ok(state.cancelled, "the body was cancelled");
  });

  it("a sandbox streams from its own route", async () => {
    const info = { id: "sb-9", limits: {}, env_keys: [] };
    const d = new FetchDouble([
      json(201, info),
      sse([enc.encode(`event: exit\ndata: ${JSON.stringify(EXIT)}\n\n`)]),
    ]);
    const sb = await client(d).sandbox();
    assert.deepEqual(d.json(0), {});
    const events = await collect(sb.stream({ language: "bash", code: "true" }));
    assert.equal(events.length, 1);
    assert.equal(d.requests[1]!.url.pathname, "/v1/sandboxes/sb-9/execute/stream");
  });
});
