//! Forward mode against a real upstream on loopback: `pyroshell --mode embedded`
//! (pyrovm in-process, real microVMs) behind `pyroshell --mode forward`.

mod common;

use std::time::{Duration, Instant};

use common::{free_port, gateway, upstream, vmm_processes, wait_status, Shell};
use futures_util::StreamExt;
use pyrovm::grpc::pb;
use pyrovm::grpc::pb::execution_client::ExecutionClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

async fn post(base: &str, path: &str, body: Value, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request")
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("request")
        .json()
        .await
        .expect("json")
}

async fn grpc(base: &str) -> ExecutionClient<Channel> {
    let ch = Channel::from_shared(base.to_string())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC connection");
    ExecutionClient::new(ch)
}

fn grpc_req(language: &str, code: &str) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        language: language.into(),
        code: code.into(),
        limits: Some(pb::Limits {
            timeout_ms: Some(20_000),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ends a test: both processes exit 0 on SIGTERM and no VMM is left.
fn finish(root: &std::path::Path, gw: &mut Shell, up: &mut Shell) {
    assert!(
        gw.terminate(Duration::from_secs(10)).success(),
        "{}",
        gw.log()
    );
    assert!(
        up.terminate(Duration::from_secs(30)).success(),
        "{}",
        up.log()
    );
    assert_eq!(vmm_processes(root), Vec::<u32>::new(), "VMMs left behind");
    assert!(
        !root
            .join("run")
            .read_dir()
            .is_ok_and(|mut d| d.any(|e| e.is_ok_and(|e| e.path().is_dir()))),
        "runtime dirs left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_surface_passes_through_and_streams_stay_incremental() {
    let root = tempfile::tempdir().expect("tempdir");
    let Some(mut up) = upstream(root.path(), free_port(), &[]).await else {
        return;
    };
    let mut gw = gateway(root.path(), &up.url, "", &[]).await;
    let g = gw.url.clone();
    wait_status(&format!("{g}/readyz"), 200, Duration::from_secs(5)).await;

    // Documents and listings: the same through the gateway as direct.
    for path in ["/v1/languages", "/openapi.json", "/api/v2/runtimes"] {
        assert_eq!(
            get_json(&format!("{g}{path}")).await,
            get_json(&format!("{}{path}", up.url)).await,
            "{path}"
        );
    }
    let metrics = reqwest::get(format!("{g}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("tvm_executions"),
        "the upstream's /metrics: {metrics}"
    );

    // Execute, with a client request id carried through.
    let resp = reqwest::Client::new()
        .post(format!("{g}/v1/execute"))
        .header("x-request-id", "gw-test-1")
        .json(&json!({"language": "python", "code": "print(input()[::-1])", "stdin": "olleh\n"}))
        .send()
        .await
        .expect("execute");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "gw-test-1");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["stdout"], "hello\n");

    // Errors of the upstream pass through unchanged (and start no VM).
    let resp = post(
        &g,
        "/v1/execute",
        json!({"language": "cobol", "code": "x"}),
        None,
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "unknown_language", "{v}");
    let resp = reqwest::get(format!("{g}/no/such/path"))
        .await
        .expect("404");
    assert_eq!(resp.status(), 404);
    // A body over the gateway's limit is refused at the gateway.
    let big = "x".repeat(17 << 20);
    let resp = post(
        &g,
        "/v1/execute",
        json!({"language": "python", "code": big}),
        None,
    )
    .await;
    assert_eq!(resp.status(), 413);

    // Piston.
    let resp = post(
        &g,
        "/api/v2/execute",
        json!({"language": "bash", "version": "*", "files": [{"content": "echo piston; exit 3"}]}),
        None,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["run"]["stdout"], "piston\n", "{v}");
    assert_eq!(v["run"]["code"], 3);

    // SSE: the first chunk arrives while the program still runs.
    let resp = post(&g, "/v1/execute/stream",
        json!({"language": "python", "code": "import time\nprint('a', flush=True)\ntime.sleep(1.2)\nprint('b')"}), None).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let started = Instant::now();
    let (mut first, mut text) = (None, String::new());
    let mut body = resp.bytes_stream();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), body.next())
        .await
        .expect("SSE stalled")
    {
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        if text.contains("data: a") {
            first.get_or_insert(started.elapsed());
        }
    }
    let total = started.elapsed();
    assert!(text.contains("event: exit"), "{text}");
    let first = first.expect("stdout event");
    assert!(
        total - first >= Duration::from_millis(1000),
        "SSE was buffered: first {first:?}, end {total:?}"
    );

    // gRPC: unary, server streaming (incremental), health, reflection (bidirectional).
    let mut client = grpc(&g).await;
    let r = client
        .execute(grpc_req("bash", "echo grpc"))
        .await
        .expect("unary")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "grpc\n");
    let code = "import time\nprint('a', flush=True)\ntime.sleep(1.2)\nprint('b')";
    let mut stream = client
        .execute_stream(grpc_req("python", code))
        .await
        .expect("stream")
        .into_inner();
    let started = Instant::now();
    let (mut first, mut seen) = (None, Vec::new());
    while let Some(ev) = stream.message().await.expect("message") {
        match ev.event.expect("event") {
            pb::execute_event::Event::Stdout(d) => {
                first.get_or_insert(started.elapsed());
                seen.push(String::from_utf8_lossy(&d).to_string());
            }
            pb::execute_event::Event::Stderr(d) => {
                seen.push(format!("ERR:{}", String::from_utf8_lossy(&d)))
            }
            pb::execute_event::Event::Exit(_) => seen.push("EXIT".into()),
        }
    }
    assert_eq!(seen, ["a\n", "b\n", "EXIT"]);
    assert!(
        started.elapsed() - first.expect("first") >= Duration::from_millis(1000),
        "gRPC stream was buffered"
    );
    let ch = Channel::from_shared(g.clone())
        .expect("URL")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tvm.v1.Execution".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    // A request stream that stays open until the answer came: only works unbuffered.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    })
    .await
    .expect("send");
    let mut answers = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("reflection")
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("reflection answered while its request stream is still open")
        .expect("message")
        .expect("some");
    drop(tx);
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    assert!(
        list.service.iter().any(|s| s.name == "tvm.v1.Execution"),
        "{list:?}"
    );

    assert_eq!(
        gw.metric("/pyroshell/metrics", "pyroshell_retries_total")
            .await,
        0.0
    );
    assert!(
        gw.metric("/pyroshell/metrics", "pyroshell_requests_total")
            .await
            >= 10.0
    );
    finish(root.path(), &mut gw, &mut up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_at_the_gateway() {
    let root = tempfile::tempdir().expect("tempdir");
    let Some(mut up) = upstream(
        root.path(),
        free_port(),
        &[("TVM_TOKENS", "upstream-secret")],
    )
    .await
    else {
        return;
    };
    let mut gw = gateway(
        root.path(),
        &up.url,
        "",
        &[
            ("TVM_TOKENS", "gateway-secret"),
            ("TVM_UPSTREAM_TOKEN", "upstream-secret"),
        ],
    )
    .await;
    let g = gw.url.clone();
    wait_status(&format!("{g}/readyz"), 200, Duration::from_secs(5)).await;
    let client = reqwest::Client::new();
    for token in [None, Some("wrong"), Some("upstream-secret")] {
        let mut req = client.get(format!("{g}/v1/languages"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        assert_eq!(resp.status(), 401, "token {token:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }
    // Refused at the gateway: nothing was forwarded.
    assert_eq!(
        gw.metric("/pyroshell/metrics", "pyroshell_requests_total")
            .await,
        0.0
    );
    let resp = client
        .get(format!("{g}/v1/languages"))
        .bearer_auth("gateway-secret")
        .send()
        .await
        .expect("ok");
    assert_eq!(resp.status(), 200, "the gateway sends its upstream token");
    // gRPC without a token: UNAUTHENTICATED from the gateway.
    let err = grpc(&g)
        .await
        .list_languages(pb::ListLanguagesRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // Probes need no token.
    wait_status(&format!("{g}/healthz"), 200, Duration::from_secs(1)).await;
    finish(root.path(), &mut gw, &mut up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_503_fast_and_recovery_needs_no_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let Some(mut up) = upstream(root.path(), port, &[]).await else {
        return;
    };
    let mut gw = gateway(root.path(), &up.url, "", &[]).await;
    let g = gw.url.clone();
    wait_status(&format!("{g}/readyz"), 200, Duration::from_secs(5)).await;
    let body = json!({"language": "bash", "code": "echo up"});
    assert_eq!(
        post(&g, "/v1/execute", body.clone(), None).await.status(),
        200
    );

    up.kill();
    let t0 = Instant::now();
    let resp = post(&g, "/v1/execute", body.clone(), None).await;
    let took = t0.elapsed();
    assert_eq!(resp.status(), 503);
    assert!(took < Duration::from_secs(1), "503 took {took:?}");
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=5).contains(&retry_after), "Retry-After {retry_after}");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "upstream_unavailable", "{v}");
    // gRPC callers get UNAVAILABLE.
    let ch = Channel::from_shared(g.clone()).expect("URL").connect_lazy();
    let err = ExecutionClient::new(ch)
        .execute(grpc_req("bash", "true"))
        .await
        .expect_err("down");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // The gateway's readiness follows the upstream within a second or so.
    let t0 = Instant::now();
    wait_status(&format!("{g}/readyz"), 503, Duration::from_secs(2)).await;
    eprintln!("readyz 503 after {:?}", t0.elapsed());
    assert!(
        gw.metric("/pyroshell/metrics", "pyroshell_retries_total")
            .await
            >= 1.0,
        "connect failures are retried"
    );

    // The upstream comes back on the same port: served again, no gateway restart.
    up.spawn().await;
    wait_status(&format!("{g}/readyz"), 200, Duration::from_secs(3)).await;
    let resp = post(&g, "/v1/execute", body, None).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["stdout"], "up\n", "{v}");
    finish(root.path(), &mut gw, &mut up);
}

/// Test double of a failing upstream (a real one cannot be made to fail on cue):
/// reads each request's head, counts the POSTs (the gateway's probes are GETs), and
/// closes without answering.
async fn black_hole() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        if buf.starts_with(b"POST ") {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        return; // drop: connection closed, no answer
                    }
                }
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_reached_the_upstream_is_never_sent_again() {
    use std::sync::atomic::Ordering;
    let root = tempfile::tempdir().expect("tempdir");
    // 1. Test double: the upstream reads the request and hangs up.
    let (hole, seen) = black_hole().await;
    let mut gw = gateway(root.path(), &hole, "", &[]).await;
    let resp = post(
        &gw.url,
        "/v1/execute",
        json!({"language": "bash", "code": "echo once"}),
        None,
    )
    .await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "upstream_failed", "{v}");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "sent exactly once");
    assert_eq!(
        gw.metric("/pyroshell/metrics", "pyroshell_retries_total")
            .await,
        0.0
    );
    assert!(gw.terminate(Duration::from_secs(10)).success());

    // 2. A real upstream killed while it runs the request; a new one takes its port
    //    at once: the request must not reach the new one.
    let port = free_port();
    let Some(mut up) = upstream(root.path(), port, &[]).await else {
        return;
    };
    let mut gw = gateway(root.path(), &up.url, "", &[]).await;
    wait_status(&format!("{}/readyz", gw.url), 200, Duration::from_secs(5)).await;
    let g = gw.url.clone();
    let inflight = tokio::spawn(async move {
        post(
            &g,
            "/v1/execute",
            json!({"language": "bash", "code": "sleep 6; echo done"}),
            None,
        )
        .await
    });
    // Wait until the upstream is running it (a VM booted for it).
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.metric("/metrics", "tvm_vm_boots_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    up.kill();
    up.spawn().await;
    let resp = tokio::time::timeout(Duration::from_secs(10), inflight)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(resp.status(), 502, "cut mid-request: 502, not a replay");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        up.metric("/metrics", "tvm_vm_boots_total").await,
        0.0,
        "the request was replayed on the new upstream"
    );
    assert_eq!(
        gw.metric("/pyroshell/metrics", "pyroshell_retries_total")
            .await,
        0.0
    );
    finish(root.path(), &mut gw, &mut up);
}
