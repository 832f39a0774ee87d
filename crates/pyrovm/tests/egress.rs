//! Opt-in egress with real microVMs. The "outside" is an HTTP server of this test on
//! a loopback alias (127.0.0.2), the only outside these machines have: the guest has
//! no NIC, so it reaches it only through the agent's forwarder and pyrovm's proxy.
//! Off by default; allowed destinations over plain HTTP and `CONNECT`; what the
//! operator allows but the request does not is refused; a raw socket, pyrovm's own
//! API and a name resolving to loopback are refused; the byte cap cuts a download;
//! `pip install --user` of a wheel from a local index persists in a sandbox.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::{check_against_openapi, TestServer};
use serde_json::{json, Value};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test's "outside" web server: fixed answers, and the request lines it saw.
struct Outside {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

const HELLO: &str = "hello from outside";
const BIG: usize = 4 << 20;

impl Outside {
    async fn start(ip: &str) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let wheel = Arc::new(wheel());
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (log, wheel) = (log.clone(), wheel.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&b[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_string();
                    let line = text.lines().next().unwrap_or_default().to_string();
                    log.lock().expect("log").push(text.clone());
                    let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                    let (ctype, body): (&str, Vec<u8>) = match path.as_str() {
                        "/hello" => ("text/plain", HELLO.as_bytes().to_vec()),
                        "/big" => ("application/octet-stream", vec![b'x'; BIG]),
                        "/simple/tvmdemo/" => (
                            "text/html",
                            b"<html><body><a href=\"/files/tvmdemo-1.0-py3-none-any.whl\">tvmdemo-1.0-py3-none-any.whl</a></body></html>".to_vec(),
                        ),
                        "/files/tvmdemo-1.0-py3-none-any.whl" => {
                            ("application/octet-stream", wheel.to_vec())
                        }
                        _ => ("text/plain", b"not found".to_vec()),
                    };
                    let status = if body == b"not found" {
                        "404 Not Found"
                    } else {
                        "200 OK"
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err()
                        || s.write_all(&body).await.is_err()
                    {
                        return;
                    }
                    let _ = s.shutdown().await;
                    // The client read it all when it closes its side.
                    if matches!(s.read(&mut b).await, Ok(0)) {
                        log.lock().expect("log").push(format!("done {path}"));
                    }
                });
            }
        });
        Self { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("log").clone()
    }
}

/// A pure-Python wheel `tvmdemo` 1.0 with `tvmdemo.hello()`, and a RECORD pip checks.
fn wheel() -> Vec<u8> {
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "tvmdemo/__init__.py",
            b"def hello():\n    return 'hello from a wheel'\n".to_vec(),
        ),
        (
            "tvmdemo-1.0.dist-info/METADATA",
            b"Metadata-Version: 2.1\nName: tvmdemo\nVersion: 1.0\n".to_vec(),
        ),
        (
            "tvmdemo-1.0.dist-info/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: tvm-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
                .to_vec(),
        ),
    ];
    let mut record = String::new();
    for (name, data) in &files {
        let digest = sha2::Sha256::digest(data);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        record.push_str(&format!("{name},sha256={b64},{}\n", data.len()));
    }
    record.push_str("tvmdemo-1.0.dist-info/RECORD,,\n");
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in files
            .iter()
            .map(|(n, d)| (*n, d.as_slice()))
            .chain([("tvmdemo-1.0.dist-info/RECORD", record.as_bytes())])
        {
            z.start_file(name, opts).expect("zip entry");
            z.write_all(data).expect("zip write");
        }
        z.finish().expect("zip");
    }
    buf.into_inner()
}

/// A server whose ceiling is the one outside server it starts (`None`: skipped).
async fn with_outside(test: &str) -> Option<(TestServer, Outside)> {
    let outside = Outside::start("127.0.0.2").await;
    let port = outside.addr.port();
    let Some(srv) = TestServer::start(move |c| {
        c.egress.allow = vec![format!("127.0.0.2:{port}")];
    })
    .await
    else {
        eprintln!("SKIP {test}: no guest image (run `make image`)");
        return None;
    };
    Some((srv, outside))
}

async fn python(srv: &TestServer, code: &str, network: Option<Value>) -> (u16, Value) {
    let mut body = json!({"language": "python", "code": code, "limits": {"timeout_ms": 30000}});
    if let Some(n) = network {
        body["network"] = n;
    }
    srv.execute(body).await
}

fn stdout(v: &Value) -> &str {
    v["stdout"].as_str().unwrap_or_default()
}

fn line<'a>(v: &'a Value, key: &str) -> &'a str {
    stdout(v)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= line in {v:#}"))
}

/// Prints `name=<what happened>` for each probe; never raises.
const PROBES: &str = r#"
import http.client, os, socket, urllib.request, urllib.error
def get(url):
    try:
        return urllib.request.urlopen(url, timeout=20).read().decode()
    except urllib.error.HTTPError as e:
        return f"http{e.code}"
    except Exception as e:
        return type(e).__name__
def via(url):
    # Through the proxy even where NO_PROXY (localhost, 127.0.0.1) would skip it.
    try:
        c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=20)
        c.request("GET", url)
        r = c.getresponse()
        body = r.read().decode()
        return body if r.status == 200 else f"http{r.status}"
    except OSError as e:
        return type(e).__name__
def tunnel(host, port, path):
    try:
        c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=20)
        c.set_tunnel(host, port)
        c.request("GET", path)
        return c.getresponse().read().decode()
    except OSError as e:
        return "refused:" + str(e)[:60].replace("\n", " ")
def raw(host, port):
    try:
        socket.create_connection((host, port), timeout=5).close()
        return "connected"
    except OSError as e:
        return type(e).__name__
"#;

#[tokio::test(flavor = "multi_thread")]
async fn egress_is_off_by_default_and_refused_when_the_server_has_none() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        eprintln!("SKIP egress_is_off_by_default_and_refused_when_the_server_has_none: no guest image (run `make image`)");
        return;
    };
    let outside = Outside::start("127.0.0.2").await;
    let port = outside.addr.port();
    let code = format!(
        "{PROBES}\nprint('proxy_env=' + str(os.environ.get('HTTP_PROXY')))\nprint('proxy_port=' + raw('127.0.0.1', 3128))\nprint('direct=' + raw('127.0.0.2', {port}))\nprint('get=' + get('http://127.0.0.2:{port}/hello'))\n"
    );
    let (status, v) = python(&srv, &code, None).await;
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(v["status"], "completed", "{v:#}");
    assert_eq!(line(&v, "proxy_env"), "None", "{v:#}");
    assert_eq!(line(&v, "proxy_port"), "ConnectionRefusedError", "{v:#}");
    assert_eq!(line(&v, "direct"), "ConnectionRefusedError", "{v:#}");
    assert_ne!(line(&v, "get"), HELLO, "{v:#}");
    assert!(
        v.get("network").is_none(),
        "no network usage without egress: {v:#}"
    );
    assert!(
        outside.seen().is_empty(),
        "the outside saw {:?}",
        outside.seen()
    );

    // A request naming any destination on a server without a ceiling: 400, no VM.
    let boots = srv.metric("tvm_vm_boots_total").await;
    let (status, v) = python(
        &srv,
        "print(1)",
        Some(json!({"allow": [format!("127.0.0.2:{port}")]})),
    )
    .await;
    assert_eq!(status, 400, "{v:#}");
    assert_eq!(v["error"]["code"], "network_not_allowed", "{v:#}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("egress is off"),
        "{v:#}"
    );
    assert_eq!(
        srv.metric("tvm_vm_boots_total").await,
        boots,
        "a refused request booted a VM"
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_destinations_only_through_the_proxy() {
    let outside = Outside::start("127.0.0.2").await;
    let other = Outside::start("127.0.0.3").await;
    let (port, other_port) = (outside.addr.port(), other.addr.port());
    let api_port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
    let ap = api_port.clone();
    let Some(srv) = TestServer::start_with_addr(move |c, addr| {
        ap.store(addr.port(), std::sync::atomic::Ordering::SeqCst);
        c.egress.allow = vec![
            format!("127.0.0.2:{port}"),
            format!("127.0.0.3:{other_port}"),
            format!("localhost:{port}"),
        ];
    })
    .await
    else {
        eprintln!(
            "SKIP allowed_destinations_only_through_the_proxy: no guest image (run `make image`)"
        );
        return;
    };
    let api = api_port.load(std::sync::atomic::Ordering::SeqCst);

    // Outside the ceiling: 400 before any VM.
    let boots = srv.metric("tvm_vm_boots_total").await;
    for allow in [
        json!(["example.com"]),
        json!([format!("127.0.0.2:{}", port + 1)]),
        json!(["*.org"]),
    ] {
        let (status, v) = python(&srv, "print(1)", Some(json!({ "allow": allow }))).await;
        assert_eq!(status, 400, "{allow}: {v:#}");
        assert_eq!(v["error"]["code"], "network_not_allowed", "{v:#}");
    }
    assert_eq!(
        srv.metric("tvm_vm_boots_total").await,
        boots,
        "a refused request booted a VM"
    );

    let code = format!(
        "{PROBES}
print('proxy_env=' + os.environ['HTTP_PROXY'])
print('plain=' + get('http://127.0.0.2:{port}/hello'))
print('connect=' + tunnel('127.0.0.2', {port}, '/hello'))
print('operator_only=' + get('http://127.0.0.3:{other_port}/hello'))
print('operator_only_connect=' + tunnel('127.0.0.3', {other_port}, '/hello'))
print('raw=' + raw('127.0.0.2', {port}))
print('api=' + via('http://127.0.0.1:{api}/healthz'))
print('api_direct=' + get('http://127.0.0.1:{api}/healthz'))
print('api_connect=' + tunnel('127.0.0.1', {api}, '/healthz'))
print('api_raw=' + raw('127.0.0.1', {api}))
print('loopback_name=' + via('http://localhost:{port}/hello'))
print('metadata=' + get('http://169.254.169.254/latest/meta-data/'))
"
    );
    let net = json!({"allow": [format!("127.0.0.2:{port}"), format!("localhost:{port}")]});
    let (status, v) = python(&srv, &code, Some(net)).await;
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(v["status"], "completed", "{v:#}");
    check_against_openapi("post", "/v1/execute", 200, &v);
    assert_eq!(line(&v, "proxy_env"), "http://127.0.0.1:3128", "{v:#}");
    assert_eq!(line(&v, "plain"), HELLO, "{v:#}");
    assert_eq!(line(&v, "connect"), HELLO, "{v:#}");
    assert_eq!(line(&v, "operator_only"), "http403", "{v:#}");
    assert!(
        line(&v, "operator_only_connect").starts_with("refused:"),
        "{v:#}"
    );
    assert_eq!(line(&v, "raw"), "ConnectionRefusedError", "{v:#}");
    assert_eq!(line(&v, "api"), "http403", "{v:#}");
    assert_eq!(line(&v, "api_direct"), "URLError", "{v:#}");
    assert!(line(&v, "api_connect").starts_with("refused:"), "{v:#}");
    assert_eq!(line(&v, "api_raw"), "ConnectionRefusedError", "{v:#}");
    assert_eq!(line(&v, "loopback_name"), "http403", "{v:#}");
    assert_eq!(line(&v, "metadata"), "http403", "{v:#}");

    // The response counts it; refusals name host, port and reason.
    let n = &v["network"];
    assert!(
        n["bytes_in"].as_u64().unwrap_or(0) >= 2 * HELLO.len() as u64,
        "{n:#}"
    );
    assert!(n["bytes_out"].as_u64().unwrap_or(0) > 0, "{n:#}");
    assert!(n["connections"].as_u64().unwrap_or(0) >= 8, "{n:#}");
    let refused: Vec<(String, String)> = n["refused"]
        .as_array()
        .expect("refused")
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap_or("").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (host, reason) in [
        ("127.0.0.3", "not_allowed"),
        ("127.0.0.1", "not_allowed"),
        ("localhost", "special_address"),
        ("169.254.169.254", "not_allowed"),
    ] {
        assert!(
            refused.iter().any(|(h, r)| h == host && r == reason),
            "no {host} {reason} in {refused:?}"
        );
    }
    // Plain HTTP reached the outside in origin form, closed after one exchange; the
    // other server and pyrovm's API were never reached.
    let seen: Vec<String> = outside
        .seen()
        .into_iter()
        .filter(|r| !r.starts_with("done "))
        .collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|r| r.starts_with("GET /hello HTTP/1.1")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.to_ascii_lowercase().contains("connection: close")),
        "{seen:?}"
    );
    assert!(other.seen().is_empty(), "{:?}", other.seen());
    assert!(srv.metric("tvm_egress_refused_total").await >= 4.0);
    assert!(srv.metric("tvm_egress_bytes_total").await > 0.0);

    // The byte cap cuts a large download.
    let code = format!(
        "{PROBES}
try:
    data = urllib.request.urlopen('http://127.0.0.2:{port}/big', timeout=30).read()
    print('got=' + str(len(data)))
except Exception as e:
    print('got=' + type(e).__name__)
"
    );
    let net = json!({"allow": [format!("127.0.0.2:{port}")], "max_bytes_in": 1 << 20});
    let (status, v) = python(&srv, &code, Some(net)).await;
    assert_eq!(status, 200, "{v:#}");
    assert_ne!(line(&v, "got"), BIG.to_string(), "{v:#}");
    let n = &v["network"];
    assert!(
        n["bytes_in"].as_u64().unwrap_or(u64::MAX) <= (1 << 20) + 64 * 1024,
        "{n:#}"
    );
    assert!(
        n["refused"]
            .as_array()
            .expect("refused")
            .iter()
            .any(|r| r["reason"] == "limit_bytes"),
        "{n:#}"
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pip_install_from_an_allowed_index_persists_in_a_sandbox() {
    let Some((srv, outside)) =
        with_outside("pip_install_from_an_allowed_index_persists_in_a_sandbox").await
    else {
        return;
    };
    let port = outside.addr.port();
    let (status, sb) = srv
        .post_raw(
            "/v1/sandboxes",
            serde_json::to_vec(&json!({"network": {"allow": [format!("127.0.0.2:{port}")]}}))
                .expect("json"),
        )
        .await;
    assert_eq!(status, 201, "{sb:#}");
    let id = sb["id"].as_str().expect("id").to_string();
    let exec = |code: String, language: &'static str| {
        let srv = &srv;
        let id = id.clone();
        async move {
            srv.post_raw(
                &format!("/v1/sandboxes/{id}/execute"),
                serde_json::to_vec(
                    &json!({"language": language, "code": code, "limits": {"timeout_ms": 60000}}),
                )
                .expect("json"),
            )
            .await
        }
    };
    let (status, v) = exec(
        format!(
            "python3 -m pip install --user --no-cache-dir --disable-pip-version-check --index-url http://127.0.0.2:{port}/simple/ --trusted-host 127.0.0.2 tvmdemo"
        ),
        "bash",
    )
    .await;
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(v["exit_code"], 0, "pip failed: {v:#}");
    assert!(v["network"]["bytes_in"].as_u64().unwrap_or(0) > 0, "{v:#}");
    let (status, v) = exec("import tvmdemo; print(tvmdemo.hello())".into(), "python").await;
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(stdout(&v).trim(), "hello from a wheel", "{v:#}");
    assert_eq!(v["network"]["connections"], 0, "{v:#}");
    let seen = outside.seen();
    assert!(
        seen.iter().any(|r| r.starts_with("GET /simple/tvmdemo/")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.starts_with("GET /files/tvmdemo-1.0-py3-none-any.whl")),
        "{seen:?}"
    );
    // A download left running in the background goes on between requests: nothing
    // asks anything of the sandbox while it runs.
    let (status, v) = exec(
        format!(
            "nohup python3 -c \"import urllib.request; d = urllib.request.urlopen('http://127.0.0.2:{port}/big', timeout=120).read(); open('bg.bin', 'wb').write(d)\" >/dev/null 2>&1 &"
        ),
        "bash",
    )
    .await;
    assert_eq!(status, 200, "{v:#}");
    let started = std::time::Instant::now();
    while !outside.seen().iter().any(|r| r == "done /big") {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(90),
            "the background download did not finish between requests: {:?}",
            outside
                .seen()
                .iter()
                .map(|r| r.lines().next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!(
        "background download of {BIG} bytes done in {:?} with no request running",
        started.elapsed()
    );
    let check = format!(
        "import os, time\nfor _ in range(100):\n    if os.path.exists('bg.bin') and os.path.getsize('bg.bin') == {BIG}: break\n    time.sleep(0.1)\nprint(os.path.getsize('bg.bin'))"
    );
    let (status, v) = exec(check, "python").await;
    assert_eq!(status, 200, "{v:#}");
    assert_eq!(stdout(&v).trim(), BIG.to_string(), "{v:#}");

    // An exec may not ask for a network of its own.
    let (status, v) = srv
        .post_raw(
            &format!("/v1/sandboxes/{id}/execute"),
            serde_json::to_vec(&json!({"language": "python", "code": "print(1)", "network": {"allow": ["127.0.0.2"]}}))
                .expect("json"),
        )
        .await;
    assert_eq!(status, 400, "{v:#}");
    let resp = srv
        .client
        .delete(format!("{}/v1/sandboxes/{id}", srv.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status().as_u16(), 204);
    srv.assert_no_vms().await;
    srv.stop().await;
}

/// The same field through gRPC and through an async execution.
#[tokio::test(flavor = "multi_thread")]
async fn grpc_and_async_executions_carry_the_grant_and_the_usage() {
    use pyrovm::grpc::pb;
    use pyrovm::grpc::pb::execution_client::ExecutionClient;

    let Some((srv, outside)) =
        with_outside("grpc_and_async_executions_carry_the_grant_and_the_usage").await
    else {
        return;
    };
    let port = outside.addr.port();
    let code = format!(
        "import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.2:{port}/hello', timeout=20).read().decode())\n"
    );
    let ch = tonic::transport::Channel::from_shared(srv.base.clone())
        .expect("URL")
        .connect()
        .await
        .expect("gRPC connection");
    let mut client = ExecutionClient::new(ch);
    let r = client
        .execute(pb::ExecuteRequest {
            language: "python".into(),
            code: code.clone(),
            network: Some(pb::Network {
                allow: vec![format!("127.0.0.2:{port}")],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("execute")
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), HELLO, "{r:?}");
    let n = r.network.expect("network usage");
    assert_eq!(n.connections, 1, "{n:?}");
    assert!(n.bytes_in > HELLO.len() as u64, "{n:?}");
    // Outside the ceiling: INVALID_ARGUMENT, nothing runs.
    let e = client
        .execute(pb::ExecuteRequest {
            language: "python".into(),
            code: "print(1)".into(),
            network: Some(pb::Network {
                allow: vec!["example.com".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("outside the ceiling");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    // Async: submitted, then read with the usage in the stored result.
    let (status, sub) = srv
        .post_raw(
            "/v1/executions",
            serde_json::to_vec(&json!({"language": "python", "code": code,
                "network": {"allow": [format!("127.0.0.2:{port}")]}}))
            .expect("json"),
        )
        .await;
    assert_eq!(status, 202, "{sub:#}");
    let id = sub["id"].as_str().expect("id");
    let (status, text) = srv
        .get(&format!("/v1/executions/{id}?wait=true&timeout_ms=60000"))
        .await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(stdout(&v).trim(), HELLO, "{v:#}");
    assert_eq!(v["network"]["connections"], 1, "{v:#}");
    let requests = outside
        .seen()
        .iter()
        .filter(|r| r.starts_with("GET "))
        .count();
    assert_eq!(requests, 2, "{:?}", outside.seen());
    srv.assert_no_vms().await;
    srv.stop().await;
}
