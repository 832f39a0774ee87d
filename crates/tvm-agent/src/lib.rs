//! The guest agent. It runs as PID 1: it mounts the root filesystem read-only,
//! opens the host channel, says ready, takes exactly one job, runs it as an
//! unprivileged user inside a cgroup with limits, streams its output, reports how
//! it ended, and powers the VM off. See docs/ARCHITECTURE.md ("The agent").

mod boot;
mod cgroup;
mod job;
mod sys;
mod warm;

use std::time::Duration;

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
/// returns the one job.
fn serve_until_job<T: std::io::Read + std::io::Write>(
    ch: &mut BlockingChannel<T, HostMsg, GuestMsg>,
) -> Result<Box<tvm_proto::Job>, tvm_proto::CodecError> {
    job::prepare_ahead();
    ch.send(ready())?;
    loop {
        match ch.recv()? {
            HostMsg::Run(job) => return Ok(job),
            HostMsg::Warm(w) => {
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
        }
    }
}

/// Boot, serve one job, return an exit code if anything went wrong before reporting.
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
    // before any job arrived is replaced by the next one.
    let (mut ch, job) = loop {
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
        match serve_until_job(&mut ch) {
            Ok(job) => break (ch, job),
            Err(e) => {
                eprintln!("tvm-agent: no job on this connection: {}", error_chain(&e));
            }
        }
    };
    let reply = match job::run(&job, &mut |msg| ch.send(msg)) {
        Ok(report) => GuestMsg::Exit(report),
        Err(e) => GuestMsg::Failed {
            message: error_chain(&e),
        },
    };
    if let Err(e) = ch.send(reply) {
        eprintln!("tvm-agent: cannot report: {}", error_chain(&e));
        return 5;
    }
    // The host normally destroys the VM as soon as it has the report; give it a
    // moment to do so, then power off by ourselves.
    std::thread::sleep(Duration::from_secs(2));
    0
}
