//! Virtual machine monitors behind one trait.
//!
//! A [`Vmm`] starts a microVM from a [`GuestImage`] and returns a [`Vm`] once the
//! guest agent has said it is ready over the agent channel. Dropping or
//! [`Vm::destroy`]ing the `Vm` kills the VMM process and removes its directory.
//! The backends live in [`qemu`] and [`firecracker`]; accelerator choice in [`accel`]; runtime
//! directories and the reaping of a crashed instance's leftovers in [`runtime`].

pub mod accel;
pub mod cgroups;
pub mod firecracker;
mod link;
pub mod qemu;
mod qmp;
pub mod runtime;
pub mod snapshot;
mod tsc;
pub mod uds;
pub mod vsock;

use std::path::PathBuf;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tvm_proto::{FrameCodec, GuestMsg, HostMsg};

pub use link::{AgentLink, NetPort, ProcSink};
pub use snapshot::{Snapshot, WarmSpec};
pub use tsc::host_tsc_khz;

/// The three files every VM boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Uncompressed ELF `vmlinux` with a PVH entry point.
    pub kernel: PathBuf,
    /// newc cpio with `tvm-agent` as `/init`.
    pub initramfs: PathBuf,
    /// Read-only root filesystem (erofs).
    pub rootfs: PathBuf,
}

impl GuestImage {
    /// Names the first file that is missing, if any.
    pub fn check(&self) -> Result<(), VmmError> {
        for p in [&self.kernel, &self.initramfs, &self.rootfs] {
            if !p.is_file() {
                return Err(VmmError::ImageMissing(p.clone()));
            }
        }
        Ok(())
    }
}

/// What one VM gets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VmSpec {
    pub vcpus: u32,
    pub memory_mb: u64,
}

/// The framed host end of the agent channel, as the backends boot it; a [`Vm`]
/// holds it as an [`AgentLink`].
pub type AgentChannel = Framed<UnixStream, FrameCodec<GuestMsg, HostMsg>>;

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("guest image file {0} is missing; run `tvm image build`")]
    ImageMissing(PathBuf),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("VMM exited during boot ({status}); its log ends: {log_tail}")]
    ExitedDuringBoot { status: String, log_tail: String },
    #[error("guest agent did not say ready within {timeout:?}; console ends: {console_tail}")]
    BootTimeout {
        timeout: Duration,
        console_tail: String,
    },
    #[error("guest agent sent {0} before ready")]
    Protocol(String),
    #[error("agent channel failed during boot")]
    Channel(#[from] tvm_proto::CodecError),
    #[error("Firecracker API: {0}")]
    Api(String),
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmmError {
    let what = what.into();
    move |source| VmmError::Io { what, source }
}

/// A running VM whose agent has said ready. Dropping it destroys it.
#[derive(Debug)]
pub struct Vm {
    pub id: String,
    pub channel: AgentLink,
    /// Host-measured time from spawning the VMM to the agent's ready message.
    pub boot_time: Duration,
    /// Guest uptime when the agent said ready.
    pub guest_boot_ms: u64,
    pub(crate) process: Box<dyn VmProcess>,
}

impl Vm {
    /// Kills the VMM, waits for it, and removes the VM's files.
    pub async fn destroy(mut self) {
        self.process.kill_and_wait().await;
    }

    /// The VMM's host process id (for metrics and tests).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Console output of the guest so far (last `max` bytes), for error reports.
    pub fn console_tail(&self, max: usize) -> String {
        self.process.console_tail(max)
    }

    /// Runs fixed warm-up commands in this VM before it takes its job (no user code):
    /// under software emulation this fills the VMM's translation cache with the
    /// runtimes' start-up code, which a fresh VMM process (boot or restore) lacks.
    pub async fn warm(&mut self, w: &WarmSpec) -> Result<(), VmmError> {
        snapshot::warm(&mut self.channel, w).await
    }
}

/// Backend-specific owner of a VMM process and its files. `Drop` must kill and clean up.
#[async_trait::async_trait]
pub(crate) trait VmProcess: Send + Sync + std::fmt::Debug {
    async fn kill_and_wait(&mut self);
    fn pid(&self) -> Option<u32>;
    fn console_tail(&self, max: usize) -> String;
}

/// A VMM backend: starts VMs that are ready to take a job.
#[async_trait::async_trait]
pub trait Vmm: Send + Sync + std::fmt::Debug {
    /// Name reported in responses and metrics, e.g. `qemu-tcg`.
    fn name(&self) -> &str;
    /// Boots a VM and waits (bounded) for its agent; retries a hung boot once.
    async fn start(&self, spec: &VmSpec) -> Result<Vm, VmmError>;

    /// Whether guests run under software emulation (TCG): then a new VMM process
    /// starts with an empty translation cache, and priming pooled VMs pays off.
    fn software_emulated(&self) -> bool {
        false
    }

    /// Boots a template of this class, runs the warm-up in it, and freezes it into
    /// a [`Snapshot`] on tmpfs. The template VM is gone when this returns.
    async fn snapshot(&self, spec: &VmSpec, warm: &WarmSpec) -> Result<Snapshot, VmmError> {
        let _ = (spec, warm);
        Err(VmmError::Unavailable(format!(
            "{} cannot make snapshots",
            self.name()
        )))
    }

    /// Starts a clone from a snapshot this backend made; the clone has been made
    /// unique (clock, RNG) and its agent has said ready when this returns.
    async fn restore(&self, snapshot: &Snapshot) -> Result<Vm, VmmError> {
        let _ = snapshot;
        Err(VmmError::Unavailable(format!(
            "{} cannot restore snapshots",
            self.name()
        )))
    }
}
