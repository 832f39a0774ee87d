//! Snapshot support: warming a template's page cache, and making a clone unique.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tvm_proto::{Resume, WarmUp};

use crate::cgroup::JobCgroup;
use crate::{job, sys};

/// Memory and process caps for warm-up commands (they run before any user code).
const WARM_MEMORY: u64 = 192 << 20;
const WARM_PROCESSES: u32 = 64;

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
        let Ok(procs) = std::fs::OpenOptions::new()
            .write(true)
            .open(cg.procs_path())
        else {
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
        if let Ok(mut child) = cmd.spawn() {
            let deadline = Instant::now() + Duration::from_millis(w.timeout_ms);
            loop {
                match child.try_wait() {
                    Ok(Some(st)) => {
                        ok += usize::from(st.success());
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => {
                        cg.kill_all();
                        let _ = child.wait();
                        break;
                    }
                }
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
