//! Faults, with real microVMs: a VMM killed mid-request fails that request only;
//! pyrovm killed mid-request leaves leftovers that the next start reaps (counted);
//! SIGTERM finishes in-flight work, and cuts it at the drain deadline; a full
//! runtime filesystem is a clear 503, not a crash.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Binary, TestServer};
use nix::sys::signal::Signal;
use serde_json::json;

async fn post(url: &str, body: serde_json::Value) -> Result<(u16, serde_json::Value), String> {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/execute"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let v = resp.json().await.map_err(|e| e.to_string())?;
    Ok((status, v))
}

/// Everything an instance can leave behind, counted.
#[derive(Debug, Default, PartialEq, Eq)]
struct Leftovers {
    instance_dirs: usize,
    vm_dirs: usize,
    sockets: usize,
    vmm_processes: usize,
    snapshot_dirs: usize,
    cgroups: usize,
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

fn count(root: &Path, instance: &str) -> Leftovers {
    use std::os::unix::fs::FileTypeExt;
    let files = walk(root);
    let shm = Path::new(tvm_vmm::runtime::SHM_ROOT).join(instance);
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let cgroups = mounts
        .lines()
        .filter(|l| matches!(l.split_whitespace().nth(2), Some("cgroup" | "cgroup2")))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| Path::new(m).join("tvm").join(instance))
        .filter(|p| p.exists())
        .count();
    Leftovers {
        instance_dirs: usize::from(root.join(instance).exists()),
        vm_dirs: std::fs::read_dir(root.join(instance).join("vms"))
            .map(|rd| rd.count())
            .unwrap_or(0),
        sockets: files
            .iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
            .count(),
        vmm_processes: common::vmm_processes(root).len(),
        snapshot_dirs: usize::from(shm.exists()),
        cgroups,
    }
}

fn only_instance(root: &Path) -> String {
    let names: Vec<String> = std::fs::read_dir(root)
        .expect("runtime root")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    names[0].clone()
}

#[tokio::test]
async fn a_vmm_killed_mid_request_fails_that_request_only() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let url = srv.base.clone();
    let victim = tokio::spawn({
        let url = url.clone();
        async move {
            post(
                &url,
                json!({"language": "bash", "code": "sleep 20; echo never"}),
            )
            .await
        }
    });
    // The victim's VMM is the first one to appear.
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim_pid = loop {
        if let Some(&pid) = common::vmm_processes(srv.runtime_root.path()).first() {
            break pid;
        }
        assert!(Instant::now() < deadline, "no VMM appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Let the guest get going, then start a bystander in its own VM.
    while srv.metric("tvm_inflight_executions").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bystander = tokio::spawn({
        let url = url.clone();
        async move {
            post(
                &url,
                json!({"language": "bash", "code": "sleep 2; echo bystander"}),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid as i32),
        Signal::SIGKILL,
    )
    .expect("kill the VMM");
    let (status, v) = victim.await.expect("join").expect("victim answered");
    let answered = killed_at.elapsed();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "sandbox_error", "{v}");
    assert!(
        answered < Duration::from_secs(5),
        "answered {answered:?} after the kill"
    );
    let (status, v) = bystander.await.expect("join").expect("bystander answered");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "bystander\n", "{v}");
    eprintln!("fault | VMM SIGKILL mid-request | victim sandbox_error after {answered:?}; bystander completed");
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn pyrovm_killed_mid_request_is_reaped_on_the_next_start() {
    // Default pool (2 snapshot clones) so there is a template snapshot and pooled VMs too.
    let Some(mut first) = Binary::start("").await else {
        return;
    };
    let root = first.run_root();
    let instance = only_instance(&root);
    let deadline = Instant::now() + Duration::from_secs(120);
    while first.metric("tvm_pool_ready_vms").await < 2.0 {
        assert!(Instant::now() < deadline, "pool did not fill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = first.url.clone();
    let inflight =
        tokio::spawn(
            async move { post(&url, json!({"language": "bash", "code": "sleep 30"})).await },
        );
    while first.metric("tvm_inflight_executions").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = count(&root, &instance);
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    assert!(
        inflight.await.expect("join").is_err(),
        "the request died with the service"
    );
    // QEMU dies with pyrovm (PR_SET_PDEATHSIG); the files stay until a start reaps them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kill = count(&root, &instance);
    eprintln!("fault | pyrovm SIGKILL | while running: {before:?}; after the kill: {after_kill:?}");
    assert!(
        after_kill.instance_dirs == 1 && after_kill.vm_dirs >= 1,
        "{after_kill:?}"
    );
    assert_eq!(
        after_kill.snapshot_dirs, 1,
        "the snapshot outlived the process"
    );

    // The next start (same runtime root) reaps all of it.
    first.restart("pool = []\n").await;
    let reaped = count(&root, &instance);
    eprintln!("fault | pyrovm SIGKILL | after restart: {reaped:?}");
    assert_eq!(
        reaped,
        Leftovers::default(),
        "the dead instance was not fully reaped"
    );
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_refuses_new() {
    let Some(mut b) = Binary::start("pool = []\n").await else {
        return;
    };
    let url = b.url.clone();
    let inflight = tokio::spawn(async move {
        post(
            &url,
            json!({"language": "bash", "code": "sleep 2; echo finished"}),
        )
        .await
    });
    while b.metric("tvm_inflight_executions").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    b.signal(Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = post(&b.url, json!({"language": "bash", "code": "echo late"})).await;
    assert!(
        refused.as_ref().map(|(s, _)| *s == 503).unwrap_or(true),
        "a request after SIGTERM was served: {refused:?}"
    );
    let (status, v) = inflight.await.expect("join").expect("in-flight answered");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "finished\n", "{v}");
    let st = b.wait_exit(Duration::from_secs(30));
    eprintln!(
        "fault | SIGTERM with a request in flight | finished, exit {st:?} after {:?}",
        t.elapsed()
    );
    assert_eq!(st.code(), Some(0));
    assert_eq!(
        std::fs::read_dir(b.run_root())
            .map(|r| r.count())
            .unwrap_or(0),
        0
    );
    assert!(common::vmm_processes(&b.run_root()).is_empty());
}

#[tokio::test]
async fn sigterm_cuts_in_flight_work_at_the_drain_deadline() {
    let Some(mut b) = Binary::start("pool = []\ndrain_timeout_ms = 2000\n").await else {
        return;
    };
    let url = b.url.clone();
    let inflight = tokio::spawn(async move {
        post(
            &url,
            json!({"language": "bash", "code": "sleep 50", "limits": {"timeout_ms": 60000}}),
        )
        .await
    });
    while b.metric("tvm_inflight_executions").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    b.signal(Signal::SIGTERM);
    let st = b.wait_exit(Duration::from_secs(15));
    let took = t.elapsed();
    eprintln!(
        "fault | SIGTERM, drain deadline 2 s, 50 s job in flight | exit {st:?} after {took:?}"
    );
    assert_eq!(st.code(), Some(0));
    assert!(took < Duration::from_secs(8), "exit took {took:?}");
    assert!(
        inflight.await.expect("join").is_err(),
        "the cut request got an answer"
    );
    assert_eq!(
        std::fs::read_dir(b.run_root())
            .map(|r| r.count())
            .unwrap_or(0),
        0
    );
    assert!(common::vmm_processes(&b.run_root()).is_empty());
}

#[tokio::test]
async fn a_full_runtime_filesystem_is_a_503_not_a_crash() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: the full-filesystem test mounts a tmpfs and needs root");
        return;
    }
    let Some(image) = common::image_dir() else {
        return;
    };
    let mnt = tempfile::tempdir().expect("tempdir");
    nix::mount::mount(
        Some("tmpfs"),
        mnt.path(),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16m,mode=0700"),
    )
    .expect("mount a small tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(mnt.path().to_path_buf());
    let root = mnt.path().to_path_buf();
    let Some(srv) = TestServer::start(|c| {
        c.image_dir = Some(image);
        c.runtime_dir = Some(root.clone());
    })
    .await
    else {
        return;
    };
    // Fill the filesystem.
    let filler = root.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let resp = srv
        .client
        .post(format!("{}/v1/execute", srv.base))
        .json(&json!({"language": "bash", "code": "echo hi"}))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers().get("retry-after").expect("Retry-After"), "5");
    let v: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "no_space", "{v}");
    common::check_against_openapi("post", "/v1/execute", 503, &v);
    eprintln!(
        "fault | runtime filesystem full | 503 no_space: {}",
        v["error"]["message"]
    );
    // Space back: served again, no restart needed.
    std::fs::remove_file(&filler).expect("free space");
    let (status, v) = srv
        .execute(json!({"language": "bash", "code": "echo back"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stdout"], "back\n");
    srv.assert_no_vms().await;
    srv.stop().await;
}
