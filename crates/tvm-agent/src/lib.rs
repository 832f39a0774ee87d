//! The guest agent. It runs as PID 1: it mounts the root filesystem read-only,
//! opens the host channel, says ready, takes a job, runs it as an unprivileged
//! user inside a cgroup with limits, streams its output and reports how it ended;
//! then it serves file requests, and in a sandbox further jobs, until the host
//! goes away, and powers the VM off. See docs/ARCHITECTURE.md ("The agent").

mod boot;
mod cgroup;
mod checkpoint;
mod drain;
mod files;
mod job;
mod reaper;
mod rehearse;
mod sys;
mod warm;

use tvm_proto::{error_chain, BlockingChannel, GuestMsg, HostMsg};

pub use sys::power_off;

/// Everything that can stop the agent before a job starts.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("protocol")]
    Proto(#[from] tvm_proto::CodecError),
    #[error("no host channel found: {0}")]
    NoChannel(String),
}

pub(crate) fn sys_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Sys { what, source }
}

pub(crate) fn nix_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> AgentError {
    let what = what.into();
    move |e| AgentError::Sys {
        what,
        source: std::io::Error::from(e),
    }
}

fn ready() -> GuestMsg {
    GuestMsg::Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_ms: sys::uptime_ms(),
    }
}

/// Says ready, answers warm-up and resume requests (each with another ready), and
/// returns the first request that is work.
fn serve_until_work<T: std::io::Read + std::io::Write>(
    ch: &mut BlockingChannel<T, HostMsg, GuestMsg>,
) -> Result<HostMsg, tvm_proto::CodecError> {
    job::prepare_ahead();
    ch.send(ready())?;
    loop {
        match ch.recv()? {
            HostMsg::Warm(w) => {
                rehearse::rehearse();
                let ok = warm::warm(&w);
                if ok < w.commands.len() {
                    eprintln!(
                        "tvm-agent: {ok} of {} warm-up commands succeeded",
                        w.commands.len()
                    );
                }
                ch.send(ready())?;
            }
            HostMsg::Resume(r) => {
                warm::resume(&r);
                ch.send(ready())?;
            }
            work => return Ok(work),
        }
    }
}

/// What lives between requests: the sandbox (after `Open`) and the last checkpoint.
#[derive(Default)]
struct State {
    session: Option<job::Session>,
    checkpoint: Option<checkpoint::Checkpoint>,
}

/// Answers one request; `Err` only when the channel itself failed.
fn serve_one<T: std::io::Read + std::io::Write>(
    msg: HostMsg,
    state: &mut State,
    ch: &mut BlockingChannel<T, HostMsg, GuestMsg>,
) -> Result<(), tvm_proto::CodecError> {
    let session = &mut state.session;
    let mut aftermath = None;
    let reply = match msg {
        HostMsg::Run(job) => {
            let (r, after) = job::run(&job, session.as_mut(), &mut |m| ch.send(m));
            aftermath = Some(after);
            match r {
                Ok(report) => GuestMsg::Exit(report),
                Err(e) => GuestMsg::Failed {
                    message: error_chain(&e),
                },
            }
        }
        HostMsg::Open(spec) => match job::Session::open(&spec) {
            Ok(s) => {
                *session = Some(s);
                GuestMsg::Done
            }
            Err(e) => GuestMsg::Failed {
                message: error_chain(&e),
            },
        },
        HostMsg::WriteFile(f) => match files::write(&f) {
            Ok(()) => GuestMsg::Done,
            Err(e) => e.into_msg(),
        },
        HostMsg::ReadFile { path, max_bytes } => match files::read(&path, max_bytes) {
            Ok(content) => GuestMsg::FileData { content },
            Err(e) => e.into_msg(),
        },
        HostMsg::ListDir { path } => match files::list(&path) {
            Ok((entries, truncated)) => GuestMsg::Listing { entries, truncated },
            Err(e) => e.into_msg(),
        },
        HostMsg::Collect(c) => match files::collect(&c.patterns, c.max_files, c.max_bytes) {
            Ok((files, truncated)) => GuestMsg::Collected { files, truncated },
            Err(e) => e.into_msg(),
        },
        HostMsg::Checkpoint { max_bytes } => match checkpoint::Checkpoint::take(max_bytes) {
            Ok(cp) => {
                state.checkpoint = Some(cp);
                GuestMsg::Done
            }
            Err(e) => e.into_msg(),
        },
        HostMsg::Rewind => match &state.checkpoint {
            Some(cp) => match cp.restore() {
                Ok(()) => GuestMsg::Done,
                Err(e) => e.into_msg(),
            },
            None => GuestMsg::Failed {
                message: "rewind without a checkpoint".into(),
            },
        },
        HostMsg::Warm(_) | HostMsg::Resume(_) => GuestMsg::Failed {
            message: "warm-up and resume come before any work".into(),
        },
    };
    let sent = match ch.send(reply) {
        // A reply larger than a frame (a host asking for too much) is refused by the
        // codec before anything is written: say so instead of giving up the channel.
        Err(tvm_proto::CodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput => ch
            .send(GuestMsg::FileError {
                kind: tvm_proto::FileErrorKind::TooLarge,
                message: "the answer is larger than one protocol frame".into(),
            }),
        r => r,
    };
    // A job's cleanup, once its report is on its way.
    if let Some(after) = aftermath {
        after.finish();
    }
    sent
}

/// Boot, then serve requests until the host goes away (it normally destroys the
/// VM first); returns an exit code if anything went wrong.
pub fn run_as_init() -> i32 {
    let cfg = match boot::boot() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tvm-agent: boot failed: {}", error_chain(&e));
            return 1;
        }
    };
    let mut channel = match boot::open_channel(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tvm-agent: {}", error_chain(&e));
            return 2;
        }
    };
    // One connection at a time; a vsock connection reset by a snapshot restore
    // before any work arrived is replaced by the next one.
    let (mut ch, first) = loop {
        let conn = match channel.next() {
            Ok(Some(c)) => c,
            Ok(None) => {
                eprintln!("tvm-agent: host channel closed before a job");
                return 4;
            }
            Err(e) => {
                eprintln!("tvm-agent: {}", error_chain(&e));
                return 2;
            }
        };
        let mut ch: BlockingChannel<_, HostMsg, GuestMsg> = BlockingChannel::new(conn);
        match serve_until_work(&mut ch) {
            Ok(work) => break (ch, work),
            Err(e) => {
                eprintln!("tvm-agent: no job on this connection: {}", error_chain(&e));
            }
        }
    };
    let mut state = State::default();
    let mut next = Some(first);
    while let Some(msg) = next.take() {
        if let Err(e) = serve_one(msg, &mut state, &mut ch) {
            eprintln!("tvm-agent: cannot answer: {}", error_chain(&e));
            return 5;
        }
        next = ch.recv().ok();
    }
    0
}
