//! QEMU snapshots: a template VM whose RAM is a shared file on tmpfs is booted,
//! warmed, stopped and migrated (device state only, `x-ignore-shared`) into a
//! small state file; each clone maps the same RAM file privately (copy-on-write)
//! and loads the state with `-incoming defer` + `migrate-incoming fd:3`.
//! Measured on the 2-core TCG box: the state file is ~65 KB, freezing takes ~5 ms.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::UnixListener;
use tokio_util::codec::Framed;
use tvm_proto::FrameCodec;

use super::{tail, GuestMemory, Launch, QemuBackend, Which, INCOMING_FD};
use crate::qmp::Qmp;
use crate::snapshot::{allocated_bytes, resume, warm};
use crate::{io_err, Snapshot, Vm, VmSpec, VmmError, WarmSpec};

const MEMORY: &str = "memory";
const STATE: &str = "state";
/// Deadline for the freeze itself (stop + migrate a few hundred KB).
const FREEZE: Duration = Duration::from_secs(10);

/// Removes a half-made snapshot dir unless disarmed.
struct DirGuard(Option<std::path::PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Boots a template, warms it, and freezes it; the template is destroyed after.
pub(super) async fn make(
    b: &QemuBackend,
    spec: &VmSpec,
    w: &WarmSpec,
) -> Result<Snapshot, VmmError> {
    let started = Instant::now();
    let id = ulid::Ulid::new().to_string().to_lowercase();
    let dir = b.runtime.snapshot_dir(&id)?;
    let mut guard = DirGuard(Some(dir.clone()));
    let memory = dir.join(MEMORY);
    let mut l = b.spawn(
        spec,
        Launch {
            memory: GuestMemory::SharedFile(&memory),
            qmp: true,
            incoming: None,
        },
    )?;
    let timeout = b.cfg.boot_timeout;
    let deadline = l.started + timeout;
    let qmp = l.accept(Which::Qmp, deadline, timeout).await?;
    let (mut channel, _) = l.agent_ready(deadline, timeout).await?;
    warm(&mut channel, w).await?;

    let mut qmp = Qmp::connect(qmp, Instant::now() + FREEZE).await?;
    qmp.execute("stop", None).await?;
    qmp.ignore_shared_ram().await?;
    let sock = l.dir.join("migrate.sock");
    let listener = crate::uds::SocketPath::new(&sock)
        .and_then(|at| UnixListener::bind(at.path()))
        .map_err(io_err(format!("bind {}", sock.display())))?;
    let mut uri = String::from("unix:");
    uri.push_str(
        sock.to_str()
            .ok_or_else(|| VmmError::Snapshot(format!("non-UTF-8 path {}", sock.display())))?,
    );
    qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
    let copied = tokio::time::timeout(FREEZE, async {
        let (mut stream, _) = listener.accept().await?;
        let mut file = tokio::fs::File::create(dir.join(STATE)).await?;
        let n = tokio::io::copy(&mut stream, &mut file).await?;
        file.sync_all().await?;
        Ok::<u64, std::io::Error>(n)
    })
    .await
    .map_err(|_| VmmError::Snapshot(format!("no migration stream within {FREEZE:?}")))?
    .map_err(io_err("write the snapshot state"))?;
    qmp.wait_migration().await?;
    drop(qmp);
    drop(channel);
    l.proc.kill_and_wait_inner().await;
    guard.0 = None;
    let memory_bytes = allocated_bytes(&memory);
    tracing::info!(
        snapshot = %id,
        vcpus = spec.vcpus,
        memory_mb = spec.memory_mb,
        state_bytes = copied,
        touched_mib = memory_bytes >> 20,
        took_ms = started.elapsed().as_millis() as u64,
        "snapshot template frozen"
    );
    Ok(Snapshot {
        id,
        spec: spec.clone(),
        backend: b.name.clone(),
        dir,
        took: started.elapsed(),
        memory_bytes,
    })
}

/// Starts a clone: private mapping of the template's RAM, device state from the file.
pub(super) async fn restore(b: &QemuBackend, snap: &Snapshot) -> Result<Vm, VmmError> {
    if snap.backend != b.name {
        return Err(VmmError::Snapshot(format!(
            "snapshot {} was made by {}, not {}",
            snap.id, snap.backend, b.name
        )));
    }
    let memory = snap.dir.join(MEMORY);
    let state = std::fs::File::open(snap.dir.join(STATE))
        .map_err(io_err(format!("open snapshot {} state", snap.id)))?;
    if !memory.is_file() {
        return Err(VmmError::Snapshot(format!(
            "snapshot {} has no memory file",
            snap.id
        )));
    }
    let mut l = b.spawn(
        &snap.spec,
        Launch {
            memory: GuestMemory::PrivateFile(&memory),
            qmp: true,
            incoming: Some(&state),
        },
    )?;
    drop(state);
    let timeout = b.cfg.boot_timeout;
    let deadline = l.started + timeout;
    let result = async {
        let qmp = l.accept(Which::Qmp, deadline, timeout).await?;
        let agent = l.accept(Which::Agent, deadline, timeout).await?;
        let mut qmp = Qmp::connect(qmp, deadline).await?;
        qmp.ignore_shared_ram().await?;
        qmp.execute(
            "migrate-incoming",
            Some(json!({ "uri": format!("fd:{INCOMING_FD}") })),
        )
        .await?;
        qmp.wait_migration().await?;
        qmp.execute("cont", None).await?;
        let mut channel = Framed::new(agent, FrameCodec::new());
        let uptime_ms = resume(&mut channel, deadline).await?;
        Ok::<_, VmmError>((channel, uptime_ms))
    }
    .await;
    match result {
        Ok((channel, uptime_ms)) => Ok(l.into_vm(channel, uptime_ms)),
        Err(e) => Err(VmmError::Snapshot(format!(
            "restore of {} failed: {}; QEMU log: {}",
            snap.id,
            tvm_proto::error_chain(&e),
            tail(&l.dir.join("vmm.log"), 400)
        ))),
    }
}
