//! The warm pool with real microVMs: hits are used once, refills happen, an empty
//! pool falls back to a cold boot, and shutdown leaves nothing. These run the plain
//! pool (snapshots off); tests/snapshot.rs covers a pool of snapshot clones.

mod common;

use std::time::Duration;

use common::TestServer;
use pyrovm::pool::PoolClass;
use serde_json::json;

fn vm_dirs(srv: &TestServer) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(srv.runtime_dir.join("vms"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn wait_ready(srv: &TestServer, want: f64) {
    srv.wait_metric("tvm_pool_ready_vms", want, Duration::from_secs(60))
        .await;
}

#[tokio::test]
async fn a_hit_is_used_once_then_refilled_and_shutdown_drains() {
    let Some(srv) = TestServer::start(|c| {
        c.pool = vec![PoolClass {
            vcpus: 1,
            memory_mb: 256,
            size: 1,
        }];
        c.snapshot.enabled = false;
    })
    .await
    else {
        return;
    };
    wait_ready(&srv, 1.0).await;
    let before = vm_dirs(&srv);
    assert_eq!(before.len(), 1, "one pooled VM");
    let (status, v) = srv
        .execute(json!({"language": "python", "code": "print(1)"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "1\n");
    let vm_start = v["timings_ms"]["vm_start"].as_u64().unwrap();
    assert!(
        vm_start < 100,
        "a pool hit needs no boot: vm_start {vm_start} ms"
    );
    assert_eq!(
        srv.metric("tvm_pool_takes_total{result=\"hit\"}").await,
        1.0
    );
    // The used VM is gone for good; a fresh one takes its place.
    wait_ready(&srv, 1.0).await;
    let after = vm_dirs(&srv);
    assert_eq!(after.len(), 1);
    assert!(
        !after.contains(&before[0]),
        "the used VM was destroyed, not returned"
    );
    // A class the pool does not keep is cold-booted.
    let (_, v) = srv
        .execute(json!({"language": "bash", "code": "echo cold", "limits": {"memory_mb": 128}}))
        .await;
    assert_eq!(v["stdout"], "cold\n");
    assert!(v["timings_ms"]["vm_start"].as_u64().unwrap() >= 100);
    srv.stop().await; // asserts: no runtime dir, no VMM process
}

#[tokio::test]
async fn an_empty_pool_falls_back_to_a_cold_boot() {
    let Some(srv) = TestServer::start(|c| {
        c.pool = vec![PoolClass {
            vcpus: 1,
            memory_mb: 256,
            size: 1,
        }];
        c.snapshot.enabled = false;
    })
    .await
    else {
        return;
    };
    wait_ready(&srv, 1.0).await;
    let body = json!({"language": "bash", "code": "echo ok"});
    let (a, b) = tokio::join!(srv.execute(body.clone()), srv.execute(body));
    for (status, v) in [a, b] {
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["stdout"], "ok\n", "{v}");
    }
    assert_eq!(
        srv.metric("tvm_pool_takes_total{result=\"hit\"}").await,
        1.0
    );
    assert_eq!(
        srv.metric("tvm_pool_takes_total{result=\"miss\"}").await,
        1.0
    );
    srv.stop().await;
}
