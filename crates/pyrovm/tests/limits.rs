//! Limits that must hold, in real microVMs: time, memory, processes, output,
//! network, and the read-only root. After each, the service is healthy and no VM is left.

mod common;

use std::time::Instant;

use common::TestServer;
use serde_json::json;

/// The agent reports a timeout within this much of the limit (kill + drain).
const TIMEOUT_SLACK_MS: u64 = 1_500;

async fn healthy(srv: &TestServer) {
    let (code, _) = srv.get("/healthz").await;
    assert_eq!(code, 200);
    let (status, v) = srv
        .execute(json!({"language": "bash", "code": "echo still ok"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "still ok\n", "{v}");
    srv.assert_no_vms().await;
}

#[tokio::test]
async fn infinite_loop_times_out_on_time() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let started = Instant::now();
    let (status, v) = srv
        .execute(json!({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 2000}}))
        .await;
    let wall = started.elapsed().as_millis() as u64;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "timeout", "{v}");
    let exec = v["timings_ms"]["exec"].as_u64().unwrap();
    assert!(
        (2000..=2000 + TIMEOUT_SLACK_MS).contains(&exec),
        "exec {exec} ms: {v}"
    );
    let vm_start = v["timings_ms"]["vm_start"].as_u64().unwrap();
    assert!(
        wall <= vm_start + 2000 + TIMEOUT_SLACK_MS + 1_000,
        "wall {wall} ms, vm_start {vm_start} ms"
    );
    srv.assert_no_vms().await;
    healthy(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn memory_hog_hits_the_memory_limit() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let code =
        "x = bytearray(1 << 30)\nfor i in range(0, len(x), 4096): x[i] = 1\nprint('survived')";
    let (status, v) = srv
        .execute(json!({"language": "python", "code": code, "limits": {"memory_mb": 128, "timeout_ms": 30000}}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "memory_limit", "{v}");
    assert_eq!(v["signal"], "SIGKILL", "{v}");
    assert!(!v["stdout"].as_str().unwrap().contains("survived"));
    healthy(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn fork_bomb_is_contained() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let (status, v) = srv
        .execute(json!({
            "language": "bash",
            "code": "bomb() { bomb | bomb & }; bomb; sleep 2; echo done",
            "limits": {"timeout_ms": 5000, "max_processes": 32}
        }))
        .await;
    assert_eq!(status, 200, "{v}");
    let st = v["status"].as_str().unwrap();
    assert!(st == "completed" || st == "timeout", "{v}");
    // The pids limit makes fork fail inside the guest; bash says so.
    assert!(
        v["stderr"].as_str().unwrap().contains("fork") || st == "timeout",
        "no sign the pids limit acted: {v}"
    );
    healthy(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn output_flood_is_cut_at_the_cap() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let cap = 65_536u64;
    let code = "import sys\nchunk = 'x' * 1048576\nfor _ in range(100): sys.stdout.write(chunk)";
    let (status, v) = srv
        .execute(json!({"language": "python", "code": code, "limits": {"max_output_bytes": cap, "timeout_ms": 30000}}))
        .await;
    assert_eq!(status, 200, "{v:.200}");
    assert_eq!(v["status"], "output_limit");
    assert_eq!(v["stdout_truncated"], true);
    assert_eq!(v["stdout"].as_str().unwrap().len() as u64, cap);
    assert_eq!(v["stderr_truncated"], false);
    healthy(&srv).await;
    srv.stop().await;
}

#[tokio::test]
async fn no_network_and_read_only_root() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let code = r#"
import errno, socket
for addr in [("1.1.1.1", 80), ("10.0.2.2", 22), ("192.168.0.1", 443)]:
    try:
        socket.create_connection(addr, timeout=3)
        print("CONNECTED", addr)
    except OSError as e:
        print("refused", addr[0], errno.errorcode.get(e.errno, e.errno))
for path in ["/x", "/usr/bin/x", "/etc/passwd"]:
    try:
        open(path, "a").write("x")
        print("WROTE", path)
    except OSError as e:
        print("denied", path, errno.errorcode.get(e.errno))
open("/work/ok", "w").write("fine"); open("/tmp/ok", "w").write("fine")
print("work and tmp are writable")
"#;
    let (status, v) = srv
        .execute(json!({"language": "python", "code": code}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    let out = v["stdout"].as_str().unwrap();
    assert!(!out.contains("CONNECTED"), "{out}");
    assert_eq!(out.matches("refused").count(), 3, "{out}");
    assert!(out.contains("refused 1.1.1.1 ENETUNREACH"), "{out}");
    assert!(!out.contains("WROTE"), "{out}");
    assert!(out.contains("denied /x EROFS"), "{out}");
    assert!(out.contains("work and tmp are writable"), "{out}");
    srv.assert_no_vms().await;
    srv.stop().await;
}
