//! The guest agent. It runs as PID 1: it mounts the root filesystem read-only,
//! opens the host channel, says ready, takes a job, runs it as an unprivileged
//! user inside a cgroup with limits, streams its output and reports how it ended;
//! then it serves file requests, and in a sandbox further jobs, until the host
//! goes away, and powers the VM off. See docs/ARCHITECTURE.md ("The agent").
//!
//! Until the first work message the main thread alone reads and writes the channel
//! (ready, warm-up, resume; under vsock a connection reset by a restore is replaced
//! by the next). Then the channel is split ([`link`]): a reader thread takes every
//! frame, hands egress frames to the forwarder and requests to the main loop, and
//! everything the agent sends goes through one shared writer. A job with egress
//! (its own flag or its sandbox's) reaches the host's forward proxy through
//! 127.0.0.1:3128, which the agent listens on from the first such job on and
//! forwards as `Net` frames ([`egress`]).

mod boot;
mod cgroup;
mod checkpoint;
mod drain;
mod egress;
mod files;
mod fsops;
mod job;
mod link;
mod procs;
mod reaper;
mod rehearse;
mod sys;
mod warm;

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;

use tvm_proto::{error_chain, BlockingChannel, GuestMsg, HostMsg};

use crate::egress::Forwarder;
use crate::link::Link;

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
    /// Processes started by `Spawn` that are still running.
    procs: procs::Procs,
}

/// Answers one request; `Err` only when the channel itself failed.
fn serve_one(
    msg: HostMsg,
    state: &mut State,
    link: &Arc<Link>,
    net: &Arc<Forwarder>,
) -> Result<(), tvm_proto::CodecError> {
    let session = &mut state.session;
    let mut aftermath = None;
    let reply = match msg {
        HostMsg::Run(job) => {
            let egress = job::has_egress(&job, session.as_ref());
            // The proxy port listens before the job can look for it.
            match egress.then(|| net.listen()).transpose() {
                Err(e) => GuestMsg::Failed {
                    message: error_chain(&e),
                },
                Ok(_) => {
                    let (r, after) =
                        job::run(&job, session.as_mut(), egress, &mut |m| link.send(m));
                    aftermath = Some(after);
                    match r {
                        Ok(report) => GuestMsg::Exit(report),
                        Err(e) => GuestMsg::Failed {
                            message: error_chain(&e),
                        },
                    }
                }
            }
        }
        HostMsg::Open(spec) => match spec.egress.then(|| net.listen()).transpose() {
            Err(e) => GuestMsg::Failed {
                message: error_chain(&e),
            },
            Ok(_) => match job::Session::open(&spec) {
                Ok(s) => {
                    *session = Some(s);
                    GuestMsg::Done
                }
                Err(e) => GuestMsg::Failed {
                    message: error_chain(&e),
                },
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
        HostMsg::Spawn(spec) => match session.as_mut() {
            Some(s) => match state.procs.spawn(&spec, s, link) {
                Ok(pid) => GuestMsg::Spawned { pid },
                Err(e) => GuestMsg::Failed {
                    message: error_chain(&e),
                },
            },
            None => GuestMsg::Failed {
                message: "a process can be spawned only in a sandbox".into(),
            },
        },
        HostMsg::Input { pid, data } => done_or_gone(pid, state.procs.input(pid, data)),
        HostMsg::CloseStdin { pid } => done_or_gone(pid, state.procs.close_stdin(pid)),
        HostMsg::Signal { pid, signal } => done_or_gone(pid, state.procs.signal(pid, signal)),
        HostMsg::Fs(op) => fsops::serve(op),
        HostMsg::Warm(_) | HostMsg::Resume(_) => GuestMsg::Failed {
            message: "warm-up and resume come before any work".into(),
        },
        // Not a request, never answered. The reader thread hands these to the
        // forwarder; only one the host sent before any work comes this way.
        HostMsg::Net(frame) => {
            net.deliver(frame);
            return Ok(());
        }
    };
    let sent = match link.send(reply) {
        // A reply larger than a frame (a host asking for too much) is refused by the
        // codec before anything is written: say so instead of giving up the channel.
        Err(tvm_proto::CodecError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput => link
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

fn done_or_gone(pid: u32, found: bool) -> GuestMsg {
    if found {
        GuestMsg::Done
    } else {
        GuestMsg::NoProcess { pid }
    }
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
    let (ch, first) = loop {
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
        let mut ch: link::Channel = BlockingChannel::new(conn);
        match serve_until_work(&mut ch) {
            Ok(work) => break (ch, work),
            Err(e) => {
                eprintln!("tvm-agent: no job on this connection: {}", error_chain(&e));
            }
        }
    };
    serve(ch, first)
}

/// Whether answering `msg` may need the channel read while it runs (egress).
fn wants_egress(msg: &HostMsg) -> bool {
    match msg {
        HostMsg::Run(job) => job.egress,
        HostMsg::Open(spec) => spec.egress,
        _ => true,
    }
}

/// From the first work message on: splits the channel, then answers requests one at
/// a time until the channel ends. See [`link`].
fn serve(ch: link::Channel, first: HostMsg) -> i32 {
    let (reader, writer) = match ch.split(File::try_clone) {
        Ok(halves) => halves,
        Err(e) => {
            eprintln!("tvm-agent: cannot split the host channel: {e}");
            return 2;
        }
    };
    let link = Arc::new(Link::new(writer));
    let net = Forwarder::new(
        link.clone(),
        SocketAddr::from(([127, 0, 0, 1], tvm_proto::EGRESS_PORT)),
        egress::MAX_CONNS,
    );
    let mut state = State::default();
    let mut first = Some(first);
    // The host sends net frames only after the guest opened a connection, which only
    // a job with egress does: a first request without it is answered before the
    // reader thread starts, so that start stays off a one-shot job's critical path.
    if first.as_ref().is_some_and(|m| !wants_egress(m)) {
        if let Some(msg) = first.take() {
            if let Err(e) = serve_one(msg, &mut state, &link, &net) {
                eprintln!("tvm-agent: cannot answer: {}", error_chain(&e));
                return 5;
            }
        }
    }
    let requests = match link::spawn_reader(reader, net.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("tvm-agent: cannot start the channel reader: {e}");
            return 2;
        }
    };
    let mut next = first.or_else(|| requests.recv().ok());
    while let Some(msg) = next.take() {
        if let Err(e) = serve_one(msg, &mut state, &link, &net) {
            eprintln!("tvm-agent: cannot answer: {}", error_chain(&e));
            return 5;
        }
        next = requests.recv().ok();
    }
    0
}
