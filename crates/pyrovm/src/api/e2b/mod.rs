//! The E2B door: E2B's control plane at `/e2b/` and its in-sandbox daemon (envd) at
//! `/e2b/envd/`, so the official E2B SDKs work unchanged against TVM with
//! `E2B_API_URL=http://HOST:PORT/e2b` and `E2B_SANDBOX_URL=http://HOST:PORT/e2b/envd`.
//! See docs/e2b.md for what is supported and why.

mod access;
pub mod connect;
pub mod control;
pub mod envd;
mod files;
pub mod pb;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::server::AppState;
use connect::{Code, ConnectError};

/// Every E2B route; anything else under `/e2b/` is a 404 in E2B's error shape.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .merge(control::routes())
        .merge(envd::routes())
        .merge(files::routes())
        .route("/e2b/envd/{*rest}", axum::routing::any(unknown))
        .route("/e2b/{*rest}", axum::routing::any(control::not_found))
}

/// Any other path under `/e2b/envd/`: a Connect `unimplemented`, naming it.
async fn unknown(uri: axum::http::Uri) -> Response {
    ConnectError::new(
        Code::Unimplemented,
        format!(
            "{} is not part of TVM's envd (see docs/e2b.md for what is)",
            uri.path().trim_start_matches("/e2b/envd")
        ),
    )
    .into_response()
}
