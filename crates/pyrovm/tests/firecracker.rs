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
use tvm_vmm::{VmSpec, Vmm};

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
        srv.assert_no_vms();
        srv.stop().await;
        return;
    }

    // No usable KVM: everything up to the guest, then a clean failure.
    eprintln!("NOTE: KVM is not usable here; checking jail, API and teardown up to the guest");
    let (runtime, _) = Runtime::create(root.path()).unwrap();
    let runtime = Arc::new(runtime);
    let instance = runtime
        .dir()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let backend = FirecrackerBackend::new(
        FirecrackerConfig {
            firecracker,
            jailer,
            image: tvm_image::image_in(&image_dir),
            boot_timeout: Duration::from_secs(8),
            uid_base: 40_000,
            uid_count: 10,
        },
        runtime.clone(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = backend
        .start(&VmSpec {
            vcpus: 1,
            memory_mb: 256,
        })
        .await
        .unwrap_err();
    eprintln!(
        "firecracker start failed as expected after {:?}: {err}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            tvm_vmm::VmmError::BootTimeout { .. } | tvm_vmm::VmmError::ExitedDuringBoot { .. }
        ),
        "unexpected error (the API must accept our configuration): {err}"
    );
    assert!(runtime.vm_dirs().is_empty(), "VM dir left behind");
    let jail = runtime.dir().join("jail");
    let jails: Vec<_> = std::fs::read_dir(jail.join("firecracker"))
        .map(|rd| rd.flatten().collect())
        .unwrap_or_default();
    assert!(jails.is_empty(), "jail left behind: {jails:?}");
    assert!(common::vmm_processes(root.path()).is_empty());
    let leftover = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            String::from_utf8_lossy(c).contains("firecracker")
                && String::from_utf8_lossy(c).contains("--api-sock")
        })
        .count();
    assert_eq!(leftover, 0, "a firecracker process is still running");
    let cgroups: Vec<_> = instance_cgroups(&instance)
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
    drop(backend);
    let dir = runtime.dir().to_path_buf();
    drop(runtime);
    assert!(!dir.exists());
    assert!(
        instance_cgroups(&instance).is_empty(),
        "instance cgroups left behind"
    );
}
