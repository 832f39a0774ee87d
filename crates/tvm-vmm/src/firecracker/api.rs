//! A small typed client for Firecracker's API socket (HTTP/1.1 over a Unix socket).
//!
//! Every body is a struct named after its OpenAPI definition in
//! `firecracker.yaml`; `tests` checks each one against that spec. Errors come back
//! as `{"fault_message": "..."}` and become [`ApiError::Fault`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// `PUT /boot-source` (definition `BootSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /drives/{drive_id}` (definition `Drive`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

/// `PUT /machine-config` (definition `MachineConfiguration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    pub smt: bool,
}

/// `PUT /vsock` (definition `Vsock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `PUT /logger` (definition `Logger`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logger {
    pub log_path: String,
    pub level: String,
    pub show_level: bool,
    pub show_log_origin: bool,
}

/// `PUT /metrics` (definition `Metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub metrics_path: String,
}

/// `PUT /entropy` (definition `EntropyDevice`): a virtio-rng for the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EntropyDevice {}

/// `PUT /actions` (definition `InstanceActionInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
}

/// `PATCH /vm` (definition `Vm`): pauses or resumes a running microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vm {
    pub state: VmState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `PUT /snapshot/create` (definition `SnapshotCreateParams`); the VM must be paused.
/// Paths are as Firecracker sees them, i.e. inside the jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotCreateParams {
    pub snapshot_type: SnapshotType,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SnapshotType {
    Full,
    Diff,
}

/// `PUT /snapshot/load` (definition `SnapshotLoadParams`). Accepted only by a fresh
/// Firecracker (nothing configured but the logger and metrics). Of the spec's two
/// ways to name the memory, only `mem_backend` is offered (`mem_file_path` is deprecated;
/// exactly one of them may be sent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    pub mem_backend: MemoryBackend,
    pub resume_vm: bool,
}

/// Definition `MemoryBackend`: where a restored VM's memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryBackend {
    pub backend_type: MemoryBackendType,
    pub backend_path: String,
}

/// `File` maps the memory file `MAP_PRIVATE` (copy-on-write); `Uffd` hands page
/// faults to a user-space handler listening on `backend_path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MemoryBackendType {
    File,
    Uffd,
}

/// One API call: method, path, JSON body, and the spec definition the body must match.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiCall {
    pub method: &'static str,
    pub path: String,
    pub body: serde_json::Value,
    /// Name of the OpenAPI definition of `body`.
    pub definition: &'static str,
}

fn call<T: Serialize>(path: impl Into<String>, definition: &'static str, body: &T) -> ApiCall {
    call_with("PUT", path, definition, body)
}

fn call_with<T: Serialize>(
    method: &'static str,
    path: impl Into<String>,
    definition: &'static str,
    body: &T,
) -> ApiCall {
    ApiCall {
        method,
        path: path.into(),
        // Serialising these plain structs cannot fail.
        body: serde_json::to_value(body).unwrap_or(serde_json::Value::Null),
        definition,
    }
}

impl ApiCall {
    pub fn boot_source(b: &BootSource) -> Self {
        call("/boot-source", "BootSource", b)
    }
    pub fn drive(d: &Drive) -> Self {
        call(format!("/drives/{}", d.drive_id), "Drive", d)
    }
    pub fn machine_config(m: &MachineConfiguration) -> Self {
        call("/machine-config", "MachineConfiguration", m)
    }
    pub fn vsock(v: &Vsock) -> Self {
        call("/vsock", "Vsock", v)
    }
    pub fn logger(l: &Logger) -> Self {
        call("/logger", "Logger", l)
    }
    pub fn metrics(m: &Metrics) -> Self {
        call("/metrics", "Metrics", m)
    }
    pub fn entropy(e: &EntropyDevice) -> Self {
        call("/entropy", "EntropyDevice", e)
    }
    pub fn action(a: ActionType) -> Self {
        call(
            "/actions",
            "InstanceActionInfo",
            &InstanceActionInfo { action_type: a },
        )
    }
    /// `PATCH`, not `PUT`: Firecracker answers a `PUT /vm` with 400.
    pub fn vm_state(state: VmState) -> Self {
        call_with("PATCH", "/vm", "Vm", &Vm { state })
    }
    pub fn snapshot_create(p: &SnapshotCreateParams) -> Self {
        call("/snapshot/create", "SnapshotCreateParams", p)
    }
    pub fn snapshot_load(p: &SnapshotLoadParams) -> Self {
        call("/snapshot/load", "SnapshotLoadParams", p)
    }
}

/// The documented error body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FaultBody {
    pub fault_message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to the Firecracker API socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with Firecracker failed")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request")]
    Request(#[from] hyper::http::Error),
    #[error("Firecracker refused {method} {path} ({status}): {fault_message}")]
    Fault {
        method: &'static str,
        path: String,
        status: u16,
        fault_message: String,
    },
    #[error("Firecracker API did not answer {0} in time")]
    Timeout(String),
}

/// Parses an error answer: the documented fault body, or the raw text if it is not one.
pub fn parse_fault(call: &ApiCall, status: u16, body: &[u8]) -> ApiError {
    let fault_message = serde_json::from_slice::<FaultBody>(body)
        .map(|f| f.fault_message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_string());
    ApiError::Fault {
        method: call.method,
        path: call.path.clone(),
        status,
        fault_message,
    }
}

/// Client bound to one API socket. Each call uses a fresh connection.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
            timeout: Duration::from_secs(5),
        }
    }

    /// The same socket with another bound per call (a snapshot writes all guest memory).
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            socket: self.socket.clone(),
            timeout,
        }
    }

    pub async fn send(&self, call: &ApiCall) -> Result<(), ApiError> {
        let what = format!("{} {}", call.method, call.path);
        tokio::time::timeout(self.timeout, self.send_inner(call))
            .await
            .map_err(|_| ApiError::Timeout(what))?
    }

    async fn send_inner(&self, call: &ApiCall) -> Result<(), ApiError> {
        let connect_err = |source| ApiError::Connect {
            path: self.socket.clone(),
            source,
        };
        let at = crate::uds::SocketPath::new(&self.socket).map_err(connect_err)?;
        let stream = UnixStream::connect(at.path()).await.map_err(connect_err)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let driver = tokio::spawn(conn);
        let body = serde_json::to_vec(&call.body).unwrap_or_default();
        let req = Request::builder()
            .method(Method::from_bytes(call.method.as_bytes()).unwrap_or(Method::PUT))
            .uri(call.path.as_str())
            .header("host", "localhost")
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        driver.abort();
        if status == StatusCode::NO_CONTENT || status.is_success() {
            Ok(())
        } else {
            Err(parse_fault(call, status.as_u16(), &bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A real HTTP peer on a Unix socket that answers one request with `answer`.
    async fn peer(path: &Path, answer: &'static str) -> tokio::task::JoinHandle<String> {
        let l = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Read headers and the body (Content-Length bytes).
            loop {
                let n = s.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&req).into_owned()
        })
    }

    #[tokio::test]
    async fn sends_json_put_and_accepts_204() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("api.sock");
        let seen = peer(&sock, "HTTP/1.1 204 No Content\r\n\r\n").await;
        let call = ApiCall::vsock(&Vsock {
            guest_cid: 3,
            uds_path: "/v.sock".into(),
        });
        ApiClient::new(&sock).send(&call).await.unwrap();
        let req = seen.await.unwrap();
        assert!(req.starts_with("PUT /vsock HTTP/1.1\r\n"), "{req}");
        assert!(req.contains("content-type: application/json"));
        assert!(
            req.ends_with(r#"{"guest_cid":3,"uds_path":"/v.sock"}"#),
            "{req}"
        );
    }

    #[tokio::test]
    async fn vm_state_is_sent_as_patch() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("api.sock");
        let seen = peer(&sock, "HTTP/1.1 204 No Content\r\n\r\n").await;
        ApiClient::new(&sock)
            .send(&ApiCall::vm_state(VmState::Paused))
            .await
            .unwrap();
        let req = seen.await.unwrap();
        assert!(req.starts_with("PATCH /vm HTTP/1.1\r\n"), "{req}");
        assert!(req.ends_with(r#"{"state":"Paused"}"#), "{req}");
    }

    #[tokio::test]
    async fn fault_message_becomes_a_typed_error() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("api.sock");
        let body = r#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#;
        let answer: &'static str = Box::leak(
            format!("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .into_boxed_str(),
        );
        let _seen = peer(&sock, answer).await;
        let err = ApiClient::new(&sock)
            .send(&ApiCall::action(ActionType::InstanceStart))
            .await
            .unwrap_err();
        match err {
            ApiError::Fault {
                status: 400,
                ref fault_message,
                ..
            } => assert!(fault_message.contains("not supported")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let d = tempfile::tempdir().unwrap();
        let err = ApiClient::new(&d.path().join("none"))
            .send(&ApiCall::action(ActionType::InstanceStart))
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Connect { .. }));
    }
}
