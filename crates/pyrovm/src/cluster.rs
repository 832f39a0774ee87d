//! Sandbox affinity across pods: a sandbox lives in one pyrovm's memory, so every
//! request for it must reach that pyrovm, wherever the ingress sent it.
//!
//! With `[cluster] advertise_addr` set (in Kubernetes: the pod's IP and port), a
//! sandbox id names its owner: `sb-<ulid>-<addr>-<mac>`, where `<addr>` is the
//! owner's IP and port in hex and `<mac>` is 64 bits of HMAC-SHA256 over the rest
//! under the cluster's route key. A pyrovm that gets a request for a sandbox another
//! one owns forwards it there, once (a forwarded request is never forwarded again),
//! streaming the answer back (SSE included). The MAC means a client cannot make a
//! pyrovm connect to an address of its choosing: an id with a bad MAC is simply an
//! unknown id (404). Without `advertise_addr` ids are `sb-<ulid>` and all local.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tvm_http::error_response;

/// Set on a request one pyrovm forwards to another; such a request is never
/// forwarded again (its value is the forwarder's address, for the logs).
pub const FORWARDED: &str = "x-tvm-forwarded-by";

/// Shortest route key accepted (bytes).
pub const MIN_KEY_BYTES: usize = 16;

/// This pod's address and the cluster's route key.
#[derive(Clone)]
pub struct Cluster {
    advertise: SocketAddr,
    key: Arc<Vec<u8>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Cluster")
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

/// Who holds a sandbox, by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// This pyrovm (or an id without an address: a single node's).
    Here,
    /// Another pyrovm of the cluster, at this address.
    At(SocketAddr),
    /// Not an id any pyrovm of this cluster made (bad shape or MAC).
    Nobody,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the route key must be at least {MIN_KEY_BYTES} bytes")]
    ShortKey,
    #[error("cannot read the route key file {path}")]
    KeyFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Cluster {
    pub fn new(advertise: SocketAddr, key: Vec<u8>) -> Result<Self, ClusterError> {
        if key.len() < MIN_KEY_BYTES {
            return Err(ClusterError::ShortKey);
        }
        Ok(Self {
            advertise,
            key: Arc::new(key),
        })
    }

    /// Reads the key from a file (a mounted Secret); surrounding whitespace is dropped.
    pub fn from_key_file(
        advertise: SocketAddr,
        path: &std::path::Path,
    ) -> Result<Self, ClusterError> {
        let text = std::fs::read(path).map_err(|source| ClusterError::KeyFile {
            path: path.to_path_buf(),
            source,
        })?;
        let key = String::from_utf8_lossy(&text).trim().as_bytes().to_vec();
        Self::new(advertise, key)
    }

    pub fn advertise(&self) -> SocketAddr {
        self.advertise
    }

    /// The id of a new sandbox (`sb-<ulid>`) or async execution (`ex-<ulid>`) held
    /// here, from its unique part.
    pub fn mint(&self, local_id: &str) -> String {
        let body = format!("{local_id}-{}", encode_addr(self.advertise));
        let mac = self.mac(&body);
        format!("{body}-{mac}")
    }

    fn mac(&self, body: &str) -> String {
        // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
        let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        m.update(body.as_bytes());
        hex::encode(&m.finalize().into_bytes()[..8])
    }

    /// Who holds the sandbox or async execution `id`.
    pub fn owner(&self, id: &str) -> Owner {
        let parts: Vec<&str> = id.split('-').collect();
        match parts.as_slice() {
            ["sb" | "ex", _] => Owner::Here,
            [kind @ ("sb" | "ex"), ulid, addr, mac] => {
                let body = format!("{kind}-{ulid}-{addr}");
                let expected = self.mac(&body);
                // Constant time: the MAC is what keeps forwarding away from addresses
                // a client chose.
                use subtle::ConstantTimeEq as _;
                if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
                    return Owner::Nobody;
                }
                match decode_addr(addr) {
                    Some(a) if a == self.advertise => Owner::Here,
                    Some(a) => Owner::At(a),
                    None => Owner::Nobody,
                }
            }
            _ => Owner::Nobody,
        }
    }
}

/// `10.1.2.3:8080` → `0a0102031f90`; IPv6: 32 hex digits, then the port.
pub fn encode_addr(a: SocketAddr) -> String {
    let ip = match a.ip() {
        IpAddr::V4(v4) => hex::encode(v4.octets()),
        IpAddr::V6(v6) => hex::encode(v6.octets()),
    };
    format!("{ip}{}", hex::encode(a.port().to_be_bytes()))
}

pub fn decode_addr(s: &str) -> Option<SocketAddr> {
    let bytes = hex::decode(s).ok()?;
    let (ip, port) = match bytes.len() {
        6 => (
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
            &bytes[4..],
        ),
        18 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&bytes[..16]);
            (IpAddr::V6(Ipv6Addr::from(o)), &bytes[16..])
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]])))
}

/// The id a request path names (`/v1/sandboxes/{id}` and below, or
/// `/v1/executions/{id}`), if any: the node that holds it serves it.
pub fn sandbox_in_path(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/v1/sandboxes/")
        .or_else(|| path.strip_prefix("/v1/executions/"))?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// Dials the address a request is for: the authority itself, or, under a peer host
/// (`<hex addr>.<peer_host>`), the address its first label encodes.
type PeerConnector = tower::util::MapRequest<HttpConnector, fn(Uri) -> Uri>;

fn dial_target(uri: Uri) -> Uri {
    let target = uri
        .host()
        .and_then(|h| h.split('.').next())
        .and_then(decode_addr);
    match target {
        Some(addr) => format!("http://{addr}/").parse().unwrap_or(uri),
        None => uri,
    }
}

/// The first field of every `tvm.v1.Sandboxes` request that names a sandbox
/// (`SandboxRef.id`, and `sandbox_id` of the others): field 1, a string.
#[derive(Clone, PartialEq, prost::Message)]
struct SandboxIdField {
    #[prost(string, tag = "1")]
    id: String,
}

/// gRPC methods whose request names a sandbox in field 1.
fn grpc_names_sandbox(path: &str) -> bool {
    let sandbox = path.strip_prefix("/tvm.v1.Sandboxes/").is_some_and(|m| {
        matches!(
            m,
            "Get" | "Delete" | "Execute" | "ExecuteStream" | "WriteFile" | "ReadFile" | "ListFiles"
        )
    });
    // An async execution's id is field 1 of these requests too.
    let execution = path
        .strip_prefix("/tvm.v1.Execution/")
        .is_some_and(|m| matches!(m, "GetExecution" | "CancelExecution"));
    sandbox || execution
}

/// The sandbox id in a unary gRPC request body (one uncompressed length-prefixed message).
pub fn sandbox_in_grpc_body(body: &[u8]) -> Option<String> {
    let (&flag, rest) = body.split_first()?;
    if flag != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let msg = rest.get(4..4 + len)?;
    let id = <SandboxIdField as prost::Message>::decode(msg).ok()?.id;
    (!id.is_empty()).then_some(id)
}

/// Largest gRPC request body looked into for a sandbox id (a file upload).
const MAX_GRPC_PEEK: usize = 32 << 20;
/// How long such a body may take to arrive (as the HTTP body deadline).
const GRPC_PEEK_TIMEOUT: Duration = Duration::from_secs(30);

/// State of [`forward_to_owner`].
#[derive(Debug, Clone)]
pub struct Forwarder {
    cluster: Cluster,
    client: Client<PeerConnector, Body>,
    peer_host: Option<String>,
    peers: Vec<String>,
}

/// How long connecting to the owner may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Forwarder {
    /// `peer_host`: the `Host` forwarded requests carry (in an Istio mesh, the name of
    /// a headless Service of the pyrovm pods, so the caller's sidecar sends the request
    /// to the pod IP it was addressed to, over mTLS); default: the owner's address.
    pub fn new(cluster: Cluster, peer_host: Option<String>, peers: Vec<String>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        // HTTP/2 (prior knowledge, which pyrovm serves): gRPC needs it, and one
        // connection per peer carries every forwarded request.
        let connector: PeerConnector =
            tower::ServiceExt::map_request(http, dial_target as fn(Uri) -> Uri);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Self {
            cluster,
            client,
            peer_host,
            peers,
        }
    }

    /// The URI of `path` on the pyrovm at `addr` (under the peer host, if any).
    fn peer_uri(&self, addr: SocketAddr, path: &str) -> Option<Uri> {
        let authority = match &self.peer_host {
            Some(host) => format!("{}.{host}:{}", encode_addr(addr), addr.port()),
            None => addr.to_string(),
        };
        format!("http://{authority}{path}").parse().ok()
    }

    /// The other pyrovms now: every `peers` entry resolved, this one left out.
    async fn peer_addrs(&self) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        for p in &self.peers {
            match tokio::time::timeout(PEER_TIMEOUT, tokio::net::lookup_host(p.as_str())).await {
                Ok(Ok(addrs)) => out.extend(addrs),
                _ => tracing::warn!(peer = %p, "cannot resolve a cluster peer"),
            }
        }
        out.sort();
        out.dedup();
        out.retain(|a| *a != self.cluster.advertise);
        out
    }

    /// The caller's sandboxes on every other pyrovm (the same `Authorization`, so
    /// each filters by the same caller), and how many did not answer.
    pub async fn list_elsewhere(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> (Vec<tvm_api::SandboxInfo>, u32) {
        let peers = self.peer_addrs().await;
        let asks = peers.iter().map(|addr| async move {
            let uri = self.peer_uri(*addr, "/v1/sandboxes")?;
            let mut req = Request::builder().method("GET").uri(uri);
            if let Some(a) = authorization {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = req
                .header(FORWARDED, self.cluster.advertise.to_string())
                .body(Body::empty())
                .ok()?;
            let resp = tokio::time::timeout(PEER_TIMEOUT, self.client.request(req))
                .await
                .ok()?
                .ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let body = tokio::time::timeout(
                PEER_TIMEOUT,
                axum::body::to_bytes(Body::new(resp.into_body()), 4 << 20),
            )
            .await
            .ok()?
            .ok()?;
            serde_json::from_slice::<tvm_api::SandboxList>(&body).ok()
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut all = Vec::new();
        let mut unreachable = 0;
        for (addr, a) in peers.iter().zip(answers) {
            match a {
                Some(list) => all.extend(list.sandboxes),
                None => {
                    tracing::warn!(%addr, "a cluster peer did not list its sandboxes");
                    unreachable += 1;
                }
            }
        }
        (all, unreachable)
    }
}

/// The caller's sandboxes: this pyrovm's, and in a cluster (unless this request was
/// itself forwarded by a peer) every other pyrovm's, oldest first.
pub async fn list_sandboxes(
    st: &crate::server::AppState,
    caller: &tvm_http::middleware::Caller,
    authorization: Option<&HeaderValue>,
    forwarded: bool,
) -> tvm_api::SandboxList {
    let mut sandboxes = st.sandboxes.list(&st.executor, caller);
    let mut unreachable_nodes = 0;
    if let Some(f) = st.forwarder.as_ref().filter(|_| !forwarded) {
        let (elsewhere, unreachable) = f.list_elsewhere(authorization).await;
        sandboxes.extend(elsewhere);
        sandboxes.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        unreachable_nodes = unreachable;
    }
    tvm_api::SandboxList {
        sandboxes,
        unreachable_nodes,
    }
}

/// How long a peer may take to resolve, connect and answer a listing.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Removes the hop-by-hop headers; `keep_te` keeps `te` (gRPC's `te: trailers`
/// must reach the next hop).
fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap, keep_te: bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| hop_by_hop(n) && !(keep_te && n.as_str() == "te"))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are the connection's, not the request's.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
    )
}

/// Middleware: a request for a sandbox another pyrovm holds goes there.
pub async fn forward_to_owner(
    State(f): State<Arc<Forwarder>>,
    req: Request,
    next: Next,
) -> Response {
    let grpc = tvm_http::is_grpc(req.headers());
    let mut req = req;
    let owner = if let Some(id) = sandbox_in_path(req.uri().path()) {
        f.cluster.owner(id)
    } else if grpc_names_sandbox(req.uri().path()) && !req.headers().contains_key(FORWARDED) {
        // The id is inside the message: read it (the body is put back either way).
        let (parts, body) = req.into_parts();
        // Bounded in size and time: this runs before the body deadline layer.
        let read =
            tokio::time::timeout(GRPC_PEEK_TIMEOUT, axum::body::to_bytes(body, MAX_GRPC_PEEK));
        let bytes = match read.await {
            Ok(Ok(b)) => b,
            Err(_) => {
                return tvm_http::grpc_error(
                    tvm_http::GrpcCode::DeadlineExceeded,
                    "the request did not arrive in time",
                )
            }
            Ok(Err(_)) => {
                return tvm_http::grpc_error(
                    tvm_http::GrpcCode::ResourceExhausted,
                    "the request is too large",
                )
            }
        };
        let owner = sandbox_in_grpc_body(&bytes).map_or(Owner::Here, |id| f.cluster.owner(&id));
        req = Request::from_parts(parts, Body::from(bytes));
        owner
    } else {
        Owner::Here
    };
    let addr = match owner {
        Owner::At(addr) if !req.headers().contains_key(FORWARDED) => addr,
        // Ours, unknown (answered 404 by the handler), or already forwarded once.
        _ => return next.run(req).await,
    };
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let uri: Uri = match format!("http://{addr}{path}").parse() {
        Ok(u) => u,
        Err(_) => return next.run(Request::from_parts(parts, body)).await,
    };
    parts.uri = uri;
    parts.version = axum::http::Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers, true);
    // Under a peer host the authority names the peer Service (what an Istio
    // sidecar routes a headless service's HTTP by: `*.<service>`); its first label
    // is the pod's address, which our connector dials.
    if let Some(u) = f.peer_uri(addr, &path) {
        parts.uri = u;
    }
    if let Ok(v) = HeaderValue::from_str(&f.cluster.advertise.to_string()) {
        parts.headers.insert(FORWARDED, v);
    }
    tracing::debug!(%addr, %path, "forwarding a sandbox request to its owner");
    match f.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers, false);
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => {
            tracing::warn!(%addr, error = %crate::core::error_chain(&e), "the owner of a sandbox does not answer");
            if grpc {
                return tvm_http::grpc_error(
                    tvm_http::GrpcCode::Unavailable,
                    format!("the pyrovm holding this sandbox ({addr}) does not answer; if it was restarted, the sandbox has ended"),
                );
            }
            let mut r = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "owner_unreachable",
                format!(
                    "the pyrovm holding this sandbox ({addr}) does not answer; if it was restarted, the sandbox has ended"
                ),
                Some(2),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(addr: &str) -> Cluster {
        Cluster::new(
            addr.parse().unwrap(),
            b"0123456789abcdef-route-key".to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn addresses_round_trip() {
        for a in ["10.1.2.3:8080", "[fd00::1:2]:9090", "127.0.0.1:1"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(decode_addr(&encode_addr(a)), Some(a));
        }
        assert_eq!(
            encode_addr("10.1.2.3:8080".parse().unwrap()),
            "0a0102031f90"
        );
        assert_eq!(decode_addr("zz"), None);
        assert_eq!(decode_addr("0a01"), None);
    }

    #[test]
    fn minted_ids_name_their_owner_and_resist_forgery() {
        let a = cluster("10.0.0.1:8080");
        let b = cluster("10.0.0.2:8080");
        let id = a.mint("sb-01abc");
        assert!(id.starts_with("sb-01abc-0a0000011f90-"), "{id}");
        assert_eq!(a.owner(&id), Owner::Here);
        assert_eq!(b.owner(&id), Owner::At("10.0.0.1:8080".parse().unwrap()));
        // A single node's ids are local everywhere.
        assert_eq!(b.owner("sb-01abc"), Owner::Here);
        // Another address with the old MAC, another MAC, another key: nobody's.
        let forged = id.replace("0a0000011f90", "0a0000091f90");
        assert_eq!(b.owner(&forged), Owner::Nobody);
        let mut bad_mac = id.clone();
        bad_mac.pop();
        bad_mac.push('x');
        assert_eq!(b.owner(&bad_mac), Owner::Nobody);
        let other_key = Cluster::new("10.0.0.2:8080".parse().unwrap(), vec![7u8; 32]).unwrap();
        assert_eq!(other_key.owner(&id), Owner::Nobody);
        for junk in ["", "sb", "sb-", "x-1", "sb-a-b", "sb-a-b-c-d", "sb-a-zz-00"] {
            assert_ne!(
                b.owner(junk),
                Owner::At("10.0.0.1:8080".parse().unwrap()),
                "{junk}"
            );
        }
        assert!(matches!(
            Cluster::new("10.0.0.1:1".parse().unwrap(), b"short".to_vec()),
            Err(ClusterError::ShortKey)
        ));
        assert!(!format!("{a:?}").contains("route-key"));
    }

    #[test]
    fn the_connector_dials_the_address_a_peer_authority_encodes() {
        let u: Uri = "http://0a0102031f90.pyrovm-peers.tvm.svc.cluster.local:8080/v1/x"
            .parse()
            .unwrap();
        assert_eq!(
            dial_target(u).authority().unwrap().as_str(),
            "10.1.2.3:8080"
        );
        let plain: Uri = "http://127.0.0.1:9/".parse().unwrap();
        assert_eq!(dial_target(plain.clone()), plain);
    }

    #[test]
    fn sandbox_ids_are_found_in_grpc_messages() {
        use prost::Message as _;
        let msg = SandboxIdField {
            id: "sb-abc".into(),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        frame.extend_from_slice(&msg);
        assert_eq!(sandbox_in_grpc_body(&frame).as_deref(), Some("sb-abc"));
        frame[0] = 1; // compressed: not looked into
        assert_eq!(sandbox_in_grpc_body(&frame), None);
        assert_eq!(sandbox_in_grpc_body(&[0, 0, 0, 0, 9]), None);
        assert_eq!(sandbox_in_grpc_body(&[]), None);
        assert!(grpc_names_sandbox("/tvm.v1.Sandboxes/Execute"));
        assert!(!grpc_names_sandbox("/tvm.v1.Sandboxes/Create"));
        assert!(!grpc_names_sandbox("/tvm.v1.Execution/Execute"));
        assert!(grpc_names_sandbox("/tvm.v1.Execution/GetExecution"));
        assert!(grpc_names_sandbox("/tvm.v1.Execution/CancelExecution"));
        assert!(!grpc_names_sandbox("/tvm.v1.Execution/Submit"));
    }

    #[test]
    fn sandbox_ids_are_found_in_paths() {
        assert_eq!(sandbox_in_path("/v1/sandboxes/sb-1/files/a"), Some("sb-1"));
        assert_eq!(sandbox_in_path("/v1/sandboxes/sb-1"), Some("sb-1"));
        assert_eq!(sandbox_in_path("/v1/sandboxes"), None);
        assert_eq!(sandbox_in_path("/v1/sandboxes/"), None);
        assert_eq!(sandbox_in_path("/v1/execute"), None);
        // Async executions are held by one node too.
        assert_eq!(sandbox_in_path("/v1/executions/ex-1"), Some("ex-1"));
        assert_eq!(sandbox_in_path("/v1/executions"), None);
    }
}
