//! Runtime directories: one per service instance, one per VM inside it.
//!
//! ```text
//! <root>/<instance-id>/owner        "<pid> <starttime>" of the service instance
//! <root>/<instance-id>/vms/<vm-id>/ vmm.pid, console.log, vmm.log, agent.sock
//! <snapshots>/<snapshot-id>/         state (+ memory for Firecracker; kept in RAM)
//! ```
//! `<snapshots>` is `<root>/<instance-id>/snapshots` when the root is on tmpfs, else
//! `/dev/shm/tvm/<instance-id>` (with its own `owner` file, reaped the same way),
//! so a snapshot never lands on a disk.
//! Everything is 0700 and the service's, except that a backend may hand a VM dir to
//! the VM's unprivileged uid (QEMU does). On start, [`Runtime::create`] reaps
//! instances whose owner is gone: it kills their VMM processes (checked by command
//! line, so a reused pid is never killed) and removes their cgroups and directories.
//! Dropping the `Runtime` removes its own directory and cgroups.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{io_err, VmmError};

/// File in a VM dir holding the VMM's pid.
pub const VMM_PID_FILE: &str = "vmm.pid";

#[derive(Debug)]
pub struct Runtime {
    dir: PathBuf,
    snapshots: PathBuf,
    /// The snapshot root outside `dir` (on /dev/shm), removed with it.
    shm_dir: Option<PathBuf>,
}

/// Where snapshots go when the runtime root is not on tmpfs.
/// Where snapshots go when the runtime root is not on tmpfs (for root; other users
/// get `/dev/shm/tvm-<uid>`, see [`shm_root`]).
pub const SHM_ROOT: &str = "/dev/shm/tvm";

/// [`SHM_ROOT`] for root, `/dev/shm/tvm-<uid>` for anyone else: a dir another user
/// made first (0700) would otherwise stop the start.
pub fn shm_root() -> PathBuf {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        PathBuf::from(SHM_ROOT)
    } else {
        PathBuf::from(format!("{SHM_ROOT}-{uid}"))
    }
}

/// Whether `p` is on a tmpfs (RAM-backed).
pub fn on_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

/// What a start-up reap removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReapReport {
    pub instances: usize,
    pub processes: usize,
}

impl Runtime {
    /// `$TVM_RUNTIME_DIR`, else `/run/tvm` for root, else `$XDG_RUNTIME_DIR/tvm`,
    /// else `/tmp/tvm-<uid>`.
    pub fn default_root() -> PathBuf {
        if let Some(d) = std::env::var_os("TVM_RUNTIME_DIR") {
            return PathBuf::from(d);
        }
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            return PathBuf::from("/run/tvm");
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
            return PathBuf::from(d).join("tvm");
        }
        PathBuf::from(format!("/tmp/tvm-{uid}"))
    }

    /// Reaps what crashed instances left under `root`, then makes this instance's dir.
    pub fn create(root: &Path) -> Result<(Self, ReapReport), VmmError> {
        mkdir_private(root)?;
        let mut report = reap_stale(root);
        let dir = root.join(ulid::Ulid::new().to_string().to_lowercase());
        mkdir_private(&dir)?;
        mkdir_private(&dir.join("vms"))?;
        let me = std::process::id();
        let start = process_start_time(me).unwrap_or_default();
        let owner = format!("{me} {start}\n");
        fs::write(dir.join("owner"), &owner)
            .map_err(io_err(format!("write {}", dir.join("owner").display())))?;
        let (snapshots, shm_dir) = if on_tmpfs(&dir) {
            (dir.join("snapshots"), None)
        } else {
            let shm_root = &shm_root();
            // Reaping what a crashed instance left on /dev/shm is as important as on disk.
            if mkdir_private(shm_root).is_ok() {
                let r = reap_stale(shm_root);
                report.instances += r.instances;
            }
            let shm = shm_root.join(dir.file_name().unwrap_or_default());
            (shm.join("snapshots"), Some(shm))
        };
        let rt = Self {
            dir,
            snapshots,
            shm_dir,
        };
        if let Some(shm) = &rt.shm_dir {
            mkdir_private(shm)?;
            fs::write(shm.join("owner"), &owner)
                .map_err(io_err(format!("write {}", shm.join("owner").display())))?;
        }
        Ok((rt, report))
    }

    /// Makes a fresh, private directory for one snapshot (on tmpfs).
    pub fn snapshot_dir(&self, id: &str) -> Result<PathBuf, VmmError> {
        let d = self.snapshots.join(id);
        mkdir_private(&d)?;
        Ok(d)
    }

    /// Snapshot directories that currently exist (for tests and leak checks).
    pub fn snapshot_dirs(&self) -> Vec<PathBuf> {
        fs::read_dir(&self.snapshots)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes a fresh, private directory for one VM.
    pub fn vm_dir(&self, vm_id: &str) -> Result<PathBuf, VmmError> {
        let d = self.dir.join("vms").join(vm_id);
        mkdir_private(&d)?;
        Ok(d)
    }

    /// Directories of VMs that currently exist (for tests and leak checks).
    pub fn vm_dirs(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dir.join("vms"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

impl Runtime {
    /// Kills any VMM still recorded, removes the instance's cgroups and its dirs.
    /// Idempotent; the service calls it when it stops (a task still holding a
    /// reference must not keep the dir alive), and `Drop` calls it again.
    pub fn remove(&self) {
        for vm in self.vm_dirs() {
            kill_vmm_of(&vm);
        }
        remove_instance_cgroups(&self.dir);
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(shm) = &self.shm_dir {
            let _ = fs::remove_dir_all(shm);
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.remove();
    }
}

fn mkdir_private(p: &Path) -> Result<(), VmmError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
        .map_err(io_err(format!("create {}", p.display())))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", p.display())))
}

/// Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the instance recorded in an `owner` file is still running.
fn owner_alive(owner: &str) -> bool {
    let mut it = owner.split_whitespace();
    let (Some(pid), Some(start)) = (
        it.next().and_then(|p| p.parse::<u32>().ok()),
        it.next().and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return false;
    };
    process_start_time(pid) == Some(start)
}

/// Whether `/proc/<pid>/cmdline` contains `needle` (a VM's unique id or dir).
pub(crate) fn cmdline_mentions(pid: i32, needle: &str) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = needle.as_bytes();
    !needle.is_empty() && cmdline.windows(needle.len()).any(|w| w == needle)
}

/// Kills the VMM recorded in a VM dir if its command line names that VM (its dir
/// name is a ULID, which QEMU's paths and Firecracker's `--id` both carry).
fn kill_vmm_of(vm_dir: &Path) -> bool {
    let Some(pid) = fs::read_to_string(vm_dir.join(VMM_PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return false;
    };
    let id = vm_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if id.len() < 16 || !cmdline_mentions(pid, &id) {
        return false;
    }
    kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
}

/// Removes the host cgroups (`tvm/<instance>/...`) a backend made for an instance.
fn remove_instance_cgroups(instance_dir: &Path) {
    let Some(name) = instance_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
    else {
        return;
    };
    crate::cgroups::remove_cgroups(&crate::cgroups::all_mounts(), &format!("tvm/{name}"), None);
}

/// Reaps every instance under `root` whose owner process is gone.
pub fn reap_stale(root: &Path) -> ReapReport {
    let mut report = ReapReport::default();
    let Ok(entries) = fs::read_dir(root) else {
        return report;
    };
    for inst in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
        let owner = fs::read_to_string(inst.join("owner")).unwrap_or_default();
        if owner_alive(&owner) {
            continue;
        }
        if let Ok(vms) = fs::read_dir(inst.join("vms")) {
            for vm in vms.flatten() {
                if kill_vmm_of(&vm.path()) {
                    report.processes += 1;
                }
            }
        }
        // Give killed VMMs a moment to leave their cgroups before removing them.
        std::thread::sleep(std::time::Duration::from_millis(50));
        remove_instance_cgroups(&inst);
        if fs::remove_dir_all(&inst).is_ok() {
            report.instances += 1;
            tracing::warn!(dir = %inst.display(), "reaped a crashed instance's runtime dir");
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_dir_is_private_and_removed_on_drop() {
        // A root on tmpfs keeps snapshots inside it, so this test neither touches nor
        // counts what other instances left in /dev/shm/tvm.
        let root = tempfile::tempdir_in("/dev/shm").unwrap();
        let (rt, report) = Runtime::create(root.path()).unwrap();
        assert_eq!(report, ReapReport::default());
        let mode = fs::metadata(rt.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let vm = rt.vm_dir("vm1").unwrap();
        assert_eq!(
            fs::metadata(&vm).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let snap = rt.snapshot_dir("s1").unwrap();
        assert!(on_tmpfs(&snap), "snapshots live in RAM: {}", snap.display());
        assert!(
            snap.starts_with(rt.dir()),
            "a tmpfs root keeps its snapshots"
        );
        assert_eq!(
            fs::metadata(&snap).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let dir = rt.dir().to_path_buf();
        drop(rt);
        assert!(!dir.exists());
        assert!(!snap.exists());
    }

    #[test]
    fn live_owner_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let (rt, _) = Runtime::create(root.path()).unwrap();
        assert_eq!(reap_stale(root.path()), ReapReport::default());
        assert!(rt.dir().exists());
    }

    #[test]
    fn dead_owner_is_reaped_with_its_vmm() {
        let root = tempfile::tempdir().unwrap();
        let inst = root.path().join("deadbeef");
        let vm = inst.join("vms").join("01jdeadbeefdeadbeefdeadbee");
        fs::create_dir_all(&vm).unwrap();
        // An owner that cannot be alive: pid 1's start time is never this.
        fs::write(inst.join("owner"), "1 999999999999\n").unwrap();
        // A stand-in "VMM" whose command line names the VM dir, as QEMU's does.
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30; : 01jdeadbeefdeadbeefdeadbee")
            .spawn()
            .unwrap();
        fs::write(vm.join(VMM_PID_FILE), child.id().to_string()).unwrap();
        // Wait until the shell's cmdline is visible.
        for _ in 0..100 {
            if fs::read(format!("/proc/{}/cmdline", child.id())).is_ok_and(|c| !c.is_empty()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let report = reap_stale(root.path());
        assert_eq!(
            report,
            ReapReport {
                instances: 1,
                processes: 1
            }
        );
        assert!(!inst.exists());
        let status = child.wait().unwrap();
        assert!(!status.success(), "stand-in VMM was killed");
    }

    #[test]
    fn unrelated_pid_is_not_killed() {
        let root = tempfile::tempdir().unwrap();
        let vm = root
            .path()
            .join("x")
            .join("vms")
            .join("01jdeadbeefdeadbeefdeadbee");
        fs::create_dir_all(&vm).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        fs::write(vm.join(VMM_PID_FILE), child.id().to_string()).unwrap();
        assert!(!kill_vmm_of(&vm));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
