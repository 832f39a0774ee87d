//! Snapshot clones: a template VM booted to the agent's ready point (and warmed),
//! frozen into files on tmpfs, and restored once per clone. Nothing of it outlives
//! the process: the files are removed when the [`Snapshot`] is dropped, and the
//! runtime dir (reaped on the next start) holds them meanwhile.
//!
//! The host half of the two agent exchanges lives here too: [`warm`] before the
//! snapshot and [`resume`] after each restore, which makes the clone unique (clock,
//! fresh entropy and an RNG reseed) before it can run anything.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use tvm_proto::{GuestMsg, HostMsg, Resume, WarmUp};

use crate::{VmSpec, VmmError};

/// What a template runs before it is frozen: fixed commands, never user code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmSpec {
    /// Absolute program path and arguments per command.
    pub commands: Vec<Vec<String>>,
    /// Deadline for each command inside the guest.
    pub per_command: Duration,
}

/// A frozen template VM of one size class. Dropping it deletes its files.
#[derive(Debug)]
pub struct Snapshot {
    pub id: String,
    pub spec: VmSpec,
    /// Backend that made it; only that backend restores it.
    pub backend: String,
    /// Holds the backend's files (guest memory, device state).
    pub dir: PathBuf,
    /// Boot + warm-up + freeze, host-measured.
    pub took: Duration,
    /// Bytes of guest memory the template had touched (allocated in the memory file).
    pub memory_bytes: u64,
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The agent channel as these exchanges use it: the framed channel of a booting VM,
/// or a running VM's [`crate::AgentLink`].
pub(crate) trait Channel:
    futures_util::Stream<Item = Result<GuestMsg, tvm_proto::CodecError>>
    + futures_util::Sink<HostMsg, Error = tvm_proto::CodecError>
    + Unpin
{
}

impl<T> Channel for T where
    T: futures_util::Stream<Item = Result<GuestMsg, tvm_proto::CodecError>>
        + futures_util::Sink<HostMsg, Error = tvm_proto::CodecError>
        + Unpin
{
}

/// Waits (bounded) for the agent's next `Ready`; returns its guest uptime.
async fn await_ready<C: Channel>(channel: &mut C, deadline: Instant) -> Result<u64, VmmError> {
    let left = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, channel.next()).await {
        Ok(Some(Ok(GuestMsg::Ready { boot_ms, .. }))) => Ok(boot_ms),
        Ok(Some(Ok(other))) => Err(VmmError::Protocol(format!("{other:?}"))),
        Ok(Some(Err(e))) => Err(VmmError::Channel(e)),
        Ok(None) => Err(VmmError::Channel(tvm_proto::CodecError::Closed)),
        Err(_) => Err(VmmError::Snapshot(format!(
            "the agent did not answer within {left:?}"
        ))),
    }
}

/// Asks a template's agent to run the warm-up commands and waits for its `Ready`.
pub(crate) async fn warm<C: Channel>(channel: &mut C, w: &WarmSpec) -> Result<(), VmmError> {
    let timeout_ms = w.per_command.as_millis() as u64;
    channel
        .send(HostMsg::Warm(WarmUp {
            commands: w.commands.clone(),
            timeout_ms,
        }))
        .await?;
    // Each command is bounded in the guest; allow a little on top for the exchange.
    let budget = w.per_command * (w.commands.len() as u32) + Duration::from_secs(5);
    await_ready(channel, Instant::now() + budget).await?;
    Ok(())
}

/// Makes a restored clone unique before it may run anything: sets its clock and
/// reseeds its kernel RNG with fresh host entropy; waits for its `Ready`.
pub(crate) async fn resume<C: Channel>(
    channel: &mut C,
    deadline: Instant,
) -> Result<u64, VmmError> {
    let mut entropy = vec![0u8; 64];
    rand::thread_rng().fill_bytes(&mut entropy);
    channel
        .send(HostMsg::Resume(Resume {
            clock_unix_ns: now_unix_ns(),
            entropy,
        }))
        .await?;
    await_ready(channel, deadline).await
}

/// Bytes actually allocated for a file (tmpfs allocates only what was written).
pub(crate) fn allocated_bytes(p: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}
