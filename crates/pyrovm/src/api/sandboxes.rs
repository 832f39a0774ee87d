//! `/v1/sandboxes`: HTTP adapter over [`crate::sandbox::Sandboxes`]. Handlers parse
//! and validate, then hand a typed command to the registry; errors become the one
//! error shape through [`Failure`].

use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use tvm_api::{
    parse_create_sandbox, validate_in_sandbox, validate_sandbox, CreateSandboxRequest, ErrorBody,
    ExecuteResponse, FileListing, FileWritten, SandboxInfo, SandboxList,
};
use tvm_http::middleware::Caller;
use tvm_proto::FileErrorKind;

use crate::sandbox::SandboxError;
use crate::server::{command_with, log_finished, read_body, ready, sse, AppState, Failure};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sandboxes", post(create).get(list))
        .route("/v1/sandboxes/{id}", get(info).delete(delete))
        .route("/v1/sandboxes/{id}/execute", post(execute))
        .route("/v1/sandboxes/{id}/execute/stream", post(execute_stream))
        .route("/v1/sandboxes/{id}/files", get(list_root))
        .route("/v1/sandboxes/{id}/files/", get(list_root))
        .route(
            "/v1/sandboxes/{id}/files/{*path}",
            get(read_file).put(write_file),
        )
}

/// HTTP status, error code and `Retry-After` of each sandbox refusal.
pub(crate) fn status_of(e: &SandboxError) -> (StatusCode, &'static str, Option<u64>) {
    match e {
        SandboxError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
        SandboxError::Ended { .. } => (StatusCode::GONE, "sandbox_ended", None),
        SandboxError::TooMany { .. } => (StatusCode::TOO_MANY_REQUESTS, "sandbox_limit", Some(5)),
        SandboxError::Busy { .. } => (StatusCode::CONFLICT, "sandbox_busy", Some(1)),
        // Mapped by `Failure::Core` before it gets here.
        SandboxError::Core(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", Some(5)),
        SandboxError::File { kind, .. } => match kind {
            FileErrorKind::NotFound => (StatusCode::NOT_FOUND, "file_not_found", None),
            FileErrorKind::InvalidPath => (StatusCode::BAD_REQUEST, "invalid_path", None),
            FileErrorKind::WrongType => (StatusCode::BAD_REQUEST, "wrong_file_type", None),
            FileErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", None),
            FileErrorKind::Io => (StatusCode::BAD_REQUEST, "file_error", None),
            FileErrorKind::Exists => (StatusCode::CONFLICT, "file_exists", None),
            FileErrorKind::Denied => (StatusCode::FORBIDDEN, "permission_denied", None),
        },
        SandboxError::NoProcess(_) => (StatusCode::NOT_FOUND, "no_such_process", None),
        SandboxError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_argument", None),
        SandboxError::UploadTooLarge { .. } => {
            (StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", None)
        }
        SandboxError::StartFailed(_) => (StatusCode::SERVICE_UNAVAILABLE, "sandbox_error", Some(1)),
        // A bug: the only 500.
        SandboxError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
    }
}

fn caller(ext: Option<Extension<Caller>>) -> Result<Caller, Failure> {
    crate::server::caller(ext)
}

/// Create a sandbox: one microVM kept for a session, in memory only.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "Created; its VM is ready", body = SandboxInfo),
        (status = 400, description = "Invalid request", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "At capacity, or the node's or this token's sandbox cap is reached; see Retry-After", body = ErrorBody),
        (status = 503, description = "Not ready, shutting down, or the VM failed to start; see Retry-After", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn create(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let body = read_body(&st, body)?;
    ready(&st)?;
    let cmd = parse_create_sandbox(&body)
        .and_then(|req| validate_sandbox(req, &st.bounds, &st.sandboxes.settings().bounds))
        .map_err(|e| {
            st.executor.metrics.rejected("invalid");
            Failure::Invalid(e)
        })?;
    let info = st
        .sandboxes
        .create(&st.executor, &caller(who)?, cmd)
        .await
        .map_err(Failure::Sandbox)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// The caller's live sandboxes, oldest first.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    responses((status = 200, body = SandboxList), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<SandboxList>, Failure> {
    let forwarded = headers.contains_key(crate::cluster::FORWARDED);
    let list = crate::cluster::list_sandboxes(
        &st,
        &caller(who)?,
        headers.get(header::AUTHORIZATION),
        forwarded,
    )
    .await;
    Ok(Json(list))
}

/// One of the caller's sandboxes.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, body = SandboxInfo),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such sandbox (or another token's)", body = ErrorBody),
        (status = 410, description = "The sandbox has ended (TTL, idle, its VM died, shutdown)", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn info(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<SandboxInfo>, Failure> {
    st.sandboxes
        .info(&st.executor, &caller(who)?, &id)
        .map(Json)
        .map_err(Failure::Sandbox)
}

/// End a sandbox now: its VM is destroyed before this answers.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 204, description = "Ended; its VM is gone"),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such sandbox (or another token's)", body = ErrorBody),
        (status = 410, description = "The sandbox had already ended", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn delete(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<StatusCode, Failure> {
    st.sandboxes
        .delete(&caller(who)?, &id)
        .await
        .map_err(Failure::Sandbox)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run code in the sandbox (the body and response of `/v1/execute`). The work dir
/// and processes left in the background persist; requests on one sandbox run one
/// at a time, and one that cannot start within `busy_timeout_ms` gets 409.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execute", tag = "sandboxes",
    request_body = tvm_api::ExecuteRequest,
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The code ran (its own failure is still 200)", body = ExecuteResponse),
        (status = 400, description = "Invalid request (limits.memory_mb, vcpus and max_processes belong to the sandbox)", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such sandbox (or another token's)", body = ErrorBody),
        (status = 409, description = "The sandbox stayed busy with another request; see Retry-After", body = ErrorBody),
        (status = 410, description = "The sandbox has ended", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "At capacity; see Retry-After", body = ErrorBody),
        (status = 503, description = "Not ready or shutting down; see Retry-After", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn execute(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ExecuteResponse>, Failure> {
    let cmd = command_with(&st, body, validate_in_sandbox)?;
    let resp = st
        .sandboxes
        .execute(&st.executor, &caller(who)?, &id, cmd)
        .await
        .map_err(Failure::Sandbox)?;
    log_finished(&resp);
    Ok(Json(resp))
}

/// As `/v1/execute/stream`, in the sandbox. A client that disconnects does not end
/// the sandbox: the exec runs on to its own end, its output dropped.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/execute/stream", tag = "sandboxes",
    request_body = tvm_api::ExecuteRequest,
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Server-Sent Events: `stdout`/`stderr` (data: text), then `exit` (data: StreamExit JSON)", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 410, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn execute_stream(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let cmd = command_with(&st, body, validate_in_sandbox)?;
    let prepared = st
        .sandboxes
        .prepare_exec(&st.executor, &caller(who)?, &id, &cmd)
        .await
        .map_err(Failure::Sandbox)?;
    let runner = st.clone();
    Ok(sse(move |chunks| async move {
        runner
            .sandboxes
            .run_exec(&runner.executor, prepared, cmd, Some(chunks))
            .await
    }))
}

/// `?list` on a file path lists it as a directory.
#[derive(Debug, Deserialize)]
pub(crate) struct FileQuery {
    list: Option<String>,
}

/// Download a file (raw bytes), or list a directory: a path ending in `/`, or `?list`.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/{path}", tag = "sandboxes",
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Path, description = "Relative to the work dir; a trailing `/` (or `?list`) lists a directory"),
        ("list" = Option<String>, Query, description = "List the path as a directory"),
    ),
    responses(
        (status = 200, description = "The file's bytes (`application/octet-stream`), or a listing (JSON)", content(
            (Vec<u8> = "application/octet-stream"),
            (FileListing = "application/json"),
        )),
        (status = 400, description = "The path leaves the work dir, or is not a file (directory)", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such sandbox, or no such file", body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 410, body = ErrorBody),
        (status = 413, description = "The file is larger than max_file_bytes", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn read_file(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path((id, path)): Path<(String, String)>,
    Query(q): Query<FileQuery>,
) -> Result<Response, Failure> {
    let who = caller(who)?;
    if q.list.is_some() || path.ends_with('/') {
        let dir = path.trim_end_matches('/');
        return st
            .sandboxes
            .list_dir(&who, &id, dir)
            .await
            .map(|l| Json(l).into_response())
            .map_err(Failure::Sandbox);
    }
    let bytes = st
        .sandboxes
        .read_file(&who, &id, &path)
        .await
        .map_err(Failure::Sandbox)?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// List the work dir itself.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, body = FileListing),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 410, body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn list_root(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<FileListing>, Failure> {
    st.sandboxes
        .list_dir(&caller(who)?, &id, "")
        .await
        .map(Json)
        .map_err(Failure::Sandbox)
}

/// Upload a file: the raw body, any bytes, at most `max_file_bytes`. Parents are
/// made; an existing file is replaced atomically.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/{path}", tag = "sandboxes",
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    params(
        ("id" = String, Path, description = "Sandbox id"),
        ("path" = String, Path, description = "Relative to the work dir"),
    ),
    responses(
        (status = 200, description = "Written", body = FileWritten),
        (status = 400, description = "The path leaves the work dir, or a directory is in the way", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody),
        (status = 410, body = ErrorBody),
        (status = 413, description = "Larger than max_file_bytes, or the work dir is full", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn write_file(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path((id, path)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FileWritten>, Failure> {
    let body = read_body(&st, body)?;
    st.sandboxes
        .write_file(&caller(who)?, &id, path, body.to_vec())
        .await
        .map(Json)
        .map_err(Failure::Sandbox)
}
