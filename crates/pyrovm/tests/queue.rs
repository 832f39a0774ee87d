//! The admission queue, with real microVMs: a burst waits instead of being refused
//! (Piston's endpoint too);
//! a full queue and a queue timeout answer 429 with Retry-After; a client that goes
//! away while queued starts no VM; tokens are served fairly; shutdown answers every
//! queued request and leaves nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::{json, Value};

/// One request's outcome: status, Retry-After, body, when it ended (since `t0`).
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
    at: Duration,
}

async fn post(client: &reqwest::Client, url: String, body: Value, t0: Instant) -> Answer {
    let resp = client.post(url).json(&body).send().await.expect("request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = resp.json().await.expect("json");
    Answer {
        status,
        retry_after,
        body,
        at: t0.elapsed(),
    }
}

fn spawn_post(srv: &TestServer, body: Value, t0: Instant) -> tokio::task::JoinHandle<Answer> {
    let client = srv.client.clone();
    let url = format!("{}/v1/execute", srv.base);
    tokio::spawn(async move { post(&client, url, body, t0).await })
}

/// Occupies the server's only slot with `code`, returning that request once it runs.
async fn hold_the_slot(
    srv: &TestServer,
    code: &str,
    t0: Instant,
) -> tokio::task::JoinHandle<Answer> {
    let running = spawn_post(srv, json!({"language": "bash", "code": code}), t0);
    srv.wait_metric("tvm_slots_in_use", 1.0, Duration::from_secs(30))
        .await;
    running
}

/// `n` requests (`echo i`), returned once all of them wait in the queue.
async fn queue_behind(
    srv: &TestServer,
    n: usize,
    t0: Instant,
) -> Vec<tokio::task::JoinHandle<Answer>> {
    let queued = (0..n)
        .map(|i| {
            spawn_post(
                srv,
                json!({"language": "bash", "code": format!("echo {i}")}),
                t0,
            )
        })
        .collect();
    srv.wait_metric("tvm_queue_depth", n as f64, Duration::from_secs(10))
        .await;
    queued
}

fn authed(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

#[tokio::test]
async fn a_burst_of_16_on_the_default_config_is_served_not_refused() {
    // The shipped defaults, warm pool and snapshot clones included.
    let Some(srv) = TestServer::start(|c| c.pool = pyrovm::Config::default().pool).await else {
        return;
    };
    srv.wait_metric("tvm_pool_ready_vms", 2.0, Duration::from_secs(120))
        .await;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            spawn_post(
                &srv,
                json!({"language": "bash", "code": format!("echo {i}")}),
                t0,
            )
        })
        .collect();
    let mut queued = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let a = t.await.expect("join");
        assert_eq!(a.status, 200, "request {i}: {:?}", a.body);
        assert_eq!(a.body["status"], "completed", "{}", a.body);
        assert_eq!(a.body["stdout"], format!("{i}\n"));
        queued.push(a.body["timings_ms"]["queued"].as_u64().expect("queued"));
    }
    queued.sort_unstable();
    eprintln!(
        "queue | burst of 16, max_concurrency {} | all 200 in {:?}; timings_ms.queued min {} median {} max {}",
        pyrovm::Config::default().max_concurrency,
        t0.elapsed(),
        queued[0],
        queued[8],
        queued[15]
    );
    assert!(
        queued[15] > 0,
        "16 > max_concurrency: some must have waited"
    );
    assert_eq!(srv.metric("tvm_queue_wait_seconds_count").await, 16.0);
    assert_eq!(srv.metric("tvm_rejected_total").await, 0.0);
    assert_eq!(srv.metric("tvm_queue_depth").await, 0.0);
    // The pool's VMs stay until the end; `stop` checks that nothing is left.
    srv.stop().await;
}

#[tokio::test]
async fn beyond_a_tiny_queue_429_with_retry_after() {
    let Some(srv) = TestServer::start(|c| {
        c.max_concurrency = 1;
        c.max_queued = Some(2);
    })
    .await
    else {
        return;
    };
    let t0 = Instant::now();
    let running = hold_the_slot(&srv, "sleep 2; echo a", t0).await;
    let waiting = queue_behind(&srv, 2, t0).await;
    let refused = post(
        &srv.client,
        format!("{}/v1/execute", srv.base),
        json!({"language": "bash", "code": "echo over"}),
        t0,
    )
    .await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.body["error"]["code"], "at_capacity");
    let retry = refused.retry_after.expect("Retry-After");
    assert!((1..=600).contains(&retry), "{retry}");
    common::check_against_openapi("post", "/v1/execute", 429, &refused.body);
    assert_eq!(running.await.expect("join").status, 200);
    for w in waiting {
        let a = w.await.expect("join");
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert!(a.body["timings_ms"]["queued"].as_u64().unwrap() > 0);
    }
    eprintln!(
        "queue | max_concurrency 1, max_queued 2 | 3 served, the 4th 429 at_capacity Retry-After {retry}"
    );
    // A timed-out wait: 429 queue_timeout, Retry-After from the drain rate seen so far.
    srv.assert_no_vms().await;
    srv.stop().await;

    let Some(srv) = TestServer::start(|c| {
        c.max_concurrency = 1;
        c.queue_timeout_ms = 700;
    })
    .await
    else {
        return;
    };
    let t0 = Instant::now();
    let running = hold_the_slot(&srv, "sleep 3", t0).await;
    let started = t0.elapsed();
    let late = post(
        &srv.client,
        format!("{}/v1/execute", srv.base),
        json!({"language": "bash", "code": "echo late"}),
        t0,
    )
    .await;
    assert_eq!(late.status, 429, "{:?}", late.body);
    assert_eq!(late.body["error"]["code"], "queue_timeout");
    assert!(late.retry_after.is_some_and(|s| s >= 1));
    let waited = late.at - started;
    assert!(
        waited >= Duration::from_millis(650) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert_eq!(running.await.expect("join").status, 200);
    assert_eq!(
        srv.metric("tvm_vm_boots_total").await,
        1.0,
        "no VM for the timed-out one"
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn a_queued_client_that_disconnects_starts_no_vm() {
    let Some(srv) = TestServer::start(|c| c.max_concurrency = 1).await else {
        return;
    };
    let t0 = Instant::now();
    let running = hold_the_slot(&srv, "sleep 3; echo a", t0).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/v1/execute", srv.base))
        .json(&json!({"language": "bash", "code": "echo never"}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up first: {gone:?}");
    // It left the queue when its connection closed, long before the slot frees.
    let left_by = Instant::now() + Duration::from_secs(1);
    while srv.metric("tvm_queue_depth").await > 0.0 {
        assert!(Instant::now() < left_by, "the queued request did not leave");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = running.await.expect("join");
    assert_eq!(first.status, 200);
    srv.assert_no_vms().await;
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 1.0);
    assert_eq!(srv.metric("tvm_executions_total").await, 1.0);
    srv.stop().await;
}

#[tokio::test]
async fn one_tokens_flood_does_not_starve_anothers_single_request() {
    let Some(mut srv) = TestServer::start(|c| {
        c.tokens = vec!["flood-token".into(), "single-token".into()];
        c.max_concurrency = 2;
    })
    .await
    else {
        return;
    };
    srv.client = authed("flood-token");
    let t0 = Instant::now();
    let flood: Vec<_> = (0..12)
        .map(|i| {
            spawn_post(
                &srv,
                json!({"language": "bash", "code": format!("sleep 0.2; echo {i}")}),
                t0,
            )
        })
        .collect();
    srv.wait_metric("tvm_queue_depth", 10.0, Duration::from_secs(30))
        .await;
    let single = post(
        &authed("single-token"),
        format!("{}/v1/execute", srv.base),
        json!({"language": "bash", "code": "echo b"}),
        t0,
    )
    .await;
    assert_eq!(single.status, 200, "{:?}", single.body);
    assert_eq!(single.body["stdout"], "b\n");
    let mut ends = Vec::new();
    for t in flood {
        let a = t.await.expect("join");
        assert_eq!(a.status, 200, "{:?}", a.body);
        ends.push(a.at);
    }
    ends.sort_unstable();
    let median = ends[6];
    eprintln!(
        "queue | fairness: token A's 12 ended {:?}..{:?} (median {median:?}); token B's one at {:?}",
        ends[0], ends[11], single.at
    );
    assert!(
        single.at < median,
        "B ({:?}) must finish before A's median ({median:?})",
        single.at
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn pistons_endpoint_waits_in_the_same_queue() {
    let Some(srv) = TestServer::start(|c| c.max_concurrency = 1).await else {
        return;
    };
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let client = srv.client.clone();
            let url = format!("{}/api/v2/execute", srv.base);
            let body = json!({"language": "bash", "version": "*", "files": [{"content": format!("echo {i}")}]});
            tokio::spawn(async move { post(&client, url, body, t0).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let a = t.await.expect("join");
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["run"]["stdout"], format!("{i}\n"), "{}", a.body);
    }
    assert!(srv.metric("tvm_queue_wait_seconds_count").await >= 4.0);
    assert_eq!(srv.metric("tvm_rejected_total").await, 0.0);
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_answers_every_queued_request_and_leaves_nothing() {
    let Some(srv) = TestServer::start(|c| c.max_concurrency = 1).await else {
        return;
    };
    let t0 = Instant::now();
    let running = hold_the_slot(&srv, "sleep 2; echo a", t0).await;
    let queued = queue_behind(&srv, 4, t0).await;
    let asked = t0.elapsed();
    let stopping = tokio::spawn(async move {
        srv.stop().await;
    });
    for q in queued {
        let a = q.await.expect("join");
        assert_eq!(a.status, 503, "{:?}", a.body);
        assert_eq!(a.body["error"]["code"], "shutting_down");
        assert!(a.retry_after.is_some());
        assert!(
            a.at - asked < Duration::from_secs(1),
            "answered at once, not after the drain"
        );
    }
    // The running one finishes (drain), then everything is gone (`stop` asserts it).
    let a = running.await.expect("join");
    assert_eq!(a.status, 200, "{:?}", a.body);
    stopping.await.expect("stop");
}
