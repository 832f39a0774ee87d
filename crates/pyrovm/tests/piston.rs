//! Piston v2 compatibility, with real microVMs: the shapes Piston clients rely on,
//! checked against Piston's own source (engineer-man/piston `api/src/job.js`,
//! `api/src/api/v2.js`) and against a real Piston client (`piston-client` on npm).

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

#[tokio::test]
async fn runtimes_and_success() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let (code, body) = srv.get("/api/v2/runtimes").await;
    assert_eq!(code, 200);
    let rts: serde_json::Value = serde_json::from_str(&body).unwrap();
    let py = rts
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["language"] == "python")
        .unwrap();
    // Semver, as Piston's `version.raw`: the installed version (or the table's padded).
    let py_version = py["version"].as_str().unwrap().to_string();
    assert!(py_version.starts_with("3.11."), "{py}");
    assert!(py["aliases"].as_array().unwrap().contains(&json!("py")));
    assert!(py.get("runtime").is_none(), "{py}");
    let table = tvm_api::LanguageTable::builtin();
    assert_eq!(rts.as_array().unwrap().len(), table.iter().count(), "{rts}");
    for rt in rts.as_array().unwrap() {
        let v = rt["version"].as_str().unwrap();
        assert_eq!(v.split('.').count(), 3, "{rt}");
        assert!(v.split('.').all(|p| p.parse::<u64>().is_ok()), "{rt}");
    }
    let cpp = rts
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["language"] == "c++");
    let cpp = cpp.expect("C++ is listed as Piston names it");
    assert_eq!(cpp["runtime"], "gcc");
    assert!(cpp["aliases"].as_array().unwrap().contains(&json!("cpp")));

    // A Piston client's request, verbatim in shape (compile_* are checked but do
    // not apply to Python).
    let (status, v) = srv
        .post_raw(
            "/api/v2/execute",
            json!({
                "language": "py", "version": "3.11",
                "files": [{"name": "main.py", "content": "import sys\nprint(open('data.txt').read(), sys.argv[1:], input(), flush=True)\nprint('e', file=sys.stderr)"},
                          {"name": "data.txt", "content": "aGk=", "encoding": "base64"}],
                "stdin": "typed", "args": ["1", "2"],
                "compile_timeout": 10000, "run_timeout": 20000,
                "compile_memory_limit": -1, "run_memory_limit": -1
            })
            .to_string()
            .into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["language"], "python");
    assert_eq!(v["version"], py_version.as_str());
    let run = &v["run"];
    assert_eq!(run["stdout"], "hi ['1', '2'] typed\n");
    assert_eq!(run["stderr"], "e\n");
    assert_eq!(run["output"], "hi ['1', '2'] typed\ne\n");
    assert_eq!(run["code"], 0);
    assert!(
        run["signal"].is_null() && run["status"].is_null() && run["message"].is_null(),
        "{run}"
    );
    assert!(run["wall_time"].as_u64().is_some());
    assert!(
        v.get("compile").is_none(),
        "no compile stage for interpreted languages"
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn runtime_error_timeout_and_output_limit() {
    let Some(srv) = TestServer::start(|c| c.limits.max_output_bytes.default = 4096).await else {
        return;
    };
    let (_, v) = srv
        .post_raw(
            "/api/v2/execute",
            json!({"language": "bash", "version": "*", "files": [{"content": "echo out; exit 4"}]})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(v["run"]["status"], "RE", "{v}");
    assert_eq!(v["run"]["code"], 4);

    let (_, v) = srv
        .post_raw(
            "/api/v2/execute",
            json!({"language": "python", "version": "3", "files": [{"content": "while True: pass"}], "run_timeout": 1000})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(v["run"]["status"], "TO", "{v}");
    assert_eq!(v["run"]["signal"], "SIGKILL");

    let (_, v) = srv
        .post_raw(
            "/api/v2/execute",
            json!({"language": "python", "version": "*", "files": [{"content": "print('x' * 100000)"}]}).to_string().into_bytes(),
        )
        .await;
    assert_eq!(v["run"]["status"], "OL", "{v}");
    assert_eq!(v["run"]["stdout"].as_str().unwrap().len(), 4096);
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn piston_errors_are_400_with_message_and_start_no_vm() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    for (body, want) in [
        (
            json!({"language": "cobol", "version": "1.0", "files": [{"content": "x"}]}),
            "cobol-1.0 runtime is unknown",
        ),
        (
            json!({"language": "python", "version": "2.7", "files": [{"content": "x"}]}),
            "python-2.7 runtime is unknown",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "x", "encoding": "rot13"}]}),
            "encoding",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "@@", "encoding": "base64"}]}),
            "base64",
        ),
        (
            json!({"language": "python", "version": "*", "files": []}),
            "at least one file",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "x"}], "run_timeout": 99_999_999}),
            "run_timeout cannot exceed the configured limit of",
        ),
        (
            json!({"language": "c", "version": "*", "files": [{"content": "x"}], "compile_timeout": 99_999_999}),
            "compile_timeout cannot exceed the configured limit of",
        ),
        (
            json!({"language": "c++", "version": "*", "files": [{"content": "x"}], "compile_timeout": -5}),
            "compile_timeout must be non-negative",
        ),
        (
            json!({"language": "c", "version": "*", "files": [{"content": "x"}], "compile_memory_limit": 1e13}),
            "compile_memory_limit cannot exceed the configured limit of",
        ),
        (json!({"version": "*", "files": []}), "invalid request body"),
    ] {
        let (status, v) = srv
            .post_raw("/api/v2/execute", body.to_string().into_bytes())
            .await;
        assert_eq!(status, 400, "{body}: {v}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{body}: {msg}");
        assert!(
            v.get("error").is_none(),
            "Piston's error shape is {{message}}"
        );
    }
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 0.0);
    srv.stop().await;
}

/// The C program the compiled-language tests run: stdin, args, both streams.
const C_PROGRAM: &str = r#"#include <stdio.h>
int main(int argc, char **argv) {
    int n = 0;
    if (scanf("%d", &n) != 1) return 2;
    printf("%d %s\n", n * 6, argc > 1 ? argv[1] : "-");
    fflush(stdout);
    fprintf(stderr, "err\n");
    return 0;
}
"#;

/// Piston's stage object: every key `safe_call` returns (job.js).
fn assert_stage_shape(stage: &Value) {
    for key in [
        "stdout",
        "stderr",
        "output",
        "code",
        "signal",
        "message",
        "status",
        "cpu_time",
        "wall_time",
        "memory",
    ] {
        assert!(stage.get(key).is_some(), "stage has no {key}: {stage}");
    }
}

#[tokio::test]
async fn compiled_c_compile_error_and_compile_timeout() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let (_, rts) = srv.get("/api/v2/runtimes").await;
    let rts: Value = serde_json::from_str(&rts).unwrap();
    let c = rts
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["language"] == "c");
    let c_version = c.expect("C is listed")["version"].clone();

    // A C program compiled then run; the version is the one the runtimes list gave.
    let (status, v) = srv
        .post_raw(
            "/api/v2/execute",
            json!({
                "language": "c", "version": c_version,
                "files": [{"name": "main.c", "content": C_PROGRAM}],
                "stdin": "7", "args": ["x"],
                "compile_timeout": 120_000, "run_timeout": 20_000,
                "compile_memory_limit": -1, "run_memory_limit": -1
            })
            .to_string()
            .into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!((&v["language"], &v["version"]), (&json!("c"), &c_version));
    let compile = &v["compile"];
    assert_stage_shape(compile);
    assert_eq!(compile["code"], 0, "{v}");
    assert!(
        compile["status"].is_null() && compile["signal"].is_null(),
        "{v}"
    );
    let run = &v["run"];
    assert_stage_shape(run);
    assert_eq!(run["stdout"], "42 x\n", "{v}");
    assert_eq!(run["stderr"], "err\n");
    assert_eq!(run["output"], "42 x\nerr\n");
    assert_eq!(run["code"], 0);
    assert!(run["status"].is_null() && run["message"].is_null(), "{v}");

    // A compile error: the compiler's message in `compile`, nothing run, and `run`
    // a copy of `compile` (v2.js: "Backward compatibility when the run stage is not
    // started").
    let (status, v) = srv
        .post_raw(
            "/api/v2/execute",
            json!({
                "language": "gcc", "version": "*",
                "files": [{"content": "int main(void) { return undefined_name; }\n"}],
                "compile_timeout": 120_000
            })
            .to_string()
            .into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let compile = &v["compile"];
    assert_stage_shape(compile);
    assert_eq!(compile["code"], 1, "{v}");
    assert_eq!(compile["status"], "RE");
    assert_eq!(compile["message"], "Exited with error status 1");
    assert!(compile["signal"].is_null());
    let err = compile["stderr"].as_str().unwrap();
    assert!(
        err.contains("undefined_name") && err.contains("error"),
        "{err}"
    );
    assert_eq!(compile["output"], compile["stderr"]);
    assert_eq!(v["run"], v["compile"], "run is the compile stage");

    // compile_timeout is honoured: a template-heavy C++ program cannot compile in
    // 200 ms, so the compiler is killed and reported as Piston reports a timeout.
    let heavy = r#"#include <iostream>
#include <map>
#include <regex>
constexpr long spin(long n) { long s = 0; for (long i = 0; i < n; ++i) for (long j = 0; j < n; ++j) s += i ^ j; return s; }
static_assert(spin(20000) != 1, "spin");
int main() { std::map<int, std::regex> m; std::cout << m.size() << std::endl; }
"#;
    let started = std::time::Instant::now();
    let (status, v) = srv
        .post_raw(
            "/api/v2/execute",
            json!({
                "language": "c++", "version": "*",
                "files": [{"name": "main.cpp", "content": heavy}],
                "compile_timeout": 200, "run_timeout": 3000
            })
            .to_string()
            .into_bytes(),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["language"], "c++");
    let compile = &v["compile"];
    assert_stage_shape(compile);
    assert_eq!(compile["status"], "TO", "{v}");
    assert_eq!(compile["message"], "Time limit exceeded (wall clock)");
    assert_eq!(compile["signal"], "SIGKILL");
    assert!(compile["code"].is_null(), "{v}");
    let wall = compile["wall_time"].as_u64().unwrap();
    assert!(
        wall < 10_000,
        "the 200 ms compile deadline was not kept: {v}"
    );
    assert_eq!(v["run"], v["compile"], "nothing ran after the timeout");
    eprintln!(
        "compile timeout answered in {:?} (compile wall_time {wall} ms)",
        started.elapsed()
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

/// The real Node client of Piston (`piston-client`, listed in Piston's README)
/// lists the runtimes, picks C's latest version itself and runs a C program. The
/// package is installed into a temporary dir; without node/npm or the registry the
/// test is skipped with the reason printed.
#[tokio::test]
async fn real_piston_client_runs_c() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let install = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "piston-client@1.0.2",
            ])
            .current_dir(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await;
    match install {
        Ok(Ok(out)) if out.status.success() => {}
        Ok(Ok(out)) => {
            eprintln!(
                "SKIPPED: npm install piston-client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return srv.stop().await;
        }
        Ok(Err(e)) => {
            eprintln!("SKIPPED: npm cannot be run: {e}");
            return srv.stop().await;
        }
        Err(_) => {
            eprintln!("SKIPPED: npm install piston-client took over 300 s");
            return srv.stop().await;
        }
    }
    let script = dir.path().join("run.mjs");
    std::fs::write(
        &script,
        r#"import piston from "piston-client";
const client = piston({ server: process.argv[2] });
const runtimes = await client.runtimes();
const result = await client.execute("c", process.env.PISTON_CODE, {
    stdin: "7", args: ["x"], compileTimeout: 120000, runTimeout: 20000,
});
console.log(JSON.stringify({ runtimes, result }));
"#,
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new("node")
            .arg(&script)
            .arg(&srv.base)
            .env("PISTON_CODE", C_PROGRAM)
            .current_dir(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client finished")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(stdout.trim()).expect("the client printed JSON");
    let c = v["runtimes"]
        .as_array()
        .expect("runtimes is the list")
        .iter()
        .find(|r| r["language"] == "c")
        .expect("C is listed")
        .clone();
    let result = &v["result"];
    assert_eq!(result["language"], "c", "{result}");
    assert_eq!(
        result["version"], c["version"],
        "the client's chosen version"
    );
    assert_eq!(result["compile"]["code"], 0, "{result}");
    assert_eq!(result["run"]["stdout"], "42 x\n", "{result}");
    assert_eq!(result["run"]["stderr"], "err\n");
    assert_eq!(result["run"]["code"], 0);
    assert!(result["run"]["signal"].is_null());
    srv.assert_no_vms().await;
    srv.stop().await;
}
