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
    validate, CaseLimits, CaseResult, ExecuteRequest, ExecuteResponse, ExecutionStatus,
    FileEncoding, InputFile, RequestLimits, StageResult, TestCase, Verdict,
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
            compile_timeout_ms: l.compile_timeout_ms,
            compile_memory_mb: l.compile_memory_mb,
        },
        files_out: r.files_out,
        tests: r.tests.into_iter().map(to_case).collect(),
        network: r.network.map(network_of),
    }
}

/// gRPC `Network` → the request's `network`.
pub fn network_of(n: pb::Network) -> tvm_api::NetworkRequest {
    tvm_api::NetworkRequest {
        allow: n.allow,
        max_bytes_in: n.max_bytes_in,
        max_bytes_out: n.max_bytes_out,
        max_connections: n.max_connections,
    }
}

fn network_to_pb(u: &tvm_api::NetworkUsage) -> pb::NetworkUsage {
    pb::NetworkUsage {
        bytes_in: u.bytes_in,
        bytes_out: u.bytes_out,
        connections: u.connections,
        refused: u
            .refused
            .iter()
            .map(|r| pb::RefusedDestination {
                host: r.host.clone(),
                port: u32::from(r.port),
                reason: r.reason.clone(),
            })
            .collect(),
    }
}

fn to_case(c: pb::TestCase) -> TestCase {
    let l = c.limits.unwrap_or_default();
    TestCase {
        stdin: c.stdin,
        args: c.args,
        expected_stdout: c.expected_stdout,
        limits: CaseLimits {
            timeout_ms: l.timeout_ms,
            memory_mb: l.memory_mb,
            max_output_bytes: l.max_output_bytes,
            max_processes: l.max_processes,
        },
    }
}

fn status_of(s: ExecutionStatus) -> pb::Status {
    match s {
        ExecutionStatus::Completed => pb::Status::Completed,
        ExecutionStatus::Timeout => pb::Status::Timeout,
        ExecutionStatus::MemoryLimit => pb::Status::MemoryLimit,
        ExecutionStatus::OutputLimit => pb::Status::OutputLimit,
        ExecutionStatus::SandboxError => pb::Status::SandboxError,
        ExecutionStatus::CompileError => pb::Status::CompileError,
    }
}

fn verdict_of(v: Option<Verdict>) -> pb::Verdict {
    match v {
        None => pb::Verdict::Unspecified,
        Some(Verdict::Accepted) => pb::Verdict::Accepted,
        Some(Verdict::WrongAnswer) => pb::Verdict::WrongAnswer,
        Some(Verdict::TimeLimit) => pb::Verdict::TimeLimit,
        Some(Verdict::MemoryLimit) => pb::Verdict::MemoryLimit,
        Some(Verdict::RuntimeError) => pb::Verdict::RuntimeError,
    }
}

fn stage_to_pb(s: &StageResult) -> pb::StageResult {
    pb::StageResult {
        status: status_of(s.status) as i32,
        exit_code: s.exit_code,
        signal: s.signal.clone(),
        stdout: s.stdout.clone().into_bytes(),
        stderr: s.stderr.clone().into_bytes(),
        stdout_truncated: s.stdout_truncated,
        stderr_truncated: s.stderr_truncated,
        duration_ms: s.duration_ms,
    }
}

fn case_to_pb(c: &CaseResult) -> pb::CaseResult {
    pb::CaseResult {
        status: status_of(c.status) as i32,
        exit_code: c.exit_code,
        signal: c.signal.clone(),
        stdout: c.stdout.clone().into_bytes(),
        stderr: c.stderr.clone().into_bytes(),
        stdout_truncated: c.stdout_truncated,
        stderr_truncated: c.stderr_truncated,
        duration_ms: c.duration_ms,
        verdict: verdict_of(c.verdict) as i32,
        error: c.error.clone(),
    }
}

/// The response as gRPC. Without `with_output` (a stream's `exit` event) the
/// top-level stdout and stderr are left out, having been streamed; the compile
/// stage's and the test cases' output never are, so they stay.
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
        compile: r.compile.as_ref().map(stage_to_pb),
        tests: r.tests.iter().flatten().map(case_to_pb).collect(),
        verdict: verdict_of(r.verdict) as i32,
        network: r.network.as_ref().map(network_to_pb),
    }
}

/// Core refusals as gRPC statuses.
pub fn core_status(e: CoreError) -> Status {
    let code = if e.is_overload() {
        tonic::Code::ResourceExhausted
    } else {
        tonic::Code::Unavailable
    };
    Status::with_error_details(
        code,
        e.to_string(),
        ErrorDetails::with_retry_info(Some(Duration::from_secs(e.retry_after_s()))),
    )
}

/// The client's deadline (`grpc-timeout`: digits and a unit, H M S m u n), if it set one.
pub(crate) fn grpc_timeout<T>(req: &Request<T>) -> Option<Duration> {
    parse_grpc_timeout(req.metadata().get("grpc-timeout")?.to_str().ok()?)
}

fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
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
        let who = crate::grpc_sandboxes::caller(&req)?;
        let deadline = grpc_timeout(&req);
        let cmd = self.command(req.into_inner())?;
        let wait = self.state.executor.wait_within(deadline, &cmd);
        let resp = self
            .state
            .executor
            .execute(&who, cmd, wait)
            .await
            .map_err(core_status)?;
        Ok(Response::new(to_pb(&resp, true)))
    }

    type ExecuteStreamStream = EventStream;

    async fn execute_stream(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStreamStream>, Status> {
        let who = crate::grpc_sandboxes::caller(&req)?;
        let deadline = grpc_timeout(&req);
        let cmd = self.command(req.into_inner())?;
        let wait = self.state.executor.wait_within(deadline, &cmd);
        let admitted = self
            .state
            .executor
            .admit(&who, wait)
            .await
            .map_err(core_status)?;
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
                    extensions: l.extensions.clone(),
                    compiled: l.compiles(),
                })
                .collect(),
        }))
    }

    async fn submit(
        &self,
        req: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecutionState>, Status> {
        crate::grpc_executions::submit(&self.state, req).await
    }

    async fn submit_batch(
        &self,
        req: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        crate::grpc_executions::submit_batch(&self.state, req).await
    }

    async fn get_execution(
        &self,
        req: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::ExecutionResult>, Status> {
        crate::grpc_executions::get(&self.state, req).await
    }

    async fn cancel_execution(
        &self,
        req: Request<pb::ExecutionRef>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        crate::grpc_executions::cancel(&self.state, req).await
    }

    async fn list_executions(
        &self,
        req: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        crate::grpc_executions::list(&self.state, req).await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_with_their_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout("1500m"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        for bad in ["", "S", "5", "5x", "-5S", "1234567890S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn request_carries_tests_and_compile_limits() {
        let r = to_request(pb::ExecuteRequest {
            language: "c".into(),
            code: "int main(){}".into(),
            limits: Some(pb::Limits {
                compile_timeout_ms: Some(30_000),
                compile_memory_mb: Some(512),
                ..Default::default()
            }),
            tests: vec![
                pb::TestCase {
                    stdin: Some("1\n".into()),
                    args: vec!["a".into()],
                    expected_stdout: Some("2\n".into()),
                    limits: Some(pb::CaseLimits {
                        timeout_ms: Some(500),
                        memory_mb: Some(64),
                        max_output_bytes: Some(10),
                        max_processes: Some(2),
                    }),
                },
                pb::TestCase::default(),
            ],
            ..Default::default()
        });
        assert_eq!(r.limits.compile_timeout_ms, Some(30_000));
        assert_eq!(r.limits.compile_memory_mb, Some(512));
        assert_eq!(
            r.tests,
            [
                TestCase {
                    stdin: Some("1\n".into()),
                    args: vec!["a".into()],
                    expected_stdout: Some("2\n".into()),
                    limits: CaseLimits {
                        timeout_ms: Some(500),
                        memory_mb: Some(64),
                        max_output_bytes: Some(10),
                        max_processes: Some(2),
                    },
                },
                TestCase::default(),
            ]
        );
    }

    fn response(status: ExecutionStatus) -> ExecuteResponse {
        ExecuteResponse {
            id: "x".into(),
            status,
            exit_code: None,
            signal: None,
            stdout: "out".into(),
            stderr: "err".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            timings_ms: tvm_api::Timings::default(),
            backend: "qemu-tcg".into(),
            error: None,
            files: None,
            files_truncated: None,
            compile: None,
            tests: None,
            verdict: None,
            network: None,
        }
    }

    fn stage(status: ExecutionStatus, exit_code: i32, stderr: &str) -> StageResult {
        StageResult {
            status,
            exit_code: Some(exit_code),
            signal: None,
            stdout: String::new(),
            stderr: stderr.into(),
            stdout_truncated: false,
            stderr_truncated: true,
            duration_ms: 7,
        }
    }

    #[test]
    fn compile_error_keeps_the_compilers_output_even_without_output() {
        let mut r = response(ExecutionStatus::CompileError);
        r.compile = Some(stage(ExecutionStatus::Completed, 1, "main.c:1: error"));
        let pb = to_pb(&r, false);
        assert_eq!(pb.status, pb::Status::CompileError as i32);
        assert!(pb.stdout.is_empty() && pb.stderr.is_empty());
        let c = pb.compile.expect("compile stage");
        assert_eq!(c.status, pb::Status::Completed as i32);
        assert_eq!((c.exit_code, c.duration_ms), (Some(1), 7));
        assert_eq!(c.stderr, b"main.c:1: error");
        assert!(c.stderr_truncated && !c.stdout_truncated);
        assert!(pb.tests.is_empty());
        assert_eq!(pb.verdict, pb::Verdict::Unspecified as i32);
    }

    #[test]
    fn cases_and_verdicts_map() {
        let case = |verdict: Option<Verdict>, status| CaseResult {
            status,
            exit_code: Some(0),
            signal: None,
            stdout: "3\n".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 4,
            verdict,
            error: None,
        };
        let mut r = response(ExecutionStatus::Completed);
        r.compile = Some(stage(ExecutionStatus::Completed, 0, "warning: x"));
        r.tests = Some(vec![
            case(Some(Verdict::Accepted), ExecutionStatus::Completed),
            case(Some(Verdict::WrongAnswer), ExecutionStatus::Completed),
            case(Some(Verdict::TimeLimit), ExecutionStatus::Timeout),
            case(Some(Verdict::MemoryLimit), ExecutionStatus::MemoryLimit),
            case(Some(Verdict::RuntimeError), ExecutionStatus::OutputLimit),
            CaseResult {
                error: Some("lost".into()),
                ..case(None, ExecutionStatus::SandboxError)
            },
        ]);
        r.verdict = Some(Verdict::WrongAnswer);
        let pb = to_pb(&r, true);
        assert_eq!(pb.verdict, pb::Verdict::WrongAnswer as i32);
        let got: Vec<_> = pb.tests.iter().map(|c| (c.status(), c.verdict())).collect();
        assert_eq!(
            got,
            [
                (pb::Status::Completed, pb::Verdict::Accepted),
                (pb::Status::Completed, pb::Verdict::WrongAnswer),
                (pb::Status::Timeout, pb::Verdict::TimeLimit),
                (pb::Status::MemoryLimit, pb::Verdict::MemoryLimit),
                (pb::Status::OutputLimit, pb::Verdict::RuntimeError),
                (pb::Status::SandboxError, pb::Verdict::Unspecified),
            ]
        );
        assert_eq!(pb.tests[0].stdout, b"3\n");
        assert_eq!(pb.tests[5].error.as_deref(), Some("lost"));
        assert_eq!(pb.compile.unwrap().stderr, b"warning: x");
    }
}
