//! gRPC surface `tvm.v1.Sandboxes` (tonic): a thin adapter over
//! [`crate::sandbox::Sandboxes`], the same registry and validation as
//! `/v1/sandboxes` (see `api::sandboxes`), served next to `tvm.v1.Execution`.
//!
//! The caller is the [`Caller`] the token middleware put in the request's
//! extensions (anonymous when auth is off), so a sandbox made over HTTP is the same
//! sandbox over gRPC. Refusals map as HTTP's do ([`sandbox_status`]): each carries
//! an `ErrorInfo` whose `reason` is the HTTP error `code` (domain `tvm`), and the
//! retryable ones a `RetryInfo` with HTTP's `Retry-After`. Messages may carry up to
//! `max_file_bytes` of file (plus [`MESSAGE_SLACK`]); a client reading large files
//! must raise its own decoding limit (tonic's default is 4 MiB).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tvm_api::{
    validate_in_sandbox, validate_sandbox, CreateSandboxRequest, ExecuteCommand, FileListing,
    SandboxInfo, SandboxLimits, SandboxLimitsRequest,
};
use tvm_http::middleware::Caller;
use tvm_proto::FileErrorKind;

use crate::core::OutputChunk;
use crate::grpc::{core_status, event_stream, pb, to_pb, to_request, EventStream};
use crate::sandbox::SandboxError;
use crate::server::AppState;

/// Room for a message's other fields next to a file of `max_file_bytes`.
pub const MESSAGE_SLACK: usize = 64 << 10;
/// The `ErrorInfo.domain` of sandbox refusals.
pub const ERROR_DOMAIN: &str = "tvm";

#[derive(Debug, Clone)]
pub struct SandboxesService {
    state: Arc<AppState>,
}

impl SandboxesService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// The tonic server, its decoding limit sized for sandbox files (never below tonic's 4 MiB).
pub fn server(state: Arc<AppState>) -> pb::sandboxes_server::SandboxesServer<SandboxesService> {
    let limit = (state.sandboxes.settings().max_file_bytes as usize)
        .saturating_add(MESSAGE_SLACK)
        .max(4 << 20);
    pb::sandboxes_server::SandboxesServer::new(SandboxesService::new(state))
        .max_decoding_message_size(limit)
}

/// Who is asking: set by `require_token`; absent only when no middleware ran (auth off).
/// The caller the token middleware recorded (it always does, `anonymous` when auth
/// is off); its absence is a bug, never a reason to let a request through as anyone.
#[allow(clippy::result_large_err)]
pub(crate) fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| {
        tracing::error!("a sandbox request without a caller");
        Status::internal("internal error; see the service log")
    })
}

/// gRPC create request → the one create request every surface validates.
pub fn create_request(r: pb::CreateSandboxRequest) -> CreateSandboxRequest {
    let l = r.limits.unwrap_or_default();
    CreateSandboxRequest {
        limits: SandboxLimitsRequest {
            memory_mb: l.memory_mb,
            vcpus: l.vcpus,
            max_processes: l.max_processes,
            disk_mb: l.disk_mb,
        },
        ttl_s: r.ttl_s,
        idle_timeout_s: r.idle_timeout_s,
        env: r.env.into_iter().collect(),
        network: r.network.map(crate::grpc::network_of),
        metadata: r.metadata.into_iter().collect(),
    }
}

/// What the API says about a sandbox, on the wire (every limit set).
pub fn to_pb_sandbox(s: &SandboxInfo) -> pb::Sandbox {
    pb::Sandbox {
        id: s.id.clone(),
        created_at: s.created_at.clone(),
        expires_at: s.expires_at.clone(),
        last_active_at: s.last_active_at.clone(),
        ttl_s: s.ttl_s,
        idle_timeout_s: s.idle_timeout_s,
        limits: Some(pb::SandboxLimits {
            memory_mb: Some(s.limits.memory_mb),
            vcpus: Some(s.limits.vcpus),
            max_processes: Some(s.limits.max_processes),
            disk_mb: Some(s.limits.disk_mb),
        }),
        env_keys: s.env_keys.clone(),
        execs: s.execs,
        backend: s.backend.clone(),
        vm_start_ms: s.vm_start_ms,
        metadata: s.metadata.clone().into_iter().collect(),
    }
}

/// The reverse of [`to_pb_sandbox`] (for clients); `None` when a limit is unset.
pub fn sandbox_info(s: pb::Sandbox) -> Option<SandboxInfo> {
    let l = s.limits?;
    Some(SandboxInfo {
        id: s.id,
        created_at: s.created_at,
        expires_at: s.expires_at,
        last_active_at: s.last_active_at,
        ttl_s: s.ttl_s,
        idle_timeout_s: s.idle_timeout_s,
        limits: SandboxLimits {
            memory_mb: l.memory_mb?,
            vcpus: l.vcpus?,
            max_processes: l.max_processes?,
            disk_mb: l.disk_mb?,
        },
        env_keys: s.env_keys,
        execs: s.execs,
        backend: s.backend,
        vm_start_ms: s.vm_start_ms,
        metadata: s.metadata.into_iter().collect(),
    })
}

pub fn to_pb_listing(l: FileListing) -> pb::ListFilesResponse {
    pb::ListFilesResponse {
        path: l.path,
        entries: l
            .entries
            .into_iter()
            .map(|e| pb::FileEntry {
                name: e.name,
                r#type: e.kind,
                size: e.size,
            })
            .collect(),
        truncated: l.truncated,
    }
}

/// gRPC code and retry delay of each sandbox refusal (HTTP's in
/// `api::sandboxes::status_of`; 410 Gone has no gRPC twin: FAILED_PRECONDITION).
fn code_of(e: &SandboxError) -> (tonic::Code, Option<Duration>) {
    use tonic::Code;
    match e {
        SandboxError::NotFound(_) => (Code::NotFound, None),
        SandboxError::Ended { .. } => (Code::FailedPrecondition, None),
        SandboxError::TooMany { .. } => (Code::ResourceExhausted, Some(Duration::from_secs(5))),
        SandboxError::Busy { .. } => (Code::Aborted, Some(Duration::from_secs(1))),
        // Mapped by `core_status` before it gets here.
        SandboxError::Core(_) => (Code::Unavailable, Some(Duration::from_secs(5))),
        SandboxError::File { kind, .. } => match kind {
            FileErrorKind::NotFound => (Code::NotFound, None),
            FileErrorKind::InvalidPath | FileErrorKind::WrongType | FileErrorKind::Io => {
                (Code::InvalidArgument, None)
            }
            FileErrorKind::TooLarge => (Code::ResourceExhausted, None),
            FileErrorKind::Exists => (Code::AlreadyExists, None),
            FileErrorKind::Denied => (Code::PermissionDenied, None),
        },
        SandboxError::NoProcess(_) => (Code::NotFound, None),
        SandboxError::Invalid(_) => (Code::InvalidArgument, None),
        SandboxError::UploadTooLarge { .. } => (Code::ResourceExhausted, None),
        SandboxError::StartFailed(_) => (Code::Unavailable, Some(Duration::from_secs(1))),
        SandboxError::Internal => (Code::Internal, None),
    }
}

/// A sandbox refusal as a gRPC status: the code of [`code_of`], the error's message,
/// `ErrorInfo{reason: <HTTP code>}`, and `RetryInfo` when it is worth retrying.
pub fn sandbox_status(e: SandboxError) -> Status {
    if let SandboxError::Core(core) = e {
        return core_status(core);
    }
    let (code, retry) = code_of(&e);
    let (_, reason, _) = crate::api::sandboxes::status_of(&e);
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    if retry.is_some() {
        details.set_retry_info(retry);
    }
    Status::with_error_details(code, e.to_string(), details)
}

impl SandboxesService {
    // tonic's own handler signatures return `Status` by value; boxing here would only move the cost.
    #[allow(clippy::result_large_err)]
    fn exec_command(&self, r: Option<pb::ExecuteRequest>) -> Result<ExecuteCommand, Status> {
        crate::grpc::ready(&self.state)?;
        validate_in_sandbox(
            to_request(r.unwrap_or_default()),
            self.state.languages,
            &self.state.bounds,
        )
        .map_err(|e| crate::grpc::invalid(&self.state, e))
    }
}

#[tonic::async_trait]
impl pb::sandboxes_server::Sandboxes for SandboxesService {
    async fn create(
        &self,
        req: Request<pb::CreateSandboxRequest>,
    ) -> Result<Response<pb::Sandbox>, Status> {
        let who = caller(&req)?;
        crate::grpc::ready(&self.state)?;
        let st = &self.state;
        let cmd = validate_sandbox(
            create_request(req.into_inner()),
            &st.bounds,
            &st.sandboxes.settings().bounds,
        )
        .map_err(|e| crate::grpc::invalid(&self.state, e))?;
        let info = st
            .sandboxes
            .create(&st.executor, &who, cmd)
            .await
            .map_err(sandbox_status)?;
        Ok(Response::new(to_pb_sandbox(&info)))
    }

    async fn get(&self, req: Request<pb::SandboxRef>) -> Result<Response<pb::Sandbox>, Status> {
        let who = caller(&req)?;
        let st = &self.state;
        let info = st
            .sandboxes
            .info(&st.executor, &who, &req.get_ref().id)
            .map_err(sandbox_status)?;
        Ok(Response::new(to_pb_sandbox(&info)))
    }

    async fn list(
        &self,
        req: Request<pb::ListSandboxesRequest>,
    ) -> Result<Response<pb::ListSandboxesResponse>, Status> {
        let who = caller(&req)?;
        let md = req.metadata();
        let forwarded = md.contains_key(crate::cluster::FORWARDED);
        let authorization = md
            .get("authorization")
            .and_then(|v| axum::http::HeaderValue::from_bytes(v.as_bytes()).ok());
        let list =
            crate::cluster::list_sandboxes(&self.state, &who, authorization.as_ref(), forwarded)
                .await;
        Ok(Response::new(pb::ListSandboxesResponse {
            sandboxes: list.sandboxes.iter().map(to_pb_sandbox).collect(),
            unreachable_nodes: list.unreachable_nodes,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::SandboxRef>,
    ) -> Result<Response<pb::DeleteSandboxResponse>, Status> {
        let who = caller(&req)?;
        self.state
            .sandboxes
            .delete(&who, &req.get_ref().id)
            .await
            .map_err(sandbox_status)?;
        Ok(Response::new(pb::DeleteSandboxResponse {}))
    }

    async fn execute(
        &self,
        req: Request<pb::SandboxExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let who = caller(&req)?;
        let pb::SandboxExecuteRequest {
            sandbox_id,
            request,
        } = req.into_inner();
        let cmd = self.exec_command(request)?;
        let st = &self.state;
        let resp = st
            .sandboxes
            .execute(&st.executor, &who, &sandbox_id, cmd)
            .await
            .map_err(sandbox_status)?;
        Ok(Response::new(to_pb(&resp, true)))
    }

    type ExecuteStreamStream = EventStream;

    async fn execute_stream(
        &self,
        req: Request<pb::SandboxExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStreamStream>, Status> {
        let who = caller(&req)?;
        let pb::SandboxExecuteRequest {
            sandbox_id,
            request,
        } = req.into_inner();
        let cmd = self.exec_command(request)?;
        // Every refusal (no such sandbox, busy, at capacity, a file) happens here,
        // so it is a status, not a broken stream.
        let prepared = self
            .state
            .sandboxes
            .prepare_exec(&self.state.executor, &who, &sandbox_id, &cmd)
            .await
            .map_err(sandbox_status)?;
        let (chunk_tx, chunk_rx) = mpsc::channel::<OutputChunk>(32);
        let state = self.state.clone();
        let job = tokio::spawn(async move {
            state
                .sandboxes
                .run_exec(&state.executor, prepared, cmd, Some(chunk_tx))
                .await
        });
        Ok(Response::new(event_stream(chunk_rx, job)))
    }

    async fn write_file(
        &self,
        req: Request<pb::WriteFileRequest>,
    ) -> Result<Response<pb::WriteFileResponse>, Status> {
        let who = caller(&req)?;
        let pb::WriteFileRequest {
            sandbox_id,
            path,
            content,
        } = req.into_inner();
        let written = self
            .state
            .sandboxes
            .write_file(&who, &sandbox_id, path, content)
            .await
            .map_err(sandbox_status)?;
        Ok(Response::new(pb::WriteFileResponse {
            path: written.path,
            size: written.size,
        }))
    }

    async fn read_file(
        &self,
        req: Request<pb::FileRef>,
    ) -> Result<Response<pb::ReadFileResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        let content = self
            .state
            .sandboxes
            .read_file(&who, &r.sandbox_id, &r.path)
            .await
            .map_err(sandbox_status)?;
        Ok(Response::new(pb::ReadFileResponse { content }))
    }

    async fn list_files(
        &self,
        req: Request<pb::FileRef>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let who = caller(&req)?;
        let r = req.get_ref();
        // As HTTP: `dir/` and `dir` list the same directory; "" is the work dir.
        let listing = self
            .state
            .sandboxes
            .list_dir(&who, &r.sandbox_id, r.path.trim_end_matches('/'))
            .await
            .map_err(sandbox_status)?;
        Ok(Response::new(to_pb_listing(listing)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CoreError;
    use crate::sandbox::EndReason;
    use tonic::Code;
    use tvm_api::FileEntry;

    fn info() -> SandboxInfo {
        SandboxInfo {
            id: "sb-1".into(),
            created_at: "2026-01-01T00:00:00.000Z".into(),
            expires_at: "2026-01-01T00:10:00.000Z".into(),
            last_active_at: "2026-01-01T00:01:00.000Z".into(),
            ttl_s: 600,
            idle_timeout_s: 120,
            limits: SandboxLimits {
                memory_mb: 256,
                vcpus: 1,
                max_processes: 64,
                disk_mb: 64,
            },
            env_keys: vec!["A".into(), "B".into()],
            execs: 3,
            backend: "qemu-tcg".into(),
            metadata: [("team".to_string(), "a".to_string())].into(),
            vm_start_ms: 420,
        }
    }

    #[test]
    fn sandbox_info_round_trips_with_every_limit_set() {
        let pb = to_pb_sandbox(&info());
        let l = pb.limits.expect("limits");
        assert_eq!(
            (l.memory_mb, l.vcpus, l.max_processes, l.disk_mb),
            (Some(256), Some(1), Some(64), Some(64))
        );
        assert_eq!(pb.env_keys, ["A", "B"]);
        assert_eq!(sandbox_info(pb.clone()), Some(info()));

        let mut partial = pb.clone();
        partial.limits.as_mut().unwrap().disk_mb = None;
        assert_eq!(sandbox_info(partial), None);
        let mut none = pb;
        none.limits = None;
        assert_eq!(sandbox_info(none), None);
    }

    #[test]
    fn create_request_keeps_unset_fields_unset() {
        assert_eq!(
            create_request(pb::CreateSandboxRequest::default()),
            CreateSandboxRequest::default()
        );
        let mut r = pb::CreateSandboxRequest {
            limits: Some(pb::SandboxLimits {
                memory_mb: Some(512),
                disk_mb: Some(128),
                ..Default::default()
            }),
            ttl_s: Some(30),
            idle_timeout_s: None,
            env: HashMap::new(),
            network: None,
            metadata: HashMap::new(),
        };
        r.env.insert("K".into(), "v".into());
        let c = create_request(r);
        assert_eq!(c.limits.memory_mb, Some(512));
        assert_eq!(c.limits.disk_mb, Some(128));
        assert_eq!(c.limits.vcpus, None);
        assert_eq!(c.ttl_s, Some(30));
        assert_eq!(c.idle_timeout_s, None);
        assert_eq!(c.env["K"], "v");
        // And it validates as the HTTP body would.
        let cmd = validate_sandbox(
            c,
            &tvm_api::LimitBounds::default(),
            &tvm_api::SandboxBounds::default(),
        )
        .unwrap();
        assert_eq!(cmd.limits.memory_mb, 512);
        assert_eq!(cmd.idle_timeout_s, 120);
    }

    #[test]
    fn listing_names_the_entry_type() {
        let l = to_pb_listing(FileListing {
            path: "out".into(),
            truncated: false,
            entries: vec![
                FileEntry {
                    name: "a.txt".into(),
                    kind: "file".into(),
                    size: 5,
                },
                FileEntry {
                    name: "d".into(),
                    kind: "dir".into(),
                    size: 0,
                },
            ],
        });
        assert_eq!(l.path, "out");
        let got: Vec<_> = l
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.r#type.as_str(), e.size))
            .collect();
        assert_eq!(got, [("a.txt", "file", 5), ("d", "dir", 0)]);
    }

    fn file(kind: FileErrorKind) -> SandboxError {
        SandboxError::File {
            kind,
            message: "m".into(),
        }
    }

    #[test]
    fn refusals_map_to_codes_reasons_and_retries() {
        let cases: Vec<(SandboxError, Code, &str, Option<u64>)> = vec![
            (
                SandboxError::NotFound("sb-x".into()),
                Code::NotFound,
                "not_found",
                None,
            ),
            (
                SandboxError::Ended {
                    id: "sb-x".into(),
                    reason: EndReason::Ttl,
                },
                Code::FailedPrecondition,
                "sandbox_ended",
                None,
            ),
            (
                SandboxError::TooMany {
                    scope: "per-token",
                    max: 2,
                },
                Code::ResourceExhausted,
                "sandbox_limit",
                Some(5),
            ),
            (
                SandboxError::Busy {
                    id: "sb-x".into(),
                    waited_ms: 10,
                },
                Code::Aborted,
                "sandbox_busy",
                Some(1),
            ),
            (
                file(FileErrorKind::NotFound),
                Code::NotFound,
                "file_not_found",
                None,
            ),
            (
                file(FileErrorKind::InvalidPath),
                Code::InvalidArgument,
                "invalid_path",
                None,
            ),
            (
                file(FileErrorKind::WrongType),
                Code::InvalidArgument,
                "wrong_file_type",
                None,
            ),
            (
                file(FileErrorKind::Io),
                Code::InvalidArgument,
                "file_error",
                None,
            ),
            (
                file(FileErrorKind::TooLarge),
                Code::ResourceExhausted,
                "file_too_large",
                None,
            ),
            (
                SandboxError::UploadTooLarge { got: 9, max: 8 },
                Code::ResourceExhausted,
                "file_too_large",
                None,
            ),
            (
                SandboxError::StartFailed("boom".into()),
                Code::Unavailable,
                "sandbox_error",
                Some(1),
            ),
        ];
        for (e, code, reason, retry) in cases {
            let message = e.to_string();
            let s = sandbox_status(e);
            assert_eq!(s.code(), code, "{message}");
            assert_eq!(s.message(), message);
            assert_eq!(
                s.get_details_error_info().expect("ErrorInfo").reason,
                reason
            );
            assert_eq!(
                s.get_details_retry_info().and_then(|r| r.retry_delay),
                retry.map(Duration::from_secs),
                "{message}"
            );
        }
    }

    #[test]
    fn ended_says_why_and_core_errors_reuse_the_execution_mapping() {
        let s = sandbox_status(SandboxError::Ended {
            id: "sb-x".into(),
            reason: EndReason::Idle,
        });
        assert!(s.message().contains("has ended"), "{s:?}");
        assert!(s.message().contains("idle"), "{s:?}");

        let full = CoreError::AtCapacity {
            slots: 2,
            queued: 16,
            retry_after_s: 3,
        };
        for core in [
            full.clone(),
            CoreError::QueueTimeout {
                waited_ms: 30_000,
                retry_after_s: 7,
            },
            CoreError::ShuttingDown,
            CoreError::NoSpace { free_kib: 1 },
        ] {
            let direct = core_status(core.clone());
            let s = sandbox_status(SandboxError::Core(core));
            assert_eq!(s.code(), direct.code());
            assert_eq!(s.message(), direct.message());
            assert_eq!(
                s.get_details_retry_info().and_then(|r| r.retry_delay),
                direct.get_details_retry_info().and_then(|r| r.retry_delay)
            );
        }
        assert_eq!(
            sandbox_status(SandboxError::Core(full)).code(),
            Code::ResourceExhausted
        );
    }
}
