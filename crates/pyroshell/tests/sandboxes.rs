//! Sandboxes through the front door, unchanged: `pyroshell --mode forward` in front
//! of `pyroshell --mode embedded` (pyrovm in-process, real microVMs): the create,
//! binary files both ways, execs (unary and SSE), listing, gRPC, and the delete.

mod common;

use std::time::Duration;

use common::{free_port, gateway, upstream, vmm_processes, wait_status};
use pyrovm::grpc::pb;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_works_through_the_gateway() {
    let root = tempfile::tempdir().expect("tempdir");
    let Some(mut up) = upstream(root.path(), free_port(), &[]).await else {
        return;
    };
    let mut gw = gateway(root.path(), &up.url, "", &[]).await;
    let g = gw.url.clone();
    wait_status(&format!("{g}/readyz"), 200, Duration::from_secs(5)).await;
    let http = reqwest::Client::new();

    let resp = http
        .post(format!("{g}/v1/sandboxes"))
        .json(&json!({"ttl_s": 120}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();

    // A binary file up, transformed in the VM, and down again, byte-exact.
    let blob: Vec<u8> = (0..1_100_000u32).map(|i| (i % 253) as u8).collect();
    let resp = http
        .put(format!("{g}/v1/sandboxes/{id}/files/in/blob"))
        .body(blob.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(
        resp.status(),
        200,
        "{}",
        resp.text().await.unwrap_or_default()
    );
    let resp = http
        .post(format!("{g}/v1/sandboxes/{id}/execute"))
        .json(&json!({"language": "python",
                      "code": "d = open('in/blob','rb').read(); open('out','wb').write(d[::-1]); print(len(d))"}))
        .send()
        .await
        .expect("exec");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["stdout"], "1100000\n", "{v}");
    let back = http
        .get(format!("{g}/v1/sandboxes/{id}/files/out"))
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("bytes");
    let mut want = blob.clone();
    want.reverse();
    assert!(
        back.as_ref() == want.as_slice(),
        "bytes differ through the gateway"
    );
    let listing: Value = http
        .get(format!("{g}/v1/sandboxes/{id}/files/"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listing["entries"].as_array().map(Vec::len),
        Some(2),
        "{listing}"
    );

    // Streamed output still arrives as events; state is the sandbox's.
    let sse = http
        .post(format!("{g}/v1/sandboxes/{id}/execute/stream"))
        .json(&json!({"language": "bash", "code": "echo streamed; ls"}))
        .send()
        .await
        .expect("stream")
        .text()
        .await
        .expect("text");
    assert!(
        sse.contains("data: streamed") && sse.contains("data: in") && sse.contains("event: exit"),
        "{sse}"
    );

    // gRPC through the gateway reaches the same sandbox.
    let ch = tonic::transport::Channel::from_shared(g.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC");
    let mut c = pb::sandboxes_client::SandboxesClient::new(ch);
    let got = c
        .get(pb::SandboxRef { id: id.clone() })
        .await
        .expect("Get")
        .into_inner();
    assert_eq!(got.execs, 2);

    let resp = http
        .delete(format!("{g}/v1/sandboxes/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    let resp = http
        .get(format!("{g}/v1/sandboxes/{id}"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    assert_eq!(vmm_processes(root.path()), Vec::<u32>::new());

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
}
