//! `/v1/executions`: async executions, an HTTP adapter over
//! [`crate::executions::Executions`]. Submit answers 202 at once; the result is
//! read (or long-polled) later by the same token.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use tvm_api::{
    validate_batch, BatchAccepted, ErrorBody, ExecutionList, ExecutionOutcome, ExecutionState,
};
use tvm_http::middleware::Caller;

use crate::server::{caller, command, read_body, ready, AppState, Failure};

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/executions", post(submit).get(list))
        .route("/v1/executions/batch", post(submit_batch))
        .route("/v1/executions/{id}", get(result).delete(cancel))
}

/// Submit an execution (the `/v1/execute` body) to run when a slot is free.
#[utoipa::path(post, path = "/v1/executions", tag = "executions", request_body = tvm_api::ExecuteRequest,
    responses(
        (status = 202, description = "Accepted and queued; read it at `Location`", body = ExecutionState,
            headers(("location" = String, description = "/v1/executions/{id}"))),
        (status = 400, description = "Invalid request (nothing was submitted)", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "The node holds as many async executions (or result bytes) as it may; see Retry-After", body = ErrorBody),
        (status = 503, description = "Not ready or shutting down", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn submit(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let who = caller(who)?;
    let cmd = command(&st, body)?;
    let mut accepted = st
        .executions
        .submit(&who, vec![cmd])
        .map_err(Failure::Async)?;
    let state = accepted.remove(0);
    let location = format!("/v1/executions/{}", state.id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(state),
    )
        .into_response())
}

/// Submit several executions at once: all are accepted, or none.
#[utoipa::path(post, path = "/v1/executions/batch", tag = "executions", request_body = tvm_api::BatchRequest,
    responses(
        (status = 202, description = "All accepted and queued, in order", body = BatchAccepted),
        (status = 400, description = "A request is invalid (named by its index), or the batch is empty or too large; nothing was submitted", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "The node cannot hold them all; see Retry-After", body = ErrorBody),
        (status = 503, description = "Not ready or shutting down", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn submit_batch(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let who = caller(who)?;
    let body = read_body(&st, body)?;
    ready(&st)?;
    let cmds = validate_batch(
        &body,
        st.executions.settings().max_batch,
        st.languages,
        &st.bounds,
    )
    .map_err(|e| {
        st.executor.metrics.rejected("invalid");
        Failure::Invalid(e)
    })?;
    let executions = st.executions.submit(&who, cmds).map_err(Failure::Async)?;
    Ok((StatusCode::ACCEPTED, Json(BatchAccepted { executions })).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResultQuery {
    /// Hold the request until the execution finishes (at most `timeout_ms`).
    #[serde(default)]
    wait: bool,
    /// With `wait`: how long to hold, in ms (default and maximum: the node's `max_wait_ms`).
    timeout_ms: Option<u64>,
}

/// The result once the execution ran (an ExecuteResponse), else its state.
#[utoipa::path(get, path = "/v1/executions/{id}", tag = "executions",
    params(("id" = String, Path, description = "Execution id"), ResultQuery),
    responses(
        (status = 200, description = "The ExecuteResponse once it ran; before that (or if it never will) `{id, status: queued|running|rejected, age_ms, error?}`", body = ExecutionOutcome),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such execution: never submitted, deleted, expired, or another token's", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn result(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
    query: Result<Query<ResultQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ExecutionOutcome>, Failure> {
    let who = caller(who)?;
    let Query(q) = query.map_err(|e| {
        Failure::Invalid(tvm_api::ValidationError::InvalidJson(format!(
            "query: {}",
            e.body_text()
        )))
    })?;
    let max = st.executions.settings().max_wait;
    let wait = q
        .wait
        .then(|| q.timeout_ms.map_or(max, Duration::from_millis).min(max));
    let outcome = st
        .executions
        .get(&who, &id, wait)
        .await
        .map_err(Failure::Async)?;
    Ok(Json(outcome))
}

/// Cancel an execution (a queued one leaves the queue, a running one's VM is
/// destroyed) and forget it; or forget a finished result.
#[utoipa::path(delete, path = "/v1/executions/{id}", tag = "executions",
    params(("id" = String, Path, description = "Execution id")),
    responses(
        (status = 204, description = "Cancelled or forgotten"),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 404, description = "No such execution (or another token's)", body = ErrorBody),
    ), security((), ("bearer" = [])))]
pub(crate) async fn cancel(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<StatusCode, Failure> {
    let who = caller(who)?;
    st.executions.delete(&who, &id).map_err(Failure::Async)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's async executions on this node, oldest first.
#[utoipa::path(get, path = "/v1/executions", tag = "executions",
    responses((status = 200, body = ExecutionList), (status = 401, body = ErrorBody)),
    security((), ("bearer" = [])))]
pub(crate) async fn list(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
) -> Result<Json<ExecutionList>, Failure> {
    let who = caller(who)?;
    Ok(Json(ExecutionList {
        executions: st.executions.list(&who),
    }))
}
