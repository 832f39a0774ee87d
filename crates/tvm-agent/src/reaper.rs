//! The one reaper of PID 1. Every orphan in the guest becomes ours; a sandbox runs
//! many jobs, so one thread reaps them all and hands each job its own exit status.
//!
//! `std::process::Command::spawn` itself waits for a child whose `exec` failed, so
//! the reaper must never take such a child from under it: it only *peeks* at an
//! exited child (`waitid(.., WNOWAIT)`), then takes the registry lock — which a
//! spawn holds from before the fork until its pid is registered — and only then
//! reaps. A child that `spawn` already reaped is gone by then (ECHILD) and ignored.
//!
//! With no child at all the thread sleeps until the next spawn registers one (so an
//! idle VM does not wake it, and a short program's exit is seen at once).

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Called once with the exit status of the child it was registered for.
pub(crate) type OnExit = Box<dyn FnOnce(WaitStatus) + Send>;

/// Registered children, and how many registrations there have been.
struct Registry {
    watched: BTreeMap<i32, OnExit>,
    spawns: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    watched: BTreeMap::new(),
    spawns: 0,
});
/// Signalled when a child is registered.
static SPAWNED: Condvar = Condvar::new();
static START: Once = Once::new();

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Holds the registry while a child is spawned; see the module comment.
pub(crate) struct SpawnGuard(MutexGuard<'static, Registry>);

/// Starts the reaper thread (once) and locks the registry for one spawn.
pub(crate) fn lock_for_spawn() -> SpawnGuard {
    START.call_once(|| {
        std::thread::spawn(run);
    });
    SpawnGuard(registry())
}

impl SpawnGuard {
    /// `on_exit` gets the exit status of `pid` (on the reaper's thread).
    pub(crate) fn watch(mut self, pid: Pid, on_exit: OnExit) {
        self.0.watched.insert(pid.as_raw(), on_exit);
        self.0.spawns += 1;
        SPAWNED.notify_all();
    }
}

fn run() {
    loop {
        let spawns = registry().spawns;
        let peeked = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        let pid = match peeked {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(_) | Err(Errno::EINTR) => continue,
            // No children: sleep until a spawn registers one. (A spawn counted
            // after `spawns` was read is seen here, so none is missed; the
            // timeout only bounds the unexpected.)
            Err(Errno::ECHILD) => {
                let reg = registry();
                if reg.spawns == spawns {
                    let _ = SPAWNED.wait_timeout(reg, Duration::from_secs(1));
                }
                continue;
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let mut reg = registry();
        // Anything else: reaped by `spawn` itself (its exec failed), or not ready.
        if let Ok(st @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
            waitpid(pid, Some(WaitPidFlag::WNOHANG))
        {
            if let Some(on_exit) = reg.watched.remove(&pid.as_raw()) {
                drop(reg);
                on_exit(st);
            }
        }
    }
}
