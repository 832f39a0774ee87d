//! HTTP surface. Handlers parse, validate, and hand a typed command to the core;
//! every error becomes `{"error":{"code","message"}}` here and nowhere else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::Instrument;
use tvm_api::{
    parse_execute, validate, ErrorBody, ExecuteCommand, ExecuteResponse, LanguageInfo,
    LanguageTable, LimitBounds, StreamExit, Utf8Chunker, ValidationError,
};
use tvm_proto::Stream;

use crate::core::{relay_live, CoreError, Executor, OutputChunk};
use crate::middleware::{self, Caller, Tokens};
use tvm_http::{error_response, BodyError};

#[derive(Debug)]
pub struct AppState {
    pub executor: Arc<Executor>,
    /// Async executions and their results (`/v1/executions`).
    pub executions: Arc<crate::executions::Executions>,
    pub languages: &'static LanguageTable,
    /// Installed version of each language (from the image's manifest).
    pub versions: std::collections::BTreeMap<String, String>,
    pub bounds: LimitBounds,
    pub ready: AtomicBool,
    /// `/readyz` has found the default class warm once (see [`crate::readiness`]).
    pub warm: AtomicBool,
    pub sandboxes: Arc<crate::sandbox::Sandboxes>,
    /// In a cluster: reaches the other pyrovms (sandbox forwarding, fleet listing).
    pub forwarder: Option<Arc<crate::cluster::Forwarder>>,
}

impl AppState {
    /// The installed version of a language, or the table's version prefix.
    pub fn version_of(&self, l: &tvm_api::Language) -> String {
        self.versions
            .get(&l.name)
            .cloned()
            .unwrap_or_else(|| l.version.clone())
    }
}

/// An error answer; the only place HTTP status codes for failures are chosen
/// (the body-deadline and token failures are answered by `tvm_http`'s middleware).
#[derive(Debug)]
pub enum Failure {
    Invalid(ValidationError),
    BodyTooLarge,
    BadBody(String),
    Core(CoreError),
    Sandbox(crate::sandbox::SandboxError),
    Async(crate::executions::AsyncError),
    NotFound,
    NotReady,
    /// A bug (logged where it happened); the client learns nothing more.
    Internal,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, code, message, retry_after) = match self {
            Failure::Invalid(e) => (StatusCode::BAD_REQUEST, e.code(), e.to_string(), None),
            Failure::BodyTooLarge => return BodyError::TooLarge.into_response(),
            Failure::BadBody(m) => return BodyError::Unreadable(m).into_response(),
            Failure::Core(e) => (
                core_http_status(&e),
                e.code(),
                e.to_string(),
                Some(e.retry_after_s()),
            ),
            Failure::Async(crate::executions::AsyncError::Core(e)) => {
                return Failure::Core(e).into_response()
            }
            Failure::Async(e) => {
                let (status, code) = match e {
                    crate::executions::AsyncError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                    _ => (StatusCode::TOO_MANY_REQUESTS, "async_full"),
                };
                (status, code, e.to_string(), e.retry_after_s())
            }
            Failure::Sandbox(crate::sandbox::SandboxError::Core(e)) => {
                return Failure::Core(e).into_response()
            }
            Failure::Sandbox(e) => {
                let (status, code, retry) = crate::api::sandboxes::status_of(&e);
                (status, code, e.to_string(), retry)
            }
            Failure::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint".into(),
                None,
            ),
            Failure::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the service log".into(),
                None,
            ),
            Failure::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the service is not ready".into(),
                Some(5),
            ),
        };
        error_response(status, code, message, retry_after)
    }
}

/// 429 for an overloaded node, 503 for one that cannot serve now.
pub(crate) fn core_http_status(e: &CoreError) -> StatusCode {
    if e.is_overload() {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

pub fn router(
    state: Arc<AppState>,
    max_body_bytes: usize,
    body_timeout: std::time::Duration,
    tokens: Arc<Tokens>,
    forwarder: Option<Arc<crate::cluster::Forwarder>>,
) -> Router {
    let routes = Router::new()
        .route("/v1/execute", post(execute))
        .route("/v1/execute/stream", post(execute_stream))
        .route("/v1/languages", get(languages))
        .merge(crate::api::sandboxes::routes())
        .merge(crate::api::executions::routes())
        .merge(crate::api::e2b::routes())
        .route("/api/v2/runtimes", get(crate::piston::runtimes))
        .route("/api/v2/execute", post(crate::piston::execute))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        .nest_service("/mcp", crate::api::mcp::service(state.clone()))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // Outside the limit layer: the whole body must arrive within the deadline.
        .layer(axum::middleware::from_fn_with_state(
            middleware::BodyDeadline {
                timeout: body_timeout,
                max_bytes: max_body_bytes,
            },
            middleware::body_deadline,
        ))
        .with_state(state.clone())
        // gRPC (HTTP/2) on the same port; then our fallback replaces tonic's.
        .merge(crate::grpc::router(state))
        .fallback(|| async { Failure::NotFound });
    // A sandbox another pyrovm holds is served there (after the token check).
    let routes = match forwarder {
        Some(f) => routes.layer(axum::middleware::from_fn_with_state(
            f,
            crate::cluster::forward_to_owner,
        )),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            middleware::require_token,
        ))
        .layer(axum::middleware::from_fn(middleware::request_id))
}

/// The request body, or the 413/400 answer for one that could not be read.
pub(crate) fn read_body(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Failure> {
    body.map_err(|e| {
        st.executor.metrics.rejected("body");
        match e {
            BytesRejection::FailedToBufferBody(ref inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Failure::BodyTooLarge
            }
            other => Failure::BadBody(other.body_text()),
        }
    })
}

/// The caller the token middleware recorded (it always does, `anonymous` when auth
/// is off); its absence is a bug, never a reason to let a request through as anyone.
pub(crate) fn caller(ext: Option<axum::Extension<Caller>>) -> Result<Caller, Failure> {
    ext.map(|axum::Extension(c)| c).ok_or_else(|| {
        tracing::error!("a request without a caller");
        Failure::Internal
    })
}

/// 503 `not_ready` once shutdown has begun.
pub(crate) fn ready(st: &AppState) -> Result<(), Failure> {
    if st.ready.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(Failure::NotReady)
    }
}

/// Body → typed command: the shared front half of every execute endpoint.
pub(crate) fn command(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<ExecuteCommand, Failure> {
    command_with(st, body, validate)
}

/// [`command`] with another validation (a sandbox exec's).
pub(crate) fn command_with(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
    validate: fn(
        tvm_api::ExecuteRequest,
        &LanguageTable,
        &LimitBounds,
    ) -> Result<ExecuteCommand, ValidationError>,
) -> Result<ExecuteCommand, Failure> {
    let body = read_body(st, body)?;
    ready(st)?;
    parse_execute(&body)
        .and_then(|req| validate(req, st.languages, &st.bounds))
        .map_err(|e| {
            st.executor.metrics.rejected("invalid");
            Failure::Invalid(e)
        })
}

pub(crate) use crate::core::log_finished;

/// Run code in a fresh microVM and return its output.
#[utoipa::path(post, path = "/v1/execute", tag = "execution", request_body = tvm_api::ExecuteRequest,
    responses(
        (status = 200, description = "The sandbox ran (the program's own failure is still 200)", body = ExecuteResponse),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 408, description = "The body did not arrive within body_timeout_ms", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "At capacity; see Retry-After", body = ErrorBody),
        (status = 503, description = "Not ready or shutting down; see Retry-After", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn execute(
    State(st): State<Arc<AppState>>,
    who: Option<axum::Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let who = caller(who)?;
    let cmd = command(&st, body)?;
    let wait = st.executor.wait_for(None);
    let resp = st
        .executor
        .execute(&who, cmd, wait)
        .await
        .map_err(Failure::Core)?;
    log_finished(&resp);
    Ok(Json(resp).into_response())
}

/// How often an idle stream sends a comment; it is also how soon a vanished client
/// is noticed (a write fails) and its VM destroyed.
const SSE_KEEPALIVE: Duration = Duration::from_secs(1);

/// Server-Sent Events: `stdout`/`stderr` chunks as they happen, then one `exit`
/// whose data is the unary response without the output. Validation and admission
/// errors are ordinary JSON answers, before any event. A client that disconnects
/// cancels the job and its VM is destroyed at once.
#[utoipa::path(post, path = "/v1/execute/stream", tag = "execution", request_body = tvm_api::ExecuteRequest,
    responses(
        (status = 200, description = "Server-Sent Events: `stdout`/`stderr` (data: text), then `exit` (data: StreamExit JSON)", content_type = "text/event-stream", body = String),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 408, description = "The body did not arrive within body_timeout_ms", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "At capacity; see Retry-After", body = ErrorBody),
        (status = 503, description = "Not ready or shutting down", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn execute_stream(
    State(st): State<Arc<AppState>>,
    who: Option<axum::Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let who = caller(who)?;
    let cmd = command(&st, body)?;
    let admitted = st
        .executor
        .admit(&who, st.executor.wait_for(None))
        .await
        .map_err(Failure::Core)?;
    let runner = st.clone();
    Ok(sse(move |chunk_tx| async move {
        runner.executor.run(admitted, cmd, Some(chunk_tx)).await
    }))
}

/// Server-Sent Events of one job: `run` gets the live output channel and returns
/// the final response. A client that disconnects drops the channel's receiver
/// (what that does to the job is `run`'s choice).
pub(crate) fn sse<F, Fut>(run: F) -> Response
where
    F: FnOnce(mpsc::Sender<OutputChunk>) -> Fut,
    Fut: std::future::Future<Output = ExecuteResponse> + Send + 'static,
{
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<OutputChunk>(32);
    let (event_tx, event_rx) = mpsc::channel::<Event>(32);
    let span = tracing::Span::current();
    let job = tokio::spawn(run(chunk_tx).instrument(span));
    tokio::spawn(async move {
        let mut out = Utf8Chunker::default();
        let mut err = Utf8Chunker::default();
        let done = relay_live(&mut chunk_rx, &event_tx, |chunk| {
            let (name, text) = match chunk.stream {
                Stream::Stdout => ("stdout", out.push(&chunk.data)),
                Stream::Stderr => ("stderr", err.push(&chunk.data)),
            };
            (!text.is_empty()).then(|| Event::default().event(name).data(text))
        })
        .await;
        if !done {
            return; // client gone: dropping chunk_rx tells the job
        }
        for (name, rest) in [("stdout", out.finish()), ("stderr", err.finish())] {
            if !rest.is_empty() {
                let _ = event_tx.send(Event::default().event(name).data(rest)).await;
            }
        }
        if let Ok(resp) = job.await {
            log_finished(&resp);
            let exit = serde_json::to_string(&StreamExit::from(&resp)).unwrap_or_default();
            let _ = event_tx
                .send(Event::default().event("exit").data(exit))
                .await;
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(event_rx).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
        .into_response()
}

/// The languages this node runs.
#[utoipa::path(get, path = "/v1/languages", tag = "execution",
    responses((status = 200, body = Vec<LanguageInfo>), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(crate) async fn languages(State(st): State<Arc<AppState>>) -> Json<Vec<LanguageInfo>> {
    Json(
        st.languages
            .iter()
            .map(|l| LanguageInfo {
                name: l.name.clone(),
                version: st.version_of(l),
                file_name: l.file_name.clone(),
                aliases: l.aliases.clone(),
                extensions: l.extensions.clone(),
                compiled: l.compiles(),
            })
            .collect(),
    )
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, content_type = "text/plain", body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: 200 once the default class serves from its warm path (template frozen,
/// pool filled), 503 saying what it waits for before that and during shutdown.
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses((status = 200, content_type = "text/plain", body = String), (status = 503, body = ErrorBody)))]
pub(crate) async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let shutting_down = !st.ready.load(Ordering::Acquire);
    if !shutting_down && st.warm.load(Ordering::Acquire) {
        return "ready\n".into_response();
    }
    let (vcpus, memory_mb) = (st.bounds.vcpus.default as u32, st.bounds.memory_mb.default);
    let spec = st.executor.spec_for(vcpus, memory_mb);
    let warmth = st.executor.pool().and_then(|p| p.warmth(&spec));
    let class = format!("{vcpus} vCPU, {memory_mb} MiB");
    match crate::readiness::decide(shutting_down, warmth, &class) {
        crate::readiness::Readiness::Ready => {
            st.warm.store(true, Ordering::Release);
            "ready\n".into_response()
        }
        crate::readiness::Readiness::Waiting(why) => {
            tvm_http::error_response(StatusCode::SERVICE_UNAVAILABLE, "not_ready", why, Some(1))
        }
    }
}

/// Prometheus/OpenMetrics text.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, content_type = "application/openmetrics-text", body = String), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.executor.metrics.encode(),
    )
}
