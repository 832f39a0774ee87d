//! Cross-cutting HTTP concerns: request ids, bearer-token auth, the body deadline.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use crate::{error_response, BodyError};
use axum::http::StatusCode;

pub const REQUEST_ID: &str = "x-request-id";

/// Settings of [`body_deadline`].
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline {
    pub timeout: std::time::Duration,
    pub max_bytes: usize,
}

/// Reads the whole request body within a total deadline (a client trickling a
/// byte at a time cannot hold a worker), answering 408 when it does not arrive
/// and 413 when it is too large; the handler then gets the buffered body.
pub async fn body_deadline(State(d): State<BodyDeadline>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(d.timeout, axum::body::to_bytes(body, d.max_bytes)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            let mut too_large = false;
            while let Some(c) = cause {
                too_large |= c.is::<http_body_util::LengthLimitError>();
                cause = c.source();
            }
            if too_large {
                BodyError::TooLarge.into_response()
            } else {
                BodyError::Unreadable(format!("cannot read the request body: {e}")).into_response()
            }
        }
        Err(_) => BodyError::Timeout(d.timeout).into_response(),
    }
}

/// A client-supplied id is kept when it is 1–128 of `[A-Za-z0-9._-]`.
pub fn well_formed_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The id of the request being handled (set by [`request_id`]).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request an id (the client's if well-formed), logs within a span that
/// carries it, and returns it in `x-request-id`.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| well_formed_request_id(v))
        .map(str::to_string)
        .unwrap_or_else(|| ulid::Ulid::new().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// The accepted bearer tokens; empty means auth is off.
#[derive(Debug, Default)]
pub struct Tokens(Vec<Vec<u8>>);

impl Tokens {
    pub fn new(tokens: Vec<String>) -> Self {
        Self(tokens.into_iter().map(String::into_bytes).collect())
    }

    pub fn enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Compares against every token in constant time per token (no early exit).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0u8);
        for t in &self.0 {
            ok |= t.as_slice().ct_eq(presented);
        }
        bool::from(ok)
    }
}

/// Reads tokens: one per line from a file (blank lines and `#` comments skipped), or
/// separated by commas/whitespace in `TVM_TOKENS`.
pub fn parse_tokens(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(|l| l.split([',', ' ', '\t']))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// The tokens in force: those in `file` (one per line) plus `TVM_TOKENS`.
pub fn load_tokens(file: Option<&std::path::Path>) -> std::io::Result<Vec<String>> {
    let mut tokens = Vec::new();
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot read token file {}: {e}", f.display()),
            )
        })?;
        tokens.extend(parse_tokens(&text));
    }
    if let Ok(env) = std::env::var("TVM_TOKENS") {
        tokens.extend(parse_tokens(&env));
    }
    Ok(tokens)
}

/// Paths open without a token (probes, and the gRPC health service).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz") || path.starts_with("/grpc.health.v1.Health/")
}

fn unauthorized(req: &Request, message: &'static str) -> Response {
    if crate::is_grpc(req.headers()) {
        return crate::grpc_error(crate::GrpcCode::Unauthenticated, message);
    }
    error_response(StatusCode::UNAUTHORIZED, "unauthorized", message, None)
}

/// Who is calling, for resources a caller owns (sandboxes): a digest of the bearer
/// token that was accepted (never the token itself), or `anonymous` when auth is
/// off. Put into every request's extensions by [`require_token`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller(String);

impl Caller {
    /// The caller when auth is off: everyone is the same caller.
    pub fn anonymous() -> Self {
        Self("anonymous".into())
    }

    /// The caller presenting this (accepted) token.
    pub fn from_token(token: &[u8]) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(token);
        Self(format!("token:{}", hex::encode(&digest[..12])))
    }

    /// A stable, non-secret name of the caller (safe to log and to compare).
    pub fn id(&self) -> &str {
        &self.0
    }
}

/// Where E2B's in-sandbox daemon (envd) is served: those requests carry the
/// sandbox's own access token (`X-Access-Token`), which the door checks itself.
pub const E2B_ENVD_PREFIX: &str = "/e2b/envd/";
/// Where E2B's control plane is served: its SDKs send the token as `X-API-Key`.
pub const E2B_PREFIX: &str = "/e2b/";

/// The E2B control plane's error body (`{"code": <status>, "message": ...}`): its
/// SDKs read `code` from every error.
fn e2b_unauthorized(message: &'static str) -> Response {
    // `message` is one of our fixed sentences: nothing in it needs escaping.
    let body = format!(r#"{{"code":401,"message":"{message}"}}"#);
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// `Authorization: Bearer <token>` on every route but the probes, when tokens are set
/// (`X-API-Key: <token>` on the E2B control plane; E2B's envd is checked by its door).
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !tokens.enabled() {
        req.extensions_mut().insert(Caller::anonymous());
        return next.run(req).await;
    }
    let path = req.uri().path();
    if is_public(path) || path.starts_with(E2B_ENVD_PREFIX) {
        return next.run(req).await;
    }
    let e2b = path.starts_with(E2B_PREFIX);
    let presented = {
        let header_str = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let bearer = header_str(header::AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix("Bearer ").map(str::to_string));
        bearer
            .or_else(|| if e2b { header_str("x-api-key") } else { None })
            .map(|t| t.trim().to_string())
    };
    let presented = presented.as_deref();
    match presented {
        Some(t) if tokens.accepts(t.as_bytes()) => {
            let caller = Caller::from_token(t.as_bytes());
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Some(_) if e2b => e2b_unauthorized("the API key is not valid"),
        None if e2b => e2b_unauthorized("an X-API-Key header with a TVM token is required"),
        Some(_) => unauthorized(&req, "the bearer token is not valid"),
        None => unauthorized(&req, "an Authorization: Bearer token is required"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_shape() {
        assert!(well_formed_request_id("abc-123_x.y"));
        assert!(!well_formed_request_id(""));
        assert!(!well_formed_request_id("has space"));
        assert!(!well_formed_request_id(&"a".repeat(129)));
        assert!(!well_formed_request_id("new\nline"));
    }

    #[test]
    fn tokens_match_exactly() {
        let t = Tokens::new(vec!["alpha".into(), "beta-2".into()]);
        assert!(t.accepts(b"alpha"));
        assert!(t.accepts(b"beta-2"));
        assert!(!t.accepts(b"alph"));
        assert!(!t.accepts(b"alphaa"));
        assert!(!t.accepts(b""));
        assert!(!Tokens::default().enabled());
    }

    #[test]
    fn callers_are_told_apart_without_the_token() {
        let a = Caller::from_token(b"alpha");
        assert_eq!(a, Caller::from_token(b"alpha"));
        assert_ne!(a, Caller::from_token(b"beta"));
        assert_ne!(a, Caller::anonymous());
        assert!(!a.id().contains("alpha"));
    }

    #[test]
    fn token_file_parsing() {
        assert_eq!(parse_tokens("# comment\n\nabc\n  def  \n"), ["abc", "def"]);
        assert_eq!(parse_tokens("a,b c"), ["a", "b", "c"]);
    }
}
