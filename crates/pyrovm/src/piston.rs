//! Piston v2 compatibility: `GET /api/v2/runtimes` and `POST /api/v2/execute`, so
//! existing Piston clients work unchanged. A thin adapter: Piston's request becomes
//! the same `ExecuteRequest` every surface validates, and the result is reshaped.
//!
//! Accepted: `language`, `version` (`*`, or a prefix match either way with ours),
//! `files[].{name, content, encoding: utf8|base64|hex}` (the first file is the
//! program; the others are written beside it), `stdin`, `args`, `run_timeout` (ms),
//! `run_memory_limit` (bytes, -1 = default). Accepted and ignored (nothing is
//! compiled; CPU time is not limited separately): `compile_timeout`,
//! `compile_memory_limit`, `compile_cpu_time`, `run_cpu_time`. Other fields are
//! ignored, as Piston does. `cpu_time` and `memory` in the answer are `null`: the
//! guest does not measure them yet.

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
    validate, ExecuteRequest, ExecutionStatus, FileEncoding, InputFile, LanguageTable,
    RequestLimits,
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
    pub run_timeout: Option<i64>,
    #[serde(default)]
    pub run_memory_limit: Option<i64>,
    #[serde(default)]
    pub compile_timeout: Option<i64>,
    #[serde(default)]
    pub compile_memory_limit: Option<i64>,
    #[serde(default)]
    pub compile_cpu_time: Option<i64>,
    #[serde(default)]
    pub run_cpu_time: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonRuntime {
    pub language: String,
    pub version: String,
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonStage {
    pub stdout: String,
    pub stderr: String,
    /// stdout and stderr interleaved in the order they were read.
    pub output: String,
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
    pub language: String,
    pub version: String,
    pub run: PistonStage,
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

/// Whether a requested Piston version selects our version of a language.
pub fn version_matches(requested: Option<&str>, ours: &str) -> bool {
    match requested.map(str::trim) {
        None | Some("") | Some("*") | Some("x") => true,
        Some(v) => {
            let v = v.trim_start_matches(['=', '^', '~', 'v']);
            ours.starts_with(v) || v.starts_with(ours)
        }
    }
}

/// Pure translation into the one request type every surface validates.
pub fn to_request(p: PistonRequest, table: &LanguageTable) -> Result<ExecuteRequest, String> {
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
    let timeout_ms = p.run_timeout.filter(|t| *t >= 0).map(|t| t as u64);
    let memory_mb = p
        .run_memory_limit
        .filter(|m| *m >= 0)
        .map(|m| (m as u64).div_ceil(1 << 20));
    Ok(ExecuteRequest {
        language: lang.name.clone(),
        code,
        stdin: p.stdin,
        args: p.args,
        env: BTreeMap::new(),
        files: extra,
        limits: RequestLimits {
            timeout_ms,
            memory_mb,
            ..RequestLimits::default()
        },
        files_out: Vec::new(),
        tests: Vec::new(),
    })
}

/// Piston v2: the runtimes (languages) available.
#[utoipa::path(get, path = "/api/v2/runtimes", tag = "piston",
    responses((status = 200, body = Vec<PistonRuntime>), (status = 401, body = tvm_api::ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn runtimes(State(st): State<Arc<AppState>>) -> Json<Vec<PistonRuntime>> {
    Json(
        st.languages
            .iter()
            .map(|l| PistonRuntime {
                language: l.name.clone(),
                version: l.version.clone(),
                aliases: l.aliases.clone(),
            })
            .collect(),
    )
}

/// Piston v2: run a program.
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
    let req = match to_request(preq, st.languages) {
        Ok(r) => r,
        Err(m) => {
            st.executor.metrics.rejected("invalid");
            return error(StatusCode::BAD_REQUEST, m);
        }
    };
    let lang = req.language.clone();
    let cmd = match validate(req, st.languages, &st.bounds) {
        Ok(c) => c,
        Err(e) => {
            st.executor.metrics.rejected("invalid");
            return error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let version = cmd.language.version.clone();
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
    // Run with live output so `output` keeps the true interleaving of the two streams.
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(64);
    let runner = st.clone();
    let job = tokio::spawn(async move { runner.executor.run(admitted, cmd, Some(tx)).await });
    let (mut out, mut err, mut both) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(c) = rx.recv().await {
        both.extend_from_slice(&c.data);
        match c.stream {
            Stream::Stdout => out.extend_from_slice(&c.data),
            Stream::Stderr => err.extend_from_slice(&c.data),
        }
    }
    let resp = match job.await {
        Ok(r) => r,
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "execution task failed"),
    };
    let (status, message) = match resp.status {
        ExecutionStatus::Completed => match (resp.exit_code, &resp.signal) {
            (Some(0), _) => (None, None),
            (Some(c), _) => (Some("RE"), Some(format!("exited with code {c}"))),
            (None, _) => (Some("SG"), Some("killed by a signal".to_string())),
        },
        ExecutionStatus::Timeout => (Some("TO"), Some("time limit exceeded".into())),
        ExecutionStatus::MemoryLimit => (Some("SG"), Some("memory limit exceeded".into())),
        ExecutionStatus::OutputLimit if resp.stderr_truncated && !resp.stdout_truncated => {
            (Some("EL"), Some("stderr length exceeded".into()))
        }
        ExecutionStatus::OutputLimit => (Some("OL"), Some("stdout length exceeded".into())),
        ExecutionStatus::SandboxError | ExecutionStatus::CompileError => {
            (Some("XX"), resp.error.clone())
        }
    };
    let signal = resp
        .signal
        .clone()
        .or_else(|| (resp.status == ExecutionStatus::MemoryLimit).then(|| "SIGKILL".into()));
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Json(PistonResponse {
        language: lang,
        version,
        run: PistonStage {
            stdout: lossy(&out),
            stderr: lossy(&err),
            output: lossy(&both),
            code: resp.exit_code,
            signal,
            message,
            status: status.map(str::to_string),
            cpu_time: None,
            wall_time: Some(resp.timings_ms.exec),
            memory: None,
        },
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn versions() {
        assert!(version_matches(Some("*"), "3.11"));
        assert!(version_matches(None, "3.11"));
        assert!(version_matches(Some("3.11.2"), "3.11"));
        assert!(version_matches(Some("3"), "3.11"));
        assert!(!version_matches(Some("3.10"), "3.11"));
        assert!(!version_matches(Some("2.7"), "3.11"));
    }

    #[test]
    fn translation() {
        let t = LanguageTable::builtin();
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
        p.run_timeout = Some(2500);
        p.run_memory_limit = Some(100_000_000);
        p.compile_timeout = Some(10_000);
        let r = to_request(p, t).unwrap();
        assert_eq!(r.language, "python");
        assert_eq!(r.code, "print(1)");
        assert_eq!(r.files[0].path, "d.txt");
        assert_eq!(r.files[0].content, "aGk=");
        assert_eq!(r.limits.timeout_ms, Some(2500));
        assert_eq!(r.limits.memory_mb, Some(96));
        let unlimited = PistonRequest {
            run_memory_limit: Some(-1),
            ..req("bash", Some("*"), vec![file("echo", None)])
        };
        assert_eq!(to_request(unlimited, t).unwrap().limits.memory_mb, None);
    }

    #[test]
    fn refusals() {
        let t = LanguageTable::builtin();
        assert_eq!(
            to_request(req("cobol", Some("1"), vec![file("x", None)]), t).unwrap_err(),
            "cobol-1 runtime is unknown"
        );
        assert!(
            to_request(req("python", Some("2.7"), vec![file("x", None)]), t)
                .unwrap_err()
                .contains("runtime is unknown")
        );
        assert!(to_request(req("python", None, vec![]), t).is_err());
        assert!(
            to_request(req("python", None, vec![file("x", Some("rot13"))]), t)
                .unwrap_err()
                .contains("encoding")
        );
        assert!(to_request(req("python", None, vec![file("zz", Some("hex"))]), t).is_err());
        assert!(to_request(req("python", None, vec![file("!!", Some("base64"))]), t).is_err());
    }
}
