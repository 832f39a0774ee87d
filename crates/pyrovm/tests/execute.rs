//! Real microVMs, real agent, real HTTP on loopback: what a program sees and returns.

mod common;

use common::TestServer;
use serde_json::json;

async fn run_ok(srv: &TestServer, body: serde_json::Value) -> serde_json::Value {
    let (status, v) = srv.execute(body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    srv.assert_no_vms().await;
    v
}

#[tokio::test]
async fn hello_world_in_each_language() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    for (lang, code) in [
        ("python", "print('hello from python')"),
        ("javascript", "console.log('hello from javascript')"),
        ("bash", "echo hello from bash"),
    ] {
        // Debian's Node.js 18 has no startup snapshot: ~4 s to start under TCG.
        let v = run_ok(
            &srv,
            json!({"language": lang, "code": code, "limits": {"timeout_ms": 30000}}),
        )
        .await;
        assert_eq!(v["stdout"], format!("hello from {lang}\n"), "{v}");
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["stderr"], "");
        assert!(v["backend"].as_str().unwrap().starts_with("qemu-"), "{v}");
        assert!(v["timings_ms"]["vm_start"].as_u64().unwrap() > 0);
    }
    srv.stop().await;
}

#[tokio::test]
async fn the_issue_example_prints_42() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let v = run_ok(&srv, json!({"language": "python", "code": "print(6*7)"})).await;
    assert_eq!(v["stdout"], "42\n");
    assert_eq!(v["exit_code"], 0);
    assert!(v["signal"].is_null());
    assert_eq!(v["stdout_truncated"], false);
    srv.stop().await;
}

#[tokio::test]
async fn stdin_args_env_and_files_reach_the_program() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let code = r#"
import os, sys
print(input())
print(sys.argv[1:])
print(os.environ["GREETING"], os.getuid(), os.getcwd())
print(open("data/in.txt").read())
print(open("notes.txt").read())
"#;
    let v = run_ok(
        &srv,
        json!({
            "language": "python",
            "code": code,
            "stdin": "hi from stdin\n",
            "args": ["--flag", "two words"],
            "env": {"GREETING": "hello"},
            "files": [
                {"path": "data/in.txt", "content": "aGk=", "encoding": "base64"},
                {"path": "notes.txt", "content": "plain text"}
            ]
        }),
    )
    .await;
    assert_eq!(
        v["stdout"], "hi from stdin\n['--flag', 'two words']\nhello 1000 /work\nhi\nplain text\n",
        "{v}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn nonzero_exit_stderr_and_signals_are_reported() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let v = run_ok(
        &srv,
        json!({"language": "bash", "code": "echo out; echo err >&2; exit 3"}),
    )
    .await;
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["stdout"], "out\n");
    assert_eq!(v["stderr"], "err\n");

    let v = run_ok(
        &srv,
        json!({"language": "javascript", "code": "console.error('boom'); process.exit(7)", "limits": {"timeout_ms": 30000}}),
    )
    .await;
    assert_eq!(v["exit_code"], 7);
    assert_eq!(v["stderr"], "boom\n");

    let v = run_ok(&srv, json!({"language": "bash", "code": "kill -9 $$"})).await;
    assert!(v["exit_code"].is_null(), "{v}");
    assert_eq!(v["signal"], "SIGKILL");

    let v = run_ok(
        &srv,
        json!({"language": "python", "code": "raise SystemExit('bad')"}),
    )
    .await;
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["stderr"], "bad\n");
    srv.stop().await;
}

#[tokio::test]
async fn each_request_gets_a_fresh_vm() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    // A file written by one request must not exist for the next; the clock is the host's.
    let code = r#"
import os, time
print(os.path.exists("/work/marker"), os.path.exists("/tmp/marker"))
open("/work/marker", "w").write("x"); open("/tmp/marker", "w").write("x")
print(int(time.time()))
"#;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let v = run_ok(&srv, json!({"language": "python", "code": code})).await;
        let out = v["stdout"].as_str().unwrap().to_string();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("False False"), "{v}");
        let guest_now: u64 = lines.next().unwrap().parse().unwrap();
        assert!(
            guest_now >= before && guest_now <= before + 60,
            "guest clock {guest_now} vs host {before}"
        );
        seen.push(v["id"].as_str().unwrap().to_string());
    }
    assert_ne!(seen[0], seen[1]);
    srv.stop().await;
}
