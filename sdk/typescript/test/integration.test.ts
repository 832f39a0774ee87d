// Integration tests: the built client against a real pyrovm booting real microVMs.
// Skipped, with the reason printed, where there is no pyrovm binary or guest image
// (PYROVM_BIN, TVM_IMAGE_DIR); with TVM_REQUIRE_VM=1 a missing one is a failure.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { Client, TvmError, type StreamEvent } from "tvm-client";

import { missing, Pyrovm } from "./pyrovm.js";

const why = missing();
if (why !== undefined) {
  console.log(`integration tests skipped: ${why}`);
  if (process.env["TVM_REQUIRE_VM"] === "1") {
    it("has a pyrovm and a guest image (TVM_REQUIRE_VM=1)", () => assert.fail(why));
  }
}

const dec = new TextDecoder();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

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

/** The sum of a metric's samples on `server`. */
async function metric(server: Pyrovm, name: string): Promise<number> {
  const res = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${server.token}` } });
  return (await res.text())
    .split("\n")
    .filter((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`))
    .reduce((n, l) => n + Number(l.split(" ").pop()), 0);
}

async function until(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) assert.fail(`${what}: not within ${timeoutMs} ms`);
    await sleep(100);
  }
}

describe("against a real pyrovm", { skip: why ?? false }, () => {
  let server: Pyrovm;
  let client: Client;
  let failed = false;

  /** A test that, when it fails, has the server's log printed at the end. */
  function test(name: string, fn: () => Promise<void>): void {
    it(name, { timeout: 120_000 }, async () => {
      try {
        await fn();
      } catch (e) {
        failed = true;
        throw e;
      }
    });
  }

  before(
    async () => {
      const t0 = Date.now();
      server = await Pyrovm.start({
        top: "pool_prime = []\n",
        tables: "[[pool]]\nvcpus = 1\nmemory_mb = 256\nsize = 1\n",
        waitSnapshot: true,
      });
      console.log(`pyrovm ready at ${server.url} in ${Date.now() - t0} ms`);
      client = new Client({ baseUrl: server.url, token: server.token, maxRetries: 5 });
    },
    { timeout: 240_000 },
  );

  after(async () => {
    if (server === undefined) return;
    if (failed) console.log(`pyrovm log (tail):\n${server.logTail(60)}`);
    await server.stop();
  });

  test("languages()", async () => {
    const langs = await client.languages();
    const python = langs.find((l) => l.name === "python");
    assert.ok(python, "python is there");
    assert.ok(python.aliases.includes("py"));
    assert.equal(python.compiled, false);
    assert.match(python.version, /^3\./);
    assert.equal(langs.find((l) => l.name === "c")?.compiled, true);
    assert.ok(langs.some((l) => l.name === "bash"));
  });

  test("execute(): stdin, args, env, files in and out, exit code", async () => {
    const code = [
      "import os, sys",
      "name = input()",
      "text = open('data/in.txt').read()",
      "blob = open('bin.dat', 'rb').read()",
      "os.makedirs('out', exist_ok=True)",
      "open('out/result.bin', 'wb').write(bytes([0, 255, 1, 2]))",
      "print(name, sys.argv[1:], os.environ['GREETING'], text, list(blob))",
      "print('to stderr', file=sys.stderr)",
      "sys.exit(3)",
    ].join("\n");
    const r = await client.execute({
      language: "python",
      code,
      stdin: "Ada\n",
      args: ["--flag", "x"],
      env: { GREETING: "hi" },
      files: [
        { path: "data/in.txt", content: "héllo" },
        { path: "bin.dat", content: new Uint8Array([7, 8, 9]) },
      ],
      filesOut: ["out/*.bin"],
      limits: { timeoutMs: 20_000 },
    });
    assert.equal(r.status, "completed", r.stderr);
    assert.equal(r.exitCode, 3);
    assert.equal(r.signal, null);
    assert.equal(r.stdout, "Ada ['--flag', 'x'] hi héllo [7, 8, 9]\n");
    assert.equal(r.stderr, "to stderr\n");
    assert.deepEqual(r.files, [{ path: "out/result.bin", size: 4, content: new Uint8Array([0, 255, 1, 2]) }]);
    assert.equal(r.filesTruncated, false);
    assert.equal(typeof r.id, "string");
    assert.ok(r.timingsMs.total > 0);
    assert.equal(r.raw["exit_code"], 3);
  });

  test("execute(): a timeout, and test cases with verdicts", async () => {
    const t = await client.execute({ language: "bash", code: "sleep 5", limits: { timeoutMs: 500 } });
    assert.equal(t.status, "timeout");
    const r = await client.execute({
      language: "python",
      code: "print(int(input()) * 2)",
      tests: [
        { stdin: "2", expectedStdout: "4" },
        { stdin: "3", expectedStdout: "7" },
      ],
    });
    assert.equal(r.verdict, "wrong_answer");
    assert.equal(r.tests?.length, 2);
    assert.equal(r.tests?.[0]?.verdict, "accepted");
    assert.equal(r.tests?.[1]?.verdict, "wrong_answer");
    assert.equal(r.tests?.[1]?.stdout, "6\n");
  });

  test("an error carries the API's code: unknown_language, limit_out_of_range", async () => {
    const e = await rejects(client.execute({ language: "cobol", code: "DISPLAY 'X'." }));
    assert.equal(e.code, "unknown_language");
    assert.equal(e.status, 400);
    assert.match(e.message, /cobol/);
    assert.ok(e.requestId, "the request id is kept");
    const l = await rejects(client.execute({ language: "python", code: "1", limits: { timeoutMs: 1 } }));
    assert.equal(l.code, "limit_out_of_range");
  });

  test("401 with a bad token, and without one", async () => {
    const bad = new Client({ baseUrl: server.url, token: "not-the-token" });
    const e = await rejects(bad.languages());
    assert.equal(e.status, 401);
    assert.equal(e.code, "unauthorized");
    const none = new Client({ baseUrl: server.url, token: "" });
    const n = await rejects(none.execute({ language: "bash", code: "true" }));
    assert.equal(n.status, 401);
    assert.equal(n.code, "unauthorized");
  });

  test("stream(): stdout and stderr as they happen, in order, exit last", async () => {
    const events = await collect(
      client.stream({
        language: "bash",
        code: "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three; exit 4",
      }),
    );
    const last = events[events.length - 1];
    assert.ok(last?.event === "exit", "exit is last");
    assert.equal(events.filter((e) => e.event === "exit").length, 1);
    assert.equal(last.data.status, "completed");
    assert.equal(last.data.exitCode, 4);
    assert.equal(typeof last.data.raw["id"], "string");
    const text = (name: string): string =>
      events
        .filter((e) => e.event === name)
        .map((e) => e.data)
        .join("");
    assert.equal(text("stdout"), "one\nthree\n");
    assert.equal(text("stderr"), "two\n");
    const at = (s: string): number => events.findIndex((e) => e.event !== "exit" && e.data.includes(s));
    assert.ok(at("one") < at("two") && at("two") < at("three"), JSON.stringify(events.slice(0, -1)));
  });

  test("stream(): an AbortSignal ends it at once and the server kills the VM", async () => {
    const ac = new AbortController();
    const seen: StreamEvent[] = [];
    let abortedAt = 0;
    await assert.rejects(
      (async () => {
        for await (const ev of client.stream({
          language: "bash",
          code: "echo start; sleep 30; echo never",
          limits: { timeoutMs: 40_000 },
          signal: ac.signal,
        })) {
          seen.push(ev);
          if (ev.event === "stdout" && ev.data.includes("start")) {
            abortedAt = Date.now();
            ac.abort();
          }
        }
      })(),
      { name: "AbortError" },
    );
    assert.ok(abortedAt > 0, "saw start");
    assert.ok(Date.now() - abortedAt < 2000, "the loop ended at once");
    assert.ok(!seen.some((e) => e.event === "exit"));
    // The job is gone long before its 30 s sleep would end.
    await until("the VM is killed", 15_000, async () => (await metric(server, "tvm_inflight_executions")) === 0);
  });

  test("a sandbox session: write, execute reading it, read back, list, stream, delete", async () => {
    const sb = await client.sandbox({ ttlS: 300, idleTimeoutS: 120, env: { SB_VAR: "v" } });
    assert.match(sb.id, /^sb-/);
    assert.deepEqual(sb.info.envKeys, ["SB_VAR"]);
    assert.equal(sb.info.ttlS, 300);
    try {
      assert.deepEqual(await sb.writeFile("data/in.txt", "hello sandbox\n"), { path: "data/in.txt", size: 14 });
      await sb.writeFile("raw.bin", new Uint8Array([0, 1, 2, 255]));
      const r = await sb.execute({
        language: "python",
        code: [
          "import os",
          "t = open('data/in.txt').read()",
          "b = open('raw.bin', 'rb').read()",
          "open('out.txt', 'w').write(t.upper() + str(list(b)) + os.environ['SB_VAR'])",
          "print('wrote')",
        ].join("\n"),
      });
      assert.equal(r.stdout, "wrote\n", r.stderr);
      assert.equal(dec.decode(await sb.readFile("out.txt")), "HELLO SANDBOX\n[0, 1, 2, 255]v");
      assert.deepEqual(await sb.readFile("raw.bin"), new Uint8Array([0, 1, 2, 255]));
      const missingFile = await rejects(sb.readFile("nope.txt"));
      assert.equal(missingFile.code, "file_not_found");

      const root = await sb.list();
      assert.equal(root.path, "");
      const byName = new Map(root.entries.map((e) => [e.name, e]));
      assert.equal(byName.get("data")?.type, "dir");
      assert.deepEqual(byName.get("raw.bin"), { name: "raw.bin", type: "file", size: 4 });
      assert.equal(byName.get("out.txt")?.type, "file");
      const sub = await sb.list("data");
      assert.equal(sub.path, "data");
      assert.deepEqual(sub.entries, [{ name: "in.txt", type: "file", size: 14 }]);

      const events = await collect(sb.stream({ language: "bash", code: "cat out.txt; echo; echo err >&2" }));
      assert.equal(events[events.length - 1]?.event, "exit");
      assert.equal(
        events
          .filter((e) => e.event === "stdout")
          .map((e) => e.data)
          .join(""),
        "HELLO SANDBOX\n[0, 1, 2, 255]v\n",
      );

      assert.ok((await sb.refresh()).execs >= 2);
      assert.ok((await client.sandboxes()).some((s) => s.id === sb.id));
      assert.equal((await client.getSandbox(sb.id)).id, sb.id);
    } finally {
      await sb.delete();
    }
    const gone = await rejects(sb.execute({ language: "bash", code: "true" }));
    assert.equal(gone.status, 404);
    assert.equal(gone.code, "not_found");
    assert.equal((await rejects(sb.readFile("out.txt"))).status, 404);
    assert.ok(!(await client.sandboxes()).some((s) => s.id === sb.id));
  });

  test("`await using` a sandbox deletes it at the end of the scope", async () => {
    let id: string;
    {
      await using sb = await client.sandbox({ ttlS: 60 });
      id = sb.id;
      await sb.writeFile("x.txt", "y");
    }
    assert.equal((await rejects(client.getSandbox(id))).code, "not_found");
  });

  test("async executions: submit, get (pending and wait), submitBatch, executions, cancel", async () => {
    const st = await client.submit({ language: "python", code: "print(sum(range(10)))" });
    assert.equal(st.status, "queued");
    const out = await client.get(st.id, { wait: true, timeoutMs: 60_000 });
    assert.ok(out.done, JSON.stringify(out));
    assert.equal(out.result.stdout, "45\n");
    assert.equal(out.result.id, st.id);

    const batch = await client.submitBatch([
      { language: "bash", code: "echo a" },
      { language: "bash", code: "echo b" },
    ]);
    assert.equal(batch.length, 2);
    const outs = await Promise.all(batch.map((s) => client.get(s.id, { wait: true, timeoutMs: 60_000 })));
    assert.deepEqual(
      outs.map((o) => (o.done ? o.result.stdout : `pending: ${o.state.status}`)),
      ["a\n", "b\n"],
    );
    const listed = new Set((await client.executions()).map((e) => e.id));
    for (const s of [st, ...batch]) assert.ok(listed.has(s.id), s.id);

    const slow = await client.submit({ language: "bash", code: "sleep 30", limits: { timeoutMs: 40_000 } });
    const pending = await client.get(slow.id);
    assert.ok(!pending.done);
    assert.ok(["queued", "running"].includes(pending.state.status));
    await client.cancel(slow.id);
    assert.equal((await rejects(client.get(slow.id))).code, "not_found");
    const bad = await rejects(client.submitBatch([{ language: "bash", code: "true" }, { language: "cobol", code: "x" }]));
    assert.equal(bad.code, "unknown_language");
  });

  test("429 is retried after Retry-After (max_concurrency = 1, max_queued = 0)", async () => {
    const busy = await Pyrovm.start({
      top: "max_concurrency = 1\nmax_queued = 0\npool = []\n",
      tables: "[snapshot]\nenabled = false\n",
    });
    try {
      const opts = { baseUrl: busy.url, token: busy.token };
      // Holds the one slot for a few seconds (a cold boot, then the sleep).
      const held = new Client({ ...opts, maxRetries: 0 }).execute({
        language: "bash",
        code: "sleep 2; echo held",
        limits: { timeoutMs: 30_000 },
      });
      held.catch(() => undefined); // awaited below; no unhandled rejection meanwhile
      await until("the slot is taken", 10_000, async () => (await metric(busy, "tvm_slots_in_use")) >= 1);

      const refused = await rejects(new Client({ ...opts, maxRetries: 0 }).execute({ language: "bash", code: "true" }));
      assert.equal(refused.status, 429);
      assert.equal(refused.code, "at_capacity");
      assert.ok((refused.retryAfterMs ?? 0) >= 1000, `Retry-After ${refused.retryAfterMs} ms`);

      // The same request through a client that retries; a recording wrapper around the
      // real fetch sees each answer.
      const seen: { status: number; at: number; retryAfter: string | null }[] = [];
      const recordingFetch: typeof fetch = async (input, init) => {
        const res = await fetch(input, init);
        seen.push({ status: res.status, at: Date.now(), retryAfter: res.headers.get("retry-after") });
        return res;
      };
      const retrying = new Client({ ...opts, maxRetries: 4, fetch: recordingFetch });
      const r = await retrying.execute({ language: "bash", code: "echo after" });
      assert.equal(r.stdout, "after\n");
      assert.equal(seen[0]?.status, 429, JSON.stringify(seen));
      assert.equal(seen[seen.length - 1]?.status, 200);
      for (let i = 1; i < seen.length; i++) {
        const asked = Number(seen[i - 1]!.retryAfter) * 1000;
        const waited = seen[i]!.at - seen[i - 1]!.at;
        assert.ok(waited >= asked - 50, `retry ${i} after ${waited} ms, Retry-After ${asked} ms`);
      }
      assert.equal((await held).stdout, "held\n");
      console.log(`429 then retried: ${seen.map((s) => `${s.status}${s.retryAfter ? ` (Retry-After ${s.retryAfter})` : ""}`).join(", ")}`);
    } finally {
      await busy.stop();
    }
  });
});
