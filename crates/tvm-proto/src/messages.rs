//! Message types. Any change to their wire shape bumps [`PROTOCOL_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the wire format; a frame with any other version is rejected.
pub const PROTOCOL_VERSION: u16 = 2;

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
    /// Run one job. The agent accepts exactly one per boot, and powers off after it.
    Run(Box<Job>),
    /// Before a snapshot: run these fixed commands (never user code) so the files the
    /// language runtimes start from are in the guest's page cache; answered by `Ready`.
    Warm(WarmUp),
    /// After a restore: make this clone unique (clock, RNG reseed); answered by `Ready`.
    Resume(Resume),
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
