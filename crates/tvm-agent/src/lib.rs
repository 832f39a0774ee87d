//! The guest agent. It runs as PID 1: it mounts the root filesystem read-only,
//! opens the host channel, says ready, takes exactly one job, runs it as an
//! unprivileged user inside a cgroup with limits, streams its output, reports how
//! it ended, and powers the VM off. See docs/ARCHITECTURE.md ("The agent").

mod boot;
mod cgroup;
mod job;
mod sys;

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

/// Boot, serve one job, return an exit code if anything went wrong before reporting.
pub fn run_as_init() -> i32 {
    let cfg = match boot::boot() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tvm-agent: boot failed: {}", error_chain(&e));
            return 1;
        }
    };
    let channel = match boot::open_channel(&cfg) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tvm-agent: {}", error_chain(&e));
            return 2;
        }
    };
    let mut ch: BlockingChannel<_, HostMsg, GuestMsg> = BlockingChannel::new(channel);
    if let Err(e) = ch.send(GuestMsg::Ready {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_ms: sys::uptime_ms(),
    }) {
        eprintln!("tvm-agent: cannot say ready: {}", error_chain(&e));
        return 3;
    }
    let job = match ch.recv() {
        Ok(HostMsg::Run(job)) => job,
        Err(e) => {
            eprintln!("tvm-agent: no job: {}", error_chain(&e));
            return 4;
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
