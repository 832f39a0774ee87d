//! `POST /v1/execute/stream` (Server-Sent Events) with real microVMs.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use futures_util::StreamExt;
use serde_json::json;

#[derive(Debug)]
struct Ev {
    name: String,
    data: String,
    at: Instant,
}

/// Reads SSE events until `exit` (or the stream ends).
async fn events(resp: reqwest::Response) -> Vec<Ev> {
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if block.trim_start().starts_with(':') {
                continue; // keep-alive comment
            }
            let done = name == "exit";
            out.push(Ev {
                name,
                data: data.join("\n"),
                at: Instant::now(),
            });
            if done {
                return out;
            }
        }
    }
    out
}

#[tokio::test]
async fn output_streams_before_the_program_ends_then_exit() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    // Writes to two pipes in the same instant have no order; these are 0.3 s apart.
    let code = "import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('oops', file=sys.stderr, flush=True)\ntime.sleep(0.3)\nprint('second')\nsys.exit(3)";
    let resp = srv
        .client
        .post(format!("{}/v1/execute/stream", srv.base))
        .json(&json!({"language": "python", "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let evs = events(resp).await;
    let names: Vec<&str> = evs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["stdout", "stderr", "stdout", "exit"], "{evs:?}");
    assert_eq!(evs[0].data, "first\n");
    assert_eq!(evs[1].data, "oops\n");
    assert_eq!(evs[2].data, "second\n");
    // The first line arrived while the program was still sleeping.
    assert!(
        evs[3].at - evs[0].at >= Duration::from_millis(1200),
        "{:?}",
        evs[3].at - evs[0].at
    );
    let exit: serde_json::Value = serde_json::from_str(&evs[3].data).unwrap();
    common::check_schema(
        &json!({"$ref": "#/components/schemas/StreamExit"}),
        &exit,
        "exit event",
    );
    assert_eq!(exit["status"], "completed");
    assert_eq!(exit["exit_code"], 3);
    assert!(
        exit.get("stdout").is_none(),
        "exit event must not repeat the output: {exit}"
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn disconnect_mid_run_destroys_the_vm() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let resp = srv
        .client
        .post(format!("{}/v1/execute/stream", srv.base))
        .json(&json!({"language": "bash", "code": "echo started; sleep 30", "limits": {"timeout_ms": 40000}}))
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    // Wait for the first output: the VM is up and the program runs.
    let mut seen = String::new();
    while !seen.contains("started") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        !common::vmm_processes(srv.runtime_root.path()).is_empty(),
        "VM should be running"
    );
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let procs = common::vmm_processes(srv.runtime_root.path());
        let vms = std::fs::read_dir(srv.runtime_dir.join("vms"))
            .unwrap()
            .count();
        if procs.is_empty() && vms == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VM still there after disconnect: {procs:?}, {vms} dirs"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(srv.metric("tvm_inflight_executions").await, 0.0);
    srv.stop().await;
}

#[tokio::test]
async fn stream_validation_errors_are_plain_json() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let (status, v) = srv
        .post_raw(
            "/v1/execute/stream",
            json!({"language": "cobol", "code": ""})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "unknown_language");
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 0.0);
    srv.stop().await;
}

#[tokio::test]
async fn a_compiled_program_streams_its_run_and_the_exit_event_carries_compile_and_tests() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let stream = |body: serde_json::Value| {
        srv.client
            .post(format!("{}/v1/execute/stream", srv.base))
            .json(&body)
            .send()
    };
    let c = "#include <stdio.h>\nint main(void){int x=0; scanf(\"%d\",&x); printf(\"%d\\n\", 2*x); return 0;}\n";
    let limits = json!({"compile_timeout_ms": 120000});
    let evs = events(
        stream(json!({"language": "c", "code": c, "stdin": "21", "limits": limits}))
            .await
            .unwrap(),
    )
    .await;
    let names: Vec<&str> = evs.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["stdout", "exit"], "{evs:?}");
    assert_eq!(evs[0].data, "42\n");
    let exit: serde_json::Value = serde_json::from_str(&evs[1].data).unwrap();
    assert_eq!(exit["compile"]["status"], "completed", "{exit}");

    // Test cases are not streamed: their results come in the exit event.
    let evs = events(
        stream(json!({"language": "c", "code": c, "limits": limits,
            "tests": [{"stdin": "1", "expected_stdout": "2"}, {"stdin": "2", "expected_stdout": "5"}]}))
        .await
        .unwrap(),
    )
    .await;
    let exit: serde_json::Value = serde_json::from_str(&evs.last().unwrap().data).unwrap();
    common::check_schema(
        &json!({"$ref": "#/components/schemas/StreamExit"}),
        &exit,
        "exit event",
    );
    assert_eq!(exit["verdict"], "wrong_answer", "{exit}");
    assert_eq!(exit["tests"][0]["verdict"], "accepted", "{exit}");
    assert_eq!(exit["tests"][1]["stdout"], "4\n", "{exit}");
    srv.assert_no_vms().await;
    srv.stop().await;
}
