//! The async half of `tvm.v1.Execution` (`Submit`, `SubmitBatch`, `GetExecution`,
//! `CancelExecution`, `ListExecutions`): a thin adapter over
//! [`crate::executions::Executions`], the same store as `/v1/executions` (see
//! `api::executions`), so an execution submitted over HTTP is readable over gRPC.
//!
//! The service's trait impl in `grpc` delegates here. Refusals: invalid requests →
//! INVALID_ARGUMENT (a batch's names its index, `executions[i]: ...`), an unknown
//! or another token's id → NOT_FOUND, a full store → RESOURCE_EXHAUSTED with
//! RetryInfo; each of the last two carries an `ErrorInfo` whose `reason` is the
//! HTTP error code (domain `tvm`). Core refusals map as `Execute`'s do.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tvm_api::{
    validate, AsyncStatus, ExecuteCommand, ExecutionOutcome, ExecutionState, ExecutionSummary,
    LanguageTable, LimitBounds, ValidationError,
};

use crate::executions::AsyncError;
use crate::grpc::{core_status, grpc_timeout, invalid, pb, ready, to_pb, to_request};
use crate::grpc_sandboxes::{caller, ERROR_DOMAIN};
use crate::server::AppState;

/// How long before the client's deadline a long poll answers, so the client gets
/// the state rather than DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

/// An async refusal as a gRPC status (HTTP's in `server::Failure`).
pub fn async_status(e: AsyncError) -> Status {
    let (code, reason) = match e {
        AsyncError::Core(core) => return core_status(core),
        AsyncError::NotFound => (tonic::Code::NotFound, "not_found"),
        AsyncError::TooMany { .. } | AsyncError::NoRoom { .. } => {
            (tonic::Code::ResourceExhausted, "async_full")
        }
    };
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    if let Some(s) = e.retry_after_s() {
        details.set_retry_info(Some(Duration::from_secs(s)));
    }
    Status::with_error_details(code, e.to_string(), details)
}

fn async_status_of(s: AsyncStatus) -> pb::AsyncStatus {
    match s {
        AsyncStatus::Queued => pb::AsyncStatus::Queued,
        AsyncStatus::Running => pb::AsyncStatus::Running,
        AsyncStatus::Rejected => pb::AsyncStatus::Rejected,
    }
}

pub fn to_pb_state(s: &ExecutionState) -> pb::ExecutionState {
    pb::ExecutionState {
        id: s.id.clone(),
        status: async_status_of(s.status) as i32,
        age_ms: s.age_ms,
        error_code: s.error.as_ref().map(|e| e.code.clone()),
        error_message: s.error.as_ref().map(|e| e.message.clone()),
    }
}

pub fn to_pb_outcome(o: &ExecutionOutcome) -> pb::ExecutionResult {
    use pb::execution_result::Outcome;
    pb::ExecutionResult {
        outcome: Some(match o {
            ExecutionOutcome::Done(resp) => Outcome::Done(to_pb(resp, true)),
            ExecutionOutcome::Pending(state) => Outcome::Pending(to_pb_state(state)),
        }),
    }
}

fn to_pb_summary(s: ExecutionSummary) -> pb::ExecutionSummary {
    pb::ExecutionSummary {
        id: s.id,
        status: s.status,
        age_ms: s.age_ms,
    }
}

/// A gRPC batch → one typed command per request, or the first error, named by its
/// index (as `tvm_api::validate_batch` does for a JSON body). `max` is the node's
/// batch limit.
pub fn validate_pb_batch(
    reqs: Vec<pb::ExecuteRequest>,
    max: usize,
    table: &LanguageTable,
    bounds: &LimitBounds,
) -> Result<Vec<ExecuteCommand>, ValidationError> {
    if reqs.is_empty() || reqs.len() > max {
        return Err(ValidationError::BatchSize {
            max,
            got: reqs.len(),
        });
    }
    reqs.into_iter()
        .enumerate()
        .map(|(i, r)| {
            validate(to_request(r), table, bounds).map_err(|e| ValidationError::InBatch {
                index: i,
                inner: Box::new(e),
            })
        })
        .collect()
}

// tonic's own handler signatures return `Status` by value; boxing here would only move the cost.
#[allow(clippy::result_large_err)]
fn accept(
    st: &AppState,
    who: &tvm_http::middleware::Caller,
    cmds: Vec<ExecuteCommand>,
) -> Result<Vec<pb::ExecutionState>, Status> {
    let states = st.executions.submit(who, cmds).map_err(async_status)?;
    Ok(states.iter().map(to_pb_state).collect())
}

pub(crate) async fn submit(
    st: &AppState,
    req: Request<pb::ExecuteRequest>,
) -> Result<Response<pb::ExecutionState>, Status> {
    let who = caller(&req)?;
    ready(st)?;
    let cmd = validate(to_request(req.into_inner()), st.languages, &st.bounds)
        .map_err(|e| invalid(st, e))?;
    let state = accept(st, &who, vec![cmd])?
        .pop()
        .ok_or_else(|| Status::internal("internal error; see the service log"))?;
    Ok(Response::new(state))
}

pub(crate) async fn submit_batch(
    st: &AppState,
    req: Request<pb::SubmitBatchRequest>,
) -> Result<Response<pb::SubmitBatchResponse>, Status> {
    let who = caller(&req)?;
    ready(st)?;
    let cmds = validate_pb_batch(
        req.into_inner().executions,
        st.executions.settings().max_batch,
        st.languages,
        &st.bounds,
    )
    .map_err(|e| invalid(st, e))?;
    Ok(Response::new(pb::SubmitBatchResponse {
        executions: accept(st, &who, cmds)?,
    }))
}

pub(crate) async fn get(
    st: &AppState,
    req: Request<pb::GetExecutionRequest>,
) -> Result<Response<pb::ExecutionResult>, Status> {
    let who = caller(&req)?;
    let deadline = grpc_timeout(&req);
    let r = req.into_inner();
    let max = st.executions.settings().max_wait;
    let wait = r.wait.then(|| {
        let w = r.timeout_ms.map_or(max, Duration::from_millis).min(max);
        deadline.map_or(w, |d| w.min(d.saturating_sub(DEADLINE_MARGIN)))
    });
    let outcome = st
        .executions
        .get(&who, &r.id, wait)
        .await
        .map_err(async_status)?;
    Ok(Response::new(to_pb_outcome(&outcome)))
}

pub(crate) async fn cancel(
    st: &AppState,
    req: Request<pb::ExecutionRef>,
) -> Result<Response<pb::CancelExecutionResponse>, Status> {
    let who = caller(&req)?;
    st.executions
        .delete(&who, &req.get_ref().id)
        .map_err(async_status)?;
    Ok(Response::new(pb::CancelExecutionResponse {}))
}

pub(crate) async fn list(
    st: &AppState,
    req: Request<pb::ListExecutionsRequest>,
) -> Result<Response<pb::ListExecutionsResponse>, Status> {
    let who = caller(&req)?;
    Ok(Response::new(pb::ListExecutionsResponse {
        executions: st
            .executions
            .list(&who)
            .into_iter()
            .map(to_pb_summary)
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(language: &str) -> pb::ExecuteRequest {
        pb::ExecuteRequest {
            language: language.into(),
            code: "true".into(),
            ..Default::default()
        }
    }

    fn batch(reqs: Vec<pb::ExecuteRequest>) -> Result<Vec<ExecuteCommand>, ValidationError> {
        validate_pb_batch(reqs, 3, LanguageTable::builtin(), &LimitBounds::default())
    }

    #[test]
    fn a_batch_validates_every_request_and_names_the_bad_one() {
        let ok = batch(vec![req("python"), req("bash")]).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].language.name, "bash");
        let e = batch(vec![req("bash"), req("cobol"), req("nope")]).unwrap_err();
        assert_eq!(e.code(), "unknown_language");
        assert!(e.to_string().starts_with("executions[1]: "), "{e}");
    }

    #[test]
    fn batch_size_is_bounded_both_ways() {
        for n in [0, 4] {
            let e = batch(vec![req("bash"); n]).unwrap_err();
            assert_eq!(e.code(), "batch_size", "{n}");
        }
    }

    #[test]
    fn states_carry_their_rejection() {
        let s = to_pb_state(&ExecutionState {
            id: "ex-1".into(),
            status: AsyncStatus::Rejected,
            age_ms: 9,
            error: Some(tvm_api::ApiError {
                code: "queue_timeout".into(),
                message: "waited too long".into(),
            }),
        });
        assert_eq!(s.status(), pb::AsyncStatus::Rejected);
        assert_eq!((s.id.as_str(), s.age_ms), ("ex-1", 9));
        assert_eq!(s.error_code.as_deref(), Some("queue_timeout"));
        assert_eq!(s.error_message.as_deref(), Some("waited too long"));
        let q = to_pb_state(&ExecutionState {
            id: "ex-2".into(),
            status: AsyncStatus::Queued,
            age_ms: 0,
            error: None,
        });
        assert_eq!(q.status(), pb::AsyncStatus::Queued);
        assert!(q.error_code.is_none() && q.error_message.is_none());
    }

    #[test]
    fn refusals_map_to_codes_with_reasons_and_retry() {
        let nf = async_status(AsyncError::NotFound);
        assert_eq!(nf.code(), tonic::Code::NotFound);
        assert_eq!(nf.get_details_error_info().unwrap().reason, "not_found");
        assert!(nf.get_details_retry_info().is_none());
        for e in [
            AsyncError::TooMany {
                held: 2,
                limit: 2,
                whose: " per token",
            },
            AsyncError::NoRoom {
                need: 10,
                free: 1,
                cap: 10,
            },
        ] {
            let s = async_status(e);
            assert_eq!(s.code(), tonic::Code::ResourceExhausted);
            assert_eq!(s.get_details_error_info().unwrap().reason, "async_full");
            assert_eq!(
                s.get_details_retry_info().unwrap().retry_delay,
                Some(Duration::from_secs(5))
            );
        }
        let down = async_status(AsyncError::Core(crate::core::CoreError::ShuttingDown));
        assert_eq!(down.code(), tonic::Code::Unavailable);
    }
}
