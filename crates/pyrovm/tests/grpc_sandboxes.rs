//! gRPC `tvm.v1.Sandboxes` with a real tonic client, booting real microVMs: a
//! session's files and execs, streaming, isolation between tokens, refusals as
//! statuses, and nothing left behind.

mod common;

use std::time::Duration;

use common::TestServer;
use pyrovm::grpc::pb;
use pyrovm::grpc::pb::sandboxes_client::SandboxesClient;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

async fn channel(srv: &TestServer) -> Channel {
    Channel::from_shared(srv.base.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC connection")
}

async fn client(srv: &TestServer) -> SandboxesClient<Channel> {
    SandboxesClient::new(channel(srv).await)
}

/// `msg` with `authorization: Bearer <token>`.
fn as_token<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    r
}

fn exec(id: &str, language: &str, code: &str) -> pb::SandboxExecuteRequest {
    pb::SandboxExecuteRequest {
        sandbox_id: id.into(),
        request: Some(pb::ExecuteRequest {
            language: language.into(),
            code: code.into(),
            limits: Some(pb::Limits {
                timeout_ms: Some(20_000),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn sandbox_ref(id: &str) -> pb::SandboxRef {
    pb::SandboxRef { id: id.into() }
}

fn file_ref(id: &str, path: &str) -> pb::FileRef {
    pb::FileRef {
        sandbox_id: id.into(),
        path: path.into(),
    }
}

fn reason(s: &tonic::Status) -> String {
    s.get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Stdout, stderr and the exit event of a streamed exec; events other than output
/// after `exit` fail the test.
async fn collect(
    mut stream: tonic::Streaming<pb::ExecuteEvent>,
) -> (usize, String, String, pb::ExecuteResponse) {
    use pb::execute_event::Event;
    let (mut chunks, mut out, mut err, mut exit) = (0, String::new(), String::new(), None);
    while let Some(ev) = stream.message().await.expect("stream") {
        assert!(exit.is_none(), "an event after exit: {ev:?}");
        match ev.event.expect("event") {
            Event::Stdout(d) => {
                chunks += 1;
                out.push_str(&String::from_utf8_lossy(&d));
            }
            Event::Stderr(d) => err.push_str(&String::from_utf8_lossy(&d)),
            Event::Exit(e) => exit = Some(e),
        }
    }
    (chunks, out, err, exit.expect("an exit event"))
}

#[tokio::test]
async fn a_session_over_grpc_with_files_streaming_and_token_isolation() {
    let Some(srv) = TestServer::start(|c| c.tokens = vec!["a".into(), "b".into()]).await else {
        return;
    };
    let mut c = client(&srv).await;

    // No token: UNAUTHENTICATED, as for every gRPC service but health.
    let e = c
        .list(pb::ListSandboxesRequest {})
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);

    // Validation happens before any VM: INVALID_ARGUMENT with BadRequest details.
    let e = c
        .create(as_token(
            "a",
            pb::CreateSandboxRequest {
                ttl_s: Some(0),
                ..Default::default()
            },
        ))
        .await
        .expect_err("ttl 0");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let bad = e.get_details_bad_request().expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "limit_out_of_range");
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 0.0);

    let mut create = pb::CreateSandboxRequest {
        limits: Some(pb::SandboxLimits {
            disk_mb: Some(32),
            ..Default::default()
        }),
        ttl_s: Some(300),
        ..Default::default()
    };
    create.env.insert("GREETING".into(), "hello".into());
    let sb = c
        .create(as_token("a", create))
        .await
        .expect("create")
        .into_inner();
    let id = sb.id.clone();
    assert!(id.starts_with("sb-"), "{sb:?}");
    assert_eq!(sb.ttl_s, 300);
    assert_eq!(sb.env_keys, ["GREETING"]);
    assert!(!sb.backend.is_empty());
    let l = sb.limits.expect("limits");
    assert!(
        l.memory_mb.is_some() && l.vcpus.is_some() && l.max_processes.is_some(),
        "{l:?}"
    );
    assert_eq!(l.disk_mb, Some(32));

    // Write a file, run python that reads it and writes another, read that back.
    let w = c
        .write_file(as_token(
            "a",
            pb::WriteFileRequest {
                sandbox_id: id.clone(),
                path: "in/n.txt".into(),
                content: b"21\n".to_vec(),
            },
        ))
        .await
        .expect("write")
        .into_inner();
    assert_eq!((w.path.as_str(), w.size), ("in/n.txt", 3));
    let code = "import os\nn = int(open('in/n.txt').read())\nos.makedirs('out', exist_ok=True)\nopen('out/result.bin', 'wb').write(bytes([n * 2, 0, 255]))\nprint(os.environ['GREETING'], n * 2)";
    let r = c
        .execute(as_token("a", exec(&id, "python", code)))
        .await
        .expect("execute")
        .into_inner();
    assert_eq!(r.status, pb::Status::Completed as i32, "{r:?}");
    assert_eq!(String::from_utf8_lossy(&r.stdout), "hello 42\n");
    assert_eq!(r.exit_code, Some(0));
    let got = c
        .read_file(as_token("a", file_ref(&id, "out/result.bin")))
        .await
        .expect("read")
        .into_inner();
    assert_eq!(got.content, [42, 0, 255]);

    let root = c
        .list_files(as_token("a", file_ref(&id, "")))
        .await
        .expect("list root")
        .into_inner();
    let names: Vec<_> = root
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.r#type.as_str()))
        .collect();
    assert_eq!(root.path, "");
    assert!(
        names.contains(&("in", "dir")) && names.contains(&("out", "dir")),
        "{root:?}"
    );
    let out = c
        .list_files(as_token("a", file_ref(&id, "out/")))
        .await
        .expect("list out")
        .into_inner();
    assert_eq!(out.path, "out");
    assert_eq!(out.entries.len(), 1, "{out:?}");
    assert_eq!(
        (
            out.entries[0].name.as_str(),
            out.entries[0].r#type.as_str(),
            out.entries[0].size
        ),
        ("result.bin", "file", 3)
    );

    // Refusals inside the sandbox are statuses with HTTP's codes as ErrorInfo reasons.
    let e = c
        .read_file(as_token("a", file_ref(&id, "missing.txt")))
        .await
        .expect_err("missing");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "file_not_found")
    );
    let e = c
        .read_file(as_token("a", file_ref(&id, "../etc/passwd")))
        .await
        .expect_err("escape");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::InvalidArgument, "invalid_path")
    );
    let e = c
        .read_file(as_token("a", file_ref(&id, "out")))
        .await
        .expect_err("a directory");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut own_limits = exec(&id, "python", "pass");
    if let Some(r) = own_limits.request.as_mut() {
        r.limits = Some(pb::Limits {
            memory_mb: Some(128),
            ..Default::default()
        });
    }
    let e = c
        .execute(as_token("a", own_limits))
        .await
        .expect_err("a sandbox's limits are its own");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.get_details_bad_request().is_some(), "{e:?}");

    // Streaming: output chunks as they happen, then one exit without the output.
    let stream = c
        .execute_stream(as_token(
            "a",
            exec(
                &id,
                "python",
                "import sys, time\nprint('one', flush=True)\ntime.sleep(0.5)\nprint('err', file=sys.stderr, flush=True)\nprint(open('out/result.bin','rb').read()[0])",
            ),
        ))
        .await
        .expect("stream")
        .into_inner();
    let (chunks, out, err, exit) = collect(stream).await;
    assert!(chunks >= 1);
    assert_eq!(out, "one\n42\n");
    assert_eq!(err, "err\n");
    assert_eq!(exit.status, pb::Status::Completed as i32, "{exit:?}");
    assert_eq!(exit.exit_code, Some(0));
    assert!(exit.stdout.is_empty() && exit.stderr.is_empty(), "{exit:?}");

    let info = c
        .get(as_token("a", sandbox_ref(&id)))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(info.execs, 2, "{info:?}");
    let mine = c
        .list(as_token("a", pb::ListSandboxesRequest {}))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        mine.sandboxes.iter().map(|s| &s.id).collect::<Vec<_>>(),
        [&id]
    );

    // Another token sees nothing and can touch nothing: NOT_FOUND, as if it never existed.
    let theirs = c
        .list(as_token("b", pb::ListSandboxesRequest {}))
        .await
        .expect("list as b")
        .into_inner();
    assert!(theirs.sandboxes.is_empty(), "{theirs:?}");
    let e = c
        .get(as_token("b", sandbox_ref(&id)))
        .await
        .expect_err("b's get");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "not_found")
    );
    assert_eq!(
        c.read_file(as_token("b", file_ref(&id, "in/n.txt")))
            .await
            .expect_err("b's read")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.execute(as_token("b", exec(&id, "python", "print(1)")))
            .await
            .expect_err("b's exec")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.execute_stream(as_token("b", exec(&id, "python", "print(1)")))
            .await
            .expect_err("b's stream is a status, not a stream")
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.delete(as_token("b", sandbox_ref(&id)))
            .await
            .expect_err("b's delete")
            .code(),
        Code::NotFound
    );

    // Delete: the VM is gone when it answers; the id is then unknown.
    c.delete(as_token("a", sandbox_ref(&id)))
        .await
        .expect("delete");
    srv.assert_no_vms().await;
    let e = c
        .get(as_token("a", sandbox_ref(&id)))
        .await
        .expect_err("deleted");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    srv.stop().await;
}

#[tokio::test]
async fn caps_and_a_busy_sandbox_are_retryable_statuses() {
    let Some(srv) = TestServer::start(|c| {
        c.sandbox.max_per_token = 1;
        c.sandbox.busy_timeout_ms = 1500;
    })
    .await
    else {
        return;
    };
    let ch = channel(&srv).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "tvm.v1.Sandboxes".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut c = SandboxesClient::new(ch);
    // Auth is off: every call is the anonymous caller.
    let id = c
        .create(pb::CreateSandboxRequest::default())
        .await
        .expect("create")
        .into_inner()
        .id;

    let e = c
        .create(pb::CreateSandboxRequest::default())
        .await
        .expect_err("over the per-token cap");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::ResourceExhausted, "sandbox_limit")
    );
    assert_eq!(
        e.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(5))
    );

    // Hold the sandbox with a streamed exec; a request that cannot start within
    // busy_timeout_ms is ABORTED (retry in 1 s) and changes nothing.
    let mut holder = c
        .execute_stream(exec(&id, "bash", "echo go; sleep 4; echo done"))
        .await
        .expect("stream")
        .into_inner();
    let first = holder.message().await.expect("event").expect("first");
    assert!(
        matches!(first.event, Some(pb::execute_event::Event::Stdout(_))),
        "{first:?}"
    );
    let e = c
        .write_file(pb::WriteFileRequest {
            sandbox_id: id.clone(),
            path: "late.txt".into(),
            content: b"x".to_vec(),
        })
        .await
        .expect_err("busy");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::Aborted, "sandbox_busy")
    );
    assert_eq!(
        e.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(Duration::from_secs(1))
    );
    let (_, out, _, exit) = collect(holder).await;
    assert_eq!(out, "done\n");
    assert_eq!(exit.status, pb::Status::Completed as i32, "{exit:?}");
    let e = c
        .read_file(file_ref(&id, "late.txt"))
        .await
        .expect_err("not written");
    assert_eq!(e.code(), Code::NotFound);

    // A stream on no sandbox is refused before it starts.
    let e = c
        .execute_stream(exec("sb-nope", "bash", "true"))
        .await
        .expect_err("no such sandbox");
    assert_eq!(
        (e.code(), reason(&e).as_str()),
        (Code::NotFound, "not_found")
    );

    c.delete(sandbox_ref(&id)).await.expect("delete");
    srv.assert_no_vms().await;
    srv.stop().await;
}
