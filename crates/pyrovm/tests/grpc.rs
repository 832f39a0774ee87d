//! gRPC `tvm.v1.Execution` with a real tonic client, on the same port as HTTP.

mod common;

use std::time::Duration;

use common::TestServer;
use pyrovm::grpc::pb;
use pyrovm::grpc::pb::execution_client::ExecutionClient;
use tonic::transport::Channel;
use tonic_types::StatusExt;

async fn channel(srv: &TestServer) -> Channel {
    Channel::from_shared(srv.base.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC connection")
}

fn req(language: &str, code: &str) -> pb::ExecuteRequest {
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

#[tokio::test]
async fn unary_streaming_languages_health_and_reflection() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let ch = channel(&srv).await;
    let mut client = ExecutionClient::new(ch.clone());

    // Unary, with stdin, args, env and a binary file.
    let mut r = req("python", "import os,sys\nprint(6*7, input(), sys.argv[1], os.environ['K'], open('b.bin','rb').read())");
    r.stdin = Some("in\n".into());
    r.args = vec!["arg".into()];
    r.env.insert("K".into(), "v".into());
    r.files.push(pb::File {
        path: "b.bin".into(),
        content: vec![0, 255],
    });
    let resp = client.execute(r).await.unwrap().into_inner();
    assert_eq!(resp.status, pb::Status::Completed as i32, "{resp:?}");
    assert_eq!(
        String::from_utf8_lossy(&resp.stdout),
        "42 in arg v b'\\x00\\xff'\n"
    );
    assert_eq!(resp.exit_code, Some(0));
    assert!(resp.backend.starts_with("qemu-"));

    // Server streaming: chunks in order, the first before the program ends, then exit.
    let code = "import time\nprint('a', flush=True)\ntime.sleep(1.2)\nprint('b')";
    let mut stream = client
        .execute_stream(req("python", code))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let started = std::time::Instant::now();
    let mut first_at = None;
    while let Some(ev) = stream.message().await.unwrap() {
        match ev.event.unwrap() {
            pb::execute_event::Event::Stdout(d) => {
                first_at.get_or_insert(started.elapsed());
                seen.push(String::from_utf8(d).unwrap());
            }
            pb::execute_event::Event::Stderr(d) => {
                seen.push(format!("ERR:{}", String::from_utf8(d).unwrap()))
            }
            pb::execute_event::Event::Exit(e) => {
                assert_eq!(e.status, pb::Status::Completed as i32);
                assert!(e.stdout.is_empty(), "exit repeats no output");
                seen.push("EXIT".into());
            }
        }
    }
    assert_eq!(seen, ["a\n", "b\n", "EXIT"]);
    assert!(started.elapsed() - first_at.unwrap() >= Duration::from_millis(1000));

    let langs = client
        .list_languages(pb::ListLanguagesRequest {})
        .await
        .unwrap()
        .into_inner();
    let table = tvm_api::LanguageTable::builtin();
    let names: Vec<_> = langs.languages.iter().map(|l| l.name.as_str()).collect();
    let want: Vec<_> = table.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, want);
    for l in &langs.languages {
        let t = table.get(&l.name).unwrap();
        assert_eq!(l.compiled, t.compiles(), "{}", l.name);
        assert_eq!(l.extensions, t.extensions, "{}", l.name);
    }
    let c = langs.languages.iter().find(|l| l.name == "c").unwrap();
    assert!(c.compiled && c.extensions == ["c"], "{c:?}");
    let py = langs.languages.iter().find(|l| l.name == "python").unwrap();
    assert!(!py.compiled, "{py:?}");

    // gRPC health checking.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in ["", "tvm.v1.Execution"] {
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            h.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }

    // Server reflection lists the service.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut refl = ServerReflectionClient::new(ch);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = refl
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let services: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(services.contains(&"tvm.v1.Execution"), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");

    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn errors_map_to_grpc_codes() {
    // No queue: a second request is refused at once (the queue: tests/queue.rs).
    let Some(srv) = TestServer::start(|c| {
        c.max_concurrency = 1;
        c.max_queued = Some(0);
    })
    .await
    else {
        return;
    };
    let mut client = ExecutionClient::new(channel(&srv).await);

    let e = client.execute(req("cobol", "x")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("unknown language"), "{e:?}");
    let bad = e.get_details_bad_request().expect("BadRequest details");
    assert_eq!(bad.field_violations[0].field, "unknown_language");

    let mut bad_limit = req("python", "1");
    bad_limit.limits = Some(pb::Limits {
        timeout_ms: Some(999_999_999),
        ..Default::default()
    });
    assert_eq!(
        client.execute(bad_limit).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        srv.metric("tvm_vm_boots_total").await,
        0.0,
        "bad requests start no VM"
    );

    // Hold the only slot with a stream, then ask again: RESOURCE_EXHAUSTED with retry info.
    let mut holder = client
        .execute_stream(req("bash", "echo go; sleep 3"))
        .await
        .unwrap()
        .into_inner();
    let first = holder.message().await.unwrap().unwrap();
    assert!(matches!(
        first.event,
        Some(pb::execute_event::Event::Stdout(_))
    ));
    let e = client.execute(req("bash", "echo hi")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    let retry = e.get_details_retry_info().expect("RetryInfo");
    // No slot was released yet, so no drain rate to measure: the 5 s fallback.
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(5)));
    while holder.message().await.unwrap().is_some() {}
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn tokens_apply_to_grpc_but_not_to_health() {
    let Some(srv) = TestServer::start(|c| c.tokens = vec!["grpc-token".into()]).await else {
        return;
    };
    let ch = channel(&srv).await;
    let mut client = ExecutionClient::new(ch.clone());
    let e = client
        .list_languages(pb::ListLanguagesRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(pb::ListLanguagesRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        client.list_languages(wrong).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut right = tonic::Request::new(pb::ListLanguagesRequest {});
    right
        .metadata_mut()
        .insert("authorization", "Bearer grpc-token".parse().unwrap());
    assert_eq!(
        client
            .list_languages(right)
            .await
            .unwrap()
            .into_inner()
            .languages
            .len(),
        tvm_api::LanguageTable::builtin().iter().count()
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        h.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    srv.stop().await;
}

/// A C program that doubles the number it reads.
const DOUBLE_C: &str = r#"#include <stdio.h>
int main(void) {
  long n = 0;
  if (scanf("%ld", &n) != 1) return 2;
  printf("%ld\n", 2 * n);
  return 0;
}
"#;

#[tokio::test]
async fn compiled_language_test_cases_and_compile_error() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let mut client = ExecutionClient::new(channel(&srv).await);
    // Software emulation makes the compiler slow: a generous compile deadline.
    let limits = Some(pb::Limits {
        timeout_ms: Some(20_000),
        compile_timeout_ms: Some(120_000),
        ..Default::default()
    });

    // One compile, two cases: the first prints what it should, the second not.
    let mut r = req("c", DOUBLE_C);
    r.limits = limits;
    r.tests = vec![
        pb::TestCase {
            stdin: Some("21\n".into()),
            expected_stdout: Some("42".into()),
            ..Default::default()
        },
        pb::TestCase {
            stdin: Some("2\n".into()),
            expected_stdout: Some("5\n".into()),
            limits: Some(pb::CaseLimits {
                timeout_ms: Some(10_000),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let resp = client.execute(r).await.unwrap().into_inner();
    assert_eq!(resp.status(), pb::Status::Completed, "{resp:?}");
    let compile = resp.compile.as_ref().expect("a compile stage");
    assert_eq!(compile.status(), pb::Status::Completed, "{resp:?}");
    assert_eq!(compile.exit_code, Some(0), "{resp:?}");
    assert_eq!(resp.tests.len(), 2, "{resp:?}");
    assert_eq!(resp.tests[0].verdict(), pb::Verdict::Accepted, "{resp:?}");
    assert_eq!(String::from_utf8_lossy(&resp.tests[0].stdout), "42\n");
    assert_eq!(
        resp.tests[1].verdict(),
        pb::Verdict::WrongAnswer,
        "{resp:?}"
    );
    assert_eq!(String::from_utf8_lossy(&resp.tests[1].stdout), "4\n");
    assert_eq!(resp.tests[1].exit_code, Some(0));
    assert_eq!(resp.verdict(), pb::Verdict::WrongAnswer, "{resp:?}");
    assert!(resp.stdout.is_empty(), "with tests, no top-level output");
    srv.assert_no_vms().await;

    // A compile error: COMPILE_ERROR, the compiler's message in the compile stage,
    // and the program never ran.
    let bad = "int main(void) { return undeclared_thing; }\n";
    let mut r = req("c", bad);
    r.limits = limits;
    let resp = client.execute(r.clone()).await.unwrap().into_inner();
    assert_eq!(resp.status(), pb::Status::CompileError, "{resp:?}");
    let compile = resp.compile.as_ref().expect("a compile stage");
    assert_eq!(compile.status(), pb::Status::Completed, "{resp:?}");
    assert_ne!(compile.exit_code, Some(0), "{resp:?}");
    let said = String::from_utf8_lossy(&compile.stderr);
    assert!(said.contains("undeclared_thing"), "{said}");
    assert_eq!(resp.exit_code, None, "the program must not run: {resp:?}");
    assert!(resp.stdout.is_empty() && resp.tests.is_empty());
    assert_eq!(resp.verdict(), pb::Verdict::Unspecified);

    // Streamed: nothing but the exit event, which carries the compile stage whole.
    let mut stream = client.execute_stream(r).await.unwrap().into_inner();
    let ev = stream.message().await.unwrap().expect("an exit event");
    let Some(pb::execute_event::Event::Exit(exit)) = ev.event else {
        panic!("{ev:?}")
    };
    assert_eq!(exit.status(), pb::Status::CompileError, "{exit:?}");
    let said = String::from_utf8_lossy(&exit.compile.as_ref().unwrap().stderr).into_owned();
    assert!(said.contains("undeclared_thing"), "{said}");
    assert!(stream.message().await.unwrap().is_none());

    srv.assert_no_vms().await;
    srv.stop().await;
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

fn get_execution(id: &str, wait: bool) -> pb::GetExecutionRequest {
    pb::GetExecutionRequest {
        id: id.into(),
        wait,
        timeout_ms: wait.then_some(30_000),
    }
}

async fn listed(c: &mut ExecutionClient<Channel>, token: &str) -> Vec<pb::ExecutionSummary> {
    c.list_executions(as_token(token, pb::ListExecutionsRequest {}))
        .await
        .expect("ListExecutions")
        .into_inner()
        .executions
}

fn done(r: pb::ExecutionResult) -> pb::ExecuteResponse {
    match r.outcome {
        Some(pb::execution_result::Outcome::Done(resp)) => resp,
        other => panic!("not done: {other:?}"),
    }
}

#[tokio::test]
async fn async_executions_submit_batch_wait_cancel_and_token_isolation() {
    let Some(srv) = TestServer::start(|c| c.tokens = vec!["a".into(), "b".into()]).await else {
        return;
    };
    let mut client = ExecutionClient::new(channel(&srv).await);

    // Submit answers at once, queued, with an id.
    let state = client
        .submit(as_token("a", req("bash", "echo hi")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.status(), pb::AsyncStatus::Queued, "{state:?}");
    assert!(state.id.starts_with("ex-"), "{state:?}");
    let id = state.id;

    // Another token sees nothing: NOT_FOUND, as if it never existed; so is a made-up id.
    let e = client
        .get_execution(as_token("b", get_execution(&id, false)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = client
        .cancel_execution(as_token("b", pb::ExecutionRef { id: id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let theirs = listed(&mut client, "b").await;
    assert!(theirs.is_empty(), "{theirs:?}");
    let e = client
        .get_execution(as_token("a", get_execution("ex-made-up", false)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // Waiting returns the result once it ran.
    let resp = done(
        client
            .get_execution(as_token("a", get_execution(&id, true)))
            .await
            .unwrap()
            .into_inner(),
    );
    assert_eq!(resp.status(), pb::Status::Completed, "{resp:?}");
    assert_eq!(String::from_utf8_lossy(&resp.stdout), "hi\n");
    assert_eq!(resp.id, id);

    // A batch: one state per request, in order.
    let batch = client
        .submit_batch(as_token(
            "a",
            pb::SubmitBatchRequest {
                executions: vec![req("bash", "echo one"), req("bash", "echo two")],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.executions.len(), 2, "{batch:?}");
    for s in &batch.executions {
        assert_eq!(s.status(), pb::AsyncStatus::Queued, "{s:?}");
    }
    assert_ne!(batch.executions[0].id, batch.executions[1].id);
    let before = listed(&mut client, "a").await;
    assert_eq!(before.len(), 3, "{before:?}");
    assert_eq!(
        (before[0].id.as_str(), before[0].status.as_str()),
        (id.as_str(), "completed")
    );

    // One bad request refuses the whole batch, naming it; nothing is submitted.
    let e = client
        .submit_batch(as_token(
            "a",
            pb::SubmitBatchRequest {
                executions: vec![req("bash", "echo ok"), req("cobol", "x")],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("executions[1]: "), "{e:?}");
    let bad = e.get_details_bad_request().expect("BadRequest details");
    assert_eq!(bad.field_violations[0].field, "unknown_language");
    assert_eq!(listed(&mut client, "a").await.len(), before.len());

    for (s, want) in batch.executions.iter().zip(["one\n", "two\n"]) {
        let resp = done(
            client
                .get_execution(as_token("a", get_execution(&s.id, true)))
                .await
                .unwrap()
                .into_inner(),
        );
        assert_eq!(String::from_utf8_lossy(&resp.stdout), want, "{resp:?}");
    }

    // Cancelling a running job destroys its VM and forgets it.
    let long = client
        .submit(as_token("a", req("bash", "sleep 30")))
        .await
        .unwrap()
        .into_inner();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = client
            .get_execution(as_token("a", get_execution(&long.id, false)))
            .await
            .unwrap()
            .into_inner();
        let Some(pb::execution_result::Outcome::Pending(s)) = r.outcome else {
            panic!("sleep 30 ended early: {r:?}")
        };
        if s.status() == pb::AsyncStatus::Running {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ran: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .cancel_execution(as_token(
            "a",
            pb::ExecutionRef {
                id: long.id.clone(),
            },
        ))
        .await
        .unwrap();
    let e = client
        .get_execution(as_token("a", get_execution(&long.id, false)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    srv.assert_no_vms().await;
    srv.stop().await;
}
