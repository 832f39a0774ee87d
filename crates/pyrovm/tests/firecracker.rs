//! The Firecracker backend with a real `firecracker` and `jailer`.
//!
//! Runs only when `TVM_FIRECRACKER_BIN` and `TVM_JAILER_BIN` are set (and as root);
//! otherwise it prints why it skipped. Where KVM is usable it runs real jobs through
//! pyrovm. Where it is not (a PVM host), everything up to the guest is exercised:
//! the jail is built, the API accepts the whole configuration, the VM starts, and
//! when the guest never becomes ready the request ends as `sandbox_error` naming
//! the backend, with no process, jail, cgroup or socket left behind.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tvm_vmm::accel::{self, Accel};
use tvm_vmm::firecracker::{FirecrackerBackend, FirecrackerConfig};
use tvm_vmm::runtime::Runtime;
use tvm_vmm::Vmm;

fn binaries() -> Option<(PathBuf, PathBuf)> {
    let fc = std::env::var_os("TVM_FIRECRACKER_BIN").map(PathBuf::from);
    let jailer = std::env::var_os("TVM_JAILER_BIN").map(PathBuf::from);
    match (fc, jailer) {
        (Some(f), Some(j)) if nix::unistd::geteuid().is_root() => Some((f, j)),
        (Some(_), Some(_)) => {
            eprintln!("SKIPPED: Firecracker tests need root for the jailer");
            None
        }
        _ => {
            eprintln!(
                "SKIPPED: Firecracker real-binary tests: set TVM_FIRECRACKER_BIN and TVM_JAILER_BIN \
                 (official release binaries) to run them"
            );
            None
        }
    }
}

/// Every path below `dir` (best effort; the tree changes while we walk it).
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// Cgroup dirs under any hierarchy's `tvm/<instance>`.
fn instance_cgroups(instance: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("/proc/self/mounts");
    mounts
        .lines()
        .filter(|l| matches!(l.split_whitespace().nth(2), Some("cgroup" | "cgroup2")))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| PathBuf::from(m).join("tvm").join(instance))
        .filter(|p| p.exists())
        .collect()
}

#[tokio::test]
async fn firecracker_end_to_end_or_clean_failure() {
    let Some((firecracker, jailer)) = binaries() else {
        return;
    };
    let Some(image_dir) = common::image_dir() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();

    if accel::detect().accel == Accel::Kvm {
        // Real guests: the same jobs the QEMU backend runs.
        let Some(srv) = common::TestServer::start(|c| {
            c.backend = pyrovm::BackendChoice::Firecracker;
            c.firecracker_bin = Some(firecracker.clone());
            c.jailer_bin = Some(jailer.clone());
        })
        .await
        else {
            return;
        };
        for (lang, code, want) in [
            ("python", "print(6*7)", "42\n"),
            ("bash", "echo hi", "hi\n"),
            ("javascript", "console.log(1+1)", "2\n"),
        ] {
            let (status, v) = srv.execute(json!({"language": lang, "code": code})).await;
            assert_eq!(status, 200, "{v}");
            assert_eq!(v["backend"], "firecracker");
            assert_eq!(v["stdout"], want, "{v}");
        }
        let (_, v) = srv
            .execute(json!({"language": "python", "code": "while True: pass", "limits": {"timeout_ms": 1000}}))
            .await;
        assert_eq!(v["status"], "timeout", "{v}");
        srv.assert_no_vms().await;
        srv.stop().await;
        // Snapshot clones: each restored into its own jail, each unique.
        let Some(srv) = common::TestServer::start(|c| {
            c.backend = pyrovm::BackendChoice::Firecracker;
            c.firecracker_bin = Some(firecracker.clone());
            c.jailer_bin = Some(jailer.clone());
            c.pool = vec![pyrovm::pool::PoolClass {
                vcpus: 1,
                memory_mb: 256,
                size: 0,
            }];
        })
        .await
        else {
            return;
        };
        srv.wait_metric("tvm_snapshots_ready", 1.0, Duration::from_secs(120))
            .await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (status, v) = srv
                .execute(
                    json!({"language": "python", "code": "import os; print(os.urandom(16).hex())"}),
                )
                .await;
            assert_eq!(status, 200, "{v}");
            seen.push(v["stdout"].as_str().unwrap().to_string());
        }
        assert_ne!(seen[0], seen[1], "two clones drew the same random bytes");
        assert_eq!(
            srv.metric("tvm_snapshot_restores_total{result=\"ok\"}")
                .await,
            2.0
        );
        srv.assert_no_vms().await;
        srv.stop().await;
        return;
    }

    // No usable KVM: everything up to the guest, then a clean failure, through the API.
    eprintln!(
        "NOTE: KVM is not usable here; checking jail, API, vsock and teardown up to the guest"
    );
    let image = tvm_image::image_in(&image_dir);
    let config = pyrovm::Config {
        image_dir: Some(image_dir.clone()),
        runtime_dir: Some(root.path().to_path_buf()),
        ..pyrovm::Config::default()
    };
    let service = pyrovm::Service::with_backend(&config, |_, runtime: Arc<Runtime>| {
        let backend = FirecrackerBackend::new(
            FirecrackerConfig {
                firecracker: firecracker.clone(),
                jailer: jailer.clone(),
                image,
                boot_timeout: Duration::from_secs(8),
                uid_base: 40_000,
                uid_count: 10,
            },
            runtime,
        )
        .map_err(|e| pyrovm::StartError::Backend(e.to_string()))?;
        Ok(Arc::new(backend) as Arc<dyn Vmm>)
    })
    .unwrap();
    let runtime_dir = service.runtime_dir().to_path_buf();
    // First the backend alone, to see the exact failure: it must come from the guest
    // side (Firecracker exiting or the agent never answering), after the jailer, the
    // API configuration and InstanceStart all succeeded.
    {
        let (rt, _) = Runtime::create(&root.path().join("direct")).unwrap();
        let fc_runtime = Arc::new(rt);
        let fc = FirecrackerBackend::new(
            FirecrackerConfig {
                firecracker: firecracker.clone(),
                jailer: jailer.clone(),
                image: tvm_image::image_in(&image_dir),
                boot_timeout: Duration::from_secs(8),
                uid_base: 40_000,
                uid_count: 10,
            },
            fc_runtime.clone(),
        )
        .unwrap();
        // Watch the jails while the backend works: the API must have created the vsock socket.
        let jails = root.path().join("direct");
        let watcher = tokio::spawn(async move {
            let mut seen = false;
            for _ in 0..400 {
                seen |= walk(&jails)
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| n == "v.sock"));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        });
        let t = std::time::Instant::now();
        let err = tvm_vmm::Vmm::start(
            &fc,
            &tvm_vmm::VmSpec {
                vcpus: 1,
                memory_mb: 352,
            },
        )
        .await
        .unwrap_err();
        assert!(
            watcher.await.unwrap(),
            "the vsock Unix socket never appeared in the jail"
        );
        eprintln!("direct start failed after {:?}: {err}", t.elapsed());
        let text = err.to_string();
        assert!(
            matches!(err, tvm_vmm::VmmError::BootTimeout { .. })
                || (matches!(err, tvm_vmm::VmmError::ExitedDuringBoot { .. })
                    && text.contains("firecracker exited")),
            "failure before the guest stage: {text}"
        );
        // A template cannot be made without a guest: the same clean boot failure, and no
        // snapshot dir, jail or process left behind.
        let spec = tvm_vmm::VmSpec {
            vcpus: 1,
            memory_mb: 128,
        };
        let warm = tvm_vmm::WarmSpec {
            commands: vec![vec!["/bin/true".into()]],
            per_command: Duration::from_secs(5),
        };
        let err = tvm_vmm::Vmm::snapshot(&fc, &spec, &warm).await.unwrap_err();
        assert!(
            matches!(
                err,
                tvm_vmm::VmmError::BootTimeout { .. } | tvm_vmm::VmmError::ExitedDuringBoot { .. }
            ),
            "{err}"
        );
        assert!(
            fc_runtime.snapshot_dirs().is_empty(),
            "half-made snapshot left"
        );
        // A snapshot made by another backend is refused before anything starts.
        let foreign_dir = fc_runtime.snapshot_dir("foreign").unwrap();
        let foreign = tvm_vmm::Snapshot {
            id: "foreign".into(),
            spec,
            backend: "qemu-tcg".into(),
            dir: foreign_dir,
            took: Duration::ZERO,
            memory_bytes: 0,
        };
        let err = tvm_vmm::Vmm::restore(&fc, &foreign).await.unwrap_err();
        assert!(matches!(err, tvm_vmm::VmmError::Snapshot(_)), "{err}");
        drop(foreign);
        assert!(fc_runtime.snapshot_dirs().is_empty());
        assert!(fc_runtime.vm_dirs().is_empty(), "VM dir left behind");
    }
    let instance = runtime_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let app = service.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let started = std::time::Instant::now();
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/v1/execute"))
        .json(&json!({"language": "bash", "code": "echo never"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eprintln!("answer after {:?}: {v}", started.elapsed());
    assert_eq!(v["status"], "sandbox_error", "{v}");
    assert_eq!(v["backend"], "firecracker");
    assert!(
        v["error"].as_str().unwrap().starts_with("firecracker:"),
        "{v}"
    );
    // Nothing of the VM is left: no VM dir, jail, process or cgroup.
    let vms: Vec<_> = std::fs::read_dir(runtime_dir.join("vms"))
        .unwrap()
        .flatten()
        .collect();
    assert!(vms.is_empty(), "VM dir left behind: {vms:?}");
    let jails: Vec<_> = std::fs::read_dir(runtime_dir.join("jail/firecracker"))
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default();
    assert!(jails.is_empty(), "jail left behind: {jails:?}");
    let leftover = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains("--api-sock"))
        .count();
    assert_eq!(leftover, 0, "a firecracker process is still running");
    let cgroups: Vec<PathBuf> = instance_cgroups(&instance)
        .iter()
        .flat_map(|p| {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
        })
        .map(|e| e.path())
        .collect();
    assert!(cgroups.is_empty(), "VM cgroups left behind: {cgroups:?}");
    server.abort();
    let _ = server.await;
    drop(service);
    // With the server gone, the service (and its runtime) is dropped: the instance goes too.
    assert!(!runtime_dir.exists(), "instance dir left behind");
    assert!(
        instance_cgroups(&instance).is_empty(),
        "instance cgroups left behind"
    );
}
