//! Async executions (`/v1/executions`), with real microVMs: submit then poll, long-poll,
//! batch, cancel (queued and running), expiry, and isolation between tokens.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};

const A: &str = "token-a";
const B: &str = "token-b";

struct Api {
    base: String,
    client: reqwest::Client,
    token: &'static str,
}

impl Api {
    fn new(srv: &TestServer, token: &'static str) -> Self {
        Self {
            base: srv.base.clone(),
            client: srv.client.clone(),
            token,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn submit(&self, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/v1/executions", Some(body))
            .await
    }

    async fn get(&self, id: &str, query: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::GET,
            &format!("/v1/executions/{id}{query}"),
            None,
        )
        .await
    }

    async fn delete(&self, id: &str) -> u16 {
        self.call(
            reqwest::Method::DELETE,
            &format!("/v1/executions/{id}"),
            None,
        )
        .await
        .0
    }

    /// Polls until the execution is `running`.
    async fn wait_running(&self, id: &str) {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let (s, v) = self.get(id, "").await;
            assert_eq!(s, 200, "{v}");
            if v["status"] == "running" {
                return;
            }
            assert_eq!(v["status"], "queued", "{v}");
            assert!(Instant::now() < until, "never ran: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn start() -> Option<TestServer> {
    TestServer::start(|c| {
        c.tokens = vec![A.into(), B.into()];
        c.max_concurrency = 1;
        c.executions.result_ttl_ms = 6_000;
        c.executions.max_batch = 4;
    })
    .await
}

#[tokio::test]
async fn submit_poll_wait_batch_and_token_isolation() {
    let Some(srv) = start().await else { return };
    let a = Api::new(&srv, A);
    let b = Api::new(&srv, B);

    let (s, v) = a
        .submit(json!({"language": "bash", "code": "read x; echo got $x", "stdin": "it\n"}))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "queued");
    common::check_against_openapi("post", "/v1/executions", 202, &v);
    let id = v["id"].as_str().expect("id").to_string();

    // Another token learns nothing: not even that it exists.
    assert_eq!(b.get(&id, "").await.0, 404);
    assert_eq!(b.delete(&id).await, 404);

    let (s, v) = a.get(&id, "?wait=true").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["stdout"], "got it\n");
    assert_eq!(v["id"], id.as_str(), "the result carries the execution id");
    common::check_against_openapi("get", "/v1/executions/{id}", 200, &v);
    // Read again: still there until the TTL.
    assert_eq!(a.get(&id, "").await.1["stdout"], "got it\n");

    // A long-poll that ends before the job does answers where it is.
    let (_, v) = a
        .submit(json!({"language": "bash", "code": "sleep 2; echo slow"}))
        .await;
    let slow = v["id"].as_str().unwrap().to_string();
    let t = Instant::now();
    let (s, v) = a.get(&slow, "?wait=true&timeout_ms=300").await;
    assert_eq!(s, 200);
    assert!(
        ["queued", "running"].contains(&v["status"].as_str().unwrap()),
        "{v}"
    );
    assert!(t.elapsed() >= Duration::from_millis(280) && t.elapsed() < Duration::from_secs(2));
    common::check_against_openapi("get", "/v1/executions/{id}", 200, &v);
    let (_, v) = a.get(&slow, "?wait=true").await;
    assert_eq!(v["stdout"], "slow\n", "{v}");

    // A batch: all in order, or nothing.
    let before = a.call(reqwest::Method::GET, "/v1/executions", None).await.1["executions"]
        .as_array()
        .unwrap()
        .len();
    let (s, v) = a
        .call(
            reqwest::Method::POST,
            "/v1/executions/batch",
            Some(json!({"executions": [
                {"language": "bash", "code": "echo one"},
                {"language": "cobol", "code": "x"},
            ]})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "unknown_language");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("executions[1]"));
    let (s, v) = a
        .call(
            reqwest::Method::POST,
            "/v1/executions/batch",
            Some(json!({"executions": vec![json!({"language": "bash", "code": "true"}); 5]})),
        )
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("batch_size")));
    let (_, list) = a.call(reqwest::Method::GET, "/v1/executions", None).await;
    assert_eq!(
        list["executions"].as_array().unwrap().len(),
        before,
        "nothing submitted"
    );

    let (s, v) = a
        .call(
            reqwest::Method::POST,
            "/v1/executions/batch",
            Some(json!({"executions": [
                {"language": "bash", "code": "echo one"},
                {"language": "python", "code": "print(2)"},
                {"language": "bash", "code": "exit 3"},
            ]})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    common::check_against_openapi("post", "/v1/executions/batch", 202, &v);
    let ids: Vec<String> = v["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let mut outs = Vec::new();
    for id in &ids {
        let (_, v) = a.get(id, "?wait=true").await;
        outs.push((v["stdout"].clone(), v["exit_code"].clone()));
    }
    assert_eq!(
        outs,
        [
            (json!("one\n"), json!(0)),
            (json!("2\n"), json!(0)),
            (json!(""), json!(3))
        ]
    );
    let (_, list) = b.call(reqwest::Method::GET, "/v1/executions", None).await;
    assert_eq!(list["executions"], json!([]), "B sees none of A's");
    let (_, list) = a.call(reqwest::Method::GET, "/v1/executions", None).await;
    let listed: Vec<&str> = list["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    // Oldest first; earlier ones may have expired meanwhile (6 s TTL).
    assert_eq!(
        listed[listed.len() - 3..],
        ids.iter().map(String::as_str).collect::<Vec<_>>()[..]
    );

    // Expiry: the TTL (6 s) after it finished, it is gone.
    tokio::time::sleep(Duration::from_millis(6_300)).await;
    assert_eq!(a.get(&id, "").await.0, 404);
    for id in &ids {
        assert_eq!(a.get(id, "").await.0, 404);
    }
    assert_eq!(srv.metric("tvm_async_stored").await, 0.0);
    assert_eq!(srv.metric("tvm_async_stored_bytes").await, 0.0);
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn cancel_a_running_and_a_queued_execution() {
    let Some(srv) = start().await else { return };
    let a = Api::new(&srv, A);
    let (_, v) = a
        .submit(json!({"language": "bash", "code": "sleep 30", "limits": {"timeout_ms": 40000}}))
        .await;
    let running = v["id"].as_str().unwrap().to_string();
    a.wait_running(&running).await;
    // max_concurrency 1: this one waits.
    let (_, v) = a
        .submit(json!({"language": "bash", "code": "echo never"}))
        .await;
    let queued = v["id"].as_str().unwrap().to_string();
    assert_eq!(a.get(&queued, "").await.1["status"], "queued");
    assert_eq!(srv.metric("tvm_queue_depth").await, 1.0);

    let t = Instant::now();
    assert_eq!(a.delete(&queued).await, 204);
    assert_eq!(a.get(&queued, "").await.0, 404);
    let until = Instant::now() + Duration::from_secs(1);
    while srv.metric("tvm_queue_depth").await > 0.0 {
        assert!(
            Instant::now() < until,
            "the cancelled one did not leave the queue"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.delete(&running).await, 204);
    assert_eq!(a.get(&running, "").await.0, 404);
    // Its VM is destroyed and its slot freed at once, not after the 30 s sleep.
    srv.assert_no_vms().await;
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(
        srv.metric("tvm_vm_boots_total").await,
        1.0,
        "none for the queued one"
    );
    assert_eq!(srv.metric("tvm_async_executions_total").await, 2.0);
    srv.stop().await;
}
