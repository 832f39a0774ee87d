//! Load, with real microVMs: far more concurrent requests than the slots and the
//! queue hold: those that fit run or wait, the rest get an immediate 429 with
//! Retry-After, admitted ones stay bounded and the
//! service's memory stays bounded; slow clients (headers or body a trickle at a time)
//! are cut by the header and body deadlines instead of holding the service.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn addr(srv: &TestServer) -> String {
    srv.base.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn far_above_the_limit_admitted_succeed_the_rest_get_429() {
    let Some(srv) = TestServer::start(|c| {
        c.max_concurrency = 2;
        c.max_queued = Some(8);
        // Every queued request is served, however slow the machine.
        c.queue_timeout_ms = 300_000;
    })
    .await
    else {
        return;
    };
    // Warm up the client and the allocator before measuring memory.
    let (status, _) = srv
        .execute(json!({"language": "bash", "code": "echo warm"}))
        .await;
    assert_eq!(status, 200);
    let rss_before = rss_kib();
    let n = 40;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = srv.client.clone();
        let url = format!("{}/v1/execute", srv.base);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let resp = client
                .post(url)
                .json(&json!({"language": "bash", "code": format!("sleep 1; echo {i}")}))
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let v: serde_json::Value = resp.json().await.expect("json");
            (status, retry, v, t.elapsed())
        }));
    }
    let (mut ok, mut refused, mut slowest_ok, mut slowest_429) =
        (0, 0, Duration::ZERO, Duration::ZERO);
    for t in tasks {
        let (status, retry, v, took) = t.await.expect("join");
        match status {
            200 => {
                assert_eq!(v["status"], "completed", "{v}");
                ok += 1;
                slowest_ok = slowest_ok.max(took);
            }
            429 => {
                let secs: u64 = retry
                    .as_deref()
                    .and_then(|r| r.parse().ok())
                    .expect("Retry-After");
                assert!((1..=600).contains(&secs), "{secs}");
                assert_eq!(v["error"]["code"], "at_capacity");
                refused += 1;
                slowest_429 = slowest_429.max(took);
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let rss_growth = rss_kib().saturating_sub(rss_before);
    eprintln!(
        "load | {n} concurrent, max_concurrency 2 | {ok} ok (slowest {slowest_ok:?}), {refused} × 429 (slowest {slowest_429:?}), all in {:?}, service RSS +{rss_growth} KiB",
        started.elapsed()
    );
    assert_eq!(ok, 2 + 8, "the slots and the queue are served");
    assert_eq!(ok + refused, n);
    assert!(
        slowest_429 < Duration::from_secs(2),
        "refusals are immediate"
    );
    assert!(
        slowest_ok < Duration::from_secs(90),
        "admitted requests stay bounded"
    );
    assert!(
        rss_growth < 64 * 1024,
        "service memory grew by {rss_growth} KiB"
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn slow_headers_are_cut_at_the_header_deadline() {
    let Some(srv) = TestServer::start(|c| c.header_timeout_ms = 1000).await else {
        return;
    };
    let mut s = TcpStream::connect(addr(&srv)).await.expect("connect");
    s.write_all(b"POST /v1/execute HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let t = Instant::now();
    // Trickle header bytes; the server must close within the deadline anyway.
    let mut buf = [0u8; 1024];
    let closed = loop {
        tokio::select! {
            r = s.read(&mut buf) => break r.map(|n| n == 0 || buf[..n].starts_with(b"HTTP/1.1 408")).unwrap_or(true),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    break true;
                }
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "connection still open after 10 s"
        );
    };
    assert!(closed);
    eprintln!(
        "load | slowloris headers, header_timeout 1 s | closed after {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // The service is fine.
    let (status, _) = srv.get("/healthz").await;
    assert_eq!(status, 200);
    srv.stop().await;
}

#[tokio::test]
async fn a_slow_body_gets_408_at_the_body_deadline() {
    let Some(srv) = TestServer::start(|c| c.body_timeout_ms = 1000).await else {
        return;
    };
    let mut s = TcpStream::connect(addr(&srv)).await.expect("connect");
    s.write_all(
        b"POST /v1/execute HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"lang",
    )
    .await
    .expect("write");
    let t = Instant::now();
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    resp.extend_from_slice(&buf[..n]);
                    if resp.windows(4).any(|w| w == b"\r\n\r\n") && resp.ends_with(b"}") {
                        break;
                    }
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                // A byte now and then: a per-read timeout alone would never fire.
                let _ = s.write_all(b" ").await;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no answer after 10 s"
        );
    }
    let text = String::from_utf8_lossy(&resp);
    eprintln!(
        "load | slow body, body_timeout 1 s | answered after {:?}",
        t.elapsed()
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"body_timeout\""), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(body).expect("json body");
    common::check_against_openapi("post", "/v1/execute", 408, &v);
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn idle_connections_do_not_block_real_requests() {
    let Some(srv) = TestServer::start(|c| c.header_timeout_ms = 2000).await else {
        return;
    };
    let mut idle = Vec::new();
    for _ in 0..199 {
        idle.push(TcpStream::connect(addr(&srv)).await.expect("connect"));
    }
    // One more that made a request and now idles on keep-alive.
    let mut kept = TcpStream::connect(addr(&srv)).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut b = [0u8; 512];
    let n = kept.read(&mut b).await.expect("response");
    assert!(b[..n].starts_with(b"HTTP/1.1 200"));
    idle.push(kept);
    let (status, v) = srv
        .execute(json!({"language": "bash", "code": "echo through"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "through\n");
    // The idle ones are closed by the header deadline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if matches!(
            tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        ) {
            closed += 1;
        }
    }
    eprintln!("load | 200 idle connections | a request went through; {closed} of 200 closed by the header deadline");
    assert_eq!(closed, 200);
    srv.stop().await;
}
