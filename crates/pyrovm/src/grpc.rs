//! gRPC surface `tvm.v1.Execution` (tonic): a thin adapter over the same
//! validation and core as HTTP, served on the same port (HTTP/2), with gRPC health
//! checking and server reflection. Validation errors → INVALID_ARGUMENT, capacity →
//! RESOURCE_EXHAUSTED with RetryInfo, shutting down → UNAVAILABLE, auth →
//! UNAUTHENTICATED (see `middleware`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::Stream as FutStream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tvm_api::{
    validate, ExecuteRequest, ExecuteResponse, ExecutionStatus, FileEncoding, InputFile,
    RequestLimits,
};

use crate::core::{relay_live, CoreError, OutputChunk};
use crate::server::AppState;

#[allow(clippy::all, missing_debug_implementations, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("tvm.v1");
}

/// The encoded descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tvm_descriptor.bin"));

#[derive(Debug, Clone)]
pub struct ExecutionService {
    state: Arc<AppState>,
}

impl ExecutionService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// gRPC request → the one request type every surface validates.
pub fn to_request(r: pb::ExecuteRequest) -> ExecuteRequest {
    let l = r.limits.unwrap_or_default();
    ExecuteRequest {
        language: r.language,
        code: r.code,
        stdin: r.stdin,
        args: r.args,
        env: r.env.into_iter().collect(),
        files: r
            .files
            .into_iter()
            .map(|f| InputFile {
                path: f.path,
                content: base64::engine::general_purpose::STANDARD.encode(f.content),
                encoding: FileEncoding::Base64,
            })
            .collect(),
        limits: RequestLimits {
            timeout_ms: l.timeout_ms,
            memory_mb: l.memory_mb,
            vcpus: l.vcpus,
            max_output_bytes: l.max_output_bytes,
            max_processes: l.max_processes,
            ..Default::default()
        },
        files_out: r.files_out,
        tests: Vec::new(),
    }
}

fn status_of(s: ExecutionStatus) -> pb::Status {
    match s {
        ExecutionStatus::Completed => pb::Status::Completed,
        ExecutionStatus::Timeout => pb::Status::Timeout,
        ExecutionStatus::MemoryLimit => pb::Status::MemoryLimit,
        ExecutionStatus::OutputLimit => pb::Status::OutputLimit,
        ExecutionStatus::SandboxError => pb::Status::SandboxError,
        ExecutionStatus::CompileError => pb::Status::SandboxError,
    }
}

pub fn to_pb(r: &ExecuteResponse, with_output: bool) -> pb::ExecuteResponse {
    pb::ExecuteResponse {
        id: r.id.clone(),
        status: status_of(r.status) as i32,
        exit_code: r.exit_code,
        signal: r.signal.clone(),
        stdout: if with_output {
            r.stdout.clone().into_bytes()
        } else {
            Vec::new()
        },
        stderr: if with_output {
            r.stderr.clone().into_bytes()
        } else {
            Vec::new()
        },
        stdout_truncated: r.stdout_truncated,
        stderr_truncated: r.stderr_truncated,
        timings_ms: Some(pb::Timings {
            queued: r.timings_ms.queued,
            vm_start: r.timings_ms.vm_start,
            exec: r.timings_ms.exec,
            total: r.timings_ms.total,
        }),
        backend: r.backend.clone(),
        error: r.error.clone(),
        files: r
            .files
            .iter()
            .flatten()
            .map(|f| pb::File {
                path: f.path.clone(),
                content: base64::engine::general_purpose::STANDARD
                    .decode(&f.content)
                    .unwrap_or_default(),
            })
            .collect(),
        files_truncated: r.files_truncated,
    }
}

/// Core refusals as gRPC statuses.
pub fn core_status(e: CoreError) -> Status {
    match e {
        CoreError::AtCapacity(_) => Status::with_error_details(
            tonic::Code::ResourceExhausted,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        ),
        CoreError::ShuttingDown | CoreError::NoSpace { .. } => Status::with_error_details(
            tonic::Code::Unavailable,
            e.to_string(),
            ErrorDetails::with_retry_info(Some(Duration::from_secs(5))),
        ),
    }
}

impl ExecutionService {
    // tonic's own handler signatures return `Status` by value; boxing here would only move the cost.
    #[allow(clippy::result_large_err)]
    fn command(&self, r: pb::ExecuteRequest) -> Result<tvm_api::ExecuteCommand, Status> {
        ready(&self.state)?;
        validate(to_request(r), self.state.languages, &self.state.bounds)
            .map_err(|e| invalid(&self.state, e))
    }
}

/// UNAVAILABLE (as `shutting_down`) once shutdown has begun.
#[allow(clippy::result_large_err)]
pub(crate) fn ready(state: &AppState) -> Result<(), Status> {
    if state.ready.load(std::sync::atomic::Ordering::Acquire) {
        Ok(())
    } else {
        Err(core_status(CoreError::ShuttingDown))
    }
}

/// A refused request: INVALID_ARGUMENT with a BadRequest violation naming the code.
pub(crate) fn invalid(state: &AppState, e: tvm_api::ValidationError) -> Status {
    state.executor.metrics.rejected("invalid");
    let mut details = ErrorDetails::new();
    details.add_bad_request_violation(e.code(), e.to_string());
    Status::with_error_details(tonic::Code::InvalidArgument, e.to_string(), details)
}

pub(crate) type EventStream =
    Pin<Box<dyn FutStream<Item = Result<pb::ExecuteEvent, Status>> + Send>>;

/// Relays a job's live output as `ExecuteEvent`s, then its `exit`. A client that goes
/// away drops `chunks`; what that does to the job is the job's choice (a sandbox
/// exec runs on to its end, its output dropped).
pub(crate) fn event_stream(
    mut chunks: mpsc::Receiver<OutputChunk>,
    job: tokio::task::JoinHandle<ExecuteResponse>,
) -> EventStream {
    let (event_tx, event_rx) = mpsc::channel::<Result<pb::ExecuteEvent, Status>>(32);
    tokio::spawn(async move {
        use pb::execute_event::Event;
        let done = relay_live(&mut chunks, &event_tx, |c| {
            let event = match c.stream {
                tvm_proto::Stream::Stdout => Event::Stdout(c.data),
                tvm_proto::Stream::Stderr => Event::Stderr(c.data),
            };
            Some(Ok(pb::ExecuteEvent { event: Some(event) }))
        })
        .await;
        if !done {
            return;
        }
        let last = match job.await {
            Ok(resp) => Ok(pb::ExecuteEvent {
                event: Some(Event::Exit(to_pb(&resp, false))),
            }),
            Err(_) => Err(Status::internal("execution task failed")),
        };
        let _ = event_tx.send(last).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(event_rx))
}

#[tonic::async_trait]
impl pb::execution_server::Execution for ExecutionService {
    async fn execute(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let cmd = self.command(req.into_inner())?;
        let resp = self
            .state
            .executor
            .execute(cmd)
            .await
            .map_err(core_status)?;
        Ok(Response::new(to_pb(&resp, true)))
    }

    type ExecuteStreamStream = EventStream;

    async fn execute_stream(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStreamStream>, Status> {
        let cmd = self.command(req.into_inner())?;
        let admitted = self.state.executor.admit().map_err(core_status)?;
        let (chunk_tx, chunk_rx) = mpsc::channel::<OutputChunk>(32);
        let state = self.state.clone();
        // A client that cancels drops chunk_rx, which destroys the VM.
        let job =
            tokio::spawn(async move { state.executor.run(admitted, cmd, Some(chunk_tx)).await });
        Ok(Response::new(event_stream(chunk_rx, job)))
    }

    async fn list_languages(
        &self,
        _req: Request<pb::ListLanguagesRequest>,
    ) -> Result<Response<pb::ListLanguagesResponse>, Status> {
        Ok(Response::new(pb::ListLanguagesResponse {
            languages: self
                .state
                .languages
                .iter()
                .map(|l| pb::Language {
                    name: l.name.clone(),
                    version: l.version.clone(),
                    file_name: l.file_name.clone(),
                    aliases: l.aliases.clone(),
                })
                .collect(),
        }))
    }
}

/// The gRPC services (Execution, Sandboxes, health, reflection) as an axum router to merge into the HTTP one.
pub fn router(state: Arc<AppState>) -> axum::Router {
    use futures_util::FutureExt as _;
    let (reporter, health) = tonic_health::server::health_reporter();
    // An uncontended tokio lock: this completes on the first poll.
    let serving = reporter.set_serving::<pb::execution_server::ExecutionServer<ExecutionService>>();
    if serving.now_or_never().is_none() {
        tracing::warn!("could not mark tvm.v1.Execution as SERVING");
    }
    let serving = reporter.set_serving::<pb::sandboxes_server::SandboxesServer<
        crate::grpc_sandboxes::SandboxesService,
    >>();
    if serving.now_or_never().is_none() {
        tracing::warn!("could not mark tvm.v1.Sandboxes as SERVING");
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let mut routes = tonic::service::Routes::new(pb::execution_server::ExecutionServer::new(
        ExecutionService::new(state.clone()),
    ))
    .add_service(crate::grpc_sandboxes::server(state))
    .add_service(health);
    if let Ok(r) = reflection {
        routes = routes.add_service(r);
    }
    routes.into_axum_router()
}
