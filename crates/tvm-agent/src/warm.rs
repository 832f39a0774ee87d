//! Snapshot support: warming a template's page cache, and making a clone unique.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use tvm_proto::{Resume, WarmUp};

use crate::cgroup::JobCgroup;
use crate::{job, reaper, sys};

/// Memory and process caps for warm-up commands (they run before any user code).
const WARM_MEMORY: u64 = 192 << 20;
const WARM_PROCESSES: u32 = 64;
/// How long a killed warm-up command may take to be gone.
const KILLED: Duration = Duration::from_secs(5);

/// Runs each command as the job user in a throwaway cgroup, output discarded, and
/// returns how many exited with status 0. Nothing of them survives: the cgroup is
/// killed and removed after each one.
pub(crate) fn warm(w: &WarmUp) -> usize {
    let mut ok = 0;
    for argv in &w.commands {
        let Some((program, args)) = argv.split_first() else {
            continue;
        };
        let Ok(cg) = JobCgroup::create_named("warm", WARM_MEMORY, WARM_PROCESSES) else {
            return ok;
        };
        let Ok(procs) = cg.open_procs() else {
            cg.remove();
            return ok;
        };
        let procs_fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .envs(job::default_env())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: as for jobs: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || job::drop_into_sandbox(procs_fd, 1 << 20));
        }
        // Through the reaper: it runs from the first job (or rehearsal) on, and
        // a warm-up may come after it (a pooled clone is primed after `Resume`).
        let spawning = reaper::lock_for_spawn();
        match cmd.spawn() {
            Err(_) => drop(spawning),
            Ok(child) => {
                let (tx, exited) = mpsc::channel();
                spawning.watch(
                    Pid::from_raw(child.id() as i32),
                    Box::new(move |st| {
                        let _ = tx.send(st);
                    }),
                );
                let status = match exited.recv_timeout(Duration::from_millis(w.timeout_ms)) {
                    Ok(st) => Some(st),
                    Err(_) => {
                        cg.kill_all();
                        exited.recv_timeout(KILLED).ok()
                    }
                };
                ok += usize::from(matches!(status, Some(WaitStatus::Exited(_, 0))));
            }
        }
        drop(procs);
        cg.remove();
    }
    ok
}

/// Sets the clock and reseeds the kernel RNG from host entropy.
pub(crate) fn resume(r: &Resume) {
    let _ = sys::set_clock(r.clock_unix_ns);
    if let Err(e) = sys::add_entropy(&r.entropy) {
        eprintln!("tvm-agent: cannot add entropy: {e}");
    }
}
