//! Runs one job: files into a fresh tmpfs work dir, the program as an unprivileged
//! user in its own cgroup, output streamed with a cap, a wall-clock deadline. A job
//! with egress gets the proxy variables (the caller has made the proxy port listen,
//! see [`crate::egress`]).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tvm_proto::{
    CodecError, ExitReport, GuestMsg, Job, Outcome, Stream, EGRESS_PORT, JOB_UID, WORK_DIR,
};

use crate::cgroup::JobCgroup;
use crate::{reaper, sys};

/// Why a job could not be started or reported.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    #[error("cannot prepare the work dir")]
    WorkDir(#[source] nix::Error),
    #[error("cannot write {path}: {message}")]
    WriteFile { path: String, message: String },
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
pub(crate) const DRAIN: Duration = Duration::from_secs(2);
/// In a sandbox, how long output is still taken after the program exited while
/// processes it started in the background keep running (and may hold the pipes).
pub(crate) const BACKGROUND_GRACE: Duration = Duration::from_millis(100);
/// Largest chunk read from a pipe and sent in one frame.
const CHUNK: usize = 64 * 1024;

pub(crate) enum Event {
    Out(Stream, Vec<u8>),
    Eof,
    Exited(WaitStatus),
}

/// What a sandbox shares between its jobs (made by `Open`).
#[derive(Debug)]
pub(crate) struct Session {
    cgroup: JobCgroup,
    workdir_bytes: u64,
    jobs: u64,
    /// Every job of the sandbox gets the egress proxy.
    egress: bool,
}

impl Session {
    /// Sizes the work dir and makes the sandbox's cgroup.
    pub(crate) fn open(spec: &tvm_proto::SessionSpec) -> Result<Self, JobError> {
        size_dirs(spec.workdir_bytes)?;
        let cgroup = JobCgroup::create_parent("sandbox", spec.memory_bytes, spec.max_processes)
            .map_err(JobError::Cgroup)?;
        Ok(Self {
            cgroup,
            workdir_bytes: spec.workdir_bytes,
            jobs: 0,
            egress: spec.egress,
        })
    }

    pub(crate) fn egress(&self) -> bool {
        self.egress
    }

    /// A cgroup of its own for one spawned process, inside the sandbox's, and the
    /// file-size limit the process gets.
    pub(crate) fn proc_cgroup(&mut self) -> std::io::Result<(JobCgroup, u64)> {
        self.jobs += 1;
        self.cgroup.reap_children();
        let cg = self.cgroup.child(&format!("proc{}", self.jobs))?;
        Ok((cg, self.workdir_bytes))
    }
}

/// What is left to do once a job has reported: empty and remove its cgroup (in a
/// sandbox, remove it only if nothing runs in it any more) and, in a sandbox, remove
/// the code file. [`Aftermath::finish`] runs after the report has been sent and
/// before the next request is read, so the report does not wait for it and every
/// later job (a one-shot VM may run several) starts with it done.
#[must_use]
pub(crate) struct Aftermath {
    cgroup: Option<JobCgroup>,
    in_session: bool,
    code_file: Option<String>,
}

impl Aftermath {
    pub(crate) fn finish(self) {
        if let Some(cg) = self.cgroup {
            if self.in_session {
                cg.remove_if_empty();
            } else {
                cg.remove();
            }
        }
        if let Some(f) = self.code_file {
            // The code file is the exec's, not one of the sandbox's files.
            crate::files::remove(&f);
        }
    }
}

/// Whether this job gets the egress proxy: its own flag, or its sandbox's.
pub(crate) fn has_egress(job: &Job, session: Option<&Session>) -> bool {
    job.egress || session.is_some_and(Session::egress)
}

/// Runs one job and reports how it ended; the caller sends the report, then
/// finishes the [`Aftermath`]. With `egress` the job gets the proxy variables; the
/// caller has made the proxy port listen before.
pub(crate) fn run(
    job: &Job,
    session: Option<&mut Session>,
    egress: bool,
    send: &mut dyn FnMut(GuestMsg) -> Result<(), CodecError>,
) -> (Result<ExitReport, JobError>, Aftermath) {
    let in_session = session.is_some();
    let mut after = Aftermath {
        cgroup: None,
        in_session,
        code_file: in_session.then(|| job.code_file.clone()),
    };
    let report = start(job, session, egress, send, &mut after);
    (report, after)
}

fn start(
    job: &Job,
    session: Option<&mut Session>,
    egress: bool,
    send: &mut dyn FnMut(GuestMsg) -> Result<(), CodecError>,
    after: &mut Aftermath,
) -> Result<ExitReport, JobError> {
    let _ = sys::set_clock(job.clock_unix_ns);
    let _ = sys::add_entropy(&job.entropy);
    let in_session = session.is_some();
    if !in_session {
        size_dirs(job.limits.workdir_bytes)?;
    }
    write_file(&job.code_file, &job.code)?;
    for f in &job.files {
        write_file(&f.path, &f.content)?;
    }
    let (cg, fsize) = match session {
        // Each job of a sandbox gets a child cgroup: the sandbox's limits hold for
        // all of them together, and a timeout ends this job's processes only.
        Some(s) => {
            s.jobs += 1;
            s.cgroup.reap_children();
            let cg = s
                .cgroup
                .child(&format!("job{}", s.jobs))
                .map_err(JobError::Cgroup)?;
            (cg, s.workdir_bytes)
        }
        // A one-shot VM may run several jobs (a compile, then the program or each
        // test case): each gets a cgroup of its own, so its limits and its OOM
        // count are its own.
        None => (
            JobCgroup::create(job.limits.memory_bytes, job.limits.max_processes)
                .map_err(JobError::Cgroup)?,
            job.limits.workdir_bytes,
        ),
    };
    let cg = after.cgroup.insert(cg);
    execute(job, cg, fsize, in_session, egress, send)
}

/// Runs the job's program in `cg` (its files are in place), streams its output
/// through `send`, and says how it ended; the caller removes the cgroup.
pub(crate) fn execute(
    job: &Job,
    cg: &JobCgroup,
    fsize: u64,
    in_session: bool,
    egress: bool,
    send: &mut dyn FnMut(GuestMsg) -> Result<(), CodecError>,
) -> Result<ExitReport, JobError> {
    let procs = cg.open_procs().map_err(JobError::Cgroup)?;

    let (program, args) = job.argv.split_first().ok_or(JobError::EmptyCommand)?;
    let mut cmd = command(program, args, job, egress);
    let procs_fd = procs.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls on values captured by copy; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || drop_into_sandbox(procs_fd, fsize));
    }
    let (tx, rx) = mpsc::channel();
    let start = Instant::now();
    let spawning = reaper::lock_for_spawn();
    let mut child = cmd.spawn().map_err(|source| JobError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let exit_tx = tx.clone();
    spawning.watch(
        pid,
        Box::new(move |st| {
            let _ = exit_tx.send(Event::Exited(st));
        }),
    );
    drop(procs);

    // Set once this job has reported: its helper threads then let go (a process it
    // left in the background may hold its pipes for as long as the sandbox lives).
    let reported = Arc::new(AtomicBool::new(false));
    let _reported_on_return = SetOnDrop(reported.clone());
    if let Some(stdin) = child.stdin.take() {
        let data = job.stdin.clone();
        let reported = reported.clone();
        std::thread::spawn(move || feed(OwnedFd::from(stdin), &data, &reported));
    }
    let pipes = [
        child.stdout.take().map(OwnedFd::from),
        child.stderr.take().map(OwnedFd::from),
    ];
    for (pipe, stream) in pipes.into_iter().zip([Stream::Stdout, Stream::Stderr]) {
        if let Some(pipe) = pipe {
            let tx = tx.clone();
            let reported = reported.clone();
            std::thread::spawn(move || pump(pipe, stream, &tx, &reported));
        }
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
                if in_session && !cg.is_empty() {
                    // A sandbox keeps what the job left running; it may hold the
                    // pipes open, so take what it wrote by now and report.
                    wake = Instant::now() + BACKGROUND_GRACE;
                } else if eofs < 2 {
                    // Background processes keep the pipes open: end them all.
                    // (Otherwise what is left is ended after the report: the
                    // caller's `Aftermath`.)
                    cg.kill_all();
                    wake = Instant::now() + DRAIN;
                }
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
    // Every job cgroup has memory.oom.group set: an OOM kill inside the job
    // SIGKILLs all of it, the program included (the job user cannot exempt a
    // process). A program that exited by itself was not OOM-killed, and the
    // counter need not be read.
    let oom_killed = match status {
        Some(WaitStatus::Exited(..)) => false,
        _ => cg.oom_killed(),
    };
    let outcome = outcome.unwrap_or(if oom_killed {
        Outcome::MemoryLimit
    } else {
        Outcome::Completed
    });
    let (exit_code, signal) = match status {
        Some(WaitStatus::Exited(_, code)) => (Some(code), None),
        Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
        _ => (None, None),
    };
    Ok(ExitReport {
        outcome,
        exit_code,
        signal,
        stdout_truncated: truncated[0],
        stderr_truncated: truncated[1],
        exec_ms,
    })
}

/// The job's command, before the sandbox: its environment is the agent's defaults,
/// then (with egress) the proxy variables, then the job's own `env`, each overriding
/// the one before, so a job may set its own proxy.
fn command(program: &str, args: &[String], job: &Job, egress: bool) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear().envs(default_env());
    if egress {
        cmd.envs(proxy_env());
    }
    cmd.envs(&job.env)
        .current_dir(WORK_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The variables that send a job's HTTP(S) clients (curl, pip, npm, requests, ...)
/// to the agent's proxy port, and keep loopback off it.
pub(crate) fn proxy_env() -> [(&'static str, String); 9] {
    let url = format!("http://127.0.0.1:{EGRESS_PORT}");
    let local = "localhost,127.0.0.1,::1".to_string();
    [
        ("HTTP_PROXY", url.clone()),
        ("HTTPS_PROXY", url.clone()),
        ("http_proxy", url.clone()),
        ("https_proxy", url.clone()),
        ("npm_config_proxy", url.clone()),
        ("npm_config_https_proxy", url.clone()),
        ("PIP_PROXY", url),
        ("NO_PROXY", local.clone()),
        ("no_proxy", local),
    ]
}

pub(crate) fn default_env() -> [(&'static str, &'static str); 7] {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("HOME", WORK_DIR),
        ("USER", "sandbox"),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        // `pip install --user` goes to the work dir (HOME); Debian's "externally
        // managed" marker would refuse it, and the system's files are read-only anyway.
        ("PIP_BREAK_SYSTEM_PACKAGES", "1"),
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
    let _ = JobCgroup::prepare();
}

/// Mounts the work dirs with this size, or resizes them if mounted already.
fn size_dirs(workdir_bytes: u64) -> Result<(), JobError> {
    if PREPARED.load(std::sync::atomic::Ordering::Acquire) {
        resize_dirs(workdir_bytes)
    } else {
        prepare_dirs(workdir_bytes)?;
        PREPARED.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }
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

/// Writes a user file under the work dir, owned by the job user, never following
/// a symlink out of it (a sandbox's earlier jobs may have left some).
fn write_file(rel: &str, content: &[u8]) -> Result<(), JobError> {
    crate::files::write(&tvm_proto::JobFile {
        path: rel.to_string(),
        content: content.to_vec(),
    })
    .map_err(|e| JobError::WriteFile {
        path: rel.to_string(),
        message: e.message,
    })
}

/// Sets the flag when dropped (on every way out of [`run`]).
pub(crate) struct SetOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// How often a helper thread looks whether its job has reported.
const LOOK_EVERY: u16 = 200;

/// Reads one of the job's output pipes into events. Once the job has reported, a
/// pipe still held open (by a process left in the background) goes to the drainer
/// and the thread ends.
pub(crate) fn pump(pipe: OwnedFd, stream: Stream, tx: &mpsc::Sender<Event>, reported: &AtomicBool) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(LOOK_EVERY)) {
            Ok(0) => {
                if reported.load(Ordering::Acquire) {
                    crate::drain::adopt(pipe);
                    return;
                }
                continue;
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        match nix::unistd::read(pipe.as_raw_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(Event::Out(stream, buf[..n].to_vec())).is_err() {
                    // The job has reported; what comes now is nobody's output.
                    crate::drain::adopt(pipe);
                    return;
                }
            }
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(_) => break,
        }
    }
    let _ = tx.send(Event::Eof);
}

/// Writes the job's stdin without ever blocking for good: a program that does not
/// read it is left alone once its job has reported (the pipe is closed then).
fn feed(pipe: OwnedFd, data: &[u8], reported: &AtomicBool) {
    if nix::fcntl::fcntl(
        pipe.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .is_err()
    {
        return;
    }
    let mut rest = data;
    while !rest.is_empty() {
        match nix::unistd::write(&pipe, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::EAGAIN | Errno::EINTR) => {
                if reported.load(Ordering::Acquire) {
                    return;
                }
                let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(LOOK_EVERY));
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn job(env: &[(&str, &str)], egress: bool) -> Job {
        Job {
            argv: vec!["/bin/true".into()],
            code_file: "main.sh".into(),
            code: Vec::new(),
            stdin: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: Vec::new(),
            limits: tvm_proto::JobLimits {
                timeout_ms: 1000,
                memory_bytes: 1 << 26,
                max_processes: 8,
                max_output_bytes: 1024,
                workdir_bytes: 1 << 20,
            },
            clock_unix_ns: 0,
            entropy: Vec::new(),
            egress,
        }
    }

    /// The environment the program would get.
    fn env_of(job: &Job, egress: bool) -> BTreeMap<String, String> {
        let cmd = command("/bin/true", &[], job, egress);
        cmd.get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect()
    }

    #[test]
    fn proxy_variables_only_with_egress() {
        let plain = env_of(&job(&[], false), false);
        for (k, _) in proxy_env() {
            assert!(!plain.contains_key(k), "{k} set without egress");
        }
        assert_eq!(
            plain.get("PATH").map(String::as_str),
            Some(default_env()[0].1)
        );

        let env = env_of(&job(&[], true), true);
        for k in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "npm_config_proxy",
            "npm_config_https_proxy",
            "PIP_PROXY",
        ] {
            assert_eq!(env[k], "http://127.0.0.1:3128", "{k}");
        }
        for k in ["NO_PROXY", "no_proxy"] {
            assert_eq!(env[k], "localhost,127.0.0.1,::1", "{k}");
        }
        assert_eq!(env["HOME"], WORK_DIR);
    }

    #[test]
    fn the_job_env_overrides_proxy_and_defaults() {
        let j = job(&[("HTTPS_PROXY", "http://mine:1"), ("HOME", "/tmp")], true);
        let env = env_of(&j, true);
        assert_eq!(env["HTTPS_PROXY"], "http://mine:1");
        assert_eq!(env["HTTP_PROXY"], "http://127.0.0.1:3128");
        assert_eq!(env["HOME"], "/tmp");
    }
}
