//! Request validation: a pure function from an [`ExecuteRequest`] to an
//! [`ExecuteCommand`] the core can run, or a [`ValidationError`] that names the
//! first problem. Nothing here touches a VM, a file or the network.

use std::collections::{BTreeMap, HashSet};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tvm_proto::{check_relative_path, JobFile};

use crate::cases::{check_tests, CaseCommand};
use crate::languages::{Language, LanguageTable};
use crate::types::{ExecuteRequest, FileEncoding};

/// A request that passed validation: everything resolved, every limit in range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteCommand {
    pub language: Language,
    pub code: Vec<u8>,
    pub stdin: Vec<u8>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub files: Vec<JobFile>,
    pub limits: Limits,
    /// Globs of files to return (checked by [`check_glob`]); empty: none.
    pub files_out: Vec<String>,
    /// Name of the code file in the work dir (the language's `file_name`, or for
    /// Java the public class's file).
    pub code_file: String,
    /// Test cases; empty: the program runs once with `stdin` and `args`.
    pub tests: Vec<CaseCommand>,
    /// Egress through the host's proxy; `None`: no way out (the default).
    pub network: Option<crate::network::NetworkGrant>,
}

impl ExecuteCommand {
    /// Guest memory the job needs: the largest of the run limit, the compile limit
    /// (if the language compiles) and every test case's limit.
    pub fn vm_memory_mb(&self) -> u64 {
        let compile = if self.language.compiles() {
            self.limits.compile_memory_mb
        } else {
            0
        };
        self.tests
            .iter()
            .map(|c| c.limits.memory_mb)
            .chain([self.limits.memory_mb, compile])
            .max()
            .unwrap_or(self.limits.memory_mb)
    }

    /// The longest the job itself may take in its VM: the compile stage (if the
    /// language compiles) plus the run, or every test case one after another.
    pub fn run_time_bound_ms(&self) -> u64 {
        let compile = if self.language.compiles() {
            self.limits.compile_timeout_ms
        } else {
            0
        };
        let run = if self.tests.is_empty() {
            self.limits.timeout_ms
        } else {
            self.tests.iter().map(|c| c.limits.timeout_ms).sum()
        };
        compile + run
    }
}

/// Resolved limits of one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub timeout_ms: u64,
    pub memory_mb: u64,
    pub vcpus: u32,
    pub max_output_bytes: u64,
    pub max_processes: u32,
    /// Deadline and memory of the compile stage (used only by languages that compile).
    pub compile_timeout_ms: u64,
    pub compile_memory_mb: u64,
}

/// One limit's default and accepted range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bound {
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

/// Defaults and maxima; part of pyrovm's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitBounds {
    pub timeout_ms: Bound,
    pub memory_mb: Bound,
    pub vcpus: Bound,
    pub max_output_bytes: Bound,
    pub max_processes: Bound,
    /// The compile stage's deadline: generous, since under software emulation
    /// (TCG) a C++ or Rust compile takes seconds.
    pub compile_timeout_ms: Bound,
    pub compile_memory_mb: Bound,
    /// Test cases one request may carry.
    pub max_tests: usize,
    pub max_code_bytes: usize,
    pub max_stdin_bytes: usize,
    pub max_files: usize,
    pub max_file_bytes_total: usize,
    pub max_args: usize,
    pub max_env: usize,
    pub max_arg_bytes: usize,
    /// `files_out`: at most this many files come back ...
    pub max_files_out: usize,
    /// ... holding at most this many bytes together (before base64).
    pub max_files_out_bytes: usize,
    /// The egress ceiling: pyrovm's `[egress]` section, not part of `[limits]`.
    #[serde(skip)]
    pub egress: crate::network::EgressBounds,
}

impl Default for LimitBounds {
    fn default() -> Self {
        Self {
            timeout_ms: Bound {
                default: 10_000,
                min: 100,
                max: 60_000,
            },
            memory_mb: Bound {
                default: 256,
                min: 32,
                max: 2048,
            },
            vcpus: Bound {
                default: 1,
                min: 1,
                max: 4,
            },
            max_output_bytes: Bound {
                default: 1 << 20,
                min: 1,
                max: 16 << 20,
            },
            max_processes: Bound {
                default: 64,
                min: 1,
                max: 1024,
            },
            compile_timeout_ms: Bound {
                default: 60_000,
                min: 100,
                max: 300_000,
            },
            compile_memory_mb: Bound {
                default: 256,
                min: 32,
                max: 2048,
            },
            max_tests: 32,
            max_code_bytes: 1 << 20,
            max_stdin_bytes: 1 << 20,
            max_files: 64,
            max_file_bytes_total: 8 << 20,
            max_args: 64,
            max_env: 64,
            max_arg_bytes: 4096,
            max_files_out: 64,
            max_files_out_bytes: 8 << 20,
            egress: crate::network::EgressBounds::default(),
        }
    }
}

/// Why a request was refused; each maps to HTTP 400 with [`ValidationError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("request body is not valid JSON for this endpoint: {0}")]
    InvalidJson(String),
    #[error("unknown language {0:?}; GET /v1/languages lists the available ones")]
    UnknownLanguage(String),
    #[error("limits.{name} must be between {min} and {max}, got {got}")]
    LimitOutOfRange {
        name: &'static str,
        min: u64,
        max: u64,
        got: u64,
    },
    #[error("{what} is larger than {max} bytes")]
    TooLarge { what: String, max: usize },
    #[error("too many {what}: at most {max}")]
    TooMany { what: &'static str, max: usize },
    #[error("files[{index}].content is not valid base64")]
    InvalidBase64 { index: usize },
    #[error("files[{index}].path {path:?}: {reason}")]
    InvalidPath {
        index: usize,
        path: String,
        reason: String,
    },
    #[error("environment variable name {0:?} is not valid (letters, digits, '_', not starting with a digit)")]
    InvalidEnvName(String),
    #[error("{0} must not contain NUL bytes")]
    NulByte(String),
    #[error("files_out[{index}] {pattern:?}: {reason}")]
    InvalidGlob {
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("limits.{0} is set once for the whole sandbox, when it is created")]
    SandboxLimit(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    /// A sandbox's `metadata` breaks a bound.
    #[error("{0}")]
    Metadata(String),
    /// The request's `network` is malformed or outside what the server allows.
    #[error("{0}")]
    Network(String),
    #[error("a batch holds 1 to {max} requests, got {got}")]
    BatchSize { max: usize, got: usize },
    /// A request of a batch (its code is the request's own).
    #[error("executions[{index}]: {inner}")]
    InBatch {
        index: usize,
        inner: Box<ValidationError>,
    },
}

impl ValidationError {
    /// Stable machine-readable code for the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::UnknownLanguage(_) => "unknown_language",
            Self::LimitOutOfRange { .. } => "limit_out_of_range",
            Self::TooLarge { .. } | Self::TooMany { .. } => "input_too_large",
            Self::InvalidBase64 { .. } => "invalid_base64",
            Self::InvalidPath { .. } | Self::InvalidGlob { .. } => "invalid_path",
            Self::SandboxLimit(_) | Self::Conflict(_) | Self::Metadata(_) => "invalid_argument",
            Self::InvalidEnvName(_) | Self::NulByte(_) => "invalid_argument",
            Self::BatchSize { .. } => "batch_size",
            Self::Network(_) => "network_not_allowed",
            Self::InBatch { inner, .. } => inner.code(),
        }
    }
}

/// Parses a JSON body; unknown fields and wrong types are refused.
pub fn parse_execute(body: &[u8]) -> Result<ExecuteRequest, ValidationError> {
    serde_json::from_slice(body).map_err(|e| ValidationError::InvalidJson(e.to_string()))
}

pub(crate) fn bounded(
    name: &'static str,
    value: Option<u64>,
    b: Bound,
) -> Result<u64, ValidationError> {
    let v = value.unwrap_or(b.default);
    if v < b.min || v > b.max {
        return Err(ValidationError::LimitOutOfRange {
            name,
            min: b.min,
            max: b.max,
            got: v,
        });
    }
    Ok(v)
}

fn env_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Environment variables: a bounded count, valid names, bounded values, no NUL.
pub fn check_env(
    env: &BTreeMap<String, String>,
    bounds: &LimitBounds,
) -> Result<(), ValidationError> {
    if env.len() > bounds.max_env {
        return Err(ValidationError::TooMany {
            what: "env entries",
            max: bounds.max_env,
        });
    }
    for (k, v) in env {
        if !env_name_ok(k) {
            return Err(ValidationError::InvalidEnvName(k.clone()));
        }
        if v.contains('\0') {
            return Err(ValidationError::NulByte(format!("env.{k}")));
        }
        if v.len() > bounds.max_arg_bytes {
            return Err(ValidationError::TooLarge {
                what: format!("env.{k}"),
                max: bounds.max_arg_bytes,
            });
        }
    }
    Ok(())
}

/// Checks a request against the language table and the bounds.
pub fn validate(
    req: ExecuteRequest,
    table: &LanguageTable,
    bounds: &LimitBounds,
) -> Result<ExecuteCommand, ValidationError> {
    let language = table
        .get(&req.language)
        .ok_or_else(|| ValidationError::UnknownLanguage(req.language.clone()))?
        .clone();
    let l = req.limits;
    let limits = Limits {
        timeout_ms: bounded("timeout_ms", l.timeout_ms, bounds.timeout_ms)?,
        memory_mb: bounded("memory_mb", l.memory_mb, bounds.memory_mb)?,
        vcpus: bounded("vcpus", l.vcpus.map(u64::from), bounds.vcpus)? as u32,
        max_output_bytes: bounded(
            "max_output_bytes",
            l.max_output_bytes,
            bounds.max_output_bytes,
        )?,
        max_processes: bounded(
            "max_processes",
            l.max_processes.map(u64::from),
            bounds.max_processes,
        )? as u32,
        compile_timeout_ms: bounded(
            "compile_timeout_ms",
            l.compile_timeout_ms,
            bounds.compile_timeout_ms,
        )?,
        compile_memory_mb: bounded(
            "compile_memory_mb",
            l.compile_memory_mb,
            bounds.compile_memory_mb,
        )?,
    };
    let tests = check_tests(&req, limits, bounds)?;
    if req.code.len() > bounds.max_code_bytes {
        return Err(ValidationError::TooLarge {
            what: "code".into(),
            max: bounds.max_code_bytes,
        });
    }
    let stdin = req.stdin.unwrap_or_default().into_bytes();
    if stdin.len() > bounds.max_stdin_bytes {
        return Err(ValidationError::TooLarge {
            what: "stdin".into(),
            max: bounds.max_stdin_bytes,
        });
    }
    check_args("args", &req.args, bounds)?;
    check_env(&req.env, bounds)?;
    if req.files.len() > bounds.max_files {
        return Err(ValidationError::TooMany {
            what: "files",
            max: bounds.max_files,
        });
    }
    let code_file = language.code_file_for(&req.code);
    let mut seen = HashSet::from([code_file.clone()]);
    let mut files = Vec::with_capacity(req.files.len());
    let mut total = 0usize;
    for (index, f) in req.files.into_iter().enumerate() {
        check_relative_path(&f.path).map_err(|e| ValidationError::InvalidPath {
            index,
            path: f.path.clone(),
            reason: e.to_string(),
        })?;
        if !seen.insert(f.path.clone()) {
            return Err(ValidationError::InvalidPath {
                index,
                path: f.path,
                reason: "is given twice or is the code file's name".into(),
            });
        }
        let content = match f.encoding {
            FileEncoding::Utf8 => f.content.into_bytes(),
            FileEncoding::Base64 => STANDARD
                .decode(f.content.as_bytes())
                .map_err(|_| ValidationError::InvalidBase64 { index })?,
        };
        total += content.len();
        if total > bounds.max_file_bytes_total {
            return Err(ValidationError::TooLarge {
                what: "files (in total)".into(),
                max: bounds.max_file_bytes_total,
            });
        }
        files.push(JobFile {
            path: f.path,
            content,
        });
    }
    if let Some((index, path, other)) = conflicting_path(&code_file, &files) {
        return Err(ValidationError::InvalidPath {
            index,
            path,
            reason: format!("needs {other:?} to be a directory, but it is a file"),
        });
    }
    if req.files_out.len() > bounds.max_files {
        return Err(ValidationError::TooMany {
            what: "files_out patterns",
            max: bounds.max_files,
        });
    }
    for (index, p) in req.files_out.iter().enumerate() {
        check_glob(p).map_err(|reason| ValidationError::InvalidGlob {
            index,
            pattern: p.clone(),
            reason,
        })?;
    }
    let network = crate::network::validate_network(req.network.as_ref(), &bounds.egress)?;
    Ok(ExecuteCommand {
        language,
        code: req.code.into_bytes(),
        stdin,
        args: req.args,
        env: req.env,
        files,
        limits,
        files_out: req.files_out,
        code_file,
        tests,
        network,
    })
}

pub(crate) fn check_args(
    what: &str,
    args: &[String],
    bounds: &LimitBounds,
) -> Result<(), ValidationError> {
    if args.len() > bounds.max_args {
        return Err(ValidationError::TooMany {
            what: "args",
            max: bounds.max_args,
        });
    }
    for (i, a) in args.iter().enumerate() {
        if a.contains('\0') {
            return Err(ValidationError::NulByte(format!("{what}[{i}]")));
        }
        if a.len() > bounds.max_arg_bytes {
            return Err(ValidationError::TooLarge {
                what: format!("{what}[{i}]"),
                max: bounds.max_arg_bytes,
            });
        }
    }
    Ok(())
}

/// A file whose path has another file of the set as a directory (`a` and `a/b`):
/// `(index, path, the file in the way)`. The code file counts as index-less.
fn conflicting_path(code_file: &str, files: &[JobFile]) -> Option<(usize, String, String)> {
    let names: HashSet<&str> = files
        .iter()
        .map(|f| f.path.as_str())
        .chain([code_file])
        .collect();
    for (index, f) in files.iter().enumerate() {
        for (i, _) in f.path.match_indices('/') {
            let dir = &f.path[..i];
            if names.contains(dir) {
                return Some((index, f.path.clone(), dir.to_string()));
            }
        }
    }
    None
}

/// A `files_out` glob: relative, no `..`, a valid pattern.
pub fn check_glob(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > tvm_proto::MAX_PATH_BYTES {
        return Err(format!("must be 1 to {} bytes", tvm_proto::MAX_PATH_BYTES));
    }
    if pattern.starts_with('/') {
        return Err("must be relative to the work dir".into());
    }
    if pattern
        .split('/')
        .any(|c| c == ".." || c == "." || c.is_empty())
    {
        return Err("must not contain '..', '.' or empty components".into());
    }
    if pattern.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    glob::Pattern::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("is not a valid glob: {}", e.msg))
}

/// Checks an execute request made inside a sandbox: as [`validate`], but the
/// sandbox's own limits (memory, vCPUs, processes) cannot be changed per exec.
pub fn validate_in_sandbox(
    req: ExecuteRequest,
    table: &LanguageTable,
    bounds: &LimitBounds,
) -> Result<ExecuteCommand, ValidationError> {
    let l = &req.limits;
    if !req.tests.is_empty() {
        return Err(ValidationError::Conflict(
            "tests run in a fresh VM of their own: use POST /v1/execute",
        ));
    }
    if req.network.is_some() {
        return Err(ValidationError::Conflict(
            "network is set once for the whole sandbox, when it is created",
        ));
    }
    for (name, set) in [
        ("memory_mb", l.memory_mb.is_some()),
        ("compile_memory_mb", l.compile_memory_mb.is_some()),
        ("vcpus", l.vcpus.is_some()),
        ("max_processes", l.max_processes.is_some()),
    ] {
        if set {
            return Err(ValidationError::SandboxLimit(name));
        }
    }
    validate(req, table, bounds)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::types::{InputFile, RequestLimits};

    pub(crate) fn req(language: &str, code: &str) -> ExecuteRequest {
        ExecuteRequest {
            language: language.into(),
            code: code.into(),
            ..Default::default()
        }
    }

    pub(crate) fn check(r: ExecuteRequest) -> Result<ExecuteCommand, ValidationError> {
        validate(r, LanguageTable::builtin(), &LimitBounds::default())
    }

    #[test]
    fn run_time_bound_adds_the_compile_and_every_case() {
        let t = LanguageTable::builtin();
        let b = LimitBounds::default();
        let py = validate(req("python", "print(1)"), t, &b).unwrap();
        assert_eq!(py.run_time_bound_ms(), py.limits.timeout_ms);
        let mut r = req("c", "int main(){}");
        r.tests = vec![
            serde_json::from_value(
                serde_json::json!({"stdin": "1", "limits": {"timeout_ms": 500}}),
            )
            .unwrap(),
            serde_json::from_value(
                serde_json::json!({"stdin": "2", "limits": {"timeout_ms": 700}}),
            )
            .unwrap(),
        ];
        let c = validate(r, t, &b).unwrap();
        assert_eq!(c.run_time_bound_ms(), c.limits.compile_timeout_ms + 1200);
    }

    #[test]
    fn minimal_request_takes_defaults() {
        let cmd = check(req("python", "print(1)")).unwrap();
        let d = LimitBounds::default();
        assert_eq!(cmd.language.name, "python");
        assert_eq!(cmd.limits.timeout_ms, d.timeout_ms.default);
        assert_eq!(cmd.limits.memory_mb, d.memory_mb.default);
        assert_eq!(cmd.limits.vcpus, 1);
        assert!(cmd.stdin.is_empty());
    }

    #[test]
    fn aliases_resolve() {
        assert_eq!(check(req("js", "")).unwrap().language.name, "javascript");
    }

    #[test]
    fn unknown_language() {
        let e = check(req("cobol", "")).unwrap_err();
        assert_eq!(e.code(), "unknown_language");
    }

    #[test]
    fn limits_out_of_range() {
        for limits in [
            RequestLimits {
                timeout_ms: Some(60_001),
                ..Default::default()
            },
            RequestLimits {
                timeout_ms: Some(0),
                ..Default::default()
            },
            RequestLimits {
                memory_mb: Some(1),
                ..Default::default()
            },
            RequestLimits {
                vcpus: Some(0),
                ..Default::default()
            },
            RequestLimits {
                max_processes: Some(100_000),
                ..Default::default()
            },
            RequestLimits {
                max_output_bytes: Some(u64::MAX),
                ..Default::default()
            },
        ] {
            let e = check(ExecuteRequest {
                limits,
                ..req("python", "")
            })
            .unwrap_err();
            assert_eq!(e.code(), "limit_out_of_range", "{limits:?}");
        }
    }

    #[test]
    fn files_are_decoded_and_checked() {
        let mut r = req("bash", "cat data/in.txt");
        r.files = vec![
            InputFile {
                path: "data/in.txt".into(),
                content: "aGk=".into(),
                encoding: FileEncoding::Base64,
            },
            InputFile {
                path: "b.txt".into(),
                content: "plain".into(),
                encoding: FileEncoding::Utf8,
            },
        ];
        let cmd = check(r).unwrap();
        assert_eq!(cmd.files[0].content, b"hi");
        assert_eq!(cmd.files[1].content, b"plain");
    }

    #[test]
    fn bad_base64_and_bad_paths() {
        let file = |path: &str, content: &str, encoding| InputFile {
            path: path.into(),
            content: content.into(),
            encoding,
        };
        let mut r = req("bash", "");
        r.files = vec![file("a", "!!!", FileEncoding::Base64)];
        assert_eq!(check(r.clone()).unwrap_err().code(), "invalid_base64");
        for p in ["../x", "/etc/passwd", "a/../../b", "", "main.sh"] {
            r.files = vec![file(p, "x", FileEncoding::Utf8)];
            assert_eq!(check(r.clone()).unwrap_err().code(), "invalid_path", "{p}");
        }
        r.files = vec![
            file("a", "1", FileEncoding::Utf8),
            file("a", "2", FileEncoding::Utf8),
        ];
        assert_eq!(check(r).unwrap_err().code(), "invalid_path");
    }

    #[test]
    fn a_file_in_the_way_of_a_directory_is_refused() {
        let file = |p: &str| InputFile {
            path: p.into(),
            content: "x".into(),
            encoding: FileEncoding::Utf8,
        };
        let mut r = req("python", "1");
        r.files = vec![file("a"), file("a/b")];
        let e = check(r).unwrap_err();
        assert_eq!(e.code(), "invalid_path");
        assert!(e.to_string().contains("\"a\""), "{e}");
        let mut r = req("python", "1");
        r.files = vec![file("x/y/z"), file("x/y")];
        assert_eq!(check(r).unwrap_err().code(), "invalid_path");
        // The code file is a file too.
        let mut r = req("python", "1");
        r.files = vec![file("main.py/x")];
        assert_eq!(check(r).unwrap_err().code(), "invalid_path");
        let mut r = req("python", "1");
        r.files = vec![file("a/b"), file("a/c"), file("ab/c")];
        check(r).unwrap();
    }

    #[test]
    fn files_out_globs_are_checked() {
        for good in ["out.txt", "out/*.png", "**/*.json", "a/[bc]?.txt"] {
            assert_eq!(check_glob(good), Ok(()), "{good}");
        }
        for bad in ["", "/etc/*", "../x", "a/../b", "a//b", "./a", "a/[", "a\nb"] {
            assert!(check_glob(bad).is_err(), "{bad:?}");
        }
        let mut r = req("python", "1");
        r.files_out = vec!["ok/*".into(), "../up".into()];
        let e = check(r).unwrap_err();
        assert_eq!(e.code(), "invalid_path");
        assert!(e.to_string().contains("files_out[1]"), "{e}");
    }

    #[test]
    fn sandbox_execs_cannot_change_the_sandbox_limits() {
        let t = LanguageTable::builtin();
        let b = LimitBounds::default();
        let mut r = req("python", "1");
        r.limits.timeout_ms = Some(1000);
        r.limits.max_output_bytes = Some(10);
        validate_in_sandbox(r, t, &b).unwrap();
        let mut r = req("python", "1");
        r.limits.memory_mb = Some(128);
        let e = validate_in_sandbox(r, t, &b).unwrap_err();
        assert_eq!(e.code(), "invalid_argument");
        assert!(e.to_string().contains("memory_mb"), "{e}");
    }

    #[test]
    fn compile_limits_have_their_own_bounds() {
        let cmd = check(req("c", "int main(){}")).unwrap();
        let d = LimitBounds::default();
        assert_eq!(cmd.limits.compile_timeout_ms, d.compile_timeout_ms.default);
        assert_eq!(cmd.limits.compile_memory_mb, d.compile_memory_mb.default);
        let mut r = req("c", "");
        r.limits.compile_memory_mb = Some(1024);
        let cmd = check(r).unwrap();
        assert_eq!(cmd.vm_memory_mb(), 1024, "the VM fits the compiler");
        // An interpreted language ignores the compile limits for the VM's size.
        let mut r = req("python", "");
        r.limits.compile_memory_mb = Some(1024);
        assert_eq!(check(r).unwrap().vm_memory_mb(), d.memory_mb.default);
        let mut r = req("c", "");
        r.limits.compile_timeout_ms = Some(d.compile_timeout_ms.max + 1);
        let e = check(r).unwrap_err();
        assert!(e.to_string().contains("compile_timeout_ms"), "{e}");
    }

    #[test]
    fn java_code_file_follows_the_public_class() {
        let cmd = check(req("java", "public class Solver { }")).unwrap();
        assert_eq!(cmd.code_file, "Solver.java");
        let mut r = req("java", "public class Solver { }");
        r.files.push(InputFile {
            path: "Solver.java".into(),
            content: "x".into(),
            encoding: FileEncoding::Utf8,
        });
        assert!(matches!(check(r), Err(ValidationError::InvalidPath { .. })));
        assert_eq!(check(req("c", "")).unwrap().code_file, "main.c");
    }

    #[test]
    fn env_and_args() {
        let mut r = req("bash", "");
        r.env = BTreeMap::from([("1BAD".to_string(), "x".to_string())]);
        assert_eq!(check(r.clone()).unwrap_err().code(), "invalid_argument");
        r.env = BTreeMap::from([("GOOD_1".to_string(), "a\0b".to_string())]);
        assert_eq!(check(r.clone()).unwrap_err().code(), "invalid_argument");
        r.env = BTreeMap::from([("GOOD_1".to_string(), "v".to_string())]);
        r.args = vec!["ok".into()];
        assert!(check(r.clone()).is_ok());
        r.args = vec!["a\0".into()];
        assert_eq!(check(r).unwrap_err().code(), "invalid_argument");
    }

    #[test]
    fn sizes_are_bounded() {
        let big = "x".repeat(LimitBounds::default().max_code_bytes + 1);
        assert_eq!(
            check(req("python", &big)).unwrap_err().code(),
            "input_too_large"
        );
        let mut r = req("python", "");
        r.args = vec![String::new(); 65];
        assert_eq!(check(r).unwrap_err().code(), "input_too_large");
    }

    #[test]
    fn parse_rejects_unknown_fields_and_malformed_json() {
        assert!(parse_execute(br#"{"language":"python","code":"1"}"#).is_ok());
        for body in [
            &br#"{"language":"python","code":"1","colour":"red"}"#[..],
            br#"{"language":"python","code":"1","limits":{"cpu":1}}"#,
            br#"{"language":"python""#,
            br#"{"code":"1"}"#,
            br#"[]"#,
            b"",
        ] {
            assert_eq!(parse_execute(body).unwrap_err().code(), "invalid_json");
        }
    }
}
