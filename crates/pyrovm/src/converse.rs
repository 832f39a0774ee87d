//! The conversation with a VM's agent: sending a job and collecting (or relaying)
//! what it prints until it exits, one-off requests, and `files_out`. Used by the
//! core for one-shot executions and by sandboxes for their execs.

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tvm_api::{FileEncoding, OutputFile};
use tvm_proto::{error_chain, CollectSpec, ExitReport, GuestMsg, HostMsg, Job, Stream};
use tvm_vmm::Vm;

#[derive(Debug, Default)]
pub(crate) struct Output {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    pub(crate) stdout_cut: bool,
    pub(crate) stderr_cut: bool,
}

impl Output {
    /// Appends a chunk, never growing a stream past `cap` (the agent caps too).
    pub(crate) fn push(&mut self, stream: Stream, data: &[u8], cap: usize) {
        let (buf, cut) = match stream {
            Stream::Stdout => (&mut self.stdout, &mut self.stdout_cut),
            Stream::Stderr => (&mut self.stderr, &mut self.stderr_cut),
        };
        let room = cap.saturating_sub(buf.len());
        if data.len() > room {
            *cut = true;
        }
        buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// A piece of live output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// Relays live output into a client-facing channel, mapping each chunk with `map`
/// (`None` skips it). Returns `true` when the job's output ended, `false` when the
/// client went away — then the caller drops `chunks`, which cancels the job and
/// destroys its VM (see [`crate::core::Executor::run`]).
pub async fn relay_live<T>(
    chunks: &mut mpsc::Receiver<OutputChunk>,
    client: &mpsc::Sender<T>,
    mut map: impl FnMut(OutputChunk) -> Option<T>,
) -> bool {
    loop {
        let chunk = tokio::select! {
            c = chunks.recv() => c,
            _ = client.closed() => return false,
        };
        let Some(chunk) = chunk else { return true };
        if let Some(item) = map(chunk) {
            if client.send(item).await.is_err() {
                return false;
            }
        }
    }
}

pub(crate) enum Conversation {
    Exited(ExitReport, Output),
    /// The live receiver went away (one-shot only); the VM must be destroyed.
    Cancelled,
    Failed(String),
    /// The channel broke: the VM crashed or the agent died.
    Broken(String),
}

pub(crate) async fn converse(
    vm: &mut Vm,
    job: Job,
    cap: usize,
    mut live: Option<mpsc::Sender<OutputChunk>>,
    detach_on_cancel: bool,
) -> Conversation {
    if let Err(e) = vm.channel.send(HostMsg::Run(Box::new(job))).await {
        return Conversation::Broken(error_chain(&e));
    }
    let mut out = Output::default();
    // Output not yet taken by a slow live client. The agent is read regardless, so
    // it never blocks on a full channel (and keeps enforcing the job's own deadline);
    // the agent's per-stream cap bounds what waits here.
    let mut pending: std::collections::VecDeque<OutputChunk> = Default::default();
    loop {
        let step = match &live {
            Some(tx) => tokio::select! {
                m = vm.channel.next() => Step::Msg(m),
                permit = tx.reserve(), if !pending.is_empty() => match permit {
                    Ok(p) => {
                        if let Some(chunk) = pending.pop_front() {
                            p.send(chunk);
                        }
                        continue;
                    }
                    Err(_) => Step::ClientGone,
                },
                _ = tx.closed() => Step::ClientGone,
            },
            None => Step::Msg(vm.channel.next().await),
        };
        let next = match step {
            Step::Msg(m) => m,
            Step::ClientGone => {
                if !detach_on_cancel {
                    return Conversation::Cancelled;
                }
                live = None;
                pending.clear();
                continue;
            }
        };
        match next {
            Some(Ok(GuestMsg::Output { stream, data })) => match &live {
                Some(_) => pending.push_back(OutputChunk { stream, data }),
                None => out.push(stream, &data, cap),
            },
            Some(Ok(GuestMsg::Exit(report))) => {
                match live {
                    // A sandbox's client gets the rest at its own pace: the job is
                    // over, and its sandbox must not wait on a slow reader.
                    Some(tx) if detach_on_cancel => {
                        tokio::spawn(async move {
                            for chunk in pending {
                                if tx.send(chunk).await.is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Some(tx) => {
                        for chunk in pending {
                            if tx.send(chunk).await.is_err() {
                                return Conversation::Cancelled;
                            }
                        }
                    }
                    None => {}
                }
                return Conversation::Exited(report, out);
            }
            Some(Ok(GuestMsg::Failed { message })) => return Conversation::Failed(message),
            Some(Ok(other)) => {
                return Conversation::Broken(format!("agent sent {} during a job", kind(&other)))
            }
            Some(Err(e)) => return Conversation::Broken(error_chain(&e)),
            None => return Conversation::Broken("agent channel closed".into()),
        }
    }
}

enum Step {
    Msg(Option<Result<GuestMsg, tvm_proto::CodecError>>),
    ClientGone,
}

/// A message's name, for errors.
pub(crate) fn kind(m: &GuestMsg) -> &'static str {
    match m {
        GuestMsg::Ready { .. } => "ready",
        GuestMsg::Output { .. } => "output",
        GuestMsg::Exit(_) => "exit",
        GuestMsg::Failed { .. } => "failed",
        GuestMsg::Done => "done",
        GuestMsg::FileData { .. } => "file_data",
        GuestMsg::Listing { .. } => "listing",
        GuestMsg::Collected { .. } => "collected",
        GuestMsg::FileError { .. } => "file_error",
        GuestMsg::Net(_) => "net",
        GuestMsg::Spawned { .. } => "spawned",
        GuestMsg::Proc { .. } => "proc",
        GuestMsg::Entries { .. } => "entries",
        GuestMsg::NoProcess { .. } => "no_process",
    }
}

/// Sends one request that is not a job and waits for its one answer. `Err` means
/// the channel broke (the VM is unusable).
pub(crate) async fn request(vm: &mut Vm, msg: HostMsg) -> Result<GuestMsg, String> {
    vm.channel.send(msg).await.map_err(|e| error_chain(&e))?;
    match vm.channel.next().await {
        Some(Ok(m)) => Ok(m),
        Some(Err(e)) => Err(error_chain(&e)),
        None => Err("agent channel closed".into()),
    }
}

/// Asks the agent for the files matching `patterns`, within the caps.
pub(crate) async fn collect_files(
    vm: &mut Vm,
    patterns: &[String],
    max_files: usize,
    max_bytes: usize,
) -> Result<(Vec<OutputFile>, bool), String> {
    let spec = CollectSpec {
        patterns: patterns.to_vec(),
        max_files: max_files as u32,
        max_bytes: max_bytes as u64,
    };
    match request(vm, HostMsg::Collect(spec)).await? {
        GuestMsg::Collected { files, truncated } => Ok((
            files
                .into_iter()
                .map(|f| OutputFile {
                    size: f.content.len() as u64,
                    content: base64::engine::general_purpose::STANDARD.encode(&f.content),
                    path: f.path,
                    encoding: FileEncoding::Base64,
                })
                .collect(),
            truncated,
        )),
        GuestMsg::FileError { message, .. } => Err(message),
        other => Err(format!("agent answered {} to collect", kind(&other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_per_stream() {
        let mut o = Output::default();
        o.push(Stream::Stdout, b"hello", 8);
        o.push(Stream::Stdout, b"world", 8);
        o.push(Stream::Stderr, b"e", 8);
        assert_eq!(o.stdout, b"hellowor");
        assert!(o.stdout_cut);
        assert_eq!(o.stderr, b"e");
        assert!(!o.stderr_cut);
    }
}
