//! Firecracker snapshots: a template VM frozen into two files, and clones started from them.
//!
//! Template: a cold boot (`FirecrackerBackend::boot`), the warm-up, then
//! `PATCH /vm` (Paused) and `PUT /snapshot/create` (Full) write `snapshot.state` and
//! `snapshot.mem` inside the template's jail. They are moved into the snapshot dir
//! (renamed when the jail and the snapshot dir share a filesystem, else copied), the
//! template is destroyed, and the files are made root's and read-only (0444).
//!
//! Clone: a fresh jail exactly like a boot's (own id, uid, cgroup, network namespace),
//! the snapshot's files placed in it under the same jail names, and only the logger,
//! the metrics and `PUT /snapshot/load` sent (Firecracker refuses a load after any
//! other configuration). The state records the image, drive and vsock paths as the
//! template's jail saw them; every jail has the same layout, so they resolve in the
//! clone's jail, and Firecracker binds the vsock socket anew at load. Firecracker
//! resets every vsock connection on restore; the agent accepts a new one and says
//! `Ready`, then `crate::snapshot::resume` makes the clone unique.

use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::api::{
    ApiCall, MemoryBackend, MemoryBackendType, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType, VmState,
};
use super::{logging_calls, FirecrackerBackend, JailFile, Jailed};
use crate::snapshot::{allocated_bytes, resume, warm};
use crate::{io_err, Snapshot, Vm, VmProcess, VmSpec, Vmm, VmmError, WarmSpec};

/// The snapshot's files inside a jail, where Firecracker writes and reads them.
const JAIL_STATE: &str = "snapshot.state";
const JAIL_MEMORY: &str = "snapshot.mem";
/// The same files in the snapshot dir.
const STATE: &str = "state";
const MEMORY: &str = "memory";
/// Bound per freeze call: `PUT /snapshot/create` writes and fsyncs all guest memory.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause, then a full snapshot into the jail.
pub fn freeze_calls() -> Vec<ApiCall> {
    vec![
        ApiCall::vm_state(VmState::Paused),
        ApiCall::snapshot_create(&SnapshotCreateParams {
            snapshot_type: SnapshotType::Full,
            snapshot_path: format!("/{JAIL_STATE}"),
            mem_file_path: format!("/{JAIL_MEMORY}"),
        }),
    ]
}

/// Everything a clone's Firecracker is sent: logging, then the load, which resumes it.
/// The memory is the `File` backend: Firecracker maps it `MAP_PRIVATE`, so clones
/// share its unwritten pages and copy on write.
pub fn restore_calls() -> Vec<ApiCall> {
    let mut calls = logging_calls();
    calls.push(ApiCall::snapshot_load(&SnapshotLoadParams {
        snapshot_path: format!("/{JAIL_STATE}"),
        mem_backend: MemoryBackend {
            backend_type: MemoryBackendType::File,
            backend_path: format!("/{JAIL_MEMORY}"),
        },
        resume_vm: true,
    }));
    calls
}

/// Boots a template, warms it, freezes it into a fresh snapshot dir and destroys it.
pub(super) async fn make(
    b: &FirecrackerBackend,
    spec: &VmSpec,
    w: &WarmSpec,
) -> Result<Snapshot, VmmError> {
    let started = Instant::now();
    let id = ulid::Ulid::new().to_string().to_lowercase();
    // The Snapshot owns its dir from here on: any error below drops it, and the dir with it.
    let mut snap = Snapshot {
        dir: b.runtime.snapshot_dir(&id)?,
        id,
        spec: spec.clone(),
        backend: b.name().into(),
        took: Duration::ZERO,
        memory_bytes: 0,
    };
    let (j, mut channel, _) = b.boot(spec).await?;
    warm(&mut channel, w).await?;
    freeze(j, &snap.dir).await?;
    snap.took = started.elapsed();
    snap.memory_bytes = allocated_bytes(&snap.dir.join(MEMORY));
    tracing::info!(
        snapshot = %snap.id,
        took_ms = snap.took.as_millis() as u64,
        memory_bytes = snap.memory_bytes,
        "firecracker template frozen"
    );
    Ok(snap)
}

/// Pauses the VM, snapshots it into its jail, moves the files into `dir`, destroys
/// the VM (whatever happened), then seals the files.
async fn freeze(j: Jailed, dir: &Path) -> Result<(), VmmError> {
    let frozen = async {
        let api = j.api.with_timeout(CREATE_TIMEOUT);
        for call in freeze_calls() {
            api.send(&call)
                .await
                .map_err(|e| VmmError::Api(e.to_string()))?;
        }
        let (chroot, to) = (j.chroot.clone(), dir.to_path_buf());
        tokio::task::spawn_blocking(move || take_from_jail(&chroot, &to))
            .await
            .map_err(|e| VmmError::Snapshot(format!("moving the snapshot files: {e}")))?
    }
    .await;
    let Jailed { mut proc, .. } = j;
    proc.kill_and_wait().await;
    frozen?;
    // The template and its jail are gone: nothing else can reach the files now.
    seal(dir)
}

/// Moves the template's snapshot files from its chroot into the snapshot dir: a
/// rename when both are on one filesystem; else (the snapshot dir is on /dev/shm and
/// the jails are not) a copy that refuses anything but a plain file, since the jail
/// belongs to the VM's uid.
fn take_from_jail(chroot: &Path, dir: &Path) -> Result<(), VmmError> {
    for (jail_name, name) in [(JAIL_STATE, STATE), (JAIL_MEMORY, MEMORY)] {
        let (from, to) = (chroot.join(jail_name), dir.join(name));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_plain(&from, &to)?,
            Err(e) => return Err(io_err(format!("move {}", from.display()))(e)),
        }
    }
    Ok(())
}

/// Copies a regular file without following a symlink at `from`.
fn copy_plain(from: &Path, to: &Path) -> Result<(), VmmError> {
    let mut src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)
        .map_err(io_err(format!("open {}", from.display())))?;
    let meta = src
        .metadata()
        .map_err(io_err(format!("stat {}", from.display())))?;
    if !meta.is_file() {
        return Err(VmmError::Snapshot(format!(
            "{} is not a plain file",
            from.display()
        )));
    }
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .map_err(io_err(format!("create {}", to.display())))?;
    std::io::copy(&mut src, &mut dst).map_err(io_err(format!("copy to {}", to.display())))?;
    Ok(())
}

/// Checks the snapshot files are plain files with no other link, and makes them
/// root's and read-only, so every clone's uid may map but none may change them.
fn seal(dir: &Path) -> Result<(), VmmError> {
    for name in [STATE, MEMORY] {
        let p = dir.join(name);
        let meta = fs::symlink_metadata(&p).map_err(io_err(format!("stat {}", p.display())))?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(VmmError::Snapshot(format!(
                "{} is not a plain file with one link",
                p.display()
            )));
        }
        std::os::unix::fs::lchown(&p, Some(0), Some(0))
            .map_err(io_err(format!("chown {}", p.display())))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o444))
            .map_err(io_err(format!("chmod {}", p.display())))?;
    }
    Ok(())
}

/// Refuses a snapshot another backend made or whose files are gone.
fn check(snap: &Snapshot, backend: &str) -> Result<(), VmmError> {
    if snap.backend != backend {
        return Err(VmmError::Snapshot(format!(
            "snapshot {} was made by {}; {backend} cannot restore it",
            snap.id, snap.backend
        )));
    }
    for name in [STATE, MEMORY] {
        let p = snap.dir.join(name);
        if !p.is_file() {
            return Err(VmmError::Snapshot(format!(
                "snapshot {} has no {name} file at {}",
                snap.id,
                p.display()
            )));
        }
    }
    Ok(())
}

/// Places files in a new jail: hard links when the source is on the jail's
/// filesystem, so every clone maps the one memory file (privately: Firecracker's
/// `File` backend is `MAP_PRIVATE`) and shares its unwritten pages in the page
/// cache. Otherwise (snapshots on /dev/shm, jails under a runtime dir on disk) each
/// clone gets its own copy: slower, it costs the full memory size per clone, and the
/// copy sits on the jail's filesystem. Either way the files are root's, 0444.
pub(super) fn place_in_jail(files: &[JailFile], chroot: &Path) -> Result<(), VmmError> {
    for f in files {
        let to = chroot.join(f.name);
        match fs::hard_link(&f.from, &to) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                tracing::debug!(file = %f.from.display(), "snapshot on another filesystem; copying into the jail");
                fs::copy(&f.from, &to).map_err(io_err(format!("copy {} into the jail", f.name)))?;
                fs::set_permissions(&to, fs::Permissions::from_mode(0o444))
                    .map_err(io_err(format!("chmod {}", to.display())))?;
            }
            Err(e) => return Err(io_err(format!("link {} into the jail", f.name))(e)),
        }
    }
    Ok(())
}

/// Starts a clone of `snap` in its own new jail and returns it once it is unique and ready.
pub(super) async fn restore(b: &FirecrackerBackend, snap: &Snapshot) -> Result<Vm, VmmError> {
    check(snap, b.name())?;
    let files = [
        JailFile {
            from: snap.dir.join(STATE),
            name: JAIL_STATE,
        },
        JailFile {
            from: snap.dir.join(MEMORY),
            name: JAIL_MEMORY,
        },
    ];
    let j = b.jail(&snap.spec, &files).await?;
    b.send_all(&j, &restore_calls()).await?;
    let (mut channel, _) = b.agent(&j).await?;
    let guest_boot_ms = resume(&mut channel, j.deadline).await?;
    Ok(j.into_vm(channel, guest_boot_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn snapshot_at(dir: &Path, backend: &str) -> Snapshot {
        Snapshot {
            id: "s1".into(),
            spec: VmSpec {
                vcpus: 1,
                memory_mb: 352,
            },
            backend: backend.into(),
            dir: dir.to_path_buf(),
            took: Duration::ZERO,
            memory_bytes: 0,
        }
    }

    fn root_or_skip() -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("SKIPPED: sealing snapshot files needs root (chown to root)");
        }
        root
    }

    /// A tmpfs dir on another filesystem than `other`, if this host has one.
    fn other_fs_dir(other: &Path) -> Option<tempfile::TempDir> {
        let d = tempfile::tempdir_in("/dev/shm").ok()?;
        let dev = |p: &Path| fs::metadata(p).map(|m| m.dev()).ok();
        if dev(d.path()) != dev(other) {
            Some(d)
        } else {
            eprintln!("SKIPPED: /dev/shm is on the same filesystem as the temp dir");
            None
        }
    }

    #[test]
    fn foreign_or_incomplete_snapshots_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("s1");
        fs::create_dir(&dir).unwrap();
        let snap = snapshot_at(&dir, "qemu-tcg");
        let e = check(&snap, "firecracker").unwrap_err();
        assert!(
            matches!(&e, VmmError::Snapshot(m) if m.contains("qemu-tcg")),
            "{e}"
        );
        let snap = snapshot_at(&dir, "firecracker");
        fs::write(dir.join(STATE), b"s").unwrap();
        let e = check(&snap, "firecracker").unwrap_err();
        assert!(
            matches!(&e, VmmError::Snapshot(m) if m.contains("memory")),
            "{e}"
        );
        fs::write(dir.join(MEMORY), b"m").unwrap();
        check(&snap, "firecracker").unwrap();
        drop(snap);
        assert!(!dir.exists(), "a dropped snapshot removes its dir");
    }

    fn template_jail(root: &Path) -> PathBuf {
        let chroot = root.join("chroot");
        fs::create_dir(&chroot).unwrap();
        fs::write(chroot.join(JAIL_STATE), b"state").unwrap();
        fs::write(chroot.join(JAIL_MEMORY), vec![7u8; 8192]).unwrap();
        chroot
    }

    fn assert_sealed(dir: &Path) {
        for name in [STATE, MEMORY] {
            let m = fs::symlink_metadata(dir.join(name)).unwrap();
            assert!(m.is_file());
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (0, 0, 0o444),
                "{name}"
            );
        }
        assert_eq!(fs::read(dir.join(MEMORY)).unwrap(), vec![7u8; 8192]);
    }

    #[test]
    fn template_files_move_and_are_sealed_on_one_filesystem() {
        if !root_or_skip() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let chroot = template_jail(d.path());
        let dir = d.path().join("snap");
        fs::create_dir(&dir).unwrap();
        let ino = fs::metadata(chroot.join(JAIL_MEMORY)).unwrap().ino();
        take_from_jail(&chroot, &dir).unwrap();
        assert!(!chroot.join(JAIL_MEMORY).exists(), "moved, not copied");
        assert_eq!(fs::metadata(dir.join(MEMORY)).unwrap().ino(), ino);
        seal(&dir).unwrap();
        assert_sealed(&dir);
    }

    #[test]
    fn template_files_are_copied_across_filesystems() {
        if !root_or_skip() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let Some(shm) = other_fs_dir(d.path()) else {
            return;
        };
        let chroot = template_jail(d.path());
        take_from_jail(&chroot, shm.path()).unwrap();
        seal(shm.path()).unwrap();
        assert_sealed(shm.path());
    }

    #[test]
    fn a_symlink_in_the_jail_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let secret = d.path().join("secret");
        fs::write(&secret, b"host secret").unwrap();
        let chroot = d.path().join("chroot");
        fs::create_dir(&chroot).unwrap();
        fs::write(chroot.join(JAIL_STATE), b"state").unwrap();
        std::os::unix::fs::symlink(&secret, chroot.join(JAIL_MEMORY)).unwrap();
        // Same filesystem: the link itself is moved, and sealing refuses it.
        let dir = d.path().join("snap");
        fs::create_dir(&dir).unwrap();
        take_from_jail(&chroot, &dir).unwrap();
        assert!(matches!(seal(&dir), Err(VmmError::Snapshot(_))));
        // Across filesystems: the copy refuses to open it.
        let Some(shm) = other_fs_dir(d.path()) else {
            return;
        };
        let chroot2 = d.path().join("chroot2");
        fs::create_dir(&chroot2).unwrap();
        fs::write(chroot2.join(JAIL_STATE), b"state").unwrap();
        std::os::unix::fs::symlink(&secret, chroot2.join(JAIL_MEMORY)).unwrap();
        assert!(take_from_jail(&chroot2, shm.path()).is_err());
        assert!(!shm.path().join(MEMORY).exists());
    }

    #[test]
    fn clone_files_are_linked_on_one_filesystem_and_copied_across() {
        let d = tempfile::tempdir().unwrap();
        let snap = d.path().join("snap");
        fs::create_dir(&snap).unwrap();
        fs::write(snap.join(MEMORY), b"memory").unwrap();
        fs::set_permissions(snap.join(MEMORY), fs::Permissions::from_mode(0o444)).unwrap();
        let files = [JailFile {
            from: snap.join(MEMORY),
            name: JAIL_MEMORY,
        }];
        let chroot = d.path().join("chroot");
        fs::create_dir(&chroot).unwrap();
        place_in_jail(&files, &chroot).unwrap();
        let (a, b) = (
            fs::metadata(snap.join(MEMORY)).unwrap(),
            fs::metadata(chroot.join(JAIL_MEMORY)).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "a hard link: clones share the page cache");
        let Some(shm) = other_fs_dir(d.path()) else {
            return;
        };
        place_in_jail(&files, shm.path()).unwrap();
        let c = fs::metadata(shm.path().join(JAIL_MEMORY)).unwrap();
        assert_ne!(c.ino(), a.ino());
        assert_eq!(c.mode() & 0o7777, 0o444);
        assert_eq!(fs::read(shm.path().join(JAIL_MEMORY)).unwrap(), b"memory");
    }

    /// Real `firecracker` + `jailer` (set `TVM_FIRECRACKER_BIN`, `TVM_JAILER_BIN`; root;
    /// the guest image in `TVM_IMAGE_DIR` or `~/.cache/tvm/current`). The template half
    /// runs below the public API, because on a host whose KVM cannot run the guest (PVM)
    /// no agent ever says ready: a VM is configured and started, then paused and
    /// snapshotted at once; a clone is then restored through `Vmm::restore`, whose load
    /// must be accepted (the failure has to come from the guest side). Run once with the
    /// runtime on disk (snapshot files copied) and once on tmpfs (moved and linked).
    #[tokio::test]
    async fn real_binary_freeze_and_restore() {
        let (Some(fc), Some(jailer)) = (
            std::env::var_os("TVM_FIRECRACKER_BIN"),
            std::env::var_os("TVM_JAILER_BIN"),
        ) else {
            eprintln!("SKIPPED: set TVM_FIRECRACKER_BIN and TVM_JAILER_BIN to run it");
            return;
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: the jailer needs root");
            return;
        }
        let image_dir = std::env::var_os("TVM_IMAGE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/tvm/current")
            });
        let image = crate::GuestImage {
            kernel: image_dir.join("vmlinux"),
            initramfs: image_dir.join("initramfs.cpio"),
            rootfs: image_dir.join("rootfs.erofs"),
        };
        if let Err(e) = image.check() {
            eprintln!("SKIPPED: {e}");
            return;
        }
        for base in ["/tmp", "/dev/shm"] {
            let root = tempfile::tempdir_in(base).unwrap();
            let (rt, _) = crate::runtime::Runtime::create(root.path()).unwrap();
            let rt = std::sync::Arc::new(rt);
            let b = FirecrackerBackend::new(
                super::super::FirecrackerConfig {
                    firecracker: fc.clone().into(),
                    jailer: jailer.clone().into(),
                    image: image.clone(),
                    boot_timeout: Duration::from_secs(8),
                    uid_base: 40_000,
                    uid_count: 10,
                },
                rt.clone(),
            )
            .unwrap();
            let spec = VmSpec {
                vcpus: 1,
                memory_mb: 128,
            };
            let t = Instant::now();
            let j = b.jail(&spec, &[]).await.unwrap();
            b.send_all(&j, &super::super::configuration_calls(&spec))
                .await
                .unwrap();
            let dir = rt.snapshot_dir("trial").unwrap();
            let mut snap = snapshot_at(&dir, "firecracker");
            snap.spec = spec.clone();
            freeze(j, &snap.dir).await.unwrap();
            let mem = fs::metadata(dir.join(MEMORY)).unwrap();
            let state = fs::metadata(dir.join(STATE)).unwrap();
            eprintln!(
                "{base}: started, paused and frozen in {:?}: state {} B, memory {} B ({} allocated)",
                t.elapsed(),
                state.len(),
                mem.len(),
                allocated_bytes(&dir.join(MEMORY))
            );
            assert_eq!(mem.len(), spec.memory_mb << 20);
            assert_eq!((mem.uid(), mem.mode() & 0o7777), (0, 0o444));
            assert!(rt.vm_dirs().is_empty(), "the template is gone");

            // The load alone, timed: a jail with the files, logging, then the load.
            let files = [
                JailFile {
                    from: dir.join(STATE),
                    name: JAIL_STATE,
                },
                JailFile {
                    from: dir.join(MEMORY),
                    name: JAIL_MEMORY,
                },
            ];
            let j = b.jail(&spec, &files).await.unwrap();
            let calls = restore_calls();
            let (load, logging) = calls.split_last().unwrap();
            b.send_all(&j, logging).await.unwrap();
            let t = Instant::now();
            b.send_all(&j, std::slice::from_ref(load)).await.unwrap();
            eprintln!("{base}: PUT /snapshot/load accepted in {:?}", t.elapsed());
            drop(j);

            let jails = rt.dir().join("jail");
            let watch = jails.clone();
            let watcher = tokio::spawn(async move {
                for _ in 0..400 {
                    let found = fs::read_dir(watch.join("firecracker"))
                        .into_iter()
                        .flatten()
                        .flatten()
                        .any(|e| e.path().join("root/v.sock").exists());
                    if found {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            });
            let t = Instant::now();
            match b.restore(&snap).await {
                Ok(vm) => {
                    eprintln!("{base}: clone ready in {:?}", t.elapsed());
                    vm.destroy().await;
                }
                Err(e) => {
                    eprintln!("{base}: clone failed after {:?}: {e}", t.elapsed());
                    assert!(
                        matches!(
                            e,
                            VmmError::BootTimeout { .. } | VmmError::ExitedDuringBoot { .. }
                        ),
                        "the load was refused or failed before the guest: {e}"
                    );
                }
            }
            assert!(
                watcher.await.unwrap(),
                "the loaded snapshot never bound the vsock socket in the clone's jail"
            );
            assert!(rt.vm_dirs().is_empty(), "a VM dir is left");
            let left: Vec<_> = fs::read_dir(jails.join("firecracker"))
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "jail left: {left:?}");
            drop(snap);
            assert!(!dir.exists());

            // A corrupt state file: the load is refused and the clone leaves nothing.
            let bad_dir = rt.snapshot_dir("bad").unwrap();
            fs::write(bad_dir.join(STATE), b"not a snapshot").unwrap();
            fs::write(bad_dir.join(MEMORY), vec![0u8; 4096]).unwrap();
            let mut bad = snapshot_at(&bad_dir, "firecracker");
            bad.spec = spec.clone();
            let e = b.restore(&bad).await.unwrap_err();
            eprintln!("{base}: corrupt snapshot: {e}");
            assert!(
                matches!(&e, VmmError::Api(m) if m.contains("/snapshot/load")),
                "{e}"
            );
            assert!(rt.vm_dirs().is_empty(), "a VM dir is left");
            drop(bad);

            // Through the public API a template needs a guest that boots; where none
            // can, it fails cleanly: no snapshot dir, VM dir or jail is left.
            if crate::accel::detect().accel != crate::accel::Accel::Kvm && base == "/tmp" {
                let w = WarmSpec {
                    commands: vec![vec!["/bin/true".into()]],
                    per_command: Duration::from_secs(1),
                };
                let e = b.snapshot(&spec, &w).await.unwrap_err();
                eprintln!("{base}: snapshot() without a bootable guest: {e}");
                assert!(
                    matches!(
                        e,
                        VmmError::BootTimeout { .. } | VmmError::ExitedDuringBoot { .. }
                    ),
                    "{e}"
                );
                assert!(rt.snapshot_dirs().is_empty(), "a snapshot dir is left");
                assert!(rt.vm_dirs().is_empty(), "a VM dir is left");
            }
            let left: Vec<_> = fs::read_dir(jails.join("firecracker"))
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "jail left: {left:?}");
        }
    }
}
