//! Wire types of the HTTP API (DESIGN.md, "HTTP API contract").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/execute` body. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    pub language: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<InputFile>,
    #[serde(default)]
    pub limits: RequestLimits,
    /// Globs relative to the work dir (`out/*.png`, `**/*.json`; `*` stays within one
    /// directory): the matching regular files come back in the response's `files`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_out: Vec<String>,
    /// Test cases: the program is compiled once and run once per case, each in a
    /// fresh copy of the compiled work dir, each with its own result and verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestCase>,
    /// Egress through the host's proxy to these destinations only (off by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkRequest>,
}

/// One test case of a request's `tests`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Arguments for this case (the request's own `args` are not used with `tests`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// What stdout must be, compared with trailing whitespace normalised (see
    /// `verdict`); without it a case that exits 0 is `accepted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_stdout: Option<String>,
    /// This case's limits; absent ones are the request's.
    #[serde(default)]
    pub limits: CaseLimits,
}

/// The limits one test case may set for itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u32>,
}

/// A file returned by `files_out` (always base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OutputFile {
    pub path: String,
    pub content: String,
    pub encoding: FileEncoding,
    /// Bytes (decoded).
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Relative to the work dir (`/work`), e.g. `data/in.txt`.
    pub path: String,
    pub content: String,
    #[serde(default)]
    pub encoding: FileEncoding,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FileEncoding {
    #[default]
    Utf8,
    Base64,
}

/// Every field is optional; absent ones take the server's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u32>,
    /// Deadline of the compile stage (languages that compile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_timeout_ms: Option<u64>,
    /// Memory limit of the compile stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_memory_mb: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// The program exited by itself, with any exit code.
    Completed,
    Timeout,
    MemoryLimit,
    OutputLimit,
    /// The VM or the agent failed; the request may be retried.
    SandboxError,
    /// The compiler failed (or ran out of time or memory); `compile` says how. The
    /// program did not run.
    CompileError,
}

/// How the compile stage ended. `status` is how the compiler itself ended
/// (`completed` with its exit code, or `timeout`, `memory_limit`, `output_limit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StageResult {
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
}

/// A test case's judgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Exited 0 and, if `expected_stdout` was given, printed it.
    Accepted,
    /// Exited 0 but printed something else.
    WrongAnswer,
    /// Ran past its `timeout_ms`.
    TimeLimit,
    /// Ran out of its `memory_mb`.
    MemoryLimit,
    /// Exited non-zero, was killed by a signal, or printed past `max_output_bytes`.
    RuntimeError,
}

/// The result of one test case, in the order of `tests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaseResult {
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration_ms: u64,
    /// `null` only when the case could not be judged (`sandbox_error`).
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    pub queued: u64,
    pub vm_start: u64,
    pub exec: u64,
    pub total: u64,
}

/// `200` body of `POST /v1/execute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecuteResponse {
    pub id: String,
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    /// Signal name (`SIGKILL`) when the program was killed by one.
    pub signal: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timings_ms: Timings,
    pub backend: String,
    /// Why the sandbox failed, for `sandbox_error` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The files `files_out` matched, sorted by path (only when it was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<OutputFile>>,
    /// Whether the count or size cap of `files_out` left matching files out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_truncated: Option<bool>,
    /// The compile stage, for languages that compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<StageResult>,
    /// One result per test case, when the request had `tests` (the top-level
    /// stdout and stderr are then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<Vec<CaseResult>>,
    /// With `tests`: `accepted` if every case was, else the first other verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// With `network`: what the job's egress did (bytes, connections, refusals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkUsage>,
}

/// One entry of `GET /v1/languages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LanguageInfo {
    pub name: String,
    /// Version of the runtime or compiler installed in the guest image (the table's
    /// version prefix when the image's manifest is not at hand).
    pub version: String,
    pub file_name: String,
    pub aliases: Vec<String>,
    /// File extensions `tvm run` maps to this language.
    #[serde(default)]
    pub extensions: Vec<String>,
    /// Whether a compile stage runs before the program.
    #[serde(default)]
    pub compiled: bool,
}

/// `{"error": {"code": "...", "message": "..."}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// Data of the final `exit` event of `POST /v1/execute/stream`: the unary response
/// without the collected output (it was streamed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamExit {
    pub id: String,
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timings_ms: Timings,
    pub backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<OutputFile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<StageResult>,
    /// With `tests`: each case's result (cases are not streamed) and the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tests: Option<Vec<CaseResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

impl From<&ExecuteResponse> for StreamExit {
    fn from(r: &ExecuteResponse) -> Self {
        Self {
            id: r.id.clone(),
            status: r.status,
            exit_code: r.exit_code,
            signal: r.signal.clone(),
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
            timings_ms: r.timings_ms,
            backend: r.backend.clone(),
            error: r.error.clone(),
            files: r.files.clone(),
            files_truncated: r.files_truncated,
            compile: r.compile.clone(),
            tests: r.tests.clone(),
            verdict: r.verdict,
        }
    }
}

/// Turns a byte stream into text chunk by chunk without splitting a UTF-8 sequence:
/// an incomplete sequence at the end of a chunk waits for the next one; invalid
/// bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    carry: Vec<u8>,
}

impl Utf8Chunker {
    pub fn push(&mut self, data: &[u8]) -> String {
        self.carry.extend_from_slice(data);
        let keep = incomplete_tail(&self.carry);
        let rest = self.carry.split_off(self.carry.len() - keep);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        text
    }
}

/// Length of a trailing, not yet complete UTF-8 sequence (0..=3).
fn incomplete_tail(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte: look further back
        }
        let need = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunker_keeps_split_sequences_whole() {
        let s = "héllo €";
        let b = s.as_bytes();
        let mut c = Utf8Chunker::default();
        let mut out = String::new();
        for piece in b.chunks(1) {
            out.push_str(&c.push(piece));
        }
        out.push_str(&c.finish());
        assert_eq!(out, s);
        let mut c = Utf8Chunker::default();
        assert_eq!(c.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(c.push(&[0xe2, 0x82]), "");
        assert_eq!(c.finish(), "\u{fffd}");
    }
}
