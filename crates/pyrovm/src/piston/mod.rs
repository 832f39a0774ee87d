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

mod request;
mod response;

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tvm_api::validate;
use tvm_proto::Stream;

use crate::core::OutputChunk;
use crate::server::AppState;

pub use request::{to_request, version_matches, PistonFile, PistonRequest};
pub use response::{
    render, runtime_of, semver, PistonResponse, PistonRuntime, PistonStage, RunOutput,
};

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
    who: Option<axum::Extension<tvm_http::middleware::Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Ok(who) = crate::server::caller(who) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
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
    // Piston queues too: a burst waits for a slot instead of being refused.
    let admitted = match st.executor.admit(&who, st.executor.wait_for(None)).await {
        Ok(a) => a,
        Err(e) => {
            let mut r = error(crate::server::core_http_status(&e), e.to_string());
            r.headers_mut().insert(
                "retry-after",
                axum::http::HeaderValue::from(e.retry_after_s()),
            );
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
