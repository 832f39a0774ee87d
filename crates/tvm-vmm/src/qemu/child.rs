//! Who QEMU runs as, and what its process does between fork and exec.
//!
//! When the service runs as root, every QEMU runs as its own unprivileged uid
//! (`uid_base + n`) with no supplementary groups. A uid is leased: no two live VMs
//! share one, within an instance (a set) nor across the service instances of one
//! network namespace (each lease holds the abstract Unix socket `@tvm-vm-uid-<uid>`,
//! which the kernel frees when its holder dies, so a crash leaks nothing). The gid is the uid, except under KVM when `/dev/kvm` is
//! not world-accessible: then it is `/dev/kvm`'s group, the one way QEMU 7.2 can
//! open it (it takes no file descriptor for it). QEMU reaches nothing by path under
//! the service's root-only (0700) runtime dir: its working dir is its VM dir (owned
//! by its uid, 0700; entered with `fchdir` before the uid changes), where it finds
//! its sockets and console log by relative name, and every other file (image, guest
//! RAM, snapshot state) is an inherited file descriptor it reopens as
//! `/proc/self/fd/<n>`, which checks only the file's own mode.

use std::collections::HashSet;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use crate::VmmError;

/// Most file descriptors a child gets placed at fixed numbers.
pub(crate) const MAX_PLACED_FDS: usize = 8;

/// A range of uids handed out one per live VM.
#[derive(Debug)]
pub(crate) struct UidPool {
    base: u32,
    count: u32,
    state: Mutex<UidState>,
}

#[derive(Debug, Default)]
struct UidState {
    next: u32,
    used: HashSet<u32>,
}

/// One uid of a [`UidPool`]; returned to it on drop.
#[derive(Debug)]
pub(crate) struct UidLease {
    pool: Arc<UidPool>,
    pub uid: u32,
    /// Holds the uid against other service instances on this host.
    _host_lock: Option<std::os::unix::net::UnixListener>,
}

/// Claims `uid` among the service instances of this network namespace: `None` if
/// another one holds it, `Some(None)` if abstract sockets are unavailable.
fn host_lock(uid: u32) -> Option<Option<std::os::unix::net::UnixListener>> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = format!("tvm-vm-uid-{uid}");
    let Ok(addr) = SocketAddr::from_abstract_name(name.as_bytes()) else {
        return Some(None);
    };
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Some(Some(l)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => None,
        Err(_) => Some(None),
    }
}

impl UidPool {
    pub(crate) fn new(base: u32, count: u32) -> Result<Arc<Self>, VmmError> {
        if base == 0 || count == 0 || base.checked_add(count).is_none() {
            return Err(VmmError::Unavailable(format!(
                "bad VM uid range {base} + {count}: it must be non-empty and exclude root"
            )));
        }
        Ok(Arc::new(Self {
            base,
            count,
            state: Mutex::new(UidState::default()),
        }))
    }

    /// The next free uid after the last one handed out (round robin, so a uid is
    /// reused as late as possible).
    pub(crate) fn lease(self: &Arc<Self>) -> Result<UidLease, VmmError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..self.count {
            let n = st.next;
            st.next = (st.next + 1) % self.count;
            let uid = self.base + n;
            if st.used.contains(&uid) {
                continue;
            }
            if let Some(lock) = host_lock(uid) {
                st.used.insert(uid);
                return Ok(UidLease {
                    pool: Arc::clone(self),
                    uid,
                    _host_lock: lock,
                });
            }
        }
        Err(VmmError::Unavailable(format!(
            "all {} VM uids from {} are in use on this host",
            self.count, self.base
        )))
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock().unwrap_or_else(|e| e.into_inner());
        st.used.remove(&self.uid);
    }
}

/// The gid for a VM's uid: its own, unless the VM needs `/dev/kvm` (`kvm` is
/// `Some((mode, gid))` of the device) and only the device's group may open it.
pub(crate) fn vm_gid(uid: u32, kvm: Option<(u32, u32)>) -> Result<u32, String> {
    match kvm {
        None => Ok(uid),
        Some((mode, _)) if mode & 0o006 == 0o006 => Ok(uid),
        Some((mode, gid)) if mode & 0o060 == 0o060 => Ok(gid),
        Some((mode, _)) => Err(format!(
            "/dev/kvm (mode {:o}) is open neither to its group nor to everyone",
            mode & 0o777
        )),
    }
}

/// What the child does between fork and exec, prepared in the parent so the child
/// only makes syscalls (no allocation, no locks).
#[derive(Debug, Clone)]
pub(crate) struct ChildSetup {
    /// The service's pid: if it died before `PR_SET_PDEATHSIG` took effect, exit.
    pub parent: libc::pid_t,
    /// The VM dir, to `fchdir` into while still privileged.
    pub cwd: RawFd,
    /// Open `cgroup.procs` files of the VM's cgroups.
    pub cgroup_procs: Vec<RawFd>,
    /// (uid, gid) to drop to; `None` keeps the service's own.
    pub ids: Option<(u32, u32)>,
    /// (open fd, number it must have in QEMU).
    pub fds: Vec<(RawFd, RawFd)>,
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl ChildSetup {
    /// Runs in the forked child. The order matters: the cgroup is joined and the
    /// working dir entered while still privileged; `PR_SET_PDEATHSIG` is set after
    /// the credentials change (which clears it), and the parent is checked again
    /// after it; the fds are placed last, as they may land on the numbers of the
    /// ones used before.
    pub(crate) fn apply(&self) -> io::Result<()> {
        if self.fds.len() > MAX_PLACED_FDS {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        // SAFETY: every call is an async-signal-safe syscall on plain values or on
        // fds the parent keeps open until spawn returns; nothing allocates.
        unsafe {
            check(libc::fchdir(self.cwd))?;
            crate::cgroups::join_current(&self.cgroup_procs)?;
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            check(libc::setrlimit(libc::RLIMIT_CORE, &no_core))?;
            if let Some((uid, gid)) = self.ids {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(gid, gid, gid))?;
                check(libc::setresuid(uid, uid, uid))?;
                if libc::getuid() != uid || libc::geteuid() != uid || libc::getegid() != gid {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            // The service may have died before the death signal was armed.
            if libc::getppid() != self.parent {
                libc::_exit(1);
            }
            // Two steps, so a source fd is never overwritten before it is copied:
            // first out of the way (close-on-exec copies), then into place.
            let mut tmp = [-1 as RawFd; MAX_PLACED_FDS];
            for (i, &(src, _)) in self.fds.iter().enumerate() {
                tmp[i] = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 100);
                check(tmp[i])?;
            }
            for (i, &(_, dst)) in self.fds.iter().enumerate() {
                // dup2 leaves the new fd without close-on-exec: QEMU inherits it.
                check(libc::dup2(tmp[i], dst))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    /// A range of its own per test (and test process): the leases are host-wide.
    fn test_base() -> u32 {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        3_000_000_000 + (std::process::id() % 100_000) * 100 + NEXT.fetch_add(10, Ordering::Relaxed)
    }

    #[test]
    fn uids_are_leased_round_robin_and_never_twice() {
        let base = test_base();
        let pool = UidPool::new(base, 3).unwrap();
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        assert_eq!([a.uid, b.uid, c.uid], [base, base + 1, base + 2]);
        assert!(pool.lease().is_err(), "all in use");
        drop(b);
        assert_eq!(pool.lease().unwrap().uid, base + 1);
        drop((a, c));
        // The cursor moved on: the next lease is the one after the last handed out.
        assert_eq!(pool.lease().unwrap().uid, base + 2);
        assert!(UidPool::new(0, 10).is_err(), "root is never in the range");
        assert!(UidPool::new(40_000, 0).is_err());
    }

    /// Two service instances (two pools) on one host never hand out the same uid.
    #[test]
    fn another_instance_skips_uids_in_use() {
        let base = test_base();
        let (one, two) = (
            UidPool::new(base, 2).unwrap(),
            UidPool::new(base, 2).unwrap(),
        );
        let a = one.lease().unwrap();
        let b = two.lease().unwrap();
        assert_eq!((a.uid, b.uid), (base, base + 1));
        assert!(two.lease().is_err() && one.lease().is_err());
        drop(a);
        assert_eq!(two.lease().unwrap().uid, base, "freed host-wide on drop");
    }

    #[test]
    fn gid_is_the_uid_unless_kvm_needs_its_group() {
        assert_eq!(vm_gid(40_007, None), Ok(40_007));
        assert_eq!(vm_gid(40_007, Some((0o20666, 993))), Ok(40_007));
        assert_eq!(vm_gid(40_007, Some((0o20660, 993))), Ok(993));
        assert!(vm_gid(40_007, Some((0o20600, 993))).is_err());
    }

    /// A real fork/exec: fds land at their numbers even when a source sits on a
    /// target number, the working dir is the given dir, and (as root) the ids drop.
    #[test]
    fn child_setup_places_fds_and_drops_ids() {
        let d = tempfile::tempdir().unwrap();
        let a = std::fs::File::open("/proc/self/exe").unwrap();
        let b = std::fs::File::open("/dev/null").unwrap();
        let cwd = std::fs::File::open(d.path()).unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            std::os::unix::fs::chown(d.path(), Some(40_123), Some(40_123)).unwrap();
        }
        let setup = ChildSetup {
            parent: std::process::id() as libc::pid_t,
            cwd: cwd.as_raw_fd(),
            cgroup_procs: Vec::new(),
            ids: root.then_some((40_123, 40_123)),
            // `b` goes to 5 and `a` to b's own number: the swap must not lose `a`.
            fds: vec![(b.as_raw_fd(), 5), (a.as_raw_fd(), b.as_raw_fd())],
        };
        let script = format!(
            "readlink /proc/self/fd/5; readlink /proc/self/fd/{}; pwd; id -u; id -G; \
             grep NoNewPrivs /proc/self/status",
            b.as_raw_fd()
        );
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        let s = setup.clone();
        // SAFETY: `apply` only makes async-signal-safe syscalls.
        unsafe {
            cmd.pre_exec(move || s.apply());
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "/dev/null");
        assert!(lines[1].ends_with(
            std::env::current_exe()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        ));
        assert_eq!(
            std::fs::canonicalize(lines[2]).unwrap(),
            std::fs::canonicalize(d.path()).unwrap()
        );
        if root {
            assert_eq!(lines[3], "40123");
            assert_eq!(
                lines[4], "40123",
                "primary gid only, no supplementary groups"
            );
        }
        assert!(lines[5].ends_with('1'), "{}", lines[5]);
    }
}
