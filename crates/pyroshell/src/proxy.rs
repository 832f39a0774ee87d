//! The reverse proxy of forward and lima modes. Every path but the gateway's own
//! probes goes upstream unchanged: JSON, SSE (streamed as it arrives), gRPC
//! (HTTP/2 end to end, trailers included) and the Piston endpoints.
//!
//! A request is sent again only when it provably never reached the upstream (see
//! [`crate::retry`]); anything that may have been written is answered 502 and never
//! repeated, because an execution must not run twice behind the client's back.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode, Version};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tvm_http::middleware::{self, BodyDeadline, RequestId, Tokens};
use tvm_http::{error_response, grpc_error, is_grpc, GrpcCode};

use crate::headers::strip_hop_by_hop;
use crate::retry::{Attempt, RetryPolicy, RetrySettings};
use crate::upstream::{UpstreamState, UpstreamUrl};

/// HTTP/1.1 and HTTP/2 (prior knowledge, for gRPC) clients with pooled connections.
#[derive(Debug, Clone)]
pub struct Clients {
    h1: Client<HttpConnector, Body>,
    h2: Client<HttpConnector, Body>,
}

/// Why an attempt got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Failed(String, Attempt),
    #[error("no response headers within {0:?}")]
    Timeout(Duration),
}

impl Clients {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(connect_timeout));
        conn.set_nodelay(true);
        conn.enforce_http(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(conn.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .http2_keep_alive_timeout(Duration::from_secs(20))
            .build(conn);
        Self { h1, h2 }
    }

    /// One attempt. hyper's own pool already re-sends a request it got back unsent
    /// from a pooled connection that closed first; what reaches us is classified here.
    pub async fn send(
        &self,
        mut req: hyper::Request<Body>,
        timeout: Duration,
    ) -> Result<hyper::Response<Incoming>, SendError> {
        let fut = if req.version() == Version::HTTP_2 {
            self.h2.request(req)
        } else {
            *req.version_mut() = Version::HTTP_11;
            self.h1.request(req)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                // Only a failed connect proves no byte was written.
                let sent = if e.is_connect() {
                    Attempt::NotSent
                } else {
                    Attempt::MaybeSent
                };
                Err(SendError::Failed(error_chain(&e), sent))
            }
            Err(_) => Err(SendError::Timeout(timeout)),
        }
    }

    /// `GET uri` over HTTP/1.1 (with `auth` as `Authorization`); the status code (for probes).
    pub async fn get(
        &self,
        uri: axum::http::Uri,
        auth: Option<&HeaderValue>,
        timeout: Duration,
    ) -> Result<u16, SendError> {
        let mut req = hyper::Request::get(uri)
            .body(Body::empty())
            .map_err(|e| SendError::Failed(e.to_string(), Attempt::NotSent))?;
        if let Some(a) = auth {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let resp = self.send(req, timeout).await?;
        Ok(resp.status().as_u16())
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

/// The gateway's own metrics (served at `/pyroshell/metrics`; `/metrics` is the upstream's).
#[derive(Debug)]
struct GatewayMetrics {
    registry: Registry,
    requests: Family<Outcome, Counter>,
    retries: Counter,
    upstream_ready: Gauge,
}

impl GatewayMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("pyroshell");
        let requests = Family::<Outcome, Counter>::default();
        registry.register(
            "requests",
            "Requests by outcome: forwarded (any upstream status), unavailable (503: never reached the upstream), upstream_failed (502), upstream_timeout (504)",
            requests.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "retries",
            "Attempts repeated because the earlier one provably never reached the upstream",
            retries.clone(),
        );
        let upstream_ready = Gauge::default();
        registry.register(
            "upstream_ready",
            "1 when the upstream's readiness probe passed at the last look",
            upstream_ready.clone(),
        );
        Self {
            registry,
            requests,
            retries,
            upstream_ready,
        }
    }

    fn count(&self, outcome: &'static str) {
        self.requests.get_or_create(&Outcome { outcome }).inc();
    }
}

/// Everything the gateway needs.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub upstream: UpstreamUrl,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub retry: RetrySettings,
    /// Sent upstream as `Authorization: Bearer …` instead of the client's header.
    pub upstream_token: Option<String>,
    /// Tokens checked here, before anything goes upstream.
    pub tokens: Vec<String>,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
}

#[derive(Debug)]
struct Inner {
    clients: Clients,
    url: UpstreamUrl,
    policy: RetryPolicy,
    response_timeout: Duration,
    upstream_auth: Option<HeaderValue>,
    state: watch::Receiver<UpstreamState>,
    /// Forward mode marks the upstream down as soon as a connect fails.
    report: Option<Arc<watch::Sender<UpstreamState>>>,
    metrics: GatewayMetrics,
}

/// The proxying gateway.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    tokens: Arc<Tokens>,
    body: BodyDeadline,
}

impl Gateway {
    /// `state` says whether the upstream can take requests; `report` (forward mode)
    /// lets failed connects mark it down before the next probe.
    pub fn new(
        opts: GatewayOptions,
        clients: Clients,
        state: watch::Receiver<UpstreamState>,
        report: Option<Arc<watch::Sender<UpstreamState>>>,
    ) -> Result<Self, header::InvalidHeaderValue> {
        let upstream_auth = opts.upstream_token.as_deref().map(bearer).transpose()?;
        Ok(Self {
            inner: Arc::new(Inner {
                clients,
                url: opts.upstream,
                policy: RetryPolicy::new(opts.retry),
                response_timeout: opts.response_timeout,
                upstream_auth,
                state,
                report,
                metrics: GatewayMetrics::new(),
            }),
            tokens: Arc::new(Tokens::new(opts.tokens)),
            body: BodyDeadline {
                timeout: opts.body_timeout,
                max_bytes: opts.max_body_bytes,
            },
        })
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/pyroshell/metrics", get(metrics))
            .fallback(proxy)
            // The whole body arrives within the deadline and the size limit before
            // anything is sent upstream: a slow client cannot hold an upstream stream,
            // and a retry can send the same bytes again.
            .layer(axum::middleware::from_fn_with_state(
                self.body,
                buffer_unless_grpc,
            ))
            .with_state(self.inner.clone())
            .layer(axum::middleware::from_fn_with_state(
                self.tokens.clone(),
                middleware::require_token,
            ))
            .layer(axum::middleware::from_fn(middleware::request_id))
    }
}

/// HTTP bodies are buffered within the body deadline and size limit before anything
/// goes upstream (a slow client holds no upstream connection, and a retry can send the
/// same bytes). gRPC bodies stream through unbuffered: client-streaming and
/// bidirectional calls (server reflection) send before they finish.
async fn buffer_unless_grpc(State(d): State<BodyDeadline>, req: Request, next: Next) -> Response {
    if is_grpc(req.headers()) {
        next.run(req).await
    } else {
        middleware::body_deadline(State(d), req, next).await
    }
}

/// `Bearer <token>` as a sensitive header value (never logged by hyper).
pub fn bearer(token: &str) -> Result<HeaderValue, header::InvalidHeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))?;
    v.set_sensitive(true);
    Ok(v)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the upstream is: 503 with `Retry-After` otherwise.
async fn readyz(State(g): State<Arc<Inner>>) -> Response {
    let state = g.state.borrow().clone();
    match state {
        UpstreamState::Up => "ready\n".into_response(),
        UpstreamState::Down {
            reason,
            retry_after_secs,
            ..
        } => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            format!("upstream {} is not ready: {reason}", g.url),
            Some(retry_after_secs),
        ),
    }
}

async fn metrics(State(g): State<Arc<Inner>>) -> Response {
    let up = matches!(*g.state.borrow(), UpstreamState::Up);
    g.metrics.upstream_ready.set(i64::from(up));
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &g.metrics.registry).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// How a request that got no upstream response is answered.
enum Refusal {
    Unavailable { reason: String, retry_after: u64 },
    Failed(String),
    Timeout(Duration),
}

impl Refusal {
    fn respond(self, grpc: bool, url: &UpstreamUrl) -> Response {
        match (self, grpc) {
            (Refusal::Unavailable { reason, retry_after }, false) => error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_unavailable",
                format!("upstream {url} cannot take requests now ({reason}); retry later"),
                Some(retry_after),
            ),
            (Refusal::Unavailable { reason, .. }, true) => grpc_error(
                GrpcCode::Unavailable,
                format!("upstream {url} cannot take requests now ({reason})"),
            ),
            (Refusal::Failed(e), false) => error_response(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                format!("the request reached upstream {url} but no answer came back ({e}); it was not retried"),
                None,
            ),
            (Refusal::Failed(e), true) => grpc_error(
                GrpcCode::Unknown,
                format!("the request reached upstream {url} but no answer came back ({e})"),
            ),
            (Refusal::Timeout(d), false) => error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("upstream {url} sent no answer within {} ms", d.as_millis()),
                None,
            ),
            (Refusal::Timeout(d), true) => grpc_error(
                GrpcCode::DeadlineExceeded,
                format!("upstream {url} sent no answer within {} ms", d.as_millis()),
            ),
        }
    }
}

async fn proxy(State(g): State<Arc<Inner>>, req: Request) -> Response {
    let grpc = is_grpc(req.headers());
    let state = g.state.borrow().clone();
    if let UpstreamState::Down {
        reason,
        retry_after_secs,
        gate: true,
    } = state
    {
        g.metrics.count("unavailable");
        return Refusal::Unavailable {
            reason,
            retry_after: retry_after_secs,
        }
        .respond(grpc, &g.url);
    }
    let (mut parts, body) = req.into_parts();
    let body = if grpc {
        Replay::Stream(ReplayableBody::slot(body))
    } else {
        // Already buffered by the body deadline.
        match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => Replay::Bytes(b),
            Err(e) => return tvm_http::BodyError::Unreadable(e.to_string()).into_response(),
        }
    };
    let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        parts.headers.insert(middleware::REQUEST_ID, id);
    }
    if let Some(auth) = &g.upstream_auth {
        parts.headers.insert(header::AUTHORIZATION, auth.clone());
    }
    let uri = g.url.join(parts.uri.path_and_query());
    g.policy.record_request();
    let mut attempt = 1;
    loop {
        let Some(out_body) = body.attempt() else {
            // A streamed body already went (partly) upstream: never again.
            g.metrics.count("upstream_failed");
            return Refusal::Failed("the request body was already sent".into())
                .respond(grpc, &g.url);
        };
        let mut out = hyper::Request::new(out_body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri.clone();
        *out.version_mut() = parts.version;
        *out.headers_mut() = parts.headers.clone();
        let refusal = match g.clients.send(out, g.response_timeout).await {
            Ok(resp) => {
                g.metrics.count("forwarded");
                let (mut rparts, rbody) = resp.into_parts();
                strip_hop_by_hop(&mut rparts.headers);
                return Response::from_parts(rparts, Body::new(rbody));
            }
            Err(SendError::Failed(e, outcome)) => {
                // A streamed body that hyper began to read was sent, whatever the error.
                let outcome = if body.touched() {
                    Attempt::MaybeSent
                } else {
                    outcome
                };
                if let Some(delay) = g.policy.next_delay(attempt, outcome) {
                    tracing::debug!(attempt, error = %e, ?delay, "upstream not reached; retrying");
                    g.metrics.retries.inc();
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    continue;
                }
                if outcome == Attempt::NotSent {
                    tracing::warn!(attempts = attempt, error = %e, "upstream not reachable");
                    let retry_after = match &*g.state.borrow() {
                        UpstreamState::Down {
                            retry_after_secs, ..
                        } => *retry_after_secs,
                        UpstreamState::Up => 1,
                    };
                    if let Some(report) = &g.report {
                        report.send_if_modified(|cur| {
                            let was_up = *cur == UpstreamState::Up;
                            if was_up {
                                *cur = UpstreamState::Down {
                                    reason: format!("connect failed: {e}"),
                                    retry_after_secs: retry_after,
                                    gate: false,
                                };
                            }
                            was_up
                        });
                    }
                    g.metrics.count("unavailable");
                    Refusal::Unavailable {
                        reason: e,
                        retry_after,
                    }
                } else {
                    tracing::warn!(error = %e, "upstream failed after the request was sent; not retried");
                    g.metrics.count("upstream_failed");
                    Refusal::Failed(e)
                }
            }
            Err(SendError::Timeout(d)) => {
                g.metrics.count("upstream_timeout");
                Refusal::Timeout(d)
            }
        };
        return refusal.respond(grpc, &g.url);
    }
}

/// A request body, ready for another attempt.
enum Replay {
    /// Buffered: every attempt sends the same bytes.
    Bytes(Bytes),
    /// Streamed (gRPC): an attempt may have it only if no earlier one read from it.
    Stream(Arc<std::sync::Mutex<Option<Body>>>),
}

impl Replay {
    fn attempt(&self) -> Option<Body> {
        match self {
            Replay::Bytes(b) => Some(Body::from(b.clone())),
            Replay::Stream(slot) => {
                let untouched = slot.lock().map(|s| s.is_some()).unwrap_or(false);
                untouched.then(|| {
                    Body::new(ReplayableBody {
                        slot: slot.clone(),
                        inner: None,
                    })
                })
            }
        }
    }

    /// Whether an attempt has read (part of) a streamed body.
    fn touched(&self) -> bool {
        match self {
            Replay::Bytes(_) => false,
            Replay::Stream(slot) => slot.lock().map(|s| s.is_none()).unwrap_or(true),
        }
    }
}

/// A streamed body that is taken out of a shared slot only when hyper first polls
/// it. hyper polls a body only once its connection is up, so after a failed connect
/// the body is still in the slot and the next attempt can send it.
struct ReplayableBody {
    slot: Arc<std::sync::Mutex<Option<Body>>>,
    inner: Option<Body>,
}

impl ReplayableBody {
    fn slot(body: Body) -> Arc<std::sync::Mutex<Option<Body>>> {
        Arc::new(std::sync::Mutex::new(Some(body)))
    }
}

impl http_body::Body for ReplayableBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if self.inner.is_none() {
            let taken = self.slot.lock().ok().and_then(|mut s| s.take());
            match taken {
                Some(b) => self.inner = Some(b),
                None => return std::task::Poll::Ready(None),
            }
        }
        match self.inner.as_mut() {
            Some(b) => std::pin::Pin::new(b).poll_frame(cx),
            None => std::task::Poll::Ready(None),
        }
    }
}
