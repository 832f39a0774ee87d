//! Piston v2 compatibility: `GET /api/v2/runtimes` and `POST /api/v2/execute`, so
//! existing Piston clients work unchanged. A thin adapter: Piston's request becomes
//! the same `ExecuteRequest` every surface validates, and the result is reshaped the
//! way Piston (`api/src/job.js`, `api/src/api/v2.js`) shapes its own.
//!
//! Accepted: `language` (name or alias), `version` (`*`, or a dotted prefix either
//! way with ours), `files[].{name, content, encoding: utf8|base64|hex}` (the first
//! file is the program; the others are written beside it), `stdin` (a newline is
//! added when it does not end with one, as Piston does), `args`, `run_timeout` and
//! `compile_timeout` (ms), `run_memory_limit` and `compile_memory_limit` (bytes,
//! rounded up to MiB). As in Piston, a limit that is absent, `null` or `0` takes
//! the default, a memory limit below 0 (`-1`: "no limit") takes the default, a
//! negative timeout or one past our maximum is a 400 `{"message"}` in Piston's
//! words; so is one below our minimum. Accepted and ignored (CPU time is not limited
//! separately): `compile_cpu_time`, `run_cpu_time`. Other fields are ignored, as
//! Piston does; so is the request's `content-type` (Piston answers 415 to anything
//! but JSON, which its own Node client, `piston-client`, does not send).
//!
//! The answer is Piston's: `run`, and for a language that compiles a `compile` stage
//! of the same shape. When the compile fails (non-zero exit, timeout, memory) the
//! program does not run and `run` is a copy of `compile`, as Piston does for
//! "backward compatibility" (v2.js). `status`/`message` are isolate's: `RE` "Exited
//! with error status N", `SG` "Caught fatal signal N" (a memory limit is a SIGKILL,
//! as under isolate's cgroup), `TO` "Time limit exceeded (wall clock)", and Piston's
//! own `OL`/`EL`; `code` is null whenever `signal` is set. `XX` is a sandbox failure
//! (where Piston answers 500). The compile stage's `output` is its stdout then its
//! stderr (the two are not interleaved for that stage); `cpu_time` and `memory` are
//! `null`: the guest does not measure them yet.
//!
//! Runtimes are named as Piston names them (`c++`, with `cpp` an alias) and carry
//! `runtime` where Piston's do (`gcc`, `node`); versions are semver, as Piston's
//! `version.raw` always is: the installed version (`3.11.2`) when the server knows
//! it, else the table's prefix padded (`3.11.0`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tvm_api::{
    validate, Bound, ExecuteRequest, ExecuteResponse, ExecutionStatus, FileEncoding, InputFile,
    Language, LanguageTable, LimitBounds, RequestLimits, StageResult,
};
use tvm_proto::Stream;

use crate::core::{CoreError, OutputChunk};
use crate::server::AppState;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PistonFile {
    #[serde(default)]
    pub name: Option<String>,
    pub content: String,
    #[serde(default)]
    pub encoding: Option<String>,
}

/// Limits are JSON numbers, as in Piston (`1e4` and `2500.5` included).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
pub struct PistonRequest {
    pub language: String,
    #[serde(default)]
    pub version: Option<String>,
    pub files: Vec<PistonFile>,
    #[serde(default)]
    pub stdin: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub run_timeout: Option<f64>,
    #[serde(default)]
    pub run_memory_limit: Option<f64>,
    #[serde(default)]
    pub compile_timeout: Option<f64>,
    #[serde(default)]
    pub compile_memory_limit: Option<f64>,
    #[serde(default)]
    pub compile_cpu_time: Option<f64>,
    #[serde(default)]
    pub run_cpu_time: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonRuntime {
    pub language: String,
    /// Semver, as Piston's.
    pub version: String,
    pub aliases: Vec<String>,
    /// The package that provides the language, where Piston names one (`gcc`, `node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// One stage (`compile` or `run`), with the keys of Piston's `safe_call` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonStage {
    pub stdout: String,
    pub stderr: String,
    /// stdout and stderr interleaved in the order they were read.
    pub output: String,
    /// Null when `signal` is set.
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub message: Option<String>,
    /// `RE`, `SG`, `TO`, `OL`, `EL`, `XX`, or null on success.
    pub status: Option<String>,
    pub cpu_time: Option<u64>,
    pub wall_time: Option<u64>,
    pub memory: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonResponse {
    /// Only for a language that compiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<PistonStage>,
    /// When the compile failed, a copy of `compile` (the program did not run).
    pub run: PistonStage,
    pub language: String,
    pub version: String,
}

/// Piston's error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonError {
    pub message: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(PistonError {
            message: message.into(),
        }),
    )
        .into_response()
}

/// Where Piston's packages name a language or its runtime differently from our table:
/// (our name, Piston's name, Piston's `runtime`).
const PISTON_NAMES: &[(&str, &str, Option<&str>)] = &[
    ("c", "c", Some("gcc")),
    ("cpp", "c++", Some("gcc")),
    ("javascript", "javascript", Some("node")),
];

/// The language as Piston's runtimes list shows it; `version` is the installed one
/// when the server knows it, else the table's prefix.
pub fn runtime_of(l: &Language, version: &str) -> PistonRuntime {
    let (name, runtime) = PISTON_NAMES
        .iter()
        .find(|(ours, _, _)| *ours == l.name)
        .map_or((l.name.as_str(), None), |(_, name, rt)| (*name, *rt));
    let aliases = std::iter::once(&l.name)
        .filter(|n| n.as_str() != name)
        .chain(l.aliases.iter().filter(|a| a.as_str() != name))
        .cloned()
        .collect();
    PistonRuntime {
        language: name.to_string(),
        version: semver(version),
        aliases,
        runtime: runtime.map(str::to_string),
    }
}

/// A version as the semver Piston always shows (`version.raw`): the table's prefix
/// padded (`3.11` → `3.11.0`), an installed version cut to three parts
/// (`17.0.21.1` → `17.0.21`).
pub fn semver(version: &str) -> String {
    let numeric = version
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or_default();
    let mut parts: Vec<&str> = numeric
        .split('.')
        .filter(|p| !p.is_empty())
        .take(3)
        .collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    parts.join(".")
}

/// Whether a requested Piston version selects our version of a language: `*`/`x`,
/// or the dotted components both have are equal (`3`, `3.11`, `3.11.0` and `3.11.2`
/// select `3.11`; `3.1` does not). `x` or `*` in a component matches any.
pub fn version_matches(requested: Option<&str>, ours: &str) -> bool {
    match requested.map(str::trim) {
        None | Some("") | Some("*") | Some("x") | Some("X") => true,
        Some(v) => v
            .trim_start_matches(['=', '^', '~', 'v'])
            .split('.')
            .zip(ours.split('.'))
            .all(|(a, b)| a == b || matches!(a, "x" | "X" | "*")),
    }
}

/// A timeout in ms as Piston takes it: absent, `null` or `0` is the default.
fn timeout_limit(name: &str, value: Option<f64>, b: Bound) -> Result<Option<u64>, String> {
    match value.filter(|v| *v != 0.0) {
        None => Ok(None),
        Some(v) if v.is_nan() || v < 0.0 => Err(format!("{name} must be non-negative")),
        Some(v) if v > b.max as f64 => Err(format!(
            "{name} cannot exceed the configured limit of {}",
            b.max
        )),
        Some(v) if v < b.min as f64 => Err(format!("{name} must be at least {}", b.min)),
        Some(v) => Ok(Some(v.ceil() as u64)),
    }
}

/// A memory limit in bytes as Piston takes it: absent, `null`, `0` or negative (`-1`,
/// "no limit") is the default; otherwise rounded up to MiB.
fn memory_limit(name: &str, value: Option<f64>, b: Bound) -> Result<Option<u64>, String> {
    let Some(v) = value.filter(|v| *v > 0.0) else {
        return Ok(None);
    };
    let mb = (v / (1u64 << 20) as f64).ceil();
    if mb > b.max as f64 {
        return Err(format!(
            "{name} cannot exceed the configured limit of {}",
            b.max << 20
        ));
    }
    if mb < b.min as f64 {
        return Err(format!("{name} must be at least {}", b.min << 20));
    }
    Ok(Some(mb as u64))
}

/// The program's stdin as Piston gives it: with a trailing newline added when it
/// has none (so an absent or empty stdin is one newline), as `job.js` does.
fn piston_stdin(stdin: Option<String>) -> String {
    let mut s = stdin.unwrap_or_default();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

/// Pure translation into the one request type every surface validates.
pub fn to_request(
    p: PistonRequest,
    table: &LanguageTable,
    bounds: &LimitBounds,
) -> Result<ExecuteRequest, String> {
    let lang = table
        .get(&p.language)
        .filter(|l| version_matches(p.version.as_deref(), &l.version))
        .ok_or_else(|| {
            format!(
                "{}-{} runtime is unknown",
                p.language,
                p.version.as_deref().unwrap_or("*")
            )
        })?;
    let mut files = p.files.into_iter();
    let main = files.next().ok_or("files must contain at least one file")?;
    let decode = |f: &PistonFile| -> Result<(String, FileEncoding), String> {
        match f.encoding.as_deref().unwrap_or("utf8") {
            "utf8" | "utf-8" => Ok((f.content.clone(), FileEncoding::Utf8)),
            "base64" => Ok((f.content.clone(), FileEncoding::Base64)),
            "hex" => {
                let bytes =
                    hex::decode(f.content.trim()).map_err(|_| "file content is not valid hex")?;
                use base64::Engine as _;
                Ok((
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                    FileEncoding::Base64,
                ))
            }
            other => Err(format!(
                "file encoding {other:?} is not one of utf8, base64, hex"
            )),
        }
    };
    let (main_content, main_enc) = decode(&main)?;
    let code = match main_enc {
        FileEncoding::Utf8 => main_content,
        FileEncoding::Base64 => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(main_content.as_bytes())
                .map_err(|_| "file content is not valid base64".to_string())?;
            String::from_utf8(bytes)
                .map_err(|_| "the program file is not UTF-8 text".to_string())?
        }
    };
    let mut extra = Vec::new();
    for (i, f) in files.enumerate() {
        let (content, encoding) = decode(&f)?;
        let path = f.name.clone().unwrap_or_else(|| format!("file{}", i + 1));
        extra.push(InputFile {
            path,
            content,
            encoding,
        });
    }
    let limits = RequestLimits {
        timeout_ms: timeout_limit("run_timeout", p.run_timeout, bounds.timeout_ms)?,
        memory_mb: memory_limit("run_memory_limit", p.run_memory_limit, bounds.memory_mb)?,
        compile_timeout_ms: timeout_limit(
            "compile_timeout",
            p.compile_timeout,
            bounds.compile_timeout_ms,
        )?,
        compile_memory_mb: memory_limit(
            "compile_memory_limit",
            p.compile_memory_limit,
            bounds.compile_memory_mb,
        )?,
        ..RequestLimits::default()
    };
    Ok(ExecuteRequest {
        language: lang.name.clone(),
        code,
        stdin: Some(piston_stdin(p.stdin)),
        args: p.args,
        env: BTreeMap::new(),
        files: extra,
        limits,
        files_out: Vec::new(),
        tests: Vec::new(),
    })
}

/// How a stage ended, in isolate's words (its meta file, read by Piston's `safe_call`).
struct Ending {
    status: Option<&'static str>,
    message: Option<String>,
    code: Option<i32>,
    signal: Option<String>,
}

fn ending(
    status: ExecutionStatus,
    exit_code: Option<i32>,
    signal: Option<&str>,
    stdout_cut: bool,
    stderr_cut: bool,
    error: Option<&str>,
) -> Ending {
    let killed = |status, message: &str| Ending {
        status: Some(status),
        message: Some(message.to_string()),
        code: None,
        signal: Some("SIGKILL".into()),
    };
    match status {
        ExecutionStatus::Completed => match (exit_code, signal) {
            (Some(0), _) => Ending {
                status: None,
                message: None,
                code: Some(0),
                signal: None,
            },
            (Some(c), _) => Ending {
                status: Some("RE"),
                message: Some(format!("Exited with error status {c}")),
                code: Some(c),
                signal: None,
            },
            (None, sig) => {
                let number = sig
                    .and_then(|s| s.parse::<nix::sys::signal::Signal>().ok())
                    .map_or_else(
                        || sig.unwrap_or("?").to_string(),
                        |s| (s as i32).to_string(),
                    );
                Ending {
                    status: Some("SG"),
                    message: Some(format!("Caught fatal signal {number}")),
                    code: None,
                    signal: sig.map(str::to_string),
                }
            }
        },
        ExecutionStatus::Timeout => killed("TO", "Time limit exceeded (wall clock)"),
        // isolate's cgroup memory limit: the kernel's OOM killer sends SIGKILL.
        ExecutionStatus::MemoryLimit => killed("SG", "Caught fatal signal 9"),
        ExecutionStatus::OutputLimit if stderr_cut && !stdout_cut => {
            killed("EL", "stderr length exceeded")
        }
        ExecutionStatus::OutputLimit => killed("OL", "stdout length exceeded"),
        ExecutionStatus::SandboxError | ExecutionStatus::CompileError => Ending {
            status: Some("XX"),
            message: error.map(str::to_string),
            code: exit_code,
            signal: signal.map(str::to_string),
        },
    }
}

fn stage(e: Ending, stdout: String, stderr: String, output: String, wall_ms: u64) -> PistonStage {
    PistonStage {
        stdout,
        stderr,
        output,
        code: e.code,
        signal: e.signal,
        message: e.message,
        status: e.status.map(str::to_string),
        cpu_time: None,
        wall_time: Some(wall_ms),
        memory: None,
    }
}

/// The compile stage as Piston shows it (its output: stdout, then stderr).
fn compile_stage(c: &StageResult) -> PistonStage {
    let e = ending(
        c.status,
        c.exit_code,
        c.signal.as_deref(),
        c.stdout_truncated,
        c.stderr_truncated,
        None,
    );
    let output = format!("{}{}", c.stdout, c.stderr);
    stage(e, c.stdout.clone(), c.stderr.clone(), output, c.duration_ms)
}

/// What the live channel carried of the program's run.
#[derive(Debug, Default)]
pub struct RunOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Both, in the order they were read.
    pub output: Vec<u8>,
}

/// Pure rendering of the core's answer as Piston's.
pub fn render(
    lang: &Language,
    version: &str,
    resp: &ExecuteResponse,
    out: &RunOutput,
) -> PistonResponse {
    let rt = runtime_of(lang, version);
    let compile = resp.compile.as_ref().map(compile_stage);
    let run = match (&compile, resp.status) {
        // Piston runs nothing after a failed compile and answers `run = compile`.
        (Some(c), ExecutionStatus::CompileError) => c.clone(),
        _ => {
            let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let e = ending(
                resp.status,
                resp.exit_code,
                resp.signal.as_deref(),
                resp.stdout_truncated,
                resp.stderr_truncated,
                resp.error.as_deref(),
            );
            stage(
                e,
                lossy(&out.stdout),
                lossy(&out.stderr),
                lossy(&out.output),
                resp.timings_ms.exec,
            )
        }
    };
    PistonResponse {
        compile,
        run,
        language: rt.language,
        version: rt.version,
    }
}

/// Piston v2: the runtimes (languages) available.
#[utoipa::path(get, path = "/api/v2/runtimes", tag = "piston",
    responses((status = 200, body = Vec<PistonRuntime>), (status = 401, body = tvm_api::ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn runtimes(State(st): State<Arc<AppState>>) -> Json<Vec<PistonRuntime>> {
    Json(
        st.languages
            .iter()
            .map(|l| runtime_of(l, &st.version_of(l)))
            .collect(),
    )
}

/// Piston v2: run a program (compiling it first if its language compiles).
#[utoipa::path(post, path = "/api/v2/execute", tag = "piston", request_body = PistonRequest,
    responses(
        (status = 200, body = PistonResponse),
        (status = 400, body = PistonError),
        (status = 401, body = tvm_api::ErrorBody),
        (status = 413, body = PistonError),
        (status = 429, body = PistonError),
        (status = 503, body = PistonError),
    ), security((), ("bearer" = [])))]
pub async fn execute(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(BytesRejection::FailedToBufferBody(e))
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            return error(StatusCode::PAYLOAD_TOO_LARGE, "request body is too large")
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let preq: PistonRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid request body: {e}"),
            )
        }
    };
    let req = match to_request(preq, st.languages, &st.bounds) {
        Ok(r) => r,
        Err(m) => {
            st.executor.metrics.rejected("invalid");
            return error(StatusCode::BAD_REQUEST, m);
        }
    };
    let cmd = match validate(req, st.languages, &st.bounds) {
        Ok(c) => c,
        Err(e) => {
            st.executor.metrics.rejected("invalid");
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let lang = cmd.language.clone();
    let admitted = match st.executor.admit() {
        Ok(a) => a,
        Err(e @ CoreError::AtCapacity(_)) => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, e.to_string());
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
            return r;
        }
        Err(e) => {
            let mut r = error(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("5"));
            return r;
        }
    };
    // Run with live output so `output` keeps the true interleaving of the two
    // streams (the live channel carries the program's run only, not the compile).
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let runner = st.clone();
    let job = tokio::spawn(async move { runner.executor.run(admitted, cmd, Some(tx)).await });
    let mut out = RunOutput::default();
    while let Some(c) = rx.recv().await {
        out.output.extend_from_slice(&c.data);
        match c.stream {
            Stream::Stdout => out.stdout.extend_from_slice(&c.data),
            Stream::Stderr => out.stderr.extend_from_slice(&c.data),
        }
    }
    let resp = match job.await {
        Ok(r) => r,
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "execution task failed"),
    };
    Json(render(&lang, &st.version_of(&lang), &resp, &out)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tvm_api::Timings;

    fn req(lang: &str, version: Option<&str>, files: Vec<PistonFile>) -> PistonRequest {
        PistonRequest {
            language: lang.into(),
            version: version.map(Into::into),
            files,
            ..Default::default()
        }
    }

    fn file(content: &str, encoding: Option<&str>) -> PistonFile {
        PistonFile {
            name: None,
            content: content.into(),
            encoding: encoding.map(Into::into),
        }
    }

    fn translate(p: PistonRequest) -> Result<ExecuteRequest, String> {
        to_request(p, LanguageTable::builtin(), &LimitBounds::default())
    }

    #[test]
    fn versions() {
        assert!(version_matches(Some("*"), "3.11"));
        assert!(version_matches(None, "3.11"));
        assert!(version_matches(Some("3.11.2"), "3.11"));
        assert!(version_matches(Some("3.11.0"), "3.11"));
        assert!(version_matches(Some("3"), "3.11"));
        assert!(version_matches(Some("3.x"), "3.11"));
        assert!(version_matches(Some("12.0.0"), "12"));
        assert!(!version_matches(Some("3.10"), "3.11"));
        assert!(!version_matches(Some("3.1"), "3.11"));
        assert!(!version_matches(Some("2.7"), "3.11"));
        assert_eq!(semver("3.11"), "3.11.0");
        assert_eq!(semver("18"), "18.0.0");
        assert_eq!(semver("1.63"), "1.63.0");
        assert_eq!(semver("5.2.15"), "5.2.15");
        assert_eq!(semver("17.0.21.1"), "17.0.21");
        assert_eq!(semver("0.17.0"), "0.17.0");
    }

    #[test]
    fn runtimes_are_named_as_pistons() {
        let t = LanguageTable::builtin();
        let rts: Vec<PistonRuntime> = t.iter().map(|l| runtime_of(l, &l.version)).collect();
        assert_eq!(rts.len(), t.iter().count());
        let cpp = rts.iter().find(|r| r.language == "c++").unwrap();
        assert!(cpp.aliases.contains(&"cpp".to_string()), "{cpp:?}");
        assert!(!cpp.aliases.contains(&"c++".to_string()), "{cpp:?}");
        assert_eq!(cpp.runtime.as_deref(), Some("gcc"));
        assert_eq!(cpp.version, "12.0.0");
        let py = rts.iter().find(|r| r.language == "python").unwrap();
        assert_eq!(py.version, "3.11.0");
        assert_eq!(py.runtime, None);
        let json = serde_json::to_value(py).unwrap();
        assert!(json.get("runtime").is_none(), "{json}");
        for r in &rts {
            assert_eq!(r.version.split('.').count(), 3, "{r:?}");
            // Every name and alias shown resolves to the language again.
            for n in std::iter::once(&r.language).chain(&r.aliases) {
                assert!(t.get(n).is_some(), "{n}");
            }
        }
    }

    #[test]
    fn translation() {
        let mut p = req(
            "py",
            Some("3.11"),
            vec![
                file("print(1)", None),
                PistonFile {
                    name: Some("d.txt".into()),
                    content: "6869".into(),
                    encoding: Some("hex".into()),
                },
            ],
        );
        p.run_timeout = Some(2500.0);
        p.run_memory_limit = Some(100_000_000.0);
        p.compile_timeout = Some(10_000.0);
        p.compile_memory_limit = Some(200_000_000.0);
        let r = translate(p).unwrap();
        assert_eq!(r.language, "python");
        assert_eq!(r.code, "print(1)");
        assert_eq!(r.stdin.as_deref(), Some("\n"));
        assert_eq!(r.files[0].path, "d.txt");
        assert_eq!(r.files[0].content, "aGk=");
        assert_eq!(r.limits.timeout_ms, Some(2500));
        assert_eq!(r.limits.memory_mb, Some(96));
        assert_eq!(r.limits.compile_timeout_ms, Some(10_000));
        assert_eq!(r.limits.compile_memory_mb, Some(191));
        // -1 ("no limit"), 0 and absent take the defaults, as in Piston.
        let defaults = PistonRequest {
            run_memory_limit: Some(-1.0),
            compile_memory_limit: Some(-1.0),
            run_timeout: Some(0.0),
            compile_timeout: None,
            ..req("c++", Some("*"), vec![file("int main(){}", None)])
        };
        let r = translate(defaults).unwrap();
        assert_eq!(r.language, "cpp");
        assert_eq!(r.limits, RequestLimits::default());
    }

    #[test]
    fn limits_out_of_range() {
        let b = LimitBounds::default();
        let with = |f: &dyn Fn(&mut PistonRequest)| {
            let mut p = req("c", None, vec![file("x", None)]);
            f(&mut p);
            translate(p).unwrap_err()
        };
        assert_eq!(
            with(&|p| p.compile_timeout = Some((b.compile_timeout_ms.max + 1) as f64)),
            format!(
                "compile_timeout cannot exceed the configured limit of {}",
                b.compile_timeout_ms.max
            )
        );
        assert_eq!(
            with(&|p| p.compile_timeout = Some(-5.0)),
            "compile_timeout must be non-negative"
        );
        assert!(with(&|p| p.compile_timeout = Some(1.0)).contains("at least"));
        assert_eq!(
            with(&|p| p.compile_memory_limit = Some(((b.compile_memory_mb.max + 1) << 20) as f64)),
            format!(
                "compile_memory_limit cannot exceed the configured limit of {}",
                b.compile_memory_mb.max << 20
            )
        );
        assert!(with(&|p| p.run_memory_limit = Some(1000.0)).starts_with("run_memory_limit"));
        assert!(with(&|p| p.run_timeout = Some(1e9)).starts_with("run_timeout cannot exceed"));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            translate(req("cobol", Some("1"), vec![file("x", None)])).unwrap_err(),
            "cobol-1 runtime is unknown"
        );
        assert!(translate(req("python", Some("2.7"), vec![file("x", None)]))
            .unwrap_err()
            .contains("runtime is unknown"));
        assert!(translate(req("python", None, vec![])).is_err());
        assert!(
            translate(req("python", None, vec![file("x", Some("rot13"))]))
                .unwrap_err()
                .contains("encoding")
        );
        assert!(translate(req("python", None, vec![file("zz", Some("hex"))])).is_err());
        assert!(translate(req("python", None, vec![file("!!", Some("base64"))])).is_err());
    }

    fn response(status: ExecutionStatus, compile: Option<StageResult>) -> ExecuteResponse {
        ExecuteResponse {
            id: "x".into(),
            status,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            timings_ms: Timings::default(),
            backend: "qemu".into(),
            error: None,
            files: None,
            files_truncated: None,
            compile,
            tests: None,
            verdict: None,
        }
    }

    fn compiled(
        status: ExecutionStatus,
        exit_code: Option<i32>,
        signal: Option<&str>,
    ) -> StageResult {
        StageResult {
            status,
            exit_code,
            signal: signal.map(Into::into),
            stdout: String::new(),
            stderr: "main.c:1: error: oops\n".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 1200,
        }
    }

    #[test]
    fn failed_compile_is_also_the_run() {
        let c = LanguageTable::builtin().get("c").unwrap();
        let resp = response(
            ExecutionStatus::CompileError,
            Some(compiled(ExecutionStatus::Completed, Some(1), None)),
        );
        let r = render(c, &c.version, &resp, &RunOutput::default());
        assert_eq!((r.language.as_str(), r.version.as_str()), ("c", "12.0.0"));
        let compile = r.compile.clone().unwrap();
        assert_eq!(compile.status.as_deref(), Some("RE"));
        assert_eq!(
            compile.message.as_deref(),
            Some("Exited with error status 1")
        );
        assert_eq!(compile.code, Some(1));
        assert_eq!(compile.signal, None);
        assert_eq!(compile.stderr, "main.c:1: error: oops\n");
        assert_eq!(compile.output, compile.stderr);
        assert_eq!(compile.wall_time, Some(1200));
        assert_eq!(r.run, compile);

        let resp = response(
            ExecutionStatus::CompileError,
            Some(compiled(ExecutionStatus::Timeout, None, Some("SIGKILL"))),
        );
        let r = render(c, &c.version, &resp, &RunOutput::default());
        let compile = r.compile.clone().unwrap();
        assert_eq!(compile.status.as_deref(), Some("TO"));
        assert_eq!(
            compile.message.as_deref(),
            Some("Time limit exceeded (wall clock)")
        );
        assert_eq!(
            (compile.code, compile.signal.as_deref()),
            (None, Some("SIGKILL"))
        );
        assert_eq!(r.run, compile);
    }

    #[test]
    fn run_endings() {
        let cpp = LanguageTable::builtin().get("cpp").unwrap();
        let mut resp = response(
            ExecutionStatus::Completed,
            Some(compiled(ExecutionStatus::Completed, Some(0), None)),
        );
        resp.signal = Some("SIGSEGV".into());
        let out = RunOutput {
            stdout: b"a".to_vec(),
            stderr: b"b".to_vec(),
            output: b"ba".to_vec(),
        };
        let r = render(cpp, "12.2.0", &resp, &out);
        assert_eq!(r.version, "12.2.0");
        assert_eq!(r.language, "c++");
        let compile = r.compile.unwrap();
        assert_eq!((compile.status, compile.code), (None, Some(0)));
        assert_eq!(r.run.status.as_deref(), Some("SG"));
        assert_eq!(r.run.message.as_deref(), Some("Caught fatal signal 11"));
        assert_eq!(
            (r.run.code, r.run.signal.as_deref()),
            (None, Some("SIGSEGV"))
        );
        assert_eq!(r.run.output, "ba");

        let py = LanguageTable::builtin().get("python").unwrap();
        let mut resp = response(ExecutionStatus::OutputLimit, None);
        resp.stderr_truncated = true;
        let r = render(py, "3.11.2", &resp, &RunOutput::default());
        assert!(r.compile.is_none());
        assert_eq!(r.run.status.as_deref(), Some("EL"));
        assert_eq!(r.run.signal.as_deref(), Some("SIGKILL"));
        let r = render(
            py,
            "3.11.2",
            &response(ExecutionStatus::MemoryLimit, None),
            &RunOutput::default(),
        );
        assert_eq!(r.run.status.as_deref(), Some("SG"));
        assert_eq!(r.run.message.as_deref(), Some("Caught fatal signal 9"));
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("compile").is_none(), "{json}");
    }
}
