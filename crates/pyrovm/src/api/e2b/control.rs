//! E2B's control plane (`/e2b/...`): create, list, get, kill, set the timeout of and
//! connect to sandboxes, as the official SDKs call it (`E2B_API_URL=http://HOST/e2b`).
//!
//! A thin adapter: each handler parses E2B's JSON into the same typed commands
//! `/v1/sandboxes` uses and renders the core's answer as E2B's `Sandbox`,
//! `SandboxDetail` and `ListedSandbox`. Errors are E2B's `{"code": <status>,
//! "message": ...}` (its SDKs read `code` from every error body). What TVM does not
//! do — pause and resume (sandboxes live in memory only), snapshots, forks, metrics —
//! is answered 501 with a sentence saying so, which the SDKs raise as their own
//! `SandboxException` without retrying.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tvm_api::{CreateSandboxRequest, SandboxInfo, SandboxLimitsRequest};
use tvm_http::middleware::Caller;

use crate::sandbox::SandboxError;
use crate::server::AppState;

/// The envd version TVM's envd door behaves as: every feature gate of the SDKs is
/// open at it (stdin, default user, octet-stream uploads, file metadata).
pub const ENVD_VERSION: &str = "0.6.4";
/// The metadata key under which a sandbox keeps the E2B template it was made from.
pub const TEMPLATE_KEY: &str = "e2b.template";
/// The template the SDKs ask for by default.
const DEFAULT_TEMPLATE: &str = "base";
/// Sandboxes one list page holds at most.
const MAX_PAGE: usize = 100;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/e2b/sandboxes", post(create).get(list))
        .route("/e2b/v2/sandboxes", post(create).get(list))
        .route("/e2b/sandboxes/{id}", get(detail).delete(kill))
        .route("/e2b/sandboxes/{id}/timeout", post(set_timeout))
        .route("/e2b/sandboxes/{id}/refreshes", post(refresh))
        .route("/e2b/sandboxes/{id}/connect", post(connect))
        .route("/e2b/v2/sandboxes/{id}/connect", post(connect))
        .route("/e2b/sandboxes/{id}/pause", post(pause))
        .route("/e2b/sandboxes/{id}/resume", post(pause))
        .route("/e2b/sandboxes/{id}/metrics", get(unsupported_metrics))
        .route("/e2b/sandboxes/{id}/snapshots", post(unsupported_snapshot))
        .route("/e2b/sandboxes/{id}/fork", post(unsupported_fork))
        .route(
            "/e2b/sandboxes/{id}/network",
            axum::routing::put(unsupported_network),
        )
        .route("/e2b/snapshots", get(unsupported_snapshot))
        .route(
            "/e2b/snapshots/{*rest}",
            axum::routing::any(unsupported_snapshot),
        )
        .route("/e2b/templates", axum::routing::any(unsupported_templates))
        .route(
            "/e2b/templates/{*rest}",
            axum::routing::any(unsupported_templates),
        )
        .route(
            "/e2b/v2/templates",
            axum::routing::any(unsupported_templates),
        )
        .route(
            "/e2b/v2/templates/{*rest}",
            axum::routing::any(unsupported_templates),
        )
        .route(
            "/e2b/v3/templates",
            axum::routing::any(unsupported_templates),
        )
        .route(
            "/e2b/v3/templates/{*rest}",
            axum::routing::any(unsupported_templates),
        )
}

/// An E2B control-plane error.
#[derive(Debug)]
pub(crate) struct E2bError {
    status: StatusCode,
    message: String,
}

impl E2bError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            code: u16,
            message: String,
        }
        let body = Body {
            code: self.status.as_u16(),
            message: self.message,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<SandboxError> for E2bError {
    fn from(e: SandboxError) -> Self {
        let status = match &e {
            // E2B has no "gone": an ended sandbox is not found, with the reason said.
            SandboxError::NotFound(_) | SandboxError::Ended { .. } => StatusCode::NOT_FOUND,
            SandboxError::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            SandboxError::Core(c) => crate::server::core_http_status(c),
            SandboxError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => crate::api::sandboxes::status_of(&e).0,
        };
        Self::new(status, e.to_string())
    }
}

type Result<T> = std::result::Result<T, E2bError>;

fn caller(who: Option<Extension<Caller>>) -> Result<Caller> {
    who.map(|Extension(c)| c)
        .ok_or_else(|| E2bError::new(StatusCode::UNAUTHORIZED, "no caller"))
}

/// `NewSandbox` as the SDKs send it; fields TVM cannot honour are refused by name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    cpu_count: Option<u32>,
    #[serde(default)]
    secure: Option<bool>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    auto_pause: Option<bool>,
    network: Option<NetworkConfig>,
    /// Everything else the SDKs may send (mcp, volumeMounts, ...).
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkConfig {
    #[serde(default)]
    allow_out: Vec<String>,
    #[serde(default)]
    deny_out: Vec<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// What the SDKs get back from create and connect.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SandboxOut {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    envd_version: &'static str,
    envd_access_token: String,
    domain: Option<String>,
}

/// `SandboxDetail` and `ListedSandbox` (the same required keys).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailOut {
    #[serde(rename = "sandboxID")]
    sandbox_id: String,
    #[serde(rename = "templateID")]
    template_id: String,
    #[serde(rename = "clientID")]
    client_id: &'static str,
    started_at: String,
    end_at: String,
    envd_version: &'static str,
    cpu_count: u32,
    #[serde(rename = "memoryMB")]
    memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    disk_size_mb: u64,
    state: &'static str,
    metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    envd_access_token: Option<String>,
}

fn template_of(info: &SandboxInfo) -> String {
    info.metadata
        .get(TEMPLATE_KEY)
        .cloned()
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string())
}

fn sandbox_out(info: &SandboxInfo, envd_access_token: String) -> SandboxOut {
    SandboxOut {
        sandbox_id: info.id.clone(),
        template_id: template_of(info),
        client_id: "tvm",
        envd_version: ENVD_VERSION,
        envd_access_token,
        domain: None,
    }
}

fn detail_of(info: &SandboxInfo, token: Option<String>) -> DetailOut {
    let mut metadata = info.metadata.clone();
    metadata.remove(TEMPLATE_KEY);
    DetailOut {
        sandbox_id: info.id.clone(),
        template_id: template_of(info),
        client_id: "tvm",
        started_at: info.created_at.clone(),
        end_at: info.expires_at.clone(),
        envd_version: ENVD_VERSION,
        cpu_count: info.limits.vcpus,
        memory_mb: info.limits.memory_mb,
        disk_size_mb: info.limits.disk_mb,
        state: "running",
        metadata,
        envd_access_token: token,
    }
}

/// Checks an E2B create body and turns it into TVM's create request; pure.
fn create_request(n: NewSandbox, st: &AppState) -> Result<CreateSandboxRequest> {
    let bad = |m: String| E2bError::new(StatusCode::BAD_REQUEST, m);
    if let Some(k) = n.rest.iter().find(|(_, v)| !v.is_null()).map(|(k, _)| k) {
        return Err(bad(format!(
            "{k:?} is not supported by TVM's E2B-compatible API (see docs/e2b.md)"
        )));
    }
    if n.auto_pause == Some(true) {
        return Err(E2bError::new(
            StatusCode::NOT_IMPLEMENTED,
            "autoPause is not supported: TVM sandboxes live in memory only and cannot be paused",
        ));
    }
    let template = n
        .template_id
        .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
    if template != DEFAULT_TEMPLATE && st.languages.get(&template).is_none() {
        let names: Vec<&str> = st.languages.iter().map(|l| l.name.as_str()).collect();
        return Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!(
                "template {template:?} not found: TVM serves \"base\" and the language names ({}), all on one image with every language",
                names.join(", ")
            ),
        ));
    }
    let mut allow = Vec::new();
    if let Some(net) = n.network {
        if let Some(k) = net.rest.keys().next() {
            return Err(bad(format!("network.{k} is not supported by TVM")));
        }
        if !net.deny_out.is_empty() {
            return Err(bad(
                "network.denyOut is not supported: TVM denies everything not in allowOut".into(),
            ));
        }
        allow = net.allow_out;
    }
    if n.allow_internet_access == Some(true) && allow.is_empty() {
        return Err(bad(
            "TVM sandboxes have no internet access by default; name the hosts they may reach in network.allowOut (within the operator's [egress] allow list)".into(),
        ));
    }
    let _ = n.secure; // Every TVM sandbox is "secure": envd always checks its token.
    let mut metadata = n.metadata.unwrap_or_default();
    if metadata.contains_key(TEMPLATE_KEY) {
        return Err(bad(format!("metadata key {TEMPLATE_KEY:?} is reserved")));
    }
    metadata.insert(TEMPLATE_KEY.to_string(), template);
    let ttl = n.timeout;
    let req = CreateSandboxRequest {
        limits: SandboxLimitsRequest {
            vcpus: n.cpu_count,
            ..SandboxLimitsRequest::default()
        },
        ttl_s: ttl,
        // E2B has no idle timeout: a sandbox lives until its timeout, which
        // `set_timeout` may move later, so idleness gets the longest allowed.
        idle_timeout_s: Some(st.sandboxes.settings().bounds.idle_timeout_s.max),
        env: n.env_vars.unwrap_or_default(),
        network: (!allow.is_empty()).then(|| tvm_api::NetworkRequest {
            allow,
            ..Default::default()
        }),
        metadata,
    };
    Ok(req)
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        E2bError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON for this endpoint: {e}"),
        )
    })
}

async fn create(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> Result<Response> {
    let who = caller(who)?;
    if !st.ready.load(std::sync::atomic::Ordering::Acquire) {
        return Err(E2bError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is not ready yet",
        ));
    }
    let req = create_request(parse_json(&body)?, &st)?;
    let cmd = tvm_api::validate_sandbox(req, &st.bounds, &st.sandboxes.settings().bounds)
        .map_err(|e| E2bError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let info = st.sandboxes.create(&st.executor, &who, cmd).await?;
    let token = st.sandboxes.access_token(&who, &info.id)?;
    Ok((StatusCode::CREATED, Json(sandbox_out(&info, token))).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
    /// Accepted and ignored: TVM lists oldest first.
    #[serde(default)]
    order: Option<String>,
    template: Option<String>,
    #[serde(flatten)]
    _rest: BTreeMap<String, String>,
}

async fn list(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Query(q): Query<ListQuery>,
) -> Result<Response> {
    let who = caller(who)?;
    let _ = q.order;
    // `metadata` is itself a query string: `k=v&k2=v2`.
    let wanted: Vec<(String, String)> = match &q.metadata {
        Some(m) => serde_urlencoded::from_str(m)
            .map_err(|e| E2bError::new(StatusCode::BAD_REQUEST, format!("metadata filter: {e}")))?,
        None => Vec::new(),
    };
    let running_wanted = q
        .state
        .as_deref()
        .is_none_or(|s| s.split(',').any(|s| s.trim() == "running"));
    let all: Vec<SandboxInfo> = if running_wanted {
        st.sandboxes.list(&st.executor, &who)
    } else {
        Vec::new()
    };
    let matching: Vec<&SandboxInfo> = all
        .iter()
        .filter(|i| wanted.iter().all(|(k, v)| i.metadata.get(k) == Some(v)))
        .filter(|i| q.template.as_ref().is_none_or(|t| &template_of(i) == t))
        .collect();
    let start: usize = match &q.next_token {
        Some(t) if !t.is_empty() => t.parse().map_err(|_| {
            E2bError::new(StatusCode::BAD_REQUEST, "nextToken is not one TVM gave out")
        })?,
        _ => 0,
    };
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let page: Vec<DetailOut> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|i| detail_of(i, None))
        .collect();
    let mut resp = Json(page).into_response();
    if start + limit < matching.len() {
        if let Ok(v) = HeaderValue::from_str(&(start + limit).to_string()) {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(resp)
}

async fn detail(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<DetailOut>> {
    let who = caller(who)?;
    let info = st.sandboxes.info(&st.executor, &who, &id)?;
    let token = st.sandboxes.access_token(&who, &id)?;
    Ok(Json(detail_of(&info, Some(token))))
}

async fn kill(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let who = caller(who)?;
    st.sandboxes.delete(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct TimeoutBody {
    timeout: Option<u64>,
}

async fn set_timeout(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode> {
    let who = caller(who)?;
    let b: TimeoutBody = parse_json(&body)?;
    let secs = b
        .timeout
        .ok_or_else(|| E2bError::new(StatusCode::BAD_REQUEST, "timeout (seconds) is required"))?;
    st.sandboxes.set_ttl(&who, &id, Duration::from_secs(secs))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
struct RefreshBody {
    duration: Option<u64>,
}

async fn refresh(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode> {
    let who = caller(who)?;
    let b: RefreshBody = parse_json(&body)?;
    st.sandboxes
        .set_ttl(&who, &id, Duration::from_secs(b.duration.unwrap_or(60)))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Connecting to a running sandbox (a paused one cannot exist): its token, and a
/// new timeout when one is given.
async fn connect(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<SandboxOut>> {
    let who = caller(who)?;
    let b: TimeoutBody = parse_json(&body)?;
    if let Some(secs) = b.timeout {
        st.sandboxes.set_ttl(&who, &id, Duration::from_secs(secs))?;
    }
    let info = st.sandboxes.info(&st.executor, &who, &id)?;
    let token = st.sandboxes.access_token(&who, &id)?;
    Ok(Json(sandbox_out(&info, token)))
}

/// Pause and resume: the sandbox must exist (404 otherwise, as E2B answers), then 501.
async fn pause(
    State(st): State<Arc<AppState>>,
    who: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let who = caller(who)?;
    st.sandboxes.info(&st.executor, &who, &id)?;
    Err(E2bError::new(
        StatusCode::NOT_IMPLEMENTED,
        "pause and resume are not supported: TVM sandboxes live in memory only; the sandbox keeps running until its timeout",
    ))
}

fn unsupported(what: &str) -> E2bError {
    E2bError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("{what} is not supported by TVM's E2B-compatible API (see docs/e2b.md)"),
    )
}

async fn unsupported_metrics() -> E2bError {
    unsupported("sandbox metrics")
}

async fn unsupported_snapshot() -> E2bError {
    unsupported("snapshots (sandboxes live in memory only)")
}

async fn unsupported_templates() -> E2bError {
    unsupported("building templates (TVM's one image is built by `tvm image build`)")
}

async fn unsupported_fork() -> E2bError {
    unsupported("fork")
}

async fn unsupported_network() -> E2bError {
    unsupported("changing a running sandbox's network")
}

/// Any other path under `/e2b/` (not envd's).
pub(crate) async fn not_found(uri: axum::http::Uri) -> E2bError {
    E2bError::new(
        StatusCode::NOT_FOUND,
        format!(
            "{} is not part of TVM's E2B-compatible API (see docs/e2b.md)",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> NewSandbox {
        serde_json::from_str(body).expect("json")
    }

    #[test]
    fn the_sdk_body_parses_and_unknown_fields_are_named() {
        let n = parse(
            r#"{"templateID":"base","timeout":120,"metadata":{"a":"b"},"envVars":{"X":"1"}}"#,
        );
        assert_eq!(n.template_id.as_deref(), Some("base"));
        assert_eq!(n.timeout, Some(120));
        assert_eq!(n.env_vars.unwrap_or_default()["X"], "1");
        let n = parse(r#"{"templateID":"base","volumeMounts":[{"name":"v","path":"/m"}]}"#);
        assert!(n.rest.contains_key("volumeMounts"));
        let n = parse(r#"{"templateID":"base","network":{"allowOut":["pypi.org"]}}"#);
        assert_eq!(
            n.network.map(|n| n.allow_out),
            Some(vec!["pypi.org".to_string()])
        );
    }
}
