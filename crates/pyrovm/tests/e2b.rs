//! The E2B door at the wire level, booting real microVMs: the Connect protocol over
//! HTTP/2 (prior knowledge) with the binary protobuf codec — the SDKs use JSON over
//! HTTP/1.1, which `scripts/e2b-test.sh` covers with the real SDK — a command's
//! deadline, refusals that change nothing, and nothing left behind.

mod common;

use std::time::Duration;

use axum::body::Bytes;
use common::TestServer;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use pyrovm::api::e2b::pb::{filesystem as fp, process as pp};
use serde_json::{json, Value};

const TOKEN: &str = "e2b-token";
const OTHER: &str = "e2b-other";

async fn server() -> Option<TestServer> {
    TestServer::start(|c| {
        c.tokens = vec![TOKEN.into(), OTHER.into()];
    })
    .await
}

/// `POST /e2b/v2/sandboxes` as the SDKs send it.
async fn create(srv: &TestServer, body: Value, key: &str) -> (u16, Value) {
    let resp = srv
        .client
        .post(format!("{}/e2b/v2/sandboxes", srv.base))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await
        .expect("create");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A 5-byte Connect envelope around `payload`.
fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend((payload.len() as u32).to_be_bytes());
    v.extend(payload);
    v
}

/// Splits a streamed body into its envelopes (flags, payload).
fn envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "trailing bytes in the stream");
    out
}

/// One envd call over HTTP/2 with prior knowledge (h2c).
async fn h2_call(
    srv: &TestServer,
    method: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut req = axum::http::Request::post(format!("{}/e2b/envd/{method}", srv.base));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .expect("answered in time")
        .expect("h2 request");
    assert_eq!(resp.version(), axum::http::Version::HTTP_2);
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ct, body.to_vec())
}

fn start_request(cmd: &str) -> Vec<u8> {
    pp::StartRequest {
        process: Some(pp::ProcessConfig {
            cmd: "/bin/bash".into(),
            args: vec!["-l".into(), "-c".into(), cmd.into()],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn connect_over_http2_with_protobuf_a_deadline_and_refusals() {
    let Some(srv) = server().await else { return };
    let boots = srv.metric("tvm_vm_boots_total").await;

    // Refusals that start no VM: each in E2B's error shape.
    let (s, v) = create(&srv, json!({"templateID": "no-such-template"}), TOKEN).await;
    assert_eq!((s, v["code"].as_u64()), (404, Some(404)), "{v}");
    let (s, v) = create(
        &srv,
        json!({"templateID": "base", "volumeMounts": [{"name": "v"}]}),
        TOKEN,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("volumeMounts"),
        "{v}"
    );
    let (s, v) = create(
        &srv,
        json!({"templateID": "base", "autoPause": true}),
        TOKEN,
    )
    .await;
    assert_eq!(s, 501, "{v}");
    let (s, v) = create(&srv, json!({"templateID": "base"}), "not-a-token").await;
    assert_eq!((s, v["code"].as_u64()), (401, Some(401)), "{v}");
    let (s, v) = create(
        &srv,
        json!({"templateID": "base", "timeout": 999_999_999}),
        TOKEN,
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        srv.metric("tvm_vm_boots_total").await,
        boots,
        "a refused create booted a VM"
    );

    let (s, sbx) = create(
        &srv,
        json!({"templateID": "python", "timeout": 120, "envVars": {"A": "1"}}),
        TOKEN,
    )
    .await;
    assert_eq!(s, 201, "{sbx}");
    let id = sbx["sandboxID"].as_str().expect("id").to_string();
    let access = sbx["envdAccessToken"].as_str().expect("token").to_string();
    assert_eq!(sbx["envdVersion"], "0.6.4");
    assert_eq!(sbx["templateID"], "python");
    let envd = [
        ("e2b-sandbox-id", id.as_str()),
        ("x-access-token", access.as_str()),
    ];

    // Start, binary codec, over h2: start, output, end, then the end-stream envelope.
    let mut h = envd.to_vec();
    h.push(("content-type", "application/connect+proto"));
    let (s, ct, body) = h2_call(
        &srv,
        "process.Process/Start",
        &h,
        envelope(0, &start_request("echo hi $A; exit 4")),
    )
    .await;
    assert_eq!((s, ct.as_str()), (200, "application/connect+proto"));
    let frames = envelopes(&body);
    let (last_flags, last) = frames.last().expect("frames");
    assert_eq!(
        *last_flags, 2,
        "the stream ends with an end-stream envelope"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(last).expect("json"),
        json!({})
    );
    use pp::process_event::Event;
    let events: Vec<Event> = frames[..frames.len() - 1]
        .iter()
        .map(|(_, p)| {
            pp::StartResponse::decode(p.as_slice())
                .expect("StartResponse")
                .event
                .and_then(|e| e.event)
                .expect("event")
        })
        .collect();
    assert!(
        matches!(events.first(), Some(Event::Start(s)) if s.pid > 1),
        "{events:?}"
    );
    let stdout: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            Event::Data(d) => match &d.output {
                Some(pp::process_event::data_event::Output::Stdout(b)) => Some(b.clone()),
                _ => None,
            },
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(stdout, b"hi 1\n");
    match events.last() {
        Some(Event::End(e)) => assert_eq!((e.exit_code, e.exited), (4, true), "{e:?}"),
        other => panic!("no end event: {other:?}"),
    }

    // A unary call with the binary codec over h2.
    let mut h = envd.to_vec();
    h.push(("content-type", "application/proto"));
    let (s, _, body) = h2_call(
        &srv,
        "filesystem.Filesystem/Stat",
        &h,
        fp::StatRequest {
            path: "/home/user".into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(s, 200);
    let entry = fp::StatResponse::decode(body.as_slice())
        .expect("StatResponse")
        .entry
        .expect("entry");
    assert_eq!(entry.r#type, fp::FileType::Directory as i32);
    assert_eq!(entry.owner, "user");

    // The command's deadline (Connect-Timeout-Ms) kills it: deadline_exceeded, and it
    // is no longer listed.
    let mut h = envd.to_vec();
    h.push(("content-type", "application/connect+json"));
    h.push(("connect-timeout-ms", "1500"));
    let start = serde_json::to_vec(&json!({"process": {"cmd": "/bin/sleep", "args": ["60"]}}))
        .expect("json");
    let t0 = std::time::Instant::now();
    let (s, _, body) = h2_call(&srv, "process.Process/Start", &h, envelope(0, &start)).await;
    assert_eq!(s, 200);
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the deadline did not end it"
    );
    let frames = envelopes(&body);
    let end: Value = serde_json::from_slice(&frames.last().expect("end").1).expect("json");
    assert_eq!(end["error"]["code"], "deadline_exceeded", "{end}");
    let mut h = envd.to_vec();
    h.push(("content-type", "application/json"));
    let (s, _, body) = h2_call(&srv, "process.Process/List", &h, b"{}".to_vec()).await;
    assert_eq!(s, 200);
    let listed: Value = serde_json::from_slice(&body).expect("json");
    assert!(
        listed
            .get("processes")
            .is_none_or(|p| p.as_array().is_some_and(Vec::is_empty)),
        "{listed}"
    );

    // Envd refusals: a wrong token is "not found"; a malformed request is invalid.
    let bad = [
        ("e2b-sandbox-id", id.as_str()),
        ("x-access-token", "nope"),
        ("content-type", "application/json"),
    ];
    let (s, _, body) = h2_call(
        &srv,
        "filesystem.Filesystem/Stat",
        &bad,
        b"{\"path\":\"/\"}".to_vec(),
    )
    .await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((s, v["code"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("was not found"),
        "{v}"
    );
    let (s, _, body) = h2_call(
        &srv,
        "filesystem.Filesystem/Stat",
        &h,
        b"{not json".to_vec(),
    )
    .await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("invalid_argument")),
        "{v}"
    );
    let no_id = [("content-type", "application/json")];
    let (s, _, _) = h2_call(&srv, "process.Process/List", &no_id, b"{}".to_vec()).await;
    assert_eq!(s, 400);
    let (s, _, body) = h2_call(&srv, "filesystem.Filesystem/WatchDir", &h, b"{}".to_vec()).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!((s, v["code"].as_str()), (501, Some("unimplemented")), "{v}");

    // Another token cannot see or end it; its owner ends it and nothing is left.
    let resp = srv
        .client
        .delete(format!("{}/e2b/sandboxes/{id}", srv.base))
        .header("x-api-key", OTHER)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 404);
    let resp = srv
        .client
        .delete(format!("{}/e2b/sandboxes/{id}", srv.base))
        .header("x-api-key", TOKEN)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 204);
    let (s, _, _) = h2_call(&srv, "process.Process/List", &h, b"{}".to_vec()).await;
    assert_eq!(s, 503, "a killed sandbox's envd answers unavailable");
    srv.assert_no_vms().await;
}
