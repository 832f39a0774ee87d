//! Snapshot clones with real microVMs: every clone is unique (RNG, clock) before
//! user code runs, a clone whose restore fails is discarded and the request still
//! succeeds on a cold boot, a pool of clones refills, and nothing is left behind
//! (no VM, no process, no snapshot file on tmpfs).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::TestServer;
use pyrovm::pool::PoolClass;
use pyrovm::Config;
use serde_json::json;

/// One class of snapshot clones; `size` VMs kept ready (0: clone per request).
fn clones(c: &mut Config, size: usize) {
    c.pool = vec![PoolClass {
        vcpus: 1,
        memory_mb: 256,
        size,
    }];
    c.snapshot.enabled = true;
    // Python only: the tests need no other runtime warm, and node takes seconds under TCG.
    c.snapshot.warm = vec![vec![
        "/usr/bin/python3".into(),
        "-c".into(),
        "import random, os, time".into(),
    ]];
}

async fn wait_for_metric(srv: &TestServer, name: &str, want: f64) {
    srv.wait_metric(name, want, Duration::from_secs(90)).await;
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

#[tokio::test]
async fn clones_differ_in_random_state_and_have_the_host_clock() {
    let Some(srv) = TestServer::start(|c| clones(c, 0)).await else {
        return;
    };
    wait_for_metric(&srv, "tvm_snapshots_ready", 1.0).await;
    assert_eq!(srv.snapshot_dirs().len(), 1, "one template snapshot");
    let code = "import random, os, time\n\
                print(random.random(), os.urandom(16).hex(), time.time())\n\
                print(open('/proc/sys/kernel/random/boot_id').read().strip())";
    let mut seen = Vec::new();
    for _ in 0..2 {
        let host_before = now_secs();
        let (status, v) = srv
            .execute(json!({"language": "python", "code": code}))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["status"], "completed", "{v}");
        let out = v["stdout"].as_str().unwrap().to_string();
        let fields: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fields.len(), 4, "{out}");
        let guest_time: f64 = fields[2].parse().unwrap();
        assert!(
            guest_time >= host_before - 2.0 && guest_time <= now_secs() + 2.0,
            "guest clock {guest_time} is not the host's ({host_before})"
        );
        seen.push((fields[0].to_string(), fields[1].to_string()));
    }
    assert_ne!(seen[0].0, seen[1].0, "Python's random seeds differ");
    assert_ne!(seen[0].1, seen[1].1, "the kernel RNG output differs");
    assert_eq!(
        srv.metric("tvm_snapshot_restores_total{result=\"ok\"}")
            .await,
        2.0,
        "both requests ran in clones"
    );
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 0.0, "no cold boot");
    srv.assert_no_vms().await;
    srv.stop().await; // also asserts the snapshot files are gone
}

#[tokio::test]
async fn a_failed_restore_is_discarded_and_the_request_still_succeeds() {
    let Some(srv) = TestServer::start(|c| clones(c, 0)).await else {
        return;
    };
    wait_for_metric(&srv, "tvm_snapshots_ready", 1.0).await;
    let dirs = srv.snapshot_dirs();
    assert_eq!(dirs.len(), 1);
    // Corrupt the device state: QEMU's incoming migration must reject it.
    std::fs::write(
        dirs[0].join("state"),
        b"this is not a QEMU migration stream",
    )
    .expect("overwrite state");
    let (status, v) = srv
        .execute(json!({"language": "bash", "code": "echo still served"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "still served\n", "{v}");
    assert_eq!(
        srv.metric("tvm_snapshot_restores_total{result=\"failed\"}")
            .await,
        1.0
    );
    assert_eq!(
        srv.metric("tvm_vm_boots_total").await,
        1.0,
        "cold boot instead"
    );
    srv.assert_no_vms().await; // the failed clone's QEMU and dir are gone
    srv.stop().await;
}

#[tokio::test]
async fn a_pool_of_clones_serves_hits_and_refills() {
    let Some(srv) = TestServer::start(|c| clones(c, 1)).await else {
        return;
    };
    wait_for_metric(&srv, "tvm_pool_ready_vms", 1.0).await;
    let (status, v) = srv
        .execute(json!({"language": "python", "code": "print(6 * 7)"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "42\n");
    assert_eq!(
        srv.metric("tvm_pool_takes_total{result=\"hit\"}").await,
        1.0
    );
    // The refill is another clone.
    wait_for_metric(&srv, "tvm_snapshot_restores_total{result=\"ok\"}", 2.0).await;
    wait_for_metric(&srv, "tvm_pool_ready_vms", 1.0).await;
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 0.0);
    srv.stop().await;
}

/// Ready means fast: `/readyz` is 503, saying what it waits for, while the default
/// class's template is made and its pool fills; the first request after the 200 is
/// a pool hit that starts at once.
#[tokio::test]
async fn readyz_waits_for_the_warm_path_and_the_next_request_is_warm() {
    let Some(srv) = TestServer::start(|c| clones(c, 1)).await else {
        return;
    };
    let (status, body) = srv.get("/readyz").await;
    assert_eq!(status, 503, "ready before the template was made: {body}");
    assert!(body.contains("snapshot template"), "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut waited_for_pool = false;
    loop {
        let (status, body) = srv.get("/readyz").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        waited_for_pool |= body.contains("warm pool");
        assert!(
            std::time::Instant::now() < deadline,
            "not ready within 180 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("readyz turned 200; it waited for the pool too: {waited_for_pool}");
    assert_eq!(srv.metric("tvm_snapshots_ready").await, 1.0);
    let hits = srv.metric("tvm_pool_takes_total{result=\"hit\"}").await;
    let (status, v) = srv
        .execute(json!({"language": "python", "code": "print(1)"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "1\n", "{v}");
    assert_eq!(
        srv.metric("tvm_pool_takes_total{result=\"hit\"}").await,
        hits + 1.0,
        "the first request after ready was not a pool hit: {v}"
    );
    let vm_start = v["timings_ms"]["vm_start"].as_u64().unwrap_or(u64::MAX);
    assert!(vm_start < 100, "vm_start {vm_start} ms on a pool hit: {v}");
    // Ready stays ready while the pool refills behind the burst.
    assert_eq!(srv.get("/readyz").await.0, 200);
}
