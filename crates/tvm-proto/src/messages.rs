//! Message types. Any change to their wire shape bumps [`PROTOCOL_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the wire format; a frame with any other version is rejected.
pub const PROTOCOL_VERSION: u16 = 6;

/// What travels in every frame: the version and one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope<M> {
    pub v: u16,
    pub msg: M,
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum HostMsg {
    /// Run one job; answered by `Output` frames and one `Exit` (or `Failed`). Outside a
    /// session the job's cgroup is emptied when its program exits; in a session
    /// (after `Open`) processes it left running in the background keep running.
    Run(Box<Job>),
    /// Make this VM a sandbox: the work dir gets `workdir_bytes`, every later job
    /// runs in a child cgroup of one sandbox cgroup with these limits. Answered by `Done`.
    Open(SessionSpec),
    /// Write one file under the work dir (parents made, owned by the job user).
    /// Answered by `Done` or `FileError`.
    WriteFile(JobFile),
    /// Read one regular file under the work dir, refusing one over `max_bytes`.
    /// Answered by `FileData` or `FileError`.
    ReadFile { path: String, max_bytes: u64 },
    /// List one directory under the work dir (`""` is the work dir itself).
    /// Answered by `Listing` or `FileError`.
    ListDir { path: String },
    /// Collect the regular files whose work-dir-relative path matches any pattern
    /// (glob syntax; `*` stays within one directory, `**` crosses them), up to
    /// `max_files` and `max_bytes` in total. Answered by `Collected`.
    Collect(CollectSpec),
    /// Keep a copy of the work dir as it is now (at most `max_bytes` of file data),
    /// for `Rewind`. Answered by `Done`, or `FileError` (`too_large`) and nothing kept.
    Checkpoint { max_bytes: u64 },
    /// Empty the work dir and /tmp and put the last checkpoint back, so the next job
    /// starts from it (each test case of a compiled program). Answered by `Done` or
    /// `FileError`.
    Rewind,
    /// Before a snapshot: run these fixed commands (never user code) so the files the
    /// language runtimes start from are in the guest's page cache; answered by `Ready`.
    Warm(WarmUp),
    /// After a restore: make this clone unique (clock, RNG reseed); answered by `Ready`.
    Resume(Resume),
    /// One frame of an egress connection (version 5). Not a request: never answered,
    /// and it may arrive at any time, interleaved with a request and its answer.
    Net(NetFrame),
    /// Start a process in the sandbox that runs alongside later requests (version 6;
    /// only after `Open`). Answered at once by `Spawned` (or `Failed`); its output and
    /// its end then come as `Proc` frames.
    Spawn(Box<Spawn>),
    /// Bytes for a spawned process's stdin (it was spawned with `stdin`). Answered by
    /// `Done`, or `NoProcess`.
    Input {
        pid: u32,
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// Close a spawned process's stdin. Answered by `Done`, or `NoProcess`.
    CloseStdin { pid: u32 },
    /// Send a signal to a spawned process and its process group. Answered by `Done`,
    /// or `NoProcess`.
    Signal { pid: u32, signal: i32 },
    /// A file-system operation on an absolute guest path, made with the job user's
    /// permissions (version 6).
    Fs(FsOp),
}

/// A process started by `Spawn`: it runs in the sandbox's cgroup as the job user,
/// with the job's environment defaults, until it exits or is signalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spawn {
    /// Program and arguments, absolute program path.
    pub argv: Vec<String>,
    /// Set over the agent's defaults (and the sandbox's proxy variables).
    pub env: BTreeMap<String, String>,
    /// Absolute working directory; `None` is the work dir.
    pub cwd: Option<String>,
    /// Keep stdin open for `Input` (else it reads end-of-file at once).
    pub stdin: bool,
    /// Killed (with its process group) after this long; 0 is no deadline.
    pub timeout_ms: u64,
    /// Host wall clock, nanoseconds since the Unix epoch; the agent sets the guest clock.
    pub clock_unix_ns: u64,
}

/// One file-system operation (`HostMsg::Fs`). Paths are absolute guest paths; the
/// kernel checks each against the job user's permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum FsOp {
    /// Answered by `Entries` with one entry.
    Stat { path: String },
    /// The entries under a directory, `depth` levels deep (1: its children).
    /// Answered by `Entries` (sorted by path; at most [`MAX_FS_ENTRIES`]).
    List { path: String, depth: u32 },
    /// Make a directory and its parents. Answered by `Entries` with the new directory,
    /// or `FileError` (`exists`) if it was there already.
    MakeDir { path: String },
    /// Rename. Answered by `Entries` with the entry at its new path.
    Move { from: String, to: String },
    /// Remove a file, or a directory with everything in it. Answered by `Done`.
    Remove { path: String },
    /// Read a regular file, refusing one over `max_bytes`. Answered by `FileData`.
    Read { path: String, max_bytes: u64 },
    /// Write (create or truncate) a regular file, making its parents. Answered by
    /// `Entries` with the file.
    Write {
        path: String,
        #[serde(with = "b64")]
        content: Vec<u8>,
    },
}

/// Most entries one `FsOp::List` answers with.
pub const MAX_FS_ENTRIES: usize = 10_000;

/// What a spawned process did (`GuestMsg::Proc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProcEvent {
    /// A chunk of its output.
    Output {
        stream: Stream,
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// It ended (its output has all been sent); the last frame for this pid.
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        /// `timeout` when its deadline killed it, `memory_limit` after an OOM kill.
        outcome: Outcome,
    },
}

/// One entry of a file-system answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsEntry {
    pub name: String,
    /// Absolute, as asked (the requested path joined with names, not resolved).
    pub path: String,
    pub kind: EntryKind,
    pub size: u64,
    /// The file mode bits (permissions and type) from `lstat`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Last modification, nanoseconds since the Unix epoch.
    pub modified_unix_ns: u64,
    pub symlink_target: Option<String>,
}

/// Loopback port on which the agent accepts a job's proxy connections when the job
/// (or its sandbox) has egress; it is the job's `HTTP_PROXY`.
pub const EGRESS_PORT: u16 = 3128;
/// Bytes of `Data` either side may send on one connection before the peer's `Ack`s:
/// the receiver never has more than this buffered for one connection, so a slow
/// connection never holds up the channel (or another connection).
pub const NET_WINDOW: u32 = 256 * 1024;
/// Largest `Data` payload in one frame.
pub const NET_CHUNK: usize = 32 * 1024;

/// One frame of one egress connection. The guest opens connections (`Open` with an
/// id it chose); after that both sides send `Data`, `Ack`, `Close` and `Reset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetFrame {
    pub conn: u32,
    pub op: NetOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NetOp {
    /// Guest → host: a job connected to the proxy port; the host starts the proxy side.
    Open,
    /// Bytes of the connection, in order; counted against the sender's window.
    Data(#[serde(with = "b64")] Vec<u8>),
    /// The receiver has passed on this many more bytes: the sender's window grows by it.
    Ack(u32),
    /// The sender will send no more data (a half-close); the other direction goes on.
    Close,
    /// The connection is over in both directions; nothing more is sent for it.
    Reset,
}

/// Commands run by the agent as the job user, output discarded, each bounded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmUp {
    /// Absolute program path and arguments, one entry per command.
    pub commands: Vec<Vec<String>>,
    /// Deadline for each command; it is killed (with its children) after it.
    pub timeout_ms: u64,
}

/// What a restored clone needs before it may run anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// Host wall clock, nanoseconds since the Unix epoch.
    pub clock_unix_ns: u64,
    /// Fresh host random bytes: mixed into the kernel RNG, which is then reseeded.
    #[serde(with = "b64")]
    pub entropy: Vec<u8>,
}

/// The limits of a whole sandbox (every job in it shares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    pub memory_bytes: u64,
    pub max_processes: u32,
    /// Size of the tmpfs work dir (and RLIMIT_FSIZE of each job).
    pub workdir_bytes: u64,
    /// Every job of the sandbox gets the egress proxy (see [`Job::egress`]).
    pub egress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectSpec {
    pub patterns: Vec<String>,
    pub max_files: u32,
    pub max_bytes: u64,
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum GuestMsg {
    /// The agent has mounted everything and waits for its job.
    Ready { agent_version: String, boot_ms: u64 },
    /// A chunk of the job's output, in the order the agent read it.
    Output {
        stream: Stream,
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// The job ended; the last frame of a conversation.
    Exit(ExitReport),
    /// The job could not be started (bad path, missing interpreter, ...).
    Failed { message: String },
    /// `Open` or `WriteFile` succeeded.
    Done,
    /// One frame of an egress connection (version 5); never an answer to a request.
    Net(NetFrame),
    /// The bytes of a `ReadFile`.
    FileData {
        #[serde(with = "b64")]
        content: Vec<u8>,
    },
    /// The entries of a `ListDir`, sorted by name; `truncated` when some were left out.
    Listing {
        entries: Vec<DirEntry>,
        truncated: bool,
    },
    /// The files a `Collect` matched, sorted by path; `truncated` when a cap left some out.
    Collected {
        files: Vec<JobFile>,
        truncated: bool,
    },
    /// A `Spawn` started its process (version 6).
    Spawned { pid: u32 },
    /// Output or the end of a spawned process. Not an answer: it may arrive at any
    /// time, interleaved with a request and its answer.
    Proc { pid: u32, event: ProcEvent },
    /// The entries of an `Fs` operation.
    Entries { entries: Vec<FsEntry> },
    /// `Input`, `CloseStdin` or `Signal` named no running spawned process.
    NoProcess { pid: u32 },
    /// A file operation was refused or failed; nothing was changed.
    FileError {
        kind: FileErrorKind,
        message: String,
    },
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirEntry {
    pub name: String,
    pub kind: EntryKind,
    /// Bytes, for files (0 otherwise).
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Why a file operation failed; the host maps each to an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileErrorKind {
    /// No such file or directory.
    NotFound,
    /// The path leaves the work dir (`..`, absolute, or a symlink pointing out).
    InvalidPath,
    /// A directory where a file was expected (or the reverse).
    WrongType,
    /// The file is larger than allowed, or the work dir is full.
    TooLarge,
    /// The path exists already (`MakeDir`; version 6).
    Exists,
    /// The job user may not do this (version 6).
    Denied,
    /// Any other failure.
    Io,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One job, already validated and resolved by the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Program and arguments, absolute program path.
    pub argv: Vec<String>,
    /// Path of the code file, relative to the work dir.
    pub code_file: String,
    #[serde(with = "b64")]
    pub code: Vec<u8>,
    #[serde(with = "b64")]
    pub stdin: Vec<u8>,
    pub env: BTreeMap<String, String>,
    pub files: Vec<JobFile>,
    pub limits: JobLimits,
    /// Host wall clock, nanoseconds since the Unix epoch; the agent sets the guest clock.
    pub clock_unix_ns: u64,
    /// Random bytes from the host, mixed into the guest's entropy pool.
    #[serde(with = "b64")]
    pub entropy: Vec<u8>,
    /// The job may reach the host's egress proxy: the agent listens on
    /// 127.0.0.1:[`EGRESS_PORT`] and sets the proxy variables in the job's environment.
    pub egress: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFile {
    /// Relative to the work dir; checked by [`crate::check_relative_path`].
    pub path: String,
    #[serde(with = "b64")]
    pub content: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLimits {
    pub timeout_ms: u64,
    pub memory_bytes: u64,
    pub max_processes: u32,
    /// Cap for each of stdout and stderr.
    pub max_output_bytes: u64,
    /// Size of the tmpfs work dir (and RLIMIT_FSIZE).
    pub workdir_bytes: u64,
}

/// How the job ended, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Completed,
    Timeout,
    MemoryLimit,
    OutputLimit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitReport {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Wall time from exec to exit, measured in the guest.
    pub exec_ms: u64,
}

mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}
