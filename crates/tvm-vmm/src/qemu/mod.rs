//! QEMU `-M microvm` backend: KVM where usable, TCG otherwise.
//!
//! One QEMU process per VM, no network device, the rootfs read-only, `-sandbox on`
//! with privilege elevation, spawning and resource control denied, and
//! `PR_SET_PDEATHSIG` so it dies with the service. The agent channel is a
//! virtio-serial port whose chardev connects to a Unix socket the host listens on,
//! so the connection exists before the guest runs and no guest write is lost.
//!
//! Host hardening, as Firecracker's jail gives it: when the service runs as root,
//! each QEMU runs as its own unprivileged uid with no supplementary groups and
//! reaches only its VM dir (its working dir) and the files it inherits ([`child`]);
//! and each QEMU runs in its own host cgroup `tvm/<instance>/<vm-id>` with a memory
//! limit of guest RAM + [`vmm_overhead_mib`] and a CPU quota of (vCPUs + 1) CPUs
//! ([`crate::cgroups`]), joined before exec.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio_util::codec::Framed;
use tvm_proto::{FrameCodec, GuestMsg};

use self::child::{ChildSetup, UidLease, UidPool};
use crate::accel::{Accel, AccelChoice};
use crate::cgroups::{HostCgroups, VmCgroup, VmmLimits};
use crate::runtime::{Runtime, VMM_PID_FILE};
use crate::{
    io_err, AgentChannel, GuestImage, Snapshot, Vm, VmProcess, VmSpec, Vmm, VmmError, WarmSpec,
};

mod child;
mod cmdline;
pub use cmdline::{command_line, kernel_cmdline, GuestMemory, QemuArgs};
mod snapshot;

/// Settings of the QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub image: GuestImage,
    pub accel: AccelChoice,
    /// Deadline from spawn to the agent's ready message, per attempt.
    pub boot_timeout: Duration,
    /// When the service runs as root, each VM's QEMU runs as uid `uid_base + n`,
    /// n < `uid_count`, leased so no two live VMs share one (pyrovm passes
    /// `jail_uid_base`/`jail_uid_count`, the range jailed Firecrackers use).
    pub uid_base: u32,
    pub uid_count: u32,
}

/// Memory QEMU itself may use beyond guest RAM, apart from TCG's translation cache
/// (part of the VM's cgroup memory limit).
///
/// Measured here (QEMU 7.2, TCG, 2 cores, 2026-11): `Rss` from `/proc/<pid>/smaps`,
/// sampled every 200 ms during a job, minus the `Rss` of the guest-RAM mapping (the
/// touched guest RAM) and of the translation cache (the 1 GiB `rwxp` mapping):
///
/// | job (352 MiB guest unless noted)     | Rss | guest RAM | TB cache | rest   |
/// |--------------------------------------|-----|-----------|----------|--------|
/// | python `sum(range(10**6))`           | 149 | 44        | 48       | 57 MiB |
/// | python, 20 stdlib imports + sqlite   | 205 | 82        | 62       | 61 MiB |
/// | node, 3e6-step loop + Map (608 MiB)  | 279 | 112       | 98       | 69 MiB |
/// | node, 25 s of `new Function` (608)   | 290 | 114       | 106      | 70 MiB |
///
/// (`Pss` was within 3 MiB of `Rss`.) The rest (QEMU's heap, its binary and
/// libraries, the kernel ELF it maps, device buffers) stayed at 57–70 MiB: the
/// bound is 128 MiB, almost twice the largest seen. Under KVM there is no
/// translation cache and the same bound applies (not measurable on this host).
pub const QEMU_OVERHEAD_MIB: u64 = 128;

/// TCG's translation cache (`-accel tcg,tb-size=`). QEMU's default is 1 GiB, which
/// a JIT-heavy job fills slowly but without bound (it grew to 106 MiB in 25 s of
/// node generating functions, see [`QEMU_OVERHEAD_MIB`]); capped, a full cache is
/// flushed and refilled instead of growing, so the memory limit holds. 256 MiB is
/// 2.4 times the largest use seen: the jobs measured never flush it.
pub const TCG_TB_SIZE_MIB: u64 = 256;

/// Room in a VM's cgroup for the host's page cache of the root filesystem, which
/// is charged to the VM that first reads a page. Compilers read hundreds of MiB of
/// it. Measured (352 MiB guest, TCG, `g++` with `<bits/stdc++.h>` then `rustc -O`):
/// guest RAM fully touched and the translation cache filled left QEMU at 589 MiB of
/// `rss`; with the old limit (guest + 384 MiB = 736) only ~140 MiB of cache fit, the
/// VM thrashed re-reading its rootfs and was then OOM-killed (`sandbox_error`). The
/// cache is reclaimable, so this is headroom against thrashing, not a reservation.
pub const HOST_CACHE_HEADROOM_MIB: u64 = 256;

/// What a VM's cgroup allows QEMU on top of guest RAM: [`QEMU_OVERHEAD_MIB`] and
/// [`HOST_CACHE_HEADROOM_MIB`], plus [`TCG_TB_SIZE_MIB`] under TCG.
pub fn vmm_overhead_mib(accel: Accel) -> u64 {
    match accel {
        Accel::Tcg => QEMU_OVERHEAD_MIB + HOST_CACHE_HEADROOM_MIB + TCG_TB_SIZE_MIB,
        Accel::Kvm => QEMU_OVERHEAD_MIB + HOST_CACHE_HEADROOM_MIB,
    }
}

/// Files in a VM dir that QEMU opens by relative name (its working dir is the VM dir).
const AGENT_SOCK: &str = "agent.sock";
const QMP_SOCK: &str = "qmp.sock";
const MIGRATE_SOCK: &str = "migrate.sock";
const CONSOLE_LOG: &str = "console.log";
const VMM_LOG: &str = "vmm.log";

/// fd numbers of inherited files in QEMU, reopened as `/proc/self/fd/<n>`.
pub(crate) const INCOMING_FD: i32 = 3;
const MEMORY_FD: i32 = 4;
const KERNEL_FD: i32 = 5;
const INITRD_FD: i32 = 6;
const ROOTFS_FD: i32 = 7;

/// Finds `qemu-system-x86_64`: `$TVM_QEMU_BIN`, then `PATH`.
pub fn find_qemu() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TVM_QEMU_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    })
}

#[derive(Debug)]
pub struct QemuBackend {
    cfg: QemuConfig,
    runtime: Arc<Runtime>,
    name: String,
    tsc_khz: Option<u64>,
    /// kernel, initramfs, rootfs: opened once; every QEMU inherits them.
    image: [File; 3],
    /// Unprivileged uids for the VMs; `None` when the service is not root.
    uids: Option<Arc<UidPool>>,
    /// `/dev/kvm`'s (mode, gid) under KVM, for the VMs' gid.
    kvm_dev: Option<(u32, u32)>,
    /// Where VM cgroups go; `None` when this host gives us none.
    cgroups: Option<HostCgroups>,
    /// Guest RAM of the snapshots this backend made, by snapshot id.
    snapshot_memory: Mutex<HashMap<String, snapshot::Memory>>,
}

impl QemuBackend {
    /// Checks the binary and the image, decides who VMs run as and whether they get
    /// cgroups; says what is missing.
    pub fn new(cfg: QemuConfig, runtime: Arc<Runtime>) -> Result<Self, VmmError> {
        if !cfg.binary.is_file() {
            return Err(VmmError::Unavailable(format!(
                "QEMU binary {} not found (install the qemu-system-x86 package or set TVM_QEMU_BIN)",
                cfg.binary.display()
            )));
        }
        cfg.image.check()?;
        let name = format!("qemu-{}", cfg.accel.accel);
        let tsc_khz = match cfg.accel.accel {
            Accel::Tcg => crate::host_tsc_khz(),
            Accel::Kvm => None,
        };
        let root = nix::unistd::geteuid().is_root();
        let open = |p: &Path| -> Result<File, VmmError> {
            let f = File::open(p).map_err(io_err(format!("open {}", p.display())))?;
            let mode = f.metadata().map(|m| m.mode()).unwrap_or(0);
            if root && mode & 0o004 == 0 {
                return Err(VmmError::Unavailable(format!(
                    "guest image file {} (mode {:o}) must be readable by others: each QEMU runs \
                     as its own unprivileged uid and reopens it (chmod o+r)",
                    p.display(),
                    mode & 0o777
                )));
            }
            Ok(f)
        };
        let image = [
            open(&cfg.image.kernel)?,
            open(&cfg.image.initramfs)?,
            open(&cfg.image.rootfs)?,
        ];
        let kvm_dev = match cfg.accel.accel {
            Accel::Kvm => std::fs::metadata("/dev/kvm")
                .ok()
                .map(|m| (m.mode(), m.gid())),
            Accel::Tcg => None,
        };
        let uids = if root {
            let pool = UidPool::new(cfg.uid_base, cfg.uid_count)?;
            child::vm_gid(cfg.uid_base, kvm_dev).map_err(VmmError::Unavailable)?;
            tracing::info!(
                uid_base = cfg.uid_base,
                uid_count = cfg.uid_count,
                "QEMU VMs run as unprivileged uids"
            );
            Some(pool)
        } else {
            tracing::info!(
                uid = nix::unistd::geteuid().as_raw(),
                "pyrovm is not running as root: QEMU VMs run as this user, not as unprivileged per-VM uids"
            );
            None
        };
        let instance = runtime
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cgroups = match HostCgroups::prepare(&format!("tvm/{instance}")) {
            Ok(c) => {
                tracing::info!(version = c.version.number(), mounts = ?c.mounts, "QEMU VMs get host cgroups");
                Some(c)
            }
            Err(reason) => {
                tracing::warn!(%reason, "QEMU VMs get no host cgroup (memory and CPU limits on the VMM are off)");
                None
            }
        };
        Ok(Self {
            cfg,
            runtime,
            name,
            tsc_khz,
            image,
            uids,
            kvm_dev,
            cgroups,
            snapshot_memory: Mutex::new(HashMap::new()),
        })
    }

    /// Spawns QEMU with its own VM dir, listeners and cgroup; nothing is awaited yet.
    fn spawn(&self, spec: &VmSpec, how: Launch<'_>) -> Result<Launched, VmmError> {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let dir = self.runtime.vm_dir(&id)?;
        // From here on the guard owns the dir (and uid, and cgroup): any early return
        // removes it.
        let mut proc = QemuProcess {
            child: None,
            dir: dir.clone(),
            cgroup: None,
            lease: None,
        };
        let lease = self.uids.as_ref().map(|p| p.lease()).transpose()?;
        let ids = match &lease {
            Some(l) => Some((
                l.uid,
                child::vm_gid(l.uid, self.kvm_dev).map_err(VmmError::Unavailable)?,
            )),
            None => None,
        };
        proc.lease = lease;
        // Everything in the dir is made while the dir is still root's, so no VM
        // process can swap a name for a symlink under us; the dir goes to the VM last.
        let bind = |name: &str| bind_private(&dir.join(name), ids);
        let agent = bind(AGENT_SOCK)?;
        let qmp = how.qmp.then(|| bind(QMP_SOCK)).transpose()?;
        let migrate = how.migrate.then(|| bind(MIGRATE_SOCK)).transpose()?;
        create_private(&dir.join(CONSOLE_LOG), ids)?;
        let log = create_private(&dir.join(VMM_LOG), None)?;
        let mut pid_file = create_private(&dir.join(VMM_PID_FILE), None)?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(io_err(format!("chown {}", dir.display())))?;
        }
        if let Some(hc) = &self.cgroups {
            let limits = VmmLimits::for_vm(
                spec.vcpus,
                spec.memory_mb,
                vmm_overhead_mib(self.cfg.accel.accel),
            );
            proc.cgroup = Some(
                hc.create(&id, limits)
                    .map_err(io_err(format!("create the cgroup of VM {id}")))?,
            );
        }
        let args = command_line(&QemuArgs {
            accel: self.cfg.accel.accel,
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
            tsc_khz: self.tsc_khz,
            memory: how.memory,
            qmp: how.qmp,
            incoming: how.incoming.is_some(),
            vm_dir: &dir,
        });
        let cwd = File::open(&dir).map_err(io_err(format!("open {}", dir.display())))?;
        let mut fds = vec![
            (self.image[0].as_raw_fd(), KERNEL_FD),
            (self.image[1].as_raw_fd(), INITRD_FD),
            (self.image[2].as_raw_fd(), ROOTFS_FD),
        ];
        if let Some(f) = how.incoming {
            fds.push((f.as_raw_fd(), INCOMING_FD));
        }
        if let Some(fd) = how.memory_fd {
            fds.push((fd, MEMORY_FD));
        }
        let setup = ChildSetup {
            parent: std::process::id() as libc::pid_t,
            cwd: cwd.as_raw_fd(),
            cgroup_procs: proc
                .cgroup
                .as_ref()
                .map(VmCgroup::procs_fds)
                .unwrap_or_default(),
            ids,
            fds,
        };
        let mut cmd = Command::new(&self.cfg.binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // SAFETY: `apply` makes only async-signal-safe syscalls on plain values; every
        // fd it uses (dir, cgroup files, image, memory, state) stays open until spawn
        // returns.
        unsafe {
            cmd.pre_exec(move || setup.apply());
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawn {}", self.cfg.binary.display())))?;
        drop(cwd);
        if let Some(pid) = child.id() {
            pid_file
                .write_all(pid.to_string().as_bytes())
                .map_err(io_err("write vmm.pid"))?;
        }
        proc.child = Some(child);
        Ok(Launched {
            id,
            dir,
            proc,
            agent,
            qmp,
            migrate,
            started,
        })
    }

    async fn boot_once(&self, spec: &VmSpec) -> Result<Vm, VmmError> {
        let mut l = self.spawn(
            spec,
            Launch {
                memory: GuestMemory::Anonymous,
                memory_fd: None,
                qmp: false,
                migrate: false,
                incoming: None,
            },
        )?;
        let deadline = l.started + self.cfg.boot_timeout;
        let (channel, guest_boot_ms) = l.agent_ready(deadline, self.cfg.boot_timeout).await?;
        Ok(l.into_vm(channel, guest_boot_ms))
    }
}

/// Binds a listener QEMU will connect to: mode 0600, owned by the VM's uid/gid when
/// it has its own (connecting needs write access to the socket file).
fn bind_private(path: &Path, ids: Option<(u32, u32)>) -> Result<UnixListener, VmmError> {
    let what = || format!("bind {}", path.display());
    let listener = crate::uds::SocketPath::new(path)
        .and_then(|at| UnixListener::bind(at.path()))
        .map_err(io_err(what()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(what()))?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(io_err(what()))?;
    }
    Ok(listener)
}

/// Creates a new file, mode 0600, owned by `ids` if given (else by the service).
fn create_private(path: &Path, ids: Option<(u32, u32)>) -> Result<File, VmmError> {
    let what = || format!("create {}", path.display());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(what()))?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(io_err(what()))?;
    }
    Ok(f)
}

/// How to start QEMU.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub memory: GuestMemory,
    /// The file behind `GuestMemory::Shared`/`Private` (kept open until spawn returns).
    pub memory_fd: Option<RawFd>,
    /// Open a QMP monitor (QEMU connects to our listener).
    pub qmp: bool,
    /// Listen on `migrate.sock` for the template's migration stream.
    pub migrate: bool,
    /// Start with `-incoming defer`; this file becomes fd 3 for `migrate-incoming`.
    pub incoming: Option<&'a File>,
}

/// A spawned QEMU whose connections have not been accepted yet.
#[derive(Debug)]
pub(crate) struct Launched {
    pub id: String,
    pub dir: PathBuf,
    pub proc: QemuProcess,
    pub agent: UnixListener,
    pub qmp: Option<UnixListener>,
    pub migrate: Option<UnixListener>,
    pub started: Instant,
}

impl Launched {
    /// Accepts a connection QEMU makes at start-up, or reports that it exited.
    pub(crate) async fn accept(
        &mut self,
        which: Which,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<tokio::net::UnixStream, VmmError> {
        let listener = match which {
            Which::Agent => &self.agent,
            Which::Qmp => self
                .qmp
                .as_ref()
                .ok_or_else(|| VmmError::Protocol("no QMP listener".into()))?,
        };
        let child = self
            .proc
            .child
            .as_mut()
            .ok_or_else(|| VmmError::Protocol("no child".into()))?;
        let r = tokio::time::timeout_at(deadline.into(), async {
            tokio::select! {
                r = listener.accept() => r.map(|(s, _)| s).map_err(io_err("accept a QEMU connection")),
                st = child.wait() => Err(exited(st, &self.dir)),
            }
        })
        .await;
        let sock = self.dir.join(match which {
            Which::Agent => AGENT_SOCK,
            Which::Qmp => QMP_SOCK,
        });
        let _ = std::fs::remove_file(sock);
        match r {
            Ok(r) => r,
            Err(_) => Err(VmmError::BootTimeout {
                timeout,
                console_tail: tail(&self.dir.join(CONSOLE_LOG), 600),
            }),
        }
    }

    /// Accepts the agent channel and waits for the agent's first `Ready`.
    pub(crate) async fn agent_ready(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(AgentChannel, u64), VmmError> {
        let stream = self.accept(Which::Agent, deadline, timeout).await?;
        let mut framed = Framed::new(stream, FrameCodec::new());
        let child = self
            .proc
            .child
            .as_mut()
            .ok_or_else(|| VmmError::Protocol("no child".into()))?;
        let first = tokio::time::timeout_at(deadline.into(), async {
            tokio::select! {
                m = framed.next() => Ok(m),
                st = child.wait() => Err(exited(st, &self.dir)),
            }
        })
        .await
        .map_err(|_| VmmError::BootTimeout {
            timeout,
            console_tail: tail(&self.dir.join(CONSOLE_LOG), 600),
        })??;
        match first {
            Some(Ok(GuestMsg::Ready { boot_ms, .. })) => Ok((framed, boot_ms)),
            Some(Ok(other)) => Err(VmmError::Protocol(format!("{other:?}"))),
            Some(Err(e)) => Err(VmmError::Channel(e)),
            None => Err(VmmError::Channel(tvm_proto::CodecError::Closed)),
        }
    }

    pub(crate) fn into_vm(self, channel: AgentChannel, guest_boot_ms: u64) -> Vm {
        Vm {
            id: self.id,
            channel: crate::AgentLink::new(channel),
            boot_time: self.started.elapsed(),
            guest_boot_ms,
            process: Box::new(self.proc),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Which {
    Agent,
    Qmp,
}

fn exited(st: std::io::Result<std::process::ExitStatus>, dir: &Path) -> VmmError {
    VmmError::ExitedDuringBoot {
        status: st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
        log_tail: format!(
            "{} | console: {}",
            tail(&dir.join(VMM_LOG), 600),
            tail(&dir.join(CONSOLE_LOG), 600)
        ),
    }
}

#[async_trait::async_trait]
impl Vmm for QemuBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn software_emulated(&self) -> bool {
        self.cfg.accel.accel == Accel::Tcg
    }

    async fn start(&self, spec: &VmSpec) -> Result<Vm, VmmError> {
        match self.boot_once(spec).await {
            Err(e @ (VmmError::BootTimeout { .. } | VmmError::ExitedDuringBoot { .. })) => {
                tracing::warn!(error = %e, "guest boot failed; retrying once");
                self.boot_once(spec).await
            }
            other => other,
        }
    }

    async fn snapshot(&self, spec: &VmSpec, warm: &WarmSpec) -> Result<Snapshot, VmmError> {
        match snapshot::make(self, spec, warm).await {
            Err(e @ (VmmError::BootTimeout { .. } | VmmError::ExitedDuringBoot { .. })) => {
                tracing::warn!(error = %e, "template boot failed; retrying once");
                snapshot::make(self, spec, warm).await
            }
            other => other,
        }
    }

    async fn restore(&self, snap: &Snapshot) -> Result<Vm, VmmError> {
        snapshot::restore(self, snap).await
    }
}

/// Owns one QEMU process, its VM dir, cgroup and uid; killing is idempotent and also
/// runs on drop.
#[derive(Debug)]
pub(crate) struct QemuProcess {
    child: Option<Child>,
    dir: PathBuf,
    cgroup: Option<VmCgroup>,
    /// Returned to the pool only once the process is gone.
    lease: Option<UidLease>,
}

/// How long teardown waits for QEMU's threads to leave its cgroup.
const CGROUP_REMOVAL: Duration = Duration::from_secs(2);

impl QemuProcess {
    pub(crate) async fn kill_and_wait_inner(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        if let Some(mut cg) = self.cgroup.take() {
            // The process is reaped, so the rmdir normally succeeds at once.
            let until = Instant::now() + CGROUP_REMOVAL;
            while !cg.remove(Instant::now()) && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if cg.dirs().iter().any(|d| d.exists()) {
                tracing::warn!(dirs = ?cg.dirs(), "a QEMU cgroup could not be removed");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        self.lease = None;
    }
}

#[async_trait::async_trait]
impl VmProcess for QemuProcess {
    async fn kill_and_wait(&mut self) {
        self.kill_and_wait_inner().await;
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn console_tail(&self, max: usize) -> String {
        tail(&self.dir.join(CONSOLE_LOG), max)
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            // Reap it (bounded) so its cgroup can go and its uid be reused.
            let until = Instant::now() + Duration::from_millis(500);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        // Dropping the cgroup removes it (bounded retries).
        self.cgroup = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Last `max` bytes of a regular file, lossily decoded, on one line. The file is in
/// a dir the VM's uid owns: a symlink or FIFO put there instead is not followed.
pub(crate) fn tail(path: &Path, max: usize) -> String {
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return String::new();
    };
    let Ok(meta) = f.metadata() else {
        return String::new();
    };
    if !meta.is_file() {
        return String::new();
    }
    let _ = f.seek(SeekFrom::Start(meta.len().saturating_sub(max as u64)));
    let mut buf = Vec::new();
    let _ = f.take(max as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_memory_covers_guest_ram_and_qemu() {
        assert_eq!(vmm_overhead_mib(Accel::Tcg), 640);
        assert_eq!(vmm_overhead_mib(Accel::Kvm), 384);
        let l = VmmLimits::for_vm(1, 352, vmm_overhead_mib(Accel::Tcg));
        assert_eq!(l.memory_bytes, 992 << 20);
        assert_eq!(l.cpu_quota_us, 200_000);
    }

    #[test]
    fn private_files_and_sockets() {
        let d = tempfile::tempdir().unwrap();
        let f = create_private(&d.path().join("console.log"), None).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
        assert!(
            create_private(&d.path().join("console.log"), None).is_err(),
            "never reuses a file that is there"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let sock = d.path().join("agent.sock");
        let _l = bind_private(&sock, None).unwrap();
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn tail_reads_regular_files_only() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("console.log");
        std::fs::write(&log, "a\nbb\nccc\n").unwrap();
        assert_eq!(tail(&log, 7), "bb | ccc");
        let secret = d.path().join("secret");
        std::fs::write(&secret, "do not show").unwrap();
        let link = d.path().join("link.log");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        assert_eq!(tail(&link, 100), "", "a symlink is not followed");
        nix::unistd::mkfifo(&d.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert_eq!(
            tail(&d.path().join("fifo"), 100),
            "",
            "a FIFO does not block"
        );
    }
}
