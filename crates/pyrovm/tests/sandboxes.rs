//! Sandboxes over HTTP, booting real microVMs: state kept across execs, files in
//! and out, escapes refused, isolation between sandboxes and tokens, every way a
//! sandbox ends, and nothing left behind.

mod common;

use std::time::Duration;

use common::{check_against_openapi, TestServer};
use serde_json::{json, Value};

/// A caller: the test server and, when auth is on, its token.
struct Api<'a> {
    srv: &'a TestServer,
    token: Option<&'a str>,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    content_type: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&self.body) }))
    }
}

impl<'a> Api<'a> {
    fn new(srv: &'a TestServer) -> Self {
        Self { srv, token: None }
    }

    fn as_token(srv: &'a TestServer, token: &'a str) -> Self {
        Self {
            srv,
            token: Some(token),
        }
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        let mut r = self
            .srv
            .client
            .request(method, format!("{}{path}", self.srv.base));
        if let Some(t) = self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.body(b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.bytes().await.expect("body").to_vec();
        Answer {
            status,
            body,
            content_type,
        }
    }

    /// A JSON request; the answer is checked against the OpenAPI document under `doc_path`.
    async fn call(
        &self,
        method: &str,
        path: &str,
        doc_path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let a = self
            .send(m, path, body.map(|b| serde_json::to_vec(&b).expect("json")))
            .await;
        let v = if a.body.is_empty() {
            Value::Null
        } else {
            a.json()
        };
        if a.status != 204 && a.content_type.starts_with("application/json") {
            check_against_openapi(&method.to_lowercase(), doc_path, a.status, &v);
        }
        (a.status, v)
    }

    async fn create(&self, body: Value) -> (u16, Value) {
        self.call("POST", "/v1/sandboxes", "/v1/sandboxes", Some(body))
            .await
    }

    async fn create_ok(&self, body: Value) -> String {
        let (code, v) = self.create(body).await;
        assert_eq!(code, 201, "{v}");
        v["id"].as_str().expect("id").to_string()
    }

    async fn exec(&self, id: &str, body: Value) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/sandboxes/{id}/execute"),
            "/v1/sandboxes/{id}/execute",
            Some(body),
        )
        .await
    }

    async fn bash(&self, id: &str, code: &str) -> Value {
        let (status, v) = self
            .exec(id, json!({"language": "bash", "code": code}))
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn get(&self, id: &str) -> (u16, Value) {
        self.call(
            "GET",
            &format!("/v1/sandboxes/{id}"),
            "/v1/sandboxes/{id}",
            None,
        )
        .await
    }

    async fn delete(&self, id: &str) -> (u16, Value) {
        self.call(
            "DELETE",
            &format!("/v1/sandboxes/{id}"),
            "/v1/sandboxes/{id}",
            None,
        )
        .await
    }

    async fn put_file(&self, id: &str, path: &str, bytes: Vec<u8>) -> (u16, Value) {
        let a = self
            .send(
                reqwest::Method::PUT,
                &format!("/v1/sandboxes/{id}/files/{path}"),
                Some(bytes),
            )
            .await;
        let v = a.json();
        check_against_openapi("put", "/v1/sandboxes/{id}/files/{path}", a.status, &v);
        (a.status, v)
    }

    async fn get_file(&self, id: &str, path: &str) -> Answer {
        let a = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/sandboxes/{id}/files/{path}"),
                None,
            )
            .await;
        if a.status != 200 || a.content_type.starts_with("application/json") {
            let v = a.json();
            check_against_openapi("get", "/v1/sandboxes/{id}/files/{path}", a.status, &v);
        }
        a
    }
}

/// A random-looking but reproducible byte string (every byte value occurs).
fn binary(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) ^ (i as u8)
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

#[tokio::test]
async fn a_sandbox_keeps_files_and_processes_across_execs() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let api = Api::new(&srv);
    let (code, info) = api
        .create(
            json!({"ttl_s": 300, "idle_timeout_s": 120, "env": {"GREETING": "hello"},
                       "limits": {"memory_mb": 256, "disk_mb": 64}}),
        )
        .await;
    assert_eq!(code, 201, "{info}");
    let id = info["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sb-"), "{id}");
    assert_eq!(info["limits"]["disk_mb"], 64);
    assert_eq!(info["env_keys"], json!(["GREETING"]));
    assert_eq!(srv.metric("tvm_sandboxes_active").await, 1.0);

    // Files written by one exec are there for the next; so is the environment.
    let v = api
        .bash(
            &id,
            "echo $GREETING > note.txt; mkdir -p data; echo 42 > data/n; pwd",
        )
        .await;
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["stdout"], "/work\n");
    let (_, v) = api
        .exec(&id, json!({"language": "python",
                          "code": "print(open('note.txt').read().strip(), int(open('data/n').read()) + 1)"}))
        .await;
    assert_eq!(v["stdout"], "hello 43\n", "{v}");
    // An exec's own env wins over the sandbox's.
    let (_, v) = api
        .exec(
            &id,
            json!({"language": "bash", "code": "echo $GREETING", "env": {"GREETING": "hi"}}),
        )
        .await;
    assert_eq!(v["stdout"], "hi\n");

    // A process detached in one exec keeps running after it, and into the next.
    let v = api
        .bash(&id, "nohup bash -c 'while true; do echo x >> ticks; sleep 0.2; done' >/dev/null 2>&1 &\necho started")
        .await;
    assert_eq!(v["stdout"], "started\n", "{v}");
    let first = api.bash(&id, "sleep 0.5; wc -l < ticks").await["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = api.bash(&id, "wc -l < ticks").await["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    assert!(
        later > first,
        "background writer stopped: {first} then {later}"
    );
    // `cmd &` without redirection, still holding the exec's stdout, does not hang it.
    let started = std::time::Instant::now();
    let v = api.bash(&id, "sleep 30 &\necho quick").await;
    assert_eq!(v["stdout"], "quick\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // The sandbox's limits are its own: an exec may not change them.
    let (code, v) = api
        .exec(
            &id,
            json!({"language": "bash", "code": "true", "limits": {"memory_mb": 128}}),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["error"]["code"], "invalid_argument");
    // A per-exec timeout ends that exec (and what it started), not the sandbox.
    let v = api
        .exec(
            &id,
            json!({"language": "bash", "code": "sleep 20", "limits": {"timeout_ms": 500}}),
        )
        .await
        .1;
    assert_eq!(v["status"], "timeout", "{v}");
    assert_eq!(api.bash(&id, "cat note.txt").await["stdout"], "hello\n");

    // Streaming works inside a sandbox too.
    let resp = srv
        .client
        .post(format!("{}/v1/sandboxes/{id}/execute/stream", srv.base))
        .json(&json!({"language": "bash", "code": "echo one; echo two >&2; cat note.txt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("event: stdout\ndata: one"), "{text}");
    assert!(text.contains("event: stderr\ndata: two"), "{text}");
    assert!(text.contains("hello"), "{text}");
    assert!(text.contains("event: exit"), "{text}");

    let (code, info) = api.get(&id).await;
    assert_eq!(code, 200);
    assert!(info["execs"].as_u64().unwrap() >= 8, "{info}");
    let (code, list) = api
        .call("GET", "/v1/sandboxes", "/v1/sandboxes", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(list["sandboxes"].as_array().unwrap().len(), 1);

    assert_eq!(api.delete(&id).await.0, 204);
    srv.assert_no_vms().await;
    assert_eq!(api.get(&id).await.0, 404);
    let (code, v) = api
        .exec(&id, json!({"language": "bash", "code": "true"}))
        .await;
    assert_eq!(code, 404, "{v}");
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(srv.metric("tvm_sandboxes_active").await, 0.0);
    srv.stop().await;
}

#[tokio::test]
async fn files_go_in_and_out_byte_exact_and_escapes_are_refused() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let api = Api::new(&srv);
    let id = api.create_ok(json!({})).await;

    // ≥ 1 MiB of binary data, both ways, byte-exact.
    let data = binary(1_500_000);
    let (code, v) = api.put_file(&id, "in/blob.bin", data.clone()).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v, json!({"path": "in/blob.bin", "size": 1_500_000}));
    let (_, v) = api
        .exec(&id, json!({"language": "python", "code":
            "import hashlib\nd = open('in/blob.bin','rb').read()\nprint(hashlib.sha256(d).hexdigest())\nopen('out.bin','wb').write(d[::-1])"}))
        .await;
    assert_eq!(
        v["stdout"].as_str().unwrap().trim(),
        sha256_hex(&data),
        "{v}"
    );
    let a = api.get_file(&id, "out.bin").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.content_type, "application/octet-stream");
    let mut reversed = data.clone();
    reversed.reverse();
    assert!(a.body == reversed, "downloaded bytes differ");
    // Uploading over an existing file replaces it.
    assert_eq!(
        api.put_file(&id, "in/blob.bin", b"short".to_vec()).await.0,
        200
    );
    assert_eq!(api.get_file(&id, "in/blob.bin").await.body, b"short");
    // Uploaded files belong to the job user.
    assert_eq!(
        api.bash(&id, "echo more >> in/blob.bin && stat -c %U in/blob.bin")
            .await["stdout"],
        "sandbox\n"
    );

    // Listing: a trailing slash, `?list`, and the work dir itself.
    let a = api.get_file(&id, "in/").await;
    assert_eq!(a.status, 200);
    let v = a.json();
    check_against_openapi("get", "/v1/sandboxes/{id}/files/{path}", 200, &v);
    assert_eq!(
        v["entries"],
        json!([{"name": "blob.bin", "type": "file", "size": 10}])
    );
    assert_eq!(api.get_file(&id, "in?list").await.json()["path"], "in");
    let (code, root) = api
        .call(
            "GET",
            &format!("/v1/sandboxes/{id}/files"),
            "/v1/sandboxes/{id}/files",
            None,
        )
        .await;
    assert_eq!(code, 200);
    let names: Vec<&str> = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"in") && names.contains(&"out.bin"),
        "{root}"
    );

    // A user's own main.py is not the exec's code file: it survives, and imports work.
    assert_eq!(
        api.put_file(&id, "main.py", b"X = 5\n".to_vec()).await.0,
        200
    );
    let (_, v) = api
        .exec(
            &id,
            json!({"language": "python", "code": "import main; print(main.X)"}),
        )
        .await;
    assert_eq!(v["stdout"], "5\n", "{v}");
    assert_eq!(api.get_file(&id, "main.py").await.body, b"X = 5\n");
    assert!(!root.to_string().contains(".tvm-exec"), "{root}");

    // Missing files and wrong types.
    let a = api.get_file(&id, "nope.txt").await;
    assert_eq!(
        (a.status, a.json()["error"]["code"].clone()),
        (404, json!("file_not_found"))
    );
    assert_eq!(api.get_file(&id, "in").await.status, 400);
    assert_eq!(api.get_file(&id, "out.bin/").await.status, 400);
    assert_eq!(api.put_file(&id, "in", b"x".to_vec()).await.0, 400);
    assert_eq!(api.put_file(&id, "out.bin/x", b"x".to_vec()).await.0, 400);

    // Escapes: `..`, absolute paths, and symlinks pointing out. Nothing is read or written.
    api.bash(
        &id,
        "ln -s /etc/passwd leak; ln -s / rootlink; ln -s in inlink",
    )
    .await;
    for path in [
        "%2E%2E%2Fetc%2Fpasswd",
        "in/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/etc/passwd",
        "leak",
        "rootlink/etc/passwd",
    ] {
        let a = api.get_file(&id, path).await;
        assert_eq!(
            a.status,
            400,
            "GET {path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.json()["error"]["code"], "invalid_path", "{path}");
    }
    for path in [
        "%2E%2E%2Fevil",
        "/tmp/evil",
        "rootlink/tmp/evil",
        "rootlink/evil-dir/x",
    ] {
        let (code, v) = api.put_file(&id, path, b"evil".to_vec()).await;
        assert_eq!(code, 400, "PUT {path}: {v}");
    }
    assert_eq!(api.get_file(&id, "rootlink/").await.status, 400);
    let v = api.bash(&id, "ls /tmp; ls / | grep -c evil; true").await;
    assert!(!v["stdout"].as_str().unwrap().contains("evil"), "{v}");
    // A symlink that stays inside the work dir is fine.
    assert_eq!(
        api.get_file(&id, "inlink/blob.bin").await.body,
        b"shortmore\n"
    );

    // Uploads larger than max_file_bytes are refused.
    let (code, v) = api.put_file(&id, "big", vec![0u8; (16 << 20) + 1]).await;
    assert_eq!(code, 413, "{v}");
    assert_eq!(api.get_file(&id, "big").await.status, 404);

    assert_eq!(api.delete(&id).await.0, 204);
    srv.stop().await;
}

#[tokio::test]
async fn sandboxes_and_tokens_are_isolated() {
    let Some(srv) = TestServer::start(|c| {
        c.tokens = vec!["token-a".into(), "token-b".into()];
        c.sandbox.max_per_token = 2;
        c.sandbox.max_total = 3;
    })
    .await
    else {
        return;
    };
    let a = Api::as_token(&srv, "token-a");
    let b = Api::as_token(&srv, "token-b");
    let a1 = a.create_ok(json!({})).await;
    let a2 = a.create_ok(json!({})).await;
    // Two sandboxes of one token do not share files.
    a.bash(&a1, "echo secret > s.txt").await;
    assert_eq!(
        a.bash(&a2, "cat s.txt 2>&1; ls | wc -l").await["stdout"],
        "cat: s.txt: No such file or directory\n0\n"
    );

    // Per-token cap, then the node's cap.
    let (code, v) = a.create(json!({})).await;
    assert_eq!(code, 429, "{v}");
    assert_eq!(v["error"]["code"], "sandbox_limit");
    let b1 = b.create_ok(json!({})).await;
    let (code, v) = b.create(json!({})).await;
    assert_eq!(code, 429, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("node"),
        "{v}"
    );

    // Another token sees nothing of a's sandboxes: 404 everywhere, nothing changed.
    assert_eq!(b.get(&a1).await.0, 404);
    assert_eq!(
        b.exec(&a1, json!({"language": "bash", "code": "rm -f s.txt"}))
            .await
            .0,
        404
    );
    assert_eq!(b.get_file(&a1, "s.txt").await.status, 404);
    assert_eq!(
        b.put_file(&a1, "s.txt", b"overwritten".to_vec()).await.0,
        404
    );
    assert_eq!(b.delete(&a1).await.0, 404);
    let (_, list) = b.call("GET", "/v1/sandboxes", "/v1/sandboxes", None).await;
    let ids: Vec<&str> = list["sandboxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![b1.as_str()]);
    assert_eq!(a.get_file(&a1, "s.txt").await.body, b"secret\n");
    // Without a token: 401.
    assert_eq!(Api::new(&srv).get(&a1).await.0, 401);

    for (api, id) in [(&a, &a1), (&a, &a2), (&b, &b1)] {
        assert_eq!(api.delete(id).await.0, 204);
    }
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn a_busy_sandbox_makes_the_next_request_wait_or_answers_409() {
    let Some(srv) = TestServer::start(|c| c.sandbox.busy_timeout_ms = 1500).await else {
        return;
    };
    let api = Api::new(&srv);
    let id = api.create_ok(json!({})).await;
    // A short exec behind a 1 s one waits for it and runs.
    let slow = api.exec(
        &id,
        json!({"language": "bash", "code": "sleep 1; echo slow"}),
    );
    let quick = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        api.exec(&id, json!({"language": "bash", "code": "echo quick"}))
            .await
    };
    let ((c1, v1), (c2, v2)) = tokio::join!(slow, quick);
    assert_eq!((c1, v1["stdout"].clone()), (200, json!("slow\n")));
    assert_eq!((c2, v2["stdout"].clone()), (200, json!("quick\n")));
    // One that cannot start within busy_timeout_ms gets 409 (and changes nothing).
    let slow = api.exec(&id, json!({"language": "bash", "code": "sleep 4"}));
    let late = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        api.put_file(&id, "late.txt", b"x".to_vec()).await
    };
    let ((c1, _), (c2, v2)) = tokio::join!(slow, late);
    assert_eq!(c1, 200);
    assert_eq!(c2, 409, "{v2}");
    assert_eq!(v2["error"]["code"], "sandbox_busy");
    assert_eq!(api.get_file(&id, "late.txt").await.status, 404);
    assert_eq!(api.delete(&id).await.0, 204);
    srv.stop().await;
}

#[tokio::test]
async fn sandboxes_end_at_ttl_idle_timeout_and_vm_death() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let api = Api::new(&srv);
    // A sandbox whose VMM is killed from outside, as a crash would.
    let dies = api.create_ok(json!({})).await;
    api.bash(&dies, "echo alive > a").await;
    let pids = common::vmm_processes(srv.runtime_root.path());
    assert_eq!(pids.len(), 1, "one VMM per sandbox: {pids:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    srv.wait_metric(
        "tvm_sandbox_ends_total{reason=\"vm_died\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    let (code, v) = api
        .exec(&dies, json!({"language": "bash", "code": "true"}))
        .await;
    assert_eq!(code, 410, "{v}");
    assert_eq!(v["error"]["code"], "sandbox_ended");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("microVM stopped"),
        "{v}"
    );
    srv.assert_no_vms().await;

    let ttl = api
        .create_ok(json!({"ttl_s": 3, "idle_timeout_s": 100}))
        .await;
    let idle = api
        .create_ok(json!({"ttl_s": 100, "idle_timeout_s": 2}))
        .await;
    // Keep the TTL one busy: activity does not extend a TTL.
    for _ in 0..2 {
        api.bash(&ttl, "true").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    srv.wait_metric(
        "tvm_sandbox_ends_total{reason=\"idle\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    let (code, v) = api.get(&idle).await;
    assert_eq!(code, 410, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("idle"),
        "{v}"
    );
    srv.wait_metric(
        "tvm_sandbox_ends_total{reason=\"ttl\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    let (code, v) = api.get_file(&ttl, "x").await.status_and_json();
    assert_eq!(code, 410, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("TTL"),
        "{v}"
    );
    // Deleting an ended one says it ended.
    assert_eq!(api.delete(&ttl).await.0, 410);
    assert_eq!(srv.metric("tvm_sandboxes_active").await, 0.0);
    srv.assert_no_vms().await;
    srv.stop().await;
}

impl Answer {
    fn status_and_json(&self) -> (u16, Value) {
        (self.status, self.json())
    }
}

#[tokio::test]
async fn shutdown_with_live_sandboxes_leaves_nothing() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let api = Api::new(&srv);
    for _ in 0..2 {
        let id = api.create_ok(json!({})).await;
        api.bash(&id, "nohup sleep 600 >/dev/null 2>&1 & echo bg")
            .await;
    }
    assert_eq!(common::vmm_processes(srv.runtime_root.path()).len(), 2);
    // `stop` asserts the runtime dir, snapshot dir and every VMM process are gone.
    srv.stop().await;
}

#[tokio::test]
async fn bad_create_requests_change_nothing() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let api = Api::new(&srv);
    for (body, code) in [
        (json!({"ttl_s": 0}), "limit_out_of_range"),
        (json!({"limits": {"disk_mb": 100000}}), "limit_out_of_range"),
        (json!({"limits": {"memory_mb": 1}}), "limit_out_of_range"),
        (json!({"ttl": 5}), "invalid_json"),
        (json!({"env": {"BAD NAME": "x"}}), "invalid_argument"),
    ] {
        let (status, v) = api.create(body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}");
    }
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 0.0);
    assert_eq!(srv.metric("tvm_sandboxes_active").await, 0.0);
    srv.stop().await;
}

/// One-shot `/v1/execute` with `files_out`, and the conflicting `files` of the issue.
#[tokio::test]
async fn one_shot_files_out_returns_matching_files_with_caps() {
    let Some(srv) = TestServer::start(|c| {
        c.limits.max_files_out = 3;
        c.limits.max_files_out_bytes = 4096;
    })
    .await
    else {
        return;
    };
    let code = "import os\nos.makedirs('out/deep', exist_ok=True)\n\
                for n in ['a','b']: open(f'out/{n}.png','wb').write(bytes(range(256)))\n\
                open('out/deep/c.png','wb').write(b'c')\nopen('result.json','w').write('{\"ok\": true}')\n\
                open('skip.txt','w').write('no')\nos.symlink('/etc/passwd', 'out/link.png')";
    let (status, v) = srv
        .execute(json!({"language": "python", "code": code,
                        "files_out": ["out/*.png", "result.json"]}))
        .await;
    assert_eq!(status, 200, "{v}");
    check_against_openapi("post", "/v1/execute", 200, &v);
    let files = v["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    // `*` stays in one directory; symlinks are never followed.
    assert_eq!(paths, vec!["out/a.png", "out/b.png", "result.json"], "{v}");
    assert_eq!(files[0]["encoding"], "base64");
    assert_eq!(files[0]["size"], 256);
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(files[0]["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, (0..=255u8).collect::<Vec<_>>());
    assert_eq!(v["files_truncated"], false);
    // `**` crosses directories; the count cap (3) truncates.
    let (_, v) = srv
        .execute(json!({"language": "python", "code": code, "files_out": ["**/*.png", "*.json"]}))
        .await;
    assert_eq!(v["files"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["files_truncated"], true);
    // The byte cap (4096) leaves out a file that would pass it, and says so.
    let (_, v) = srv
        .execute(json!({"language": "python",
                        "code": "open('big.bin','wb').write(b'x' * 5000); open('small','w').write('s')",
                        "files_out": ["big.bin", "small"]}))
        .await;
    let paths: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["small"], "{v}");
    assert_eq!(v["files_truncated"], true);
    // Without files_out, no `files` at all.
    let (_, v) = srv
        .execute(json!({"language": "bash", "code": "echo hi > x"}))
        .await;
    assert!(v.get("files").is_none(), "{v}");

    // Bad input: no VM is started.
    let boots = srv.metric("tvm_vm_boots_total").await;
    for body in [
        json!({"language": "bash", "code": "true", "files_out": ["../etc/passwd"]}),
        json!({"language": "bash", "code": "true", "files_out": ["/abs"]}),
        json!({"language": "bash", "code": "true",
               "files": [{"path": "a", "content": "x"}, {"path": "a/b", "content": "y"}]}),
    ] {
        let (status, v) = srv.execute(body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_path", "{v}");
        check_against_openapi("post", "/v1/execute", 400, &v);
    }
    assert_eq!(srv.metric("tvm_vm_boots_total").await, boots);
    srv.stop().await;
}

/// ≥ 200 create/exec/delete cycles from the snapshot pool, then: no VMM process,
/// VM dir, host cgroup or file descriptor left over.
#[tokio::test]
async fn soak_of_create_exec_delete_leaks_nothing() {
    let cycles: usize = std::env::var("SANDBOX_SOAK_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let Some(srv) = TestServer::start(|c| {
        c.pool = vec![pyrovm::pool::PoolClass {
            vcpus: 1,
            memory_mb: 256,
            size: 2,
        }];
    })
    .await
    else {
        return;
    };
    let api = Api::new(&srv);
    // Warm up once so the pool and its snapshot exist before counting fds.
    let id = api.create_ok(json!({})).await;
    assert_eq!(api.delete(&id).await.0, 204);
    let fds_before = open_fds();
    let started = std::time::Instant::now();
    let mut create_ms = Vec::new();
    for i in 0..cycles {
        let t = std::time::Instant::now();
        let id = api.create_ok(json!({})).await;
        create_ms.push(t.elapsed().as_millis() as u64);
        let v = api.bash(&id, &format!("echo {i} > n; cat n")).await;
        assert_eq!(v["stdout"], format!("{i}\n"), "cycle {i}: {v}");
        assert_eq!(api.delete(&id).await.0, 204, "cycle {i}");
    }
    create_ms.sort_unstable();
    eprintln!(
        "soak: {cycles} cycles in {:?}; create p50 {} ms, p95 {} ms",
        started.elapsed(),
        create_ms[create_ms.len() / 2],
        create_ms[create_ms.len() * 95 / 100]
    );
    assert_eq!(srv.metric("tvm_sandboxes_active").await, 0.0);
    // Only the pool's ready VMs may remain (2), each with its dir.
    let vms = std::fs::read_dir(srv.runtime_dir.join("vms"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(vms <= 2, "{vms} VM dirs after the soak");
    assert!(common::vmm_processes(srv.runtime_root.path()).len() <= 2);
    let host_cgroups = instance_cgroups(&srv);
    assert!(
        host_cgroups <= 2,
        "{host_cgroups} host cgroups after the soak"
    );
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + 8,
        "file descriptors grew from {fds_before} to {fds_after}"
    );
    srv.stop().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// VM cgroups of this instance, in whichever hierarchy holds them.
fn instance_cgroups(srv: &TestServer) -> usize {
    let instance = srv
        .runtime_dir
        .file_name()
        .expect("instance name")
        .to_owned();
    let mut n = 0;
    for root in [
        "/sys/fs/cgroup/memory/tvm",
        "/sys/fs/cgroup/tvm",
        "/sys/fs/cgroup/cpu/tvm",
    ] {
        let dir = std::path::Path::new(root).join(&instance);
        n = n.max(
            std::fs::read_dir(&dir)
                .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
                .unwrap_or(0),
        );
    }
    n
}

/// A client that stops waiting half-way through an exec (unary or streamed) does not
/// end the sandbox, and the next request gets its own answer, not the old one's.
#[tokio::test]
async fn a_client_that_gives_up_mid_exec_leaves_the_sandbox_consistent() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let api = Api::new(&srv);
    let id = api.create_ok(json!({})).await;
    for path in ["execute", "execute/stream"] {
        let quitter = reqwest::Client::builder()
            .timeout(Duration::from_millis(700))
            .build()
            .unwrap();
        let r = quitter
            .post(format!("{}/v1/sandboxes/{id}/{path}", srv.base))
            .json(&json!({"language": "bash",
                          "code": "echo early; sleep 2; echo done >> marker; echo late"}))
            .send()
            .await;
        // The unary call times out; the stream's headers arrive, its body does not.
        if let Ok(resp) = r {
            assert!(
                resp.text().await.is_err(),
                "{path}: the body should not complete"
            );
        }
        // The next request waits for the abandoned exec, then gets its own output.
        let v = api.bash(&id, "cat marker; echo mine").await;
        assert_eq!(v["status"], "completed", "{path}: {v}");
        assert!(
            v["stdout"].as_str().unwrap().ends_with("done\nmine\n"),
            "{path}: {v}"
        );
        assert!(
            !v["stdout"].as_str().unwrap().contains("late"),
            "{path}: {v}"
        );
    }
    assert_eq!(api.get_file(&id, "marker").await.body, b"done\ndone\n");
    assert_eq!(api.delete(&id).await.0, 204);
    srv.stop().await;
}
