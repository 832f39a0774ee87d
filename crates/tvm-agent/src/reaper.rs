//! The one reaper of PID 1. Every orphan in the guest becomes ours; a sandbox runs
//! many jobs, so one thread reaps them all and hands each job its own exit status.
//!
//! `std::process::Command::spawn` itself waits for a child whose `exec` failed, so
//! the reaper must never take such a child from under it: it only *peeks* at an
//! exited child (`waitid(.., WNOWAIT)`), then takes the registry lock — which a
//! spawn holds from before the fork until its pid is registered — and only then
//! reaps. A child that `spawn` already reaped is gone by then (ECHILD) and ignored.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::Duration;

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

static WATCHED: Mutex<Option<HashMap<i32, mpsc::Sender<WaitStatus>>>> = Mutex::new(None);
static START: Once = Once::new();

/// Holds the registry while a child is spawned; see the module comment.
pub(crate) struct SpawnGuard(MutexGuard<'static, Option<HashMap<i32, mpsc::Sender<WaitStatus>>>>);

/// Starts the reaper thread (once) and locks the registry for one spawn.
pub(crate) fn lock_for_spawn() -> SpawnGuard {
    START.call_once(|| {
        std::thread::spawn(run);
    });
    SpawnGuard(WATCHED.lock().unwrap_or_else(|e| e.into_inner()))
}

impl SpawnGuard {
    /// The exit status of `pid` will arrive on the returned receiver.
    pub(crate) fn watch(mut self, pid: Pid) -> mpsc::Receiver<WaitStatus> {
        let (tx, rx) = mpsc::channel();
        self.0
            .get_or_insert_with(HashMap::new)
            .insert(pid.as_raw(), tx);
        rx
    }
}

fn run() {
    loop {
        let peeked = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        let pid = match peeked {
            Ok(WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)) => pid,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // No children at the moment: look again shortly.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        // Anything else: reaped by `spawn` itself (its exec failed), or not ready.
        if let Ok(st @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) =
            waitpid(pid, Some(WaitPidFlag::WNOHANG))
        {
            if let Some(tx) = watched.as_mut().and_then(|m| m.remove(&pid.as_raw())) {
                let _ = tx.send(st);
            }
        }
    }
}
