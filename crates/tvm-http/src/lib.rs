//! HTTP plumbing shared by `pyrovm` (the node service) and `pyroshell` (the gateway),
//! kept free of anything Linux-specific so the gateway builds on macOS and Windows:
//! the connection loop and its deadlines ([`listen`]), request ids, bearer tokens and
//! the body deadline ([`middleware`]), and the one JSON error shape ([`error_response`]).

pub mod listen;
pub mod middleware;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tvm_api::{ApiError, ErrorBody};

/// The API's error answer: `{"error":{"code","message"}}` with `status`, a
/// `Retry-After` when given, and `WWW-Authenticate: Bearer` on a 401.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    retry_after_secs: Option<u64>,
) -> Response {
    let body = ErrorBody {
        error: ApiError {
            code: code.to_string(),
            message: message.into(),
        },
    };
    let mut resp = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = retry_after_secs {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// Body-reading failures shared by every server that buffers a body within a deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Timeout(std::time::Duration),
    Unreadable(String),
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        match self {
            BodyError::TooLarge => error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is larger than the server accepts",
                None,
            ),
            BodyError::Timeout(d) => error_response(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    d.as_millis()
                ),
                None,
            ),
            BodyError::Unreadable(m) => {
                error_response(StatusCode::BAD_REQUEST, "bad_body", m, None)
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C on Windows): the start of a graceful drain.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// gRPC status codes, for [`grpc_error`].
pub use tonic::Code as GrpcCode;

/// A gRPC error answer (HTTP 200 with `grpc-status`/`grpc-message`), for requests
/// whose `content-type` is `application/grpc*`: gRPC clients ignore HTTP statuses.
pub fn grpc_error(code: GrpcCode, message: impl Into<String>) -> Response {
    tonic::Status::new(code, message).into_http::<axum::body::Body>()
}

/// Whether a request is a gRPC call (its errors must be gRPC-shaped).
pub fn is_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Logs to stderr, filtered by `TVM_LOG` (default `info`), as text or JSON: the
/// binaries' shared start-up.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TVM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape_and_headers() {
        let r = error_response(StatusCode::SERVICE_UNAVAILABLE, "x", "y", Some(7));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
        let r = error_response(StatusCode::UNAUTHORIZED, "unauthorized", "no", None);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }
}
