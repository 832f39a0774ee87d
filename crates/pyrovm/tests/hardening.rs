//! Host hardening of QEMU VMs, with real microVMs: while a job runs, its QEMU runs
//! as an unprivileged uid with no supplementary groups, inside its own host cgroup
//! `tvm/<instance>/<vm-id>` with the documented memory and CPU limits; its VM dir
//! is 0700 and its own; no socket under the runtime dir is open to others; the
//! cgroup goes with the VM. The same holds for snapshot clones, whose shared guest
//! RAM no clone can write. These need root (as in CI); otherwise they say SKIPPED.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::TestServer;
use pyrovm::pool::PoolClass;
use serde_json::json;
use tvm_vmm::cgroups::CgroupVersion;

fn skip_unless_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    eprintln!("SKIPPED: QEMU runs as the service's own user unless the service is root");
    true
}

/// What the test learns about one running QEMU.
#[derive(Debug)]
struct Qemu {
    pid: u32,
    args: Vec<String>,
    uid: u32,
    vm_dir: PathBuf,
}

impl Qemu {
    fn after(&self, flag: &str) -> Option<&str> {
        self.args
            .windows(2)
            .find(|w| w[0] == flag)
            .map(|w| w[1].as_str())
    }

    fn vm_id(&self) -> String {
        self.vm_dir
            .file_name()
            .expect("VM dir name")
            .to_string_lossy()
            .into_owned()
    }
}

/// `Uid:`/`Gid:`/`Groups:` fields of /proc/<pid>/status.
fn status_field(pid: u32, name: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"));
    line[name.len() + 1..]
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect()
}

/// Waits (bounded) for a QEMU of this server that has exec'd and whose VM dir exists.
async fn find_qemu(srv: &TestServer) -> Qemu {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(q) = common::vmm_processes(srv.runtime_root.path())
            .into_iter()
            .find_map(inspect)
        {
            return q;
        }
        assert!(Instant::now() < deadline, "no QEMU of this server appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn inspect(pid: u32) -> Option<Qemu> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.first()?.contains("qemu-system") {
        return None;
    }
    let name = args.windows(2).find(|w| w[0] == "-name")?[1].clone();
    let vm_dir = PathBuf::from(name.strip_prefix("guest=")?.replace(",,", ","));
    if !vm_dir.is_dir() {
        return None;
    }
    let uid = status_field(pid, "Uid")[0];
    Some(Qemu {
        pid,
        args,
        uid,
        vm_dir,
    })
}

/// Every path below `dir` (best effort: the tree changes while we walk it).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

/// The QEMU's cgroup dirs, one per hierarchy this host uses.
fn vm_cgroups(srv: &TestServer, q: &Qemu) -> (CgroupVersion, Vec<PathBuf>) {
    let instance = srv
        .runtime_dir
        .file_name()
        .expect("instance")
        .to_string_lossy();
    let (version, mounts) = tvm_vmm::cgroups::detect_cgroups();
    let rel = format!("tvm/{instance}/{}", q.vm_id());
    (version, mounts.iter().map(|m| m.join(&rel)).collect())
}

/// Everything the issue asks of one running QEMU VM.
fn assert_hardened(srv: &TestServer, q: &Qemu) {
    // Unprivileged, no supplementary groups.
    let uids = status_field(q.pid, "Uid");
    let gids = status_field(q.pid, "Gid");
    assert!(uids.iter().all(|u| *u != 0), "QEMU runs as root: {uids:?}");
    assert!(gids.iter().all(|g| *g != 0), "QEMU has gid 0: {gids:?}");
    assert!(
        status_field(q.pid, "Groups").is_empty(),
        "supplementary groups"
    );
    assert!(
        uids.iter().all(|u| *u == q.uid),
        "real, effective, saved, fs uid: {uids:?}"
    );
    let config = pyrovm::Config::default();
    assert!(
        (config.jail_uid_base..config.jail_uid_base + config.jail_uid_count).contains(&q.uid),
        "uid {} is not from the configured range",
        q.uid
    );
    assert!(
        status_field(q.pid, "NoNewPrivs") == [1],
        "no_new_privs is set"
    );
    let sandbox = q.after("-sandbox").expect("-sandbox");
    assert!(sandbox.starts_with("on,") && sandbox.contains("elevateprivileges=deny"));

    // Its own cgroup, in every hierarchy, with the documented limits.
    let instance = srv
        .runtime_dir
        .file_name()
        .expect("instance")
        .to_string_lossy();
    let want = format!("/tvm/{instance}/{}", q.vm_id());
    let membership = std::fs::read_to_string(format!("/proc/{}/cgroup", q.pid)).expect("cgroup");
    let (version, dirs) = vm_cgroups(srv, q);
    assert!(!dirs.is_empty(), "this host has cgroup hierarchies");
    let joined = membership.lines().filter(|l| l.ends_with(&want)).count();
    assert_eq!(
        joined,
        dirs.len(),
        "QEMU is in {want} in each hierarchy:\n{membership}"
    );
    let memory_mb: u64 = q
        .after("-m")
        .and_then(|m| m.strip_suffix('M'))
        .and_then(|m| m.parse().ok())
        .expect("-m <N>M");
    let vcpus: u64 = q.after("-smp").and_then(|s| s.parse().ok()).expect("-smp");
    let accel = if q.after("-accel").is_some_and(|a| a.starts_with("kvm")) {
        tvm_vmm::accel::Accel::Kvm
    } else {
        tvm_vmm::accel::Accel::Tcg
    };
    let memory_limit = (memory_mb + tvm_vmm::qemu::vmm_overhead_mib(accel)) << 20;
    let quota = (vcpus + 1) * 100_000;
    let read = |file: &str| -> String {
        dirs.iter()
            .find_map(|d| std::fs::read_to_string(d.join(file)).ok())
            .unwrap_or_else(|| panic!("no {file} in {dirs:?}"))
            .trim()
            .to_string()
    };
    match version {
        CgroupVersion::V2 => {
            assert_eq!(read("memory.max"), memory_limit.to_string());
            assert_eq!(read("cpu.max"), format!("{quota} 100000"));
        }
        CgroupVersion::V1 => {
            assert_eq!(read("memory.limit_in_bytes"), memory_limit.to_string());
            assert_eq!(read("cpu.cfs_quota_us"), quota.to_string());
            assert_eq!(read("cpu.cfs_period_us"), "100000");
        }
    }
    eprintln!(
        "QEMU pid {} uid {} gid {:?} in {want}: memory limit {} MiB, cpu quota {quota} µs",
        q.pid,
        q.uid,
        gids,
        memory_limit >> 20
    );

    // Its VM dir is its own and private; it runs there.
    let meta = std::fs::metadata(&q.vm_dir).expect("VM dir");
    assert_eq!(meta.mode() & 0o777, 0o700, "VM dir mode");
    assert_eq!(meta.uid(), q.uid, "VM dir owner");
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/cwd", q.pid)).expect("cwd"),
        q.vm_dir
    );
    for e in std::fs::read_dir(&q.vm_dir).expect("VM dir").flatten() {
        let m = e.metadata().expect("metadata");
        assert_eq!(
            m.mode() & 0o077,
            0,
            "{} is open to others",
            e.path().display()
        );
    }
    // The runtime dirs stay root-only; no socket is open to anyone else.
    for d in [
        srv.runtime_root.path(),
        &srv.runtime_dir,
        &srv.runtime_dir.join("vms"),
    ] {
        let m = std::fs::metadata(d).expect("runtime dir");
        assert_eq!((m.mode() & 0o777, m.uid()), (0o700, 0), "{}", d.display());
    }
    let mut sockets = 0;
    for p in walk(srv.runtime_root.path())
        .into_iter()
        .chain(walk(&srv.shm_dir()))
    {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.file_type().is_socket() {
            sockets += 1;
            assert_eq!(
                m.mode() & 0o077,
                0,
                "socket {} is open to others",
                p.display()
            );
        }
    }
    eprintln!("{sockets} socket file(s) under the runtime dirs, none open to others");
}

/// Waits (bounded) until the VM's cgroups and dir are gone.
async fn assert_gone(srv: &TestServer, q: &Qemu) {
    let (_, dirs) = vm_cgroups(srv, q);
    let deadline = Instant::now() + Duration::from_secs(10);
    while dirs.iter().any(|d| d.exists()) || q.vm_dir.exists() {
        assert!(
            Instant::now() < deadline,
            "VM cgroups or dir left behind: {dirs:?} {}",
            q.vm_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_qemu_vm_runs_unprivileged_in_its_own_cgroup() {
    if skip_unless_root() {
        return;
    }
    let Some(srv) = TestServer::start(|c| c.snapshot.enabled = false).await else {
        return;
    };
    let job = srv.execute(json!({
        "language": "bash",
        "code": "sleep 5; echo done",
        "limits": {"timeout_ms": 30000}
    }));
    let probe = async {
        let q = find_qemu(&srv).await;
        // Checked while the job runs (the job sleeps 5 s after the VM is up).
        assert_hardened(&srv, &q);
        q
    };
    let ((status, v), q) = tokio::join!(job, probe);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["stdout"], "done\n", "{v}");
    assert_gone(&srv, &q).await;
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn snapshot_clones_run_unprivileged_and_cannot_write_the_shared_ram() {
    if skip_unless_root() {
        return;
    }
    let Some(srv) = TestServer::start(|c| {
        c.pool = vec![PoolClass {
            vcpus: 1,
            memory_mb: 256,
            size: 0,
        }];
        c.snapshot.enabled = true;
        // Python only: node takes seconds to warm under TCG.
        c.snapshot.warm = vec![vec![
            "/usr/bin/python3".into(),
            "-c".into(),
            "import random, os, time".into(),
        ]];
    })
    .await
    else {
        return;
    };
    srv.wait_metric("tvm_snapshots_ready", 1.0, Duration::from_secs(120))
        .await;
    let mut uids = Vec::new();
    for round in 0..2 {
        let job = srv.execute(json!({
            "language": "python",
            "code": "import time; time.sleep(4); print(6 * 7)",
            "limits": {"timeout_ms": 30000}
        }));
        let probe = async {
            let q = find_qemu(&srv).await;
            assert!(q.after("-incoming").is_some(), "a clone, not a cold boot");
            assert_hardened(&srv, &q);
            // Guest RAM is the template's sealed memfd: even root cannot write it.
            let ram = format!("/proc/{}/fd/4", q.pid);
            let target = std::fs::read_link(&ram).expect("fd 4");
            assert!(
                target.to_string_lossy().starts_with("/memfd:"),
                "{target:?}"
            );
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&ram)
                .expect("open the clone's RAM");
            let e = std::os::unix::fs::FileExt::write_at(&f, b"x", 0)
                .expect_err("the shared guest RAM is sealed");
            assert_eq!(e.raw_os_error(), Some(nix::libc::EPERM), "{e}");
            q
        };
        let ((status, v), q) = tokio::join!(job, probe);
        assert_eq!(status, 200, "round {round}: {v}");
        assert_eq!(v["status"], "completed", "{v}");
        assert_eq!(v["stdout"], "42\n", "{v}");
        assert_gone(&srv, &q).await;
        uids.push(q.uid);
    }
    assert_ne!(uids[0], uids[1], "each clone gets its own uid");
    assert_eq!(
        srv.metric("tvm_snapshot_restores_total{result=\"ok\"}")
            .await,
        2.0,
        "both jobs ran in clones"
    );
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 0.0, "no cold boot");
    srv.assert_no_vms().await;
    srv.stop().await;
}
