//! Piston v2 compatibility, with real microVMs: the shapes Piston clients rely on.

mod common;

use common::TestServer;
use serde_json::json;

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
    assert_eq!(py["version"], "3.11");
    assert!(py["aliases"].as_array().unwrap().contains(&json!("py")));

    // A Piston client's request, verbatim in shape (compile_* accepted and ignored).
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
    assert_eq!(v["version"], "3.11");
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
    srv.assert_no_vms();
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
    srv.assert_no_vms();
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
            "timeout_ms",
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
