//! Two pyrovm instances sharing a route key, as two pods behind one ingress: every
//! request for a sandbox lands on the instance that holds it, whichever instance it
//! was sent to (real VMs; the ingress's load balancing is played by alternating).

mod common;

use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

const TOKEN: &str = "cluster-test-token";
const OTHER: &str = "cluster-test-other";

/// A pyrovm on `listener` that knows its peers (both nodes' addresses).
async fn node(
    key: &std::path::Path,
    listener: tokio::net::TcpListener,
    peers: &[std::net::SocketAddr],
) -> Option<TestServer> {
    let key = key.to_path_buf();
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    TestServer::start_on(listener, move |c, addr| {
        c.tokens = vec![TOKEN.into(), OTHER.into()];
        c.cluster.advertise_addr = Some(addr);
        c.cluster.route_key_file = Some(key);
        c.cluster.peers = peers;
    })
    .await
}

async fn call(
    srv: &TestServer,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Vec<u8>) {
    let mut r = srv
        .client
        .request(method, format!("{}{path}", srv.base))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.body(b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

/// A metric of `srv` (its /metrics needs the token).
async fn metric(srv: &TestServer, name: &str) -> f64 {
    let (_, body) = call(srv, TOKEN, reqwest::Method::GET, "/metrics", None).await;
    common::sum_metric(&String::from_utf8_lossy(&body), name)
}

async fn exec(srv: &TestServer, id: &str, code: &str) -> (u16, Value) {
    let body = serde_json::to_vec(&json!({"language": "bash", "code": code})).expect("json");
    let (status, b) = call(
        srv,
        TOKEN,
        reqwest::Method::POST,
        &format!("/v1/sandboxes/{id}/execute"),
        Some(body),
    )
    .await;
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_sandbox_is_served_by_its_owner_through_any_instance() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("route.key");
    std::fs::write(&key, "a-shared-route-key-for-this-test\n").unwrap();
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = [la.local_addr().unwrap(), lb.local_addr().unwrap()];
    let Some(a) = node(&key, la, &peers).await else {
        return;
    };
    let b = node(&key, lb, &peers).await.expect("second node");

    // Created on A: its id names A.
    let (status, body) = call(
        &a,
        TOKEN,
        reqwest::Method::POST,
        "/v1/sandboxes",
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, 201);
    let info: Value = serde_json::from_slice(&body).unwrap();
    let id = info["id"].as_str().unwrap().to_string();
    let a_addr: std::net::SocketAddr = a.base.trim_start_matches("http://").parse().unwrap();
    assert!(id.contains(&pyrovm::cluster::encode_addr(a_addr)), "{id}");

    // Alternate between the two instances, as an ingress would.
    let nodes = [&a, &b];
    for (i, n) in nodes.iter().cycle().take(6).enumerate() {
        let (status, v) = exec(n, &id, &format!("echo {i} >> log; wc -l < log")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v["stdout"],
            format!("{}\n", i + 1),
            "exec {i} ran elsewhere: {v}"
        );
    }
    // Files: up through B, down through A, byte-exact; a listing through B.
    let blob: Vec<u8> = (0..1_200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (status, _) = call(
        &b,
        TOKEN,
        reqwest::Method::PUT,
        &format!("/v1/sandboxes/{id}/files/d/blob"),
        Some(blob.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let (status, back) = call(
        &a,
        TOKEN,
        reqwest::Method::GET,
        &format!("/v1/sandboxes/{id}/files/d/blob"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(back == blob, "bytes differ after the round trip");
    let (status, listing) = call(
        &b,
        TOKEN,
        reqwest::Method::GET,
        &format!("/v1/sandboxes/{id}/files/d/"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&listing).contains("\"blob\""));
    // A stream through B.
    let body =
        serde_json::to_vec(&json!({"language": "bash", "code": "echo streamed; wc -l < log"}))
            .unwrap();
    let (status, sse) = call(
        &b,
        TOKEN,
        reqwest::Method::POST,
        &format!("/v1/sandboxes/{id}/execute/stream"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200);
    let sse = String::from_utf8_lossy(&sse);
    assert!(
        sse.contains("data: streamed") && sse.contains("data: 6") && sse.contains("event: exit"),
        "{sse}"
    );
    // gRPC through B: the id is inside the message; it reaches A all the same.
    {
        use pyrovm::grpc::pb;
        let ch = tonic::transport::Channel::from_shared(b.base.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = pb::sandboxes_client::SandboxesClient::new(ch);
        fn auth<T>(m: T) -> tonic::Request<T> {
            let mut r = tonic::Request::new(m);
            r.metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
            r
        }
        let got = c
            .get(auth(pb::SandboxRef { id: id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.id, id);
        let resp = c
            .execute(auth(pb::SandboxExecuteRequest {
                sandbox_id: id.clone(),
                request: Some(pb::ExecuteRequest {
                    language: "bash".into(),
                    code: "wc -l < log".into(),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.stdout, b"6\n");
        let file = c
            .read_file(auth(pb::FileRef {
                sandbox_id: id.clone(),
                path: "d/blob".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(file.content == blob);
    }
    // Listing through either node shows the caller's sandboxes on both: one made on
    // B joins the one on A; another token sees none of them.
    let (status, body) = call(
        &b,
        TOKEN,
        reqwest::Method::POST,
        "/v1/sandboxes",
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, 201);
    let on_b = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    for n in [&a, &b] {
        let (status, body) = call(n, TOKEN, reqwest::Method::GET, "/v1/sandboxes", None).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        common::check_against_openapi("get", "/v1/sandboxes", 200, &v);
        let ids: Vec<&str> = v["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![id.as_str(), on_b.as_str()], "{v}");
        assert_eq!(v["unreachable_nodes"], 0);
        let (_, body) = call(n, OTHER, reqwest::Method::GET, "/v1/sandboxes", None).await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["sandboxes"], json!([]), "{v}");
    }
    let (status, _) = call(
        &a,
        TOKEN,
        reqwest::Method::DELETE,
        &format!("/v1/sandboxes/{on_b}"),
        None,
    )
    .await;
    assert_eq!(status, 204);

    // Another token through B still gets 404 (the owner checks).
    let (status, _) = call(
        &b,
        OTHER,
        reqwest::Method::GET,
        &format!("/v1/sandboxes/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // Everything ran on A; B never held a sandbox or ran an exec.
    assert_eq!(metric(&a, "tvm_sandbox_execs_total").await, 8.0);
    assert_eq!(metric(&b, "tvm_sandbox_execs_total").await, 0.0);
    assert_eq!(metric(&b, "tvm_sandboxes_active").await, 0.0);

    // An id whose address was changed fails its MAC: B answers 404 itself and
    // connects nowhere (a forward to that closed port would be a 503).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let forged = id.replace(
        &pyrovm::cluster::encode_addr(a_addr),
        &pyrovm::cluster::encode_addr(free),
    );
    let (status, body) = call(
        &b,
        TOKEN,
        reqwest::Method::GET,
        &format!("/v1/sandboxes/{forged}"),
        None,
    )
    .await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));

    // Deleting through B ends it on A.
    let (status, _) = call(
        &b,
        TOKEN,
        reqwest::Method::DELETE,
        &format!("/v1/sandboxes/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(metric(&a, "tvm_sandboxes_active").await, 0.0);
    a.assert_no_vms().await;

    // A sandbox of an instance that is gone: B says so, with Retry-After.
    let (status, body) = call(
        &a,
        TOKEN,
        reqwest::Method::POST,
        "/v1/sandboxes",
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(status, 201);
    let id2 = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.stop().await;
    let resp = b
        .client
        .get(format!("{}/v1/sandboxes/{id2}", b.base))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "owner_unreachable");
    // A listing through B says a node did not answer.
    let (_, body) = call(&b, TOKEN, reqwest::Method::GET, "/v1/sandboxes", None).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["unreachable_nodes"], 1, "{v}");
    b.stop().await;
}
