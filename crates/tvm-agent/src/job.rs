//! Runs one job: files into a fresh tmpfs work dir, the program as an unprivileged
//! user in its own cgroup, output streamed with a cap, a wall-clock deadline.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tvm_proto::{
    check_relative_path, CodecError, ExitReport, GuestMsg, Job, Outcome, Stream, JOB_UID, WORK_DIR,
};

use crate::cgroup::JobCgroup;
use crate::sys;

/// Why a job could not be started or reported.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error("cannot prepare the work dir")]
    WorkDir(#[source] nix::Error),
    #[error("refused file path {path:?}")]
    BadPath {
        path: String,
        #[source]
        source: tvm_proto::PathError,
    },
    #[error("cannot write {path}")]
    WriteFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the job cgroup")]
    Cgroup(#[source] std::io::Error),
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("job has an empty command")]
    EmptyCommand,
    #[error("channel to the host failed")]
    Channel(#[from] CodecError),
}

/// How long to wait for output to drain after the program has exited.
const DRAIN: Duration = Duration::from_secs(2);
/// Largest chunk read from a pipe and sent in one frame.
const CHUNK: usize = 64 * 1024;

enum Event {
    Out(Stream, Vec<u8>),
    Eof,
    Exited(WaitStatus),
}

pub(crate) fn run(
    job: &Job,
    send: &mut dyn FnMut(GuestMsg) -> Result<(), CodecError>,
) -> Result<ExitReport, JobError> {
    let _ = sys::set_clock(job.clock_unix_ns);
    let _ = sys::add_entropy(&job.entropy);
    if PREPARED.load(std::sync::atomic::Ordering::Acquire) {
        resize_dirs(job.limits.workdir_bytes)?;
    } else {
        prepare_dirs(job.limits.workdir_bytes)?;
    }
    write_file(&job.code_file, &job.code)?;
    for f in &job.files {
        write_file(&f.path, &f.content)?;
    }
    let cg = JobCgroup::create(job.limits.memory_bytes, job.limits.max_processes)
        .map_err(JobError::Cgroup)?;
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cg.procs_path())
        .map_err(JobError::Cgroup)?;

    let (program, args) = job.argv.split_first().ok_or(JobError::EmptyCommand)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(default_env())
        .envs(&job.env)
        .current_dir(WORK_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let procs_fd = procs.as_raw_fd();
    let fsize = job.limits.workdir_bytes;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls on values captured by copy; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || drop_into_sandbox(procs_fd, fsize));
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| JobError::Spawn {
        program: program.clone(),
        source,
    })?;
    drop(procs);
    let pid = Pid::from_raw(child.id() as i32);

    let (tx, rx) = mpsc::channel();
    if let Some(mut stdin) = child.stdin.take() {
        let data = job.stdin.clone();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
    }
    for (pipe, stream) in [
        (
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            Stream::Stdout,
        ),
        (
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            Stream::Stderr,
        ),
    ] {
        if let Some(pipe) = pipe {
            let tx = tx.clone();
            std::thread::spawn(move || pump(pipe, stream, &tx));
        }
    }
    {
        let tx = tx.clone();
        std::thread::spawn(move || reap(pid, &tx));
    }
    drop(tx);

    let cap = job.limits.max_output_bytes;
    let deadline = start + Duration::from_millis(job.limits.timeout_ms);
    let mut outcome: Option<Outcome> = None;
    let mut status: Option<WaitStatus> = None;
    let mut exec_ms = 0;
    let mut eofs = 0;
    let mut totals = [0u64; 2];
    let mut truncated = [false; 2];
    let mut wake = deadline;
    loop {
        if status.is_some() && eofs == 2 {
            break;
        }
        match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Event::Out(stream, data)) => {
                let i = stream as usize;
                if truncated[i] {
                    continue;
                }
                let room = cap.saturating_sub(totals[i]) as usize;
                let keep = data.len().min(room);
                if keep > 0 {
                    send(GuestMsg::Output {
                        stream,
                        data: data[..keep].to_vec(),
                    })?;
                }
                totals[i] += keep as u64;
                if keep < data.len() {
                    truncated[i] = true;
                    if outcome.is_none() {
                        outcome = Some(Outcome::OutputLimit);
                        wake = Instant::now() + DRAIN;
                    }
                    cg.kill_all();
                }
            }
            Ok(Event::Eof) => eofs += 1,
            Ok(Event::Exited(st)) => {
                exec_ms = start.elapsed().as_millis() as u64;
                status = Some(st);
                // Background processes would keep the pipes open: end them all.
                cg.kill_all();
                wake = Instant::now() + DRAIN;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if status.is_some() {
                    break; // output did not drain in time; report what we have
                }
                if outcome.is_none() {
                    outcome = Some(Outcome::Timeout);
                }
                cg.kill_all();
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                wake = Instant::now() + DRAIN;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if exec_ms == 0 {
        exec_ms = start.elapsed().as_millis() as u64;
    }
    let outcome = outcome.unwrap_or(if cg.oom_killed() {
        Outcome::MemoryLimit
    } else {
        Outcome::Completed
    });
    let (exit_code, signal) = match status {
        Some(WaitStatus::Exited(_, code)) => (Some(code), None),
        Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
        _ => (None, None),
    };
    let _ = cg.is_empty();
    Ok(ExitReport {
        outcome,
        exit_code,
        signal,
        stdout_truncated: truncated[0],
        stderr_truncated: truncated[1],
        exec_ms,
    })
}

pub(crate) fn default_env() -> [(&'static str, &'static str); 6] {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", WORK_DIR),
        ("USER", "sandbox"),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ]
}

/// Between fork and exec: join the cgroup, new session, drop to the job user, limits.
pub(crate) fn drop_into_sandbox(procs_fd: i32, fsize: u64) -> std::io::Result<()> {
    fn check(rc: libc::c_int) -> std::io::Result<()> {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
    // SAFETY: each call is an async-signal-safe syscall on plain values; `procs_fd`
    // stays open in the parent until after spawn returns.
    unsafe {
        check(libc::write(procs_fd, b"0".as_ptr().cast(), 1) as libc::c_int)?;
        check(libc::setsid())?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(JOB_UID))?;
        check(libc::setuid(JOB_UID))?;
        let fs = libc::rlimit {
            rlim_cur: fsize,
            rlim_max: fsize,
        };
        check(libc::setrlimit(libc::RLIMIT_FSIZE, &fs))?;
        let core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        check(libc::setrlimit(libc::RLIMIT_CORE, &core))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// Whether [`prepare_ahead`] mounted the work dirs already.
static PREPARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Size the work dirs get until a job says otherwise (pyrovm's default `workdir_mb`).
const AHEAD_WORKDIR_BYTES: u64 = 64 << 20;

/// Job-independent setup done while the VM waits for its job, so a pooled VM has
/// it behind it when the job comes: the empty work-dir and /tmp mounts and the job
/// cgroup. Only fixed warm-up commands can run before the job, and they write nothing.
pub(crate) fn prepare_ahead() {
    if PREPARED.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    if prepare_dirs(AHEAD_WORKDIR_BYTES).is_ok() {
        PREPARED.store(true, std::sync::atomic::Ordering::Release);
    }
    let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids");
    let _ = std::fs::create_dir_all("/sys/fs/cgroup/job");
}

/// Gives the mounted work dirs the job's size (a tmpfs remount keeps owner and mode).
fn resize_dirs(workdir_bytes: u64) -> Result<(), JobError> {
    if workdir_bytes == AHEAD_WORKDIR_BYTES {
        return Ok(());
    }
    let opts = format!("size={workdir_bytes}");
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for dir in [WORK_DIR, "/tmp"] {
        mount(None::<&str>, dir, None::<&str>, flags, Some(opts.as_str()))
            .map_err(JobError::WorkDir)?;
    }
    Ok(())
}

fn prepare_dirs(workdir_bytes: u64) -> Result<(), JobError> {
    let opts = format!("size={workdir_bytes},mode=0700,uid={JOB_UID},gid={JOB_UID}");
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(
        Some("tmpfs"),
        WORK_DIR,
        Some("tmpfs"),
        flags,
        Some(opts.as_str()),
    )
    .map_err(JobError::WorkDir)?;
    let tmp = format!("size={workdir_bytes},mode=1777");
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        flags,
        Some(tmp.as_str()),
    )
    .map_err(JobError::WorkDir)?;
    Ok(())
}

/// Writes a user file under the work dir, owned by the job user.
fn write_file(rel: &str, content: &[u8]) -> Result<(), JobError> {
    check_relative_path(rel).map_err(|source| JobError::BadPath {
        path: rel.to_string(),
        source,
    })?;
    let path = Path::new(WORK_DIR).join(rel);
    let err = |source| JobError::WriteFile {
        path: rel.to_string(),
        source,
    };
    let mut dir = Path::new(WORK_DIR).to_path_buf();
    if let Some(parent) = Path::new(rel).parent() {
        for comp in parent.components() {
            dir.push(comp);
            if !dir.is_dir() {
                fs::create_dir(&dir).map_err(err)?;
                std::os::unix::fs::chown(&dir, Some(JOB_UID), Some(JOB_UID)).map_err(err)?;
            }
        }
    }
    let mut f = File::create(&path).map_err(err)?;
    f.write_all(content).map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(0o644))
        .map_err(err)?;
    std::os::unix::fs::fchown(&f, Some(JOB_UID), Some(JOB_UID)).map_err(err)?;
    Ok(())
}

fn pump(mut pipe: Box<dyn Read + Send>, stream: Stream, tx: &mpsc::Sender<Event>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(Event::Out(stream, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = tx.send(Event::Eof);
}

/// As PID 1 every orphan is ours: reap them all, report the job's own exit.
fn reap(job: Pid, tx: &mpsc::Sender<Event>) {
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(st @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if pid == job =>
            {
                let _ = tx.send(Event::Exited(st));
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
