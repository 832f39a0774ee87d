//! Processes a sandbox runs alongside its requests (`Spawn`, protocol version 6).
//!
//! A job (`Run`) holds the main loop until it ends; a spawned process does not: the
//! agent answers `Spawned` at once and a supervisor thread per process sends its
//! output and its end as `Proc` frames through the shared [`Link`], while the main
//! loop goes on answering requests — more spawns, its stdin (`Input`,
//! `CloseStdin`), signals, file operations. Each process runs like a job of the
//! sandbox: the job user, its own child cgroup of the sandbox's (so the sandbox's
//! limits hold over all of them and a deadline ends this process's group only),
//! `no_new_privs`, the job's environment defaults. Its stdin is fed by a thread of
//! its own, so a process that never reads cannot hold up the main loop.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tvm_proto::{GuestMsg, Outcome, ProcEvent, Spawn, Stream, WORK_DIR};

use crate::cgroup::JobCgroup;
use crate::job::{self, Event, JobError, Session};
use crate::link::Link;
use crate::reaper;

/// Stdin chunks queued for a process that has not read them yet, at most.
const MAX_QUEUED_INPUTS: usize = 1024;

/// The running spawned processes, by pid.
#[derive(Default)]
pub(crate) struct Procs {
    live: Arc<Mutex<HashMap<u32, Live>>>,
}

/// What the main loop keeps of a running process: where its stdin goes.
struct Live {
    stdin: Option<mpsc::SyncSender<Vec<u8>>>,
}

fn locked(m: &Mutex<HashMap<u32, Live>>) -> MutexGuard<'_, HashMap<u32, Live>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Procs {
    /// Starts `spec` in the sandbox and returns its pid; from then on its output and
    /// end go to the host as `Proc` frames.
    pub(crate) fn spawn(
        &self,
        spec: &Spawn,
        session: &mut Session,
        link: &Arc<Link>,
    ) -> Result<u32, JobError> {
        let (program, args) = spec.argv.split_first().ok_or(JobError::EmptyCommand)?;
        let cwd = spec.cwd.as_deref().unwrap_or(WORK_DIR);
        if !std::path::Path::new(cwd).is_dir() {
            return Err(JobError::Spawn {
                program: program.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("working directory {cwd} is not a directory"),
                ),
            });
        }
        let _ = crate::sys::set_clock(spec.clock_unix_ns);
        let (cg, fsize) = session.proc_cgroup().map_err(JobError::Cgroup)?;
        let procs = cg.open_procs().map_err(JobError::Cgroup)?;
        let mut cmd = Command::new(program);
        cmd.args(args).env_clear().envs(job::default_env());
        if session.egress() {
            cmd.envs(job::proxy_env());
        }
        // As a shell would have it: `pwd` shows the directory as named (`/home/user`,
        // not the work dir it links to).
        cmd.env("PWD", cwd);
        cmd.envs(&spec.env)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let procs_fd = procs.as_raw_fd();
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe system calls on values captured by copy.
        unsafe {
            cmd.pre_exec(move || job::drop_into_sandbox(procs_fd, fsize));
        }
        let (tx, rx) = mpsc::channel();
        let spawning = reaper::lock_for_spawn();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                drop(spawning);
                cg.remove();
                return Err(JobError::Spawn {
                    program: program.clone(),
                    source,
                });
            }
        };
        let pid = child.id();
        let exit_tx = tx.clone();
        spawning.watch(
            Pid::from_raw(pid as i32),
            Box::new(move |st| {
                let _ = exit_tx.send(Event::Exited(st));
            }),
        );
        drop(procs);
        let reported = Arc::new(AtomicBool::new(false));
        for (pipe, stream) in [
            (child.stdout.take().map(OwnedFd::from), Stream::Stdout),
            (child.stderr.take().map(OwnedFd::from), Stream::Stderr),
        ] {
            if let Some(pipe) = pipe {
                let tx = tx.clone();
                let reported = reported.clone();
                std::thread::spawn(move || job::pump(pipe, stream, &tx, &reported));
            }
        }
        drop(tx);
        let stdin = match (spec.stdin, child.stdin.take()) {
            (true, Some(pipe)) => {
                let (in_tx, in_rx) = mpsc::sync_channel(MAX_QUEUED_INPUTS);
                let pipe = OwnedFd::from(pipe);
                std::thread::spawn(move || feed(pipe, &in_rx));
                Some(in_tx)
            }
            // Without `stdin` the process reads end-of-file at once.
            _ => None,
        };
        locked(&self.live).insert(pid, Live { stdin });
        let live = self.live.clone();
        let link = link.clone();
        let deadline =
            (spec.timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(spec.timeout_ms));
        std::thread::spawn(move || {
            let _done = job::SetOnDrop(reported);
            let event = supervise(pid, &cg, &rx, deadline, &link);
            // Gone from the table before the host hears of its end, so a signal
            // sent after the end is answered `NoProcess`.
            locked(&live).remove(&pid);
            let _ = link.send(GuestMsg::Proc { pid, event });
            cg.remove_if_empty();
        });
        Ok(pid)
    }

    /// Queues bytes for a process's stdin; `false` if no such process takes input.
    pub(crate) fn input(&self, pid: u32, data: Vec<u8>) -> bool {
        let live = locked(&self.live);
        match live.get(&pid).and_then(|l| l.stdin.as_ref()) {
            Some(tx) => tx.try_send(data).is_ok(),
            None => false,
        }
    }

    /// Closes a process's stdin; `false` if there is no such process.
    pub(crate) fn close_stdin(&self, pid: u32) -> bool {
        match locked(&self.live).get_mut(&pid) {
            Some(l) => {
                l.stdin = None;
                true
            }
            None => false,
        }
    }

    /// Signals a process's whole group; `false` if there is no such process.
    pub(crate) fn signal(&self, pid: u32, signal: i32) -> bool {
        if !locked(&self.live).contains_key(&pid) {
            return false;
        }
        let Ok(sig) = Signal::try_from(signal) else {
            return false;
        };
        // The process leads its own group (`setsid` before exec).
        killpg(Pid::from_raw(pid as i32), sig).is_ok()
    }
}

/// Sends the process's output as it comes and returns how it ended.
fn supervise(
    pid: u32,
    cg: &JobCgroup,
    rx: &mpsc::Receiver<Event>,
    deadline: Option<Instant>,
    link: &Link,
) -> ProcEvent {
    let mut status: Option<WaitStatus> = None;
    let mut timed_out = false;
    let mut eofs = 0;
    let far = Duration::from_secs(3600);
    let mut wake = deadline;
    loop {
        if status.is_some() && eofs == 2 {
            break;
        }
        let wait = wake.map_or(far, |w| w.saturating_duration_since(Instant::now()));
        match rx.recv_timeout(wait) {
            Ok(Event::Out(stream, data)) => {
                let event = ProcEvent::Output { stream, data };
                if link.send(GuestMsg::Proc { pid, event }).is_err() {
                    // The host is gone; the VM ends with it.
                    cg.kill_all();
                }
            }
            Ok(Event::Eof) => eofs += 1,
            Ok(Event::Exited(st)) => {
                status = Some(st);
                // What it left running may hold the pipes: take what was written
                // by now (or until they close), then report.
                wake = Some(
                    Instant::now()
                        + if cg.is_empty() {
                            job::DRAIN
                        } else {
                            job::BACKGROUND_GRACE
                        },
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if status.is_some() {
                    break;
                }
                if wake.is_some() {
                    timed_out = true;
                    cg.kill_all();
                    wake = Some(Instant::now() + job::DRAIN);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let oom = !matches!(status, Some(WaitStatus::Exited(..))) && cg.oom_killed();
    let (exit_code, signal) = match status {
        Some(WaitStatus::Exited(_, code)) => (Some(code), None),
        Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
        _ => (None, None),
    };
    ProcEvent::Exit {
        exit_code,
        signal,
        outcome: if timed_out {
            Outcome::Timeout
        } else if oom {
            Outcome::MemoryLimit
        } else {
            Outcome::Completed
        },
    }
}

/// Writes queued input to the process's stdin until the queue closes (`CloseStdin`
/// or the process's end) or the process stops reading for good (its pipe closed).
fn feed(pipe: OwnedFd, rx: &mpsc::Receiver<Vec<u8>>) {
    while let Ok(data) = rx.recv() {
        let mut rest = &data[..];
        while !rest.is_empty() {
            match nix::unistd::write(&pipe, rest) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLOUT)];
                    let _ = poll(&mut fds, PollTimeout::from(200u16));
                }
                Err(_) => return,
            }
        }
    }
}
