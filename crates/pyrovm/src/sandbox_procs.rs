//! A sandbox's processes and absolute-path file operations (protocol version 6),
//! its deadline, and its access token: what the E2B door needs of the core beyond
//! `/v1`'s execs and work-dir files.
//!
//! A spawned process runs alongside the sandbox's requests: spawning it is one
//! short request (the VM is held only for it), and its output comes to its watchers
//! through [`crate::procs::ProcTable`] whoever reads the channel then — a request,
//! or the sandbox's pump between requests, which the first spawn turns on.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq as _;
use tvm_http::middleware::Caller;
use tvm_proto::{FsOp, GuestMsg, HostMsg, Spawn};

use crate::lock;
use crate::procs::{ProcInfo, Watch};
use crate::sandbox::{SandboxError, Sandboxes};

/// What to start in a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnRequest {
    /// Program: an absolute path, or a name looked up on the guest's PATH.
    pub cmd: String,
    pub args: Vec<String>,
    /// Over the sandbox's environment.
    pub envs: BTreeMap<String, String>,
    /// Absolute; `None` is the work dir.
    pub cwd: Option<String>,
    /// Keep stdin open for [`Sandboxes::send_input`].
    pub stdin: bool,
    pub tag: Option<String>,
    /// Killed (with its process group) after this long.
    pub timeout: Option<Duration>,
}

/// Largest single stdin write.
const MAX_INPUT_BYTES: usize = 1 << 20;

impl Sandboxes {
    /// Starts a process in the caller's sandbox; returns what it was started with
    /// (with its pid) and a watch of its output from its first byte.
    pub async fn spawn(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        req: SpawnRequest,
    ) -> Result<(ProcInfo, Watch), SandboxError> {
        if req.cmd.is_empty() || req.cmd.contains('\0') {
            return Err(SandboxError::Invalid(
                "the command must be a program name or path, without NUL bytes".into(),
            ));
        }
        tvm_api::check_env(&req.envs, &tvm_api::LimitBounds::default())
            .map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let sb = self.get(caller, id)?;
        let mut env = sb.env().clone();
        env.extend(req.envs.clone());
        // A bare name is found on the guest's PATH, as a shell would.
        let mut argv = if req.cmd.starts_with('/') {
            vec![req.cmd.clone()]
        } else {
            vec!["/usr/bin/env".into(), "--".into(), req.cmd.clone()]
        };
        argv.extend(req.args.iter().cloned());
        let msg = HostMsg::Spawn(Box::new(Spawn {
            argv,
            env,
            cwd: req.cwd.clone(),
            stdin: req.stdin,
            timeout_ms: req.timeout.map_or(0, |d| d.as_millis().max(1) as u64),
            clock_unix_ns: crate::core::now_unix_ns(),
        }));
        // The pump reads the channel from the moment this request lets go of the VM.
        sb.between.keep_reading();
        let this = self.clone();
        let (caller, id) = (caller.clone(), id.to_string());
        // Detached: a process the guest started is registered even if the client
        // has gone (its frames would otherwise wait in the early buffer forever).
        tokio::spawn(async move {
            let answer = this.file_op(&caller, &id, msg).await?;
            match answer {
                GuestMsg::Spawned { pid } => {
                    let info = ProcInfo {
                        pid,
                        cmd: req.cmd,
                        args: req.args,
                        envs: req.envs,
                        cwd: req.cwd,
                        tag: req.tag,
                    };
                    let watch = sb.procs.register(info.clone());
                    this.metrics().sandbox_process_started();
                    Ok((info, watch))
                }
                GuestMsg::Failed { message } => Err(SandboxError::Invalid(message)),
                other => Err(crate::sandbox::unexpected_msg(&other)),
            }
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a spawn task failed");
            SandboxError::Internal
        })?
    }

    /// Queues bytes for a spawned process's stdin.
    pub async fn send_input(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        pid: u32,
        data: Vec<u8>,
    ) -> Result<(), SandboxError> {
        if data.len() > MAX_INPUT_BYTES {
            return Err(SandboxError::Invalid(format!(
                "stdin data is {} bytes; at most {MAX_INPUT_BYTES} may be sent at once",
                data.len()
            )));
        }
        self.process_request(caller, id, HostMsg::Input { pid, data })
            .await
    }

    /// Closes a spawned process's stdin.
    pub async fn close_stdin(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        pid: u32,
    ) -> Result<(), SandboxError> {
        self.process_request(caller, id, HostMsg::CloseStdin { pid })
            .await
    }

    /// Sends a signal to a spawned process and its process group.
    pub async fn signal(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        pid: u32,
        signal: i32,
    ) -> Result<(), SandboxError> {
        self.process_request(caller, id, HostMsg::Signal { pid, signal })
            .await
    }

    async fn process_request(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        msg: HostMsg,
    ) -> Result<(), SandboxError> {
        match self.file_op(caller, id, msg).await? {
            GuestMsg::Done => Ok(()),
            GuestMsg::NoProcess { pid } => Err(SandboxError::NoProcess(pid)),
            other => Err(crate::sandbox::unexpected_msg(&other)),
        }
    }

    /// The caller's sandbox's running spawned processes.
    pub fn processes(&self, caller: &Caller, id: &str) -> Result<Vec<ProcInfo>, SandboxError> {
        Ok(self.get(caller, id)?.procs.list())
    }

    /// A watch of a running process's output from now on.
    pub fn watch_process(
        &self,
        caller: &Caller,
        id: &str,
        pid: u32,
    ) -> Result<Watch, SandboxError> {
        self.get(caller, id)?
            .procs
            .watch(pid)
            .ok_or(SandboxError::NoProcess(pid))
    }

    /// The pid of the running process with this tag.
    pub fn process_by_tag(
        &self,
        caller: &Caller,
        id: &str,
        tag: &str,
    ) -> Result<u32, SandboxError> {
        self.get(caller, id)?
            .procs
            .by_tag(tag)
            .ok_or_else(|| SandboxError::Invalid(format!("no running process is tagged {tag:?}")))
    }

    /// One file-system operation on an absolute path in the caller's sandbox, with
    /// the job user's permissions.
    pub async fn fs(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        op: FsOp,
    ) -> Result<GuestMsg, SandboxError> {
        let max = self.settings().max_file_bytes;
        if let FsOp::Write { content, .. } = &op {
            if content.len() as u64 > max {
                self.get(caller, id)?;
                return Err(SandboxError::UploadTooLarge {
                    got: content.len() as u64,
                    max,
                });
            }
        }
        let op = match op {
            FsOp::Read { path, .. } => FsOp::Read {
                path,
                max_bytes: max,
            },
            other => other,
        };
        self.file_op(caller, id, HostMsg::Fs(op)).await
    }

    /// Moves the caller's sandbox's end to `from_now` from now (within the TTL bounds).
    pub fn set_ttl(
        &self,
        caller: &Caller,
        id: &str,
        from_now: Duration,
    ) -> Result<(), SandboxError> {
        let sb = self.get(caller, id)?;
        let b = self.settings().bounds.ttl_s;
        let secs = from_now.as_secs();
        if secs < b.min || secs > b.max {
            return Err(SandboxError::Invalid(format!(
                "a timeout of {secs} s is outside {}..={} s",
                b.min, b.max
            )));
        }
        *lock(sb.ttl_cell()) = sb.age() + from_now;
        Ok(())
    }

    /// The caller's sandbox's access token (for the E2B envd door).
    pub fn access_token(&self, caller: &Caller, id: &str) -> Result<String, SandboxError> {
        Ok(self.get(caller, id)?.access_token().to_string())
    }

    /// The owner of sandbox `id` if `token` is its access token; NotFound otherwise
    /// (a wrong token learns nothing about the sandbox).
    pub fn owner_by_token(&self, id: &str, token: &str) -> Result<Caller, SandboxError> {
        self.live(id)
            .filter(|sb| {
                !sb.ended.load(Ordering::Acquire)
                    && bool::from(sb.access_token().as_bytes().ct_eq(token.as_bytes()))
            })
            .map(|sb| sb.owner().clone())
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))
    }
}
