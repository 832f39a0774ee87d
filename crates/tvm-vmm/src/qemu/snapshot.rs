//! QEMU snapshots: a template VM whose RAM is a shared memfd is booted, warmed,
//! stopped and migrated (device state only, `x-ignore-shared`) into a small state
//! file; each clone maps the same memfd privately (copy-on-write) and loads the state
//! with `-incoming defer` + `migrate-incoming fd:3`.
//! Measured on the 2-core TCG box: the state file is ~65 KB, freezing takes ~5 ms.
//!
//! Guest RAM is a memfd the service holds, not a file in the snapshot dir: QEMU 7.2
//! opens `mem-path` read-write even for a private mapping (its `readonly=on` also makes
//! guest RAM read-only), so clones, each under its own uid, must be able to open the
//! template's RAM for writing. Once the template is gone the memfd is sealed
//! (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`): a clone can still open
//! it and map it privately, but no clone can change a page that the others read.
//! Each QEMU reaches it as `/proc/self/fd/4`; a memfd is mode 0777, reachable only
//! through a process that holds it, and vanishes with the service.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::codec::Framed;
use tvm_proto::FrameCodec;

use super::{tail, GuestMemory, Launch, QemuBackend, Which, INCOMING_FD, MIGRATE_SOCK, VMM_LOG};
use crate::qmp::Qmp;
use crate::snapshot::{resume, warm};
use crate::{io_err, Snapshot, Vm, VmSpec, VmmError, WarmSpec};

const STATE: &str = "state";
/// Deadline for the freeze itself (stop + migrate a few hundred KB).
const FREEZE: Duration = Duration::from_secs(10);
/// Every seal a frozen template's RAM gets.
const SEALS: libc::c_int =
    libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// The guest RAM of one snapshot, kept by the backend while the snapshot's dir exists.
#[derive(Debug)]
pub(super) struct Memory {
    dir: PathBuf,
    fd: Arc<OwnedFd>,
}

/// Removes a half-made snapshot dir unless disarmed.
struct DirGuard(Option<std::path::PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A new, sealable, empty memfd of `bytes`.
fn new_memfd(bytes: u64) -> Result<OwnedFd, VmmError> {
    // SAFETY: memfd_create with a NUL-terminated static name; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"tvm-snapshot".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io_err("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    File::from(fd.try_clone().map_err(io_err("dup the memfd"))?)
        .set_len(bytes)
        .map_err(io_err("size the snapshot memory"))?;
    Ok(fd)
}

/// Seals a frozen template's RAM. `F_SEAL_WRITE` fails while a shared writable
/// mapping exists, so it is retried (bounded) until the killed template's is gone.
fn seal(fd: &OwnedFd) -> Result<(), VmmError> {
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        // SAFETY: fcntl on an fd we own with an integer argument.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() >= until {
            return Err(io_err("seal the snapshot memory")(e));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Bytes allocated for the memfd (only what the template touched).
fn allocated(fd: &OwnedFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fd.try_clone()
        .ok()
        .and_then(|f| File::from(f).metadata().ok())
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

impl QemuBackend {
    /// Keeps a snapshot's RAM; forgets the RAM of snapshots whose dir is gone
    /// (dropping a [`Snapshot`] removes its dir).
    fn remember(&self, id: &str, dir: PathBuf, fd: OwnedFd) {
        let mut m = self.memories();
        m.retain(|_, mem| mem.dir.exists());
        m.insert(
            id.to_string(),
            Memory {
                dir,
                fd: Arc::new(fd),
            },
        );
    }

    fn memory_of(&self, snap: &Snapshot) -> Option<Arc<OwnedFd>> {
        let mut m = self.memories();
        m.retain(|_, mem| mem.dir.exists());
        m.get(&snap.id).map(|mem| Arc::clone(&mem.fd))
    }

    fn memories(&self) -> std::sync::MutexGuard<'_, HashMap<String, Memory>> {
        self.snapshot_memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
    let memory = new_memfd(spec.memory_mb << 20)?;
    let mut l = b.spawn(
        spec,
        Launch {
            memory: GuestMemory::Shared,
            memory_fd: Some(memory.as_raw_fd()),
            qmp: true,
            migrate: true,
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
    let listener = l
        .migrate
        .take()
        .ok_or_else(|| VmmError::Snapshot("no migration listener".into()))?;
    // Relative to QEMU's working dir, its VM dir.
    let uri = format!("unix:{MIGRATE_SOCK}");
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
    seal(&memory)?;
    guard.0 = None;
    let memory_bytes = allocated(&memory);
    b.remember(&id, dir.clone(), memory);
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
    let memory = b.memory_of(snap).ok_or_else(|| {
        VmmError::Snapshot(format!(
            "snapshot {} has no memory in this backend",
            snap.id
        ))
    })?;
    let state = File::open(snap.dir.join(STATE))
        .map_err(io_err(format!("open snapshot {} state", snap.id)))?;
    let mut l = b.spawn(
        &snap.spec,
        Launch {
            memory: GuestMemory::Private,
            memory_fd: Some(memory.as_raw_fd()),
            qmp: true,
            migrate: false,
            incoming: Some(&state),
        },
    )?;
    drop(state);
    drop(memory);
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
            tail(&l.dir.join(VMM_LOG), 400)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;

    /// What clones rely on: after sealing, the RAM can still be opened read-write
    /// and mapped privately (QEMU 7.2 does both), but not written or resized.
    #[test]
    fn sealed_memory_cannot_be_changed_but_can_be_reopened() {
        let fd = new_memfd(1 << 20).unwrap();
        let mut f = File::from(fd.try_clone().unwrap());
        f.write_all(b"template").unwrap();
        seal(&fd).unwrap();
        assert_eq!(allocated(&fd), 4096, "only the touched page is allocated");
        // What a clone does: reopen through /proc/self/fd, read-write.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let mut again = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut buf = [0u8; 8];
        again.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"template");
        assert!(again.write_all(b"evil").is_err(), "writes are sealed");
        assert!(again.set_len(0).is_err(), "shrinking is sealed");
        assert!(again.set_len(2 << 20).is_err(), "growing is sealed");
        // SAFETY: fcntl on an fd we own with an integer argument.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, 0) };
        assert_eq!(r, -1, "the seals themselves are sealed");
        // A private writable mapping still works (copy-on-write).
        // SAFETY: a fresh private mapping of 4 KiB of an fd we own, unmapped below.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                again.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            *(p as *mut u8) = b'X';
            libc::munmap(p, 4096);
        }
        let mut buf = [0u8; 8];
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"template", "the clone's write stayed private");
    }
}
