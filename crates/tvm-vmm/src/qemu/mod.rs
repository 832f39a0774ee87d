//! QEMU `-M microvm` backend: KVM where usable, TCG otherwise.
//!
//! One QEMU process per VM, no network device, the rootfs read-only, `-sandbox on`
//! with privilege elevation, spawning and resource control denied, and
//! `PR_SET_PDEATHSIG` so it dies with the service. The agent channel is a
//! virtio-serial port whose chardev connects to a Unix socket the host listens on,
//! so the connection exists before the guest runs and no guest write is lost.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio_util::codec::Framed;
use tvm_proto::{FrameCodec, GuestMsg};

use crate::accel::{Accel, AccelChoice};
use crate::runtime::{Runtime, VMM_PID_FILE};
use crate::{
    io_err, AgentChannel, GuestImage, Snapshot, Vm, VmProcess, VmSpec, Vmm, VmmError, WarmSpec,
};

mod snapshot;

/// Settings of the QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: PathBuf,
    pub image: GuestImage,
    pub accel: AccelChoice,
    /// Deadline from spawn to the agent's ready message, per attempt.
    pub boot_timeout: Duration,
}

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
}

impl QemuBackend {
    /// Checks the binary and the image; says what is missing.
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
        Ok(Self {
            cfg,
            runtime,
            name,
            tsc_khz,
        })
    }

    /// Spawns QEMU with its own VM dir and listeners; nothing is awaited yet.
    fn spawn(&self, spec: &VmSpec, how: Launch<'_>) -> Result<Launched, VmmError> {
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let dir = self.runtime.vm_dir(&id)?;
        // From here on the guard owns the dir: any early return removes it.
        let mut proc = QemuProcess {
            child: None,
            dir: dir.clone(),
        };
        let bind = |name: &str| {
            let sock = dir.join(name);
            crate::uds::SocketPath::new(&sock)
                .and_then(|at| UnixListener::bind(at.path()))
                .map_err(io_err(format!("bind {}", sock.display())))
        };
        let agent = bind("agent.sock")?;
        let qmp = if how.qmp {
            Some(bind("qmp.sock")?)
        } else {
            None
        };
        let args = command_line(&QemuArgs {
            image: &self.cfg.image,
            accel: self.cfg.accel.accel,
            vcpus: spec.vcpus,
            memory_mb: spec.memory_mb,
            agent_socket: &dir.join("agent.sock"),
            console_log: &dir.join("console.log"),
            tsc_khz: self.tsc_khz,
            memory: how.memory,
            qmp_socket: how.qmp.then(|| dir.join("qmp.sock")).as_deref(),
            incoming: how.incoming.is_some(),
        });
        let log = std::fs::File::create(dir.join("vmm.log")).map_err(io_err("create vmm.log"))?;
        let mut cmd = Command::new(&self.cfg.binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        let incoming = how.incoming.map(std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: the closure only makes async-signal-safe syscalls (prctl, getppid,
        // dup2, fcntl, _exit) on plain values; `incoming` stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The service may have died between fork and prctl.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                if let Some(fd) = incoming {
                    // The snapshot's state file becomes fd 3 (`-incoming` reads `fd:3`).
                    if fd == INCOMING_FD {
                        if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, INCOMING_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(io_err(format!("spawn {}", self.cfg.binary.display())))?;
        if let Some(pid) = child.id() {
            std::fs::write(dir.join(VMM_PID_FILE), pid.to_string())
                .map_err(io_err("write vmm.pid"))?;
        }
        proc.child = Some(child);
        Ok(Launched {
            id,
            dir,
            proc,
            agent,
            qmp,
            started,
        })
    }

    async fn boot_once(&self, spec: &VmSpec) -> Result<Vm, VmmError> {
        let mut l = self.spawn(
            spec,
            Launch {
                memory: GuestMemory::Anonymous,
                qmp: false,
                incoming: None,
            },
        )?;
        let deadline = l.started + self.cfg.boot_timeout;
        let (channel, guest_boot_ms) = l.agent_ready(deadline, self.cfg.boot_timeout).await?;
        Ok(l.into_vm(channel, guest_boot_ms))
    }
}

/// How to start QEMU.
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub memory: GuestMemory<'a>,
    /// Open a QMP monitor (QEMU connects to our listener).
    pub qmp: bool,
    /// Start with `-incoming defer`; this file becomes fd 3 for `migrate-incoming`.
    pub incoming: Option<&'a std::fs::File>,
}

/// fd number the snapshot state file has in a restoring QEMU.
pub(crate) const INCOMING_FD: i32 = 3;

/// A spawned QEMU whose connections have not been accepted yet.
#[derive(Debug)]
pub(crate) struct Launched {
    pub id: String,
    pub dir: PathBuf,
    pub proc: QemuProcess,
    pub agent: UnixListener,
    pub qmp: Option<UnixListener>,
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
            Which::Agent => "agent.sock",
            Which::Qmp => "qmp.sock",
        });
        let _ = std::fs::remove_file(sock);
        match r {
            Ok(r) => r,
            Err(_) => Err(VmmError::BootTimeout {
                timeout,
                console_tail: tail(&self.dir.join("console.log"), 600),
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
            console_tail: tail(&self.dir.join("console.log"), 600),
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
            channel,
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
            tail(&dir.join("vmm.log"), 600),
            tail(&dir.join("console.log"), 600)
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

/// Owns one QEMU process and its VM dir; killing is idempotent and also runs on drop.
#[derive(Debug)]
pub(crate) struct QemuProcess {
    child: Option<Child>,
    dir: PathBuf,
}

impl QemuProcess {
    pub(crate) async fn kill_and_wait_inner(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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
        tail(&self.dir.join("console.log"), max)
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // SIGKILL now; tokio reaps the zombie in the background.
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Last `max` bytes of a file, lossily decoded, on one line.
pub(crate) fn tail(path: &Path, max: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max as u64)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim().replace('\n', " | ")
}

/// Everything the command line depends on.
#[derive(Debug)]
pub struct QemuArgs<'a> {
    pub image: &'a GuestImage,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub agent_socket: &'a Path,
    pub console_log: &'a Path,
    pub tsc_khz: Option<u64>,
    pub memory: GuestMemory<'a>,
    /// QMP monitor socket QEMU connects to, if any.
    pub qmp_socket: Option<&'a Path>,
    /// Wait for the device state with `-incoming defer`.
    pub incoming: bool,
}

/// Where guest RAM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMemory<'a> {
    /// Ordinary anonymous memory (a cold boot).
    Anonymous,
    /// A snapshot template: RAM is this file, mapped shared, so it holds the
    /// template's memory when the template is frozen.
    SharedFile(&'a Path),
    /// A clone: the template's file mapped privately (copy-on-write): clones share
    /// every page they do not write.
    PrivateFile(&'a Path),
}

/// The kernel command line. `tsc_early_khz` stops random `calibrate_delay` hangs under TCG.
pub fn kernel_cmdline(accel: Accel, tsc_khz: Option<u64>) -> String {
    let mut s = String::from(
        "console=ttyS0 quiet panic=-1 tvm.channel=virtio-serial tvm.rootfs=/dev/vda tvm.rootfstype=erofs",
    );
    if let (Accel::Tcg, Some(khz)) = (accel, tsc_khz) {
        s.push_str(&format!(" tsc_early_khz={khz}"));
    }
    s
}

/// Builds QEMU's argv (without the program). Pure, so it is tested directly.
pub fn command_line(a: &QemuArgs<'_>) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    let mut push = |s: &str| v.push(s.into());
    push("-M");
    let (file, share) = match a.memory {
        GuestMemory::Anonymous => (None, false),
        GuestMemory::SharedFile(p) => (Some(p), true),
        GuestMemory::PrivateFile(p) => (Some(p), false),
    };
    if file.is_some() {
        push("microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem");
    } else {
        push("microvm,x-option-roms=off,isa-serial=on,rtc=on");
    }
    match a.accel {
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host");
        }
        Accel::Tcg => {
            push("-accel");
            push("tcg");
            // `max` gives the guest RDRAND, so the kernel RNG is ready at once.
            push("-cpu");
            push("max");
        }
    }
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-smp",
    ] {
        push(s);
    }
    push(&a.vcpus.to_string());
    push("-m");
    push(&format!("{}M", a.memory_mb));
    push("-kernel");
    v.push(a.image.kernel.clone().into_os_string());
    v.push("-initrd".into());
    v.push(a.image.initramfs.clone().into_os_string());
    v.push("-append".into());
    v.push(kernel_cmdline(a.accel, a.tsc_khz).into());
    if let Some(p) = file {
        v.push("-object".into());
        let mut o = OsString::from(format!(
            "memory-backend-file,id=mem,size={}M,share={},mem-path=",
            a.memory_mb,
            if share { "on" } else { "off" }
        ));
        o.push(escape_commas(p));
        v.push(o);
    }
    if let Some(q) = a.qmp_socket {
        v.push("-chardev".into());
        v.push(prefixed("socket,id=qmp,path=", q));
        v.push("-mon".into());
        v.push("chardev=qmp,mode=control".into());
    }
    if a.incoming {
        v.push("-incoming".into());
        v.push("defer".into());
    }
    v.push("-serial".into());
    v.push(prefixed("file:", a.console_log));
    v.push("-drive".into());
    let mut drive =
        OsString::from("id=rootfs,if=none,format=raw,readonly=on,file.locking=off,file=");
    drive.push(a.image.rootfs.as_os_str());
    v.push(drive);
    for s in [
        "-device",
        "virtio-blk-device,drive=rootfs",
        "-device",
        "virtio-rng-device",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
    ] {
        v.push(s.into());
    }
    v.push(prefixed("socket,id=agent,path=", a.agent_socket));
    v.push("-device".into());
    v.push(
        format!(
            "virtserialport,chardev=agent,name={}",
            tvm_proto::VIRTIO_PORT_NAME
        )
        .into(),
    );
    v
}

/// QEMU's option syntax escapes a comma in a value by doubling it.
fn escape_commas(p: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn prefixed(prefix: &str, p: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(p.as_os_str());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(accel: Accel) -> Vec<String> {
        args_with(accel, GuestMemory::Anonymous)
    }

    fn args_with(accel: Accel, memory: GuestMemory<'_>) -> Vec<String> {
        let image = GuestImage {
            kernel: "/img/vmlinux".into(),
            initramfs: "/img/initramfs.cpio".into(),
            rootfs: "/img/rootfs.erofs".into(),
        };
        command_line(&QemuArgs {
            image: &image,
            accel,
            vcpus: 2,
            memory_mb: 384,
            agent_socket: Path::new("/run/tvm/i/vms/v/agent.sock"),
            console_log: Path::new("/run/tvm/i/vms/v/console.log"),
            tsc_khz: Some(2_445_432),
            memory,
            qmp_socket: None,
            incoming: false,
        })
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect()
    }

    fn after<'a>(v: &'a [String], flag: &str) -> Vec<&'a str> {
        v.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_command_line() {
        let v = args(Accel::Tcg);
        assert_eq!(after(&v, "-accel"), ["tcg"]);
        assert_eq!(after(&v, "-smp"), ["2"]);
        assert_eq!(after(&v, "-m"), ["384M"]);
        assert!(after(&v, "-append")[0].contains("tsc_early_khz=2445432"));
        assert!(after(&v, "-sandbox")[0].starts_with("on,"));
        assert!(after(&v, "-sandbox")[0].contains("spawn=deny"));
        assert!(after(&v, "-drive")[0].contains("readonly=on"));
        assert!(v.contains(&"-no-reboot".to_string()));
    }

    #[test]
    fn snapshot_memory_files() {
        let tpl = args_with(
            Accel::Tcg,
            GuestMemory::SharedFile(Path::new("/dev/shm/t,1/memory")),
        );
        assert!(after(&tpl, "-M")[0].ends_with(",memory-backend=mem"));
        assert_eq!(
            after(&tpl, "-object"),
            ["memory-backend-file,id=mem,size=384M,share=on,mem-path=/dev/shm/t,,1/memory"]
        );
        let clone = args_with(Accel::Tcg, GuestMemory::PrivateFile(Path::new("/s/memory")));
        assert!(after(&clone, "-object")[0].contains("share=off"));
        let cold = args(Accel::Tcg);
        assert!(after(&cold, "-object").is_empty());
        assert!(!after(&cold, "-M")[0].contains("memory-backend"));
        assert!(after(&cold, "-incoming").is_empty() && after(&cold, "-mon").is_empty());
    }

    #[test]
    fn no_network_device_at_all() {
        for accel in [Accel::Tcg, Accel::Kvm] {
            let v = args(accel);
            assert!(after(&v, "-nic").is_empty() && after(&v, "-netdev").is_empty());
            assert!(v.contains(&"-nodefaults".to_string()));
            assert!(!v.iter().any(|a| a.contains("virtio-net")));
        }
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_tsc_hint() {
        let v = args(Accel::Kvm);
        assert_eq!(after(&v, "-accel"), ["kvm"]);
        assert_eq!(after(&v, "-cpu"), ["host"]);
        assert!(!after(&v, "-append")[0].contains("tsc_early_khz"));
    }
}
