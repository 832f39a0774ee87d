//! HTTP surface. Handlers parse, validate, and hand a typed command to the core;
//! every error becomes `{"error":{"code","message"}}` here and nowhere else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use tvm_api::{
    parse_execute, validate, ApiError, ErrorBody, LanguageInfo, LanguageTable, LimitBounds,
    ValidationError,
};

use crate::core::{CoreError, Executor};

#[derive(Debug)]
pub struct AppState {
    pub executor: Executor,
    pub languages: &'static LanguageTable,
    pub bounds: LimitBounds,
    pub ready: AtomicBool,
}

/// An error answer; the only place HTTP status codes for failures are chosen.
#[derive(Debug)]
pub enum Failure {
    Invalid(ValidationError),
    BodyTooLarge,
    BadBody(String),
    Core(CoreError),
    NotFound,
    NotReady,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, code, message, retry_after) = match self {
            Failure::Invalid(e) => (StatusCode::BAD_REQUEST, e.code(), e.to_string(), None),
            Failure::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is larger than the server accepts".to_string(),
                None,
            ),
            Failure::BadBody(m) => (StatusCode::BAD_REQUEST, "bad_body", m, None),
            Failure::Core(e @ CoreError::AtCapacity(_)) => (
                StatusCode::TOO_MANY_REQUESTS,
                "at_capacity",
                e.to_string(),
                Some("1"),
            ),
            Failure::Core(e @ CoreError::ShuttingDown) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
                Some("5"),
            ),
            Failure::NotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint".into(),
                None,
            ),
            Failure::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the service is not ready".into(),
                Some("5"),
            ),
        };
        let body = ErrorBody {
            error: ApiError {
                code: code.to_string(),
                message,
            },
        };
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(secs));
        }
        resp
    }
}

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/execute", post(execute))
        .route("/v1/languages", get(languages))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { Failure::NotFound })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn execute(
    State(st): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Failure> {
    let body = body.map_err(|e| {
        st.executor.metrics.rejected("body");
        match e {
            BytesRejection::FailedToBufferBody(ref inner)
                if inner.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Failure::BodyTooLarge
            }
            other => Failure::BadBody(other.body_text()),
        }
    })?;
    if !st.ready.load(Ordering::Acquire) {
        return Err(Failure::NotReady);
    }
    let cmd = parse_execute(&body)
        .and_then(|req| validate(req, st.languages, &st.bounds))
        .map_err(|e| {
            st.executor.metrics.rejected("invalid");
            Failure::Invalid(e)
        })?;
    let resp = st.executor.execute(cmd).await.map_err(Failure::Core)?;
    tracing::info!(
        id = %resp.id,
        status = ?resp.status,
        exit_code = ?resp.exit_code,
        total_ms = resp.timings_ms.total,
        vm_start_ms = resp.timings_ms.vm_start,
        "execution finished"
    );
    Ok(Json(resp).into_response())
}

async fn languages(State(st): State<Arc<AppState>>) -> Json<Vec<LanguageInfo>> {
    Json(
        st.languages
            .iter()
            .map(|l| LanguageInfo {
                name: l.name.clone(),
                version: l.version.clone(),
                file_name: l.file_name.clone(),
                aliases: l.aliases.clone(),
            })
            .collect(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<Arc<AppState>>) -> Result<&'static str, Failure> {
    if st.ready.load(Ordering::Acquire) {
        Ok("ready\n")
    } else {
        Err(Failure::NotReady)
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.executor.metrics.encode(),
    )
}
