//! Firecracker backend, started through its jailer.
//!
//! Per VM: a chroot under the instance's runtime dir (`<instance>/jail/<exec>/<id>/root`)
//! holding hard links to the image files; the jailer drops to an unprivileged
//! uid/gid, puts the VMM in a cgroup (`tvm/<instance>/<id>`, v2 where the host has v2
//! controllers, v1 otherwise) with memory and CPU limits, a new mount and PID
//! namespace, and is itself started in a new, empty network namespace. The VM is
//! configured over the API socket with typed bodies ([`api`]) and the agent is
//! reached over vsock ([`crate::vsock`]). Teardown kills the VMM, removes the jail
//! and the cgroups; a crashed service's leftovers are reaped on the next start.
//! Boots, snapshot templates and clones ([`snapshot`]) all start from the same
//! jail (`FirecrackerBackend::jail`); they differ only in the API calls sent after.

pub mod api;
pub mod jailer;
pub mod snapshot;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::process::Command;
use tokio_util::codec::Framed;
use tvm_proto::{FrameCodec, GuestMsg};

use self::api::{
    ActionType, ApiCall, ApiClient, BootSource, Drive, EntropyDevice, Logger, MachineConfiguration,
    Vsock,
};
use self::jailer::JailerArgs;
use crate::cgroups::{self, CgroupVersion, VmmLimits};
use crate::runtime::{Runtime, VMM_PID_FILE};
use crate::{
    io_err, AgentChannel, GuestImage, Snapshot, Vm, VmProcess, VmSpec, Vmm, VmmError, WarmSpec,
};

/// Files the jail gets, by their name inside it.
const KERNEL: &str = "vmlinux";
const INITRD: &str = "initramfs.cpio";
const ROOTFS: &str = "rootfs.erofs";
const API_SOCK: &str = "/run/firecracker.socket";
const VSOCK_UDS: &str = "v.sock";
/// Guest memory the VMM itself may use on top of the guest's RAM (page tables, device
/// buffers, the binary); part of the cgroup memory limit.
pub const VMM_OVERHEAD_MIB: u64 = 64;

/// Kernel command line under Firecracker (no PCI bus; i8042 reset ends the VMM).
pub fn kernel_cmdline() -> String {
    "console=ttyS0 quiet reboot=k panic=-1 pci=off tvm.channel=vsock tvm.rootfs=/dev/vda tvm.rootfstype=erofs"
        .to_string()
}

/// Where to find a binary: an explicit path, then an environment variable, then PATH.
pub fn find_binary(explicit: Option<&Path>, env: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    pub firecracker: PathBuf,
    pub jailer: PathBuf,
    pub image: GuestImage,
    pub boot_timeout: Duration,
    /// VMs run as uid/gid `uid_base + n` (n cycles through 0..uid_count).
    pub uid_base: u32,
    pub uid_count: u32,
}

#[derive(Debug)]
pub struct FirecrackerBackend {
    cfg: FirecrackerConfig,
    runtime: Arc<Runtime>,
    staged: PathBuf,
    jail_base: PathBuf,
    parent_cgroup: String,
    cgroup_version: CgroupVersion,
    cgroup_mounts: Vec<PathBuf>,
    next: AtomicU32,
}

impl FirecrackerBackend {
    /// Checks the binaries, stages the image next to the jails (same filesystem, so
    /// each jail gets hard links rather than copies), and detects the cgroup layout.
    pub fn new(cfg: FirecrackerConfig, runtime: Arc<Runtime>) -> Result<Self, VmmError> {
        for (what, p) in [("firecracker", &cfg.firecracker), ("jailer", &cfg.jailer)] {
            let ok = std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if !ok {
                return Err(VmmError::Unavailable(format!(
                    "{what} binary {} not found or not executable (install the official Firecracker release; see README)",
                    p.display()
                )));
            }
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(VmmError::Unavailable(
                "the jailer must be started as root".into(),
            ));
        }
        cfg.image.check()?;
        let staged = runtime.dir().join("fc-image");
        std::fs::create_dir_all(&staged).map_err(io_err("create fc-image"))?;
        for (src, name) in [
            (&cfg.image.kernel, KERNEL),
            (&cfg.image.initramfs, INITRD),
            (&cfg.image.rootfs, ROOTFS),
        ] {
            let dst = staged.join(name);
            if std::fs::hard_link(src, &dst).is_err() {
                std::fs::copy(src, &dst).map_err(io_err(format!("stage {}", src.display())))?;
            }
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o644))
                .map_err(io_err("chmod staged image"))?;
        }
        let jail_base = runtime.dir().join("jail");
        std::fs::create_dir_all(&jail_base).map_err(io_err("create jail base"))?;
        let instance = runtime
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (cgroup_version, cgroup_mounts) = cgroups::detect_cgroups();
        // Firecracker is the jailer's child; when the jailer exits it is reparented. As a
        // subreaper, that parent is us, so teardown can reap it instead of leaving a
        // zombie to whatever init the host (or container) has.
        // SAFETY: prctl with an integer argument; no memory is passed.
        unsafe {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
        Ok(Self {
            cfg,
            runtime,
            staged,
            jail_base,
            parent_cgroup: format!("tvm/{instance}"),
            cgroup_version,
            cgroup_mounts,
            next: AtomicU32::new(0),
        })
    }

    /// Builds a fresh jail (new id, next uid of the rotation, own cgroup, own network
    /// namespace), places `extra` files in it next to the image links, starts the
    /// jailer and waits until Firecracker's API socket accepts connections. Nothing is
    /// configured yet. Shared by boots, templates and clones; on error everything
    /// made so far is removed (the [`FcProcess`] inside owns it from the start).
    async fn jail(&self, spec: &VmSpec, extra: &[JailFile]) -> Result<Jailed, VmmError> {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let vm_dir = self.runtime.vm_dir(&id)?;
        let chroot = jailer::chroot_dir(&self.jail_base, &self.cfg.firecracker, &id);
        let jail_top = chroot
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| chroot.clone());
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.cfg.uid_count.max(1);
        let uid = self.cfg.uid_base + n;
        let mut proc = FcProcess {
            pid: None,
            vm_dir: vm_dir.clone(),
            jail: jail_top,
            cgroup_mounts: self.cgroup_mounts.clone(),
            parent_cgroup: self.parent_cgroup.clone(),
            id: id.clone(),
            done: false,
        };
        self.prepare_jail(&chroot, uid)?;
        if !extra.is_empty() {
            let (files, into) = (extra.to_vec(), chroot.clone());
            tokio::task::spawn_blocking(move || snapshot::place_in_jail(&files, &into))
                .await
                .map_err(|e| VmmError::Snapshot(format!("placing files in the jail: {e}")))??;
        }

        let limits = VmmLimits::for_vm(spec.vcpus, spec.memory_mb, VMM_OVERHEAD_MIB);
        let args = jailer::jailer_command_line(&JailerArgs {
            id: &id,
            exec_file: &self.cfg.firecracker,
            uid,
            gid: uid,
            chroot_base: &self.jail_base,
            cgroup_version: self.cgroup_version,
            parent_cgroup: &self.parent_cgroup,
            cgroups: cgroups::cgroup_settings(self.cgroup_version, limits),
            api_sock: API_SOCK,
        });
        let console = std::fs::File::create(vm_dir.join("console.log"))
            .map_err(io_err("create console.log"))?;
        let log =
            std::fs::File::create(vm_dir.join("vmm.log")).map_err(io_err("create vmm.log"))?;
        let mut cmd = Command::new(&self.cfg.jailer);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // SAFETY: only the unshare(2) syscall runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // A new network namespace with nothing but a down loopback.
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let deadline = started + self.cfg.boot_timeout;
        let mut jailer_child = cmd
            .spawn()
            .map_err(io_err(format!("spawn {}", self.cfg.jailer.display())))?;
        // With --new-pid-ns the jailer exits once Firecracker is cloned.
        let status = tokio::time::timeout_at(deadline.into(), jailer_child.wait())
            .await
            .map_err(|_| self.boot_timeout_err(&vm_dir, &chroot))?
            .map_err(io_err("wait for the jailer"))?;
        if !status.success() {
            return Err(VmmError::ExitedDuringBoot {
                status: format!("jailer {status}"),
                log_tail: crate::qemu::tail(&vm_dir.join("vmm.log"), 600),
            });
        }
        let pid_file = chroot.join(format!(
            "{}.pid",
            self.cfg
                .firecracker
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let pid = wait_for(deadline, || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
        })
        .await
        .ok_or_else(|| self.boot_timeout_err(&vm_dir, &chroot))?;
        proc.pid = Some(pid);
        std::fs::write(vm_dir.join(VMM_PID_FILE), pid.to_string())
            .map_err(io_err("write vmm.pid"))?;

        // The socket file appears at bind(); it accepts only after listen(): wait for a connect.
        let api_path = chroot.join(API_SOCK.trim_start_matches('/'));
        loop {
            let ready = crate::uds::SocketPath::new(&api_path)
                .and_then(|p| std::os::unix::net::UnixStream::connect(p.path()))
                .is_ok();
            if ready {
                break;
            }
            if Instant::now() >= deadline || !alive(pid) {
                return Err(self.exited_or_timeout(pid, &vm_dir, &chroot));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Jailed {
            id,
            proc,
            pid,
            chroot,
            vm_dir,
            api: ApiClient::new(&api_path),
            started,
            deadline,
        })
    }

    /// Sends `calls` in order; the first refusal ends it.
    async fn send_all(&self, j: &Jailed, calls: &[ApiCall]) -> Result<(), VmmError> {
        for call in calls {
            j.api
                .send(call)
                .await
                .map_err(|e| VmmError::Api(e.to_string()))?;
        }
        Ok(())
    }

    /// Connects to the agent over the jail's vsock socket and waits for its `Ready`;
    /// returns the channel and the guest uptime the agent reported.
    async fn agent(&self, j: &Jailed) -> Result<(AgentChannel, u64), VmmError> {
        let (pid, vm_dir, chroot, deadline) = (j.pid, &j.vm_dir, &j.chroot, j.deadline);
        let uds = chroot.join(VSOCK_UDS);
        let stream = tokio::select! {
            r = crate::vsock::connect(&uds, tvm_proto::VSOCK_PORT, deadline) => r.map_err(|e| {
                if alive(pid) { VmmError::BootTimeout { timeout: self.cfg.boot_timeout, console_tail: format!("{e}; console: {}", crate::qemu::tail(&vm_dir.join("console.log"), 600)) } }
                else { self.exited_or_timeout(pid, vm_dir, chroot) }
            })?,
            _ = wait_for_exit(pid) => return Err(self.exited_or_timeout(pid, vm_dir, chroot)),
        };
        let mut framed = Framed::new(stream, FrameCodec::new());
        let first = tokio::time::timeout_at(deadline.into(), framed.next())
            .await
            .map_err(|_| self.boot_timeout_err(vm_dir, chroot))?;
        match first {
            Some(Ok(GuestMsg::Ready { boot_ms, .. })) => Ok((framed, boot_ms)),
            Some(Ok(other)) => Err(VmmError::Protocol(format!("{other:?}"))),
            Some(Err(e)) => Err(VmmError::Channel(e)),
            None => Err(VmmError::Channel(tvm_proto::CodecError::Closed)),
        }
    }

    /// One cold boot: a jail, the configuration calls, the agent's first `Ready`.
    async fn boot_once(&self, spec: &VmSpec) -> Result<(Jailed, AgentChannel, u64), VmmError> {
        let j = self.jail(spec, &[]).await?;
        self.send_all(&j, &configuration_calls(spec)).await?;
        let (channel, guest_boot_ms) = self.agent(&j).await?;
        Ok((j, channel, guest_boot_ms))
    }

    /// A cold boot, retried once when the guest hung or the VMM died during it.
    async fn boot(&self, spec: &VmSpec) -> Result<(Jailed, AgentChannel, u64), VmmError> {
        match self.boot_once(spec).await {
            Err(e @ (VmmError::BootTimeout { .. } | VmmError::ExitedDuringBoot { .. })) => {
                tracing::warn!(error = %e, "firecracker guest boot failed; retrying once");
                self.boot_once(spec).await
            }
            other => other,
        }
    }

    /// The chroot with the image hard-linked in and writable spots for the jailed uid.
    fn prepare_jail(&self, chroot: &Path, uid: u32) -> Result<(), VmmError> {
        std::fs::create_dir_all(chroot.join("run")).map_err(io_err("create jail"))?;
        for name in [KERNEL, INITRD, ROOTFS] {
            std::fs::hard_link(self.staged.join(name), chroot.join(name))
                .map_err(io_err(format!("link {name} into the jail")))?;
        }
        for f in ["fc.log", "fc.metrics"] {
            std::fs::File::create(chroot.join(f)).map_err(io_err("create log file"))?;
            std::os::unix::fs::chown(chroot.join(f), Some(uid), Some(uid))
                .map_err(io_err("chown log file"))?;
        }
        for d in [chroot.to_path_buf(), chroot.join("run")] {
            std::os::unix::fs::chown(&d, Some(uid), Some(uid)).map_err(io_err("chown jail dir"))?;
        }
        Ok(())
    }

    fn boot_timeout_err(&self, vm_dir: &Path, chroot: &Path) -> VmmError {
        VmmError::BootTimeout {
            timeout: self.cfg.boot_timeout,
            console_tail: format!(
                "{} | firecracker log: {}",
                crate::qemu::tail(&vm_dir.join("console.log"), 600),
                crate::qemu::tail(&chroot.join("fc.log"), 600)
            ),
        }
    }

    fn exited_or_timeout(&self, pid: i32, vm_dir: &Path, chroot: &Path) -> VmmError {
        if alive(pid) {
            return self.boot_timeout_err(vm_dir, chroot);
        }
        VmmError::ExitedDuringBoot {
            status: "firecracker exited".into(),
            log_tail: format!(
                "{} | console: {} | firecracker log: {}",
                crate::qemu::tail(&vm_dir.join("vmm.log"), 600),
                crate::qemu::tail(&vm_dir.join("console.log"), 600),
                crate::qemu::tail(&chroot.join("fc.log"), 600)
            ),
        }
    }
}

/// Logger and metrics: the only calls Firecracker accepts before a snapshot load too.
pub fn logging_calls() -> Vec<ApiCall> {
    vec![
        ApiCall::logger(&Logger {
            log_path: "/fc.log".into(),
            level: "Warning".into(),
            show_level: true,
            show_log_origin: false,
        }),
        ApiCall::metrics(&api::Metrics {
            metrics_path: "/fc.metrics".into(),
        }),
    ]
}

/// The API calls that configure and start one VM, in order.
pub fn configuration_calls(spec: &VmSpec) -> Vec<ApiCall> {
    let mut calls = logging_calls();
    calls.extend([
        ApiCall::machine_config(&MachineConfiguration {
            vcpu_count: spec.vcpus,
            mem_size_mib: spec.memory_mb,
            smt: false,
        }),
        ApiCall::boot_source(&BootSource {
            kernel_image_path: format!("/{KERNEL}"),
            initrd_path: Some(format!("/{INITRD}")),
            boot_args: Some(kernel_cmdline()),
        }),
        ApiCall::drive(&Drive {
            drive_id: "rootfs".into(),
            path_on_host: format!("/{ROOTFS}"),
            is_root_device: false,
            is_read_only: true,
        }),
        ApiCall::vsock(&Vsock {
            guest_cid: 3,
            uds_path: format!("/{VSOCK_UDS}"),
        }),
        ApiCall::entropy(&EntropyDevice::default()),
        ApiCall::action(ActionType::InstanceStart),
    ]);
    calls
}

async fn wait_for<T>(deadline: Instant, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn alive(pid: i32) -> bool {
    // A zombie still has /proc/<pid>; its state letter says so.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        })
        .unwrap_or(false)
}

/// Waits (bounded) until `pid` is gone: reaped by us when it is our child (we are a
/// subreaper), else until /proc says it is dead.
fn reap(pid: i32, until: Instant) {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return,
            Err(nix::errno::Errno::ECHILD) => {
                if !alive(pid) {
                    return;
                }
            }
            Err(_) => return,
        }
        if Instant::now() >= until {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn wait_for_exit(pid: i32) {
    while alive(pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[async_trait::async_trait]
impl Vmm for FirecrackerBackend {
    fn name(&self) -> &str {
        "firecracker"
    }

    async fn start(&self, spec: &VmSpec) -> Result<Vm, VmmError> {
        let (j, channel, guest_boot_ms) = self.boot(spec).await?;
        Ok(j.into_vm(channel, guest_boot_ms))
    }

    async fn snapshot(&self, spec: &VmSpec, warm: &WarmSpec) -> Result<Snapshot, VmmError> {
        snapshot::make(self, spec, warm).await
    }

    async fn restore(&self, snapshot: &Snapshot) -> Result<Vm, VmmError> {
        snapshot::restore(self, snapshot).await
    }
}

/// A file to place in a jail before the jailer starts: its host path and its name
/// in the chroot.
#[derive(Debug, Clone)]
struct JailFile {
    from: PathBuf,
    name: &'static str,
}

/// A jailed Firecracker whose API socket accepts connections. Dropping it tears
/// the VM down (through its [`FcProcess`]).
#[derive(Debug)]
struct Jailed {
    id: String,
    proc: FcProcess,
    pid: i32,
    chroot: PathBuf,
    vm_dir: PathBuf,
    api: ApiClient,
    /// When the jailer was spawned.
    started: Instant,
    /// `started` + the boot timeout: every wait of a boot or restore ends by then.
    deadline: Instant,
}

impl Jailed {
    fn into_vm(self, channel: AgentChannel, guest_boot_ms: u64) -> Vm {
        Vm {
            id: self.id,
            channel: crate::AgentLink::new(channel),
            boot_time: self.started.elapsed(),
            guest_boot_ms,
            process: Box::new(self.proc),
        }
    }
}

/// Owns one jailed Firecracker: its pid (not our child: the jailer cloned it), jail and cgroups.
#[derive(Debug)]
struct FcProcess {
    pid: Option<i32>,
    vm_dir: PathBuf,
    jail: PathBuf,
    cgroup_mounts: Vec<PathBuf>,
    parent_cgroup: String,
    id: String,
    /// Set once torn down, so a later drop does nothing.
    done: bool,
}

impl FcProcess {
    /// Kills, reaps and removes everything; blocks for at most `wait` (run it off the
    /// async workers, see `kill_and_wait`).
    fn teardown(&mut self, wait: Duration) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let until = Instant::now() + wait;
        if let Some(pid) = self.pid.take() {
            if crate::runtime::cmdline_mentions(pid, &self.id) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            reap(pid, until);
        }
        let _ = std::fs::remove_dir_all(&self.jail);
        // A cgroup can be removed only once every thread of the VMM has left it.
        cgroups::remove_vm_cgroup(&self.cgroup_mounts, &self.parent_cgroup, &self.id, until);
        let _ = std::fs::remove_dir_all(&self.vm_dir);
    }
}

#[async_trait::async_trait]
impl VmProcess for FcProcess {
    async fn kill_and_wait(&mut self) {
        // Teardown polls and sleeps while the VMM's threads exit: keep that off the
        // async worker threads.
        let mut job = FcProcess {
            pid: self.pid.take(),
            vm_dir: self.vm_dir.clone(),
            jail: self.jail.clone(),
            cgroup_mounts: self.cgroup_mounts.clone(),
            parent_cgroup: self.parent_cgroup.clone(),
            id: self.id.clone(),
            done: std::mem::replace(&mut self.done, true),
        };
        let _ = tokio::task::spawn_blocking(move || job.teardown(Duration::from_secs(2))).await;
    }

    fn pid(&self) -> Option<u32> {
        self.pid.map(|p| p as u32)
    }

    fn console_tail(&self, max: usize) -> String {
        crate::qemu::tail(&self.vm_dir.join("console.log"), max)
    }
}

impl Drop for FcProcess {
    fn drop(&mut self) {
        self.teardown(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod spec_tests;
