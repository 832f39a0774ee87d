//! Async executions (`/v1/executions`): submit now, read the result later.

use serde::{Deserialize, Serialize};

use crate::types::{ApiError, ExecuteRequest, ExecuteResponse};
use crate::validate::{validate, ExecuteCommand, LimitBounds, ValidationError};
use crate::LanguageTable;

/// Where an async execution is, before (or instead of) its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AsyncStatus {
    /// Waiting for an execution slot.
    Queued,
    /// In its VM now.
    Running,
    /// Never ran: it got no slot (the queue timed out, the service stopped).
    Rejected,
}

/// An async execution that has no result yet, or never will (`rejected`, with the
/// reason in `error`). `POST /v1/executions` answers this with `queued`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionState {
    pub id: String,
    pub status: AsyncStatus,
    /// Milliseconds since it was submitted.
    pub age_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// `GET /v1/executions/{id}`: the result once it ran (its `status` is then one of
/// the execution statuses: `completed`, `timeout`, ...), else where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ExecutionOutcome {
    Done(Box<ExecuteResponse>),
    Pending(ExecutionState),
}

/// `POST /v1/executions/batch` body: up to the node's `max_batch` requests, each a
/// `/v1/execute` body. All are accepted, or none (the error names the first bad one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub executions: Vec<ExecuteRequest>,
}

/// `POST /v1/executions/batch` answer: one state per request, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    pub executions: Vec<ExecutionState>,
}

/// `GET /v1/executions`: the caller's async executions on this node, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionList {
    pub executions: Vec<ExecutionSummary>,
}

/// One entry of [`ExecutionList`]: `status` is an [`AsyncStatus`] or, once it ran,
/// the execution's own status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionSummary {
    pub id: String,
    pub status: String,
    pub age_ms: u64,
}

/// A batch body → one typed command per request, or the first error, named by
/// its index. `max` is the node's batch limit.
pub fn validate_batch(
    body: &[u8],
    max: usize,
    table: &LanguageTable,
    bounds: &LimitBounds,
) -> Result<Vec<ExecuteCommand>, ValidationError> {
    let batch: BatchRequest =
        serde_json::from_slice(body).map_err(|e| ValidationError::InvalidJson(e.to_string()))?;
    if batch.executions.is_empty() || batch.executions.len() > max {
        return Err(ValidationError::BatchSize {
            max,
            got: batch.executions.len(),
        });
    }
    batch
        .executions
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            validate(r, table, bounds).map_err(|e| ValidationError::InBatch {
                index: i,
                inner: Box::new(e),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(v: serde_json::Value) -> Result<Vec<ExecuteCommand>, ValidationError> {
        validate_batch(
            v.to_string().as_bytes(),
            3,
            LanguageTable::builtin(),
            &LimitBounds::default(),
        )
    }

    #[test]
    fn a_batch_validates_every_request() {
        let ok = batch(serde_json::json!({"executions": [
            {"language": "python", "code": "print(1)"},
            {"language": "bash", "code": "echo 2", "stdin": "x"},
        ]}))
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[1].language.name, "bash");
    }

    #[test]
    fn a_bad_request_names_its_index_and_the_batch_is_refused() {
        let e = batch(serde_json::json!({"executions": [
            {"language": "python", "code": "print(1)"},
            {"language": "cobol", "code": "x"},
        ]}))
        .unwrap_err();
        assert_eq!(e.code(), "unknown_language");
        assert!(e.to_string().starts_with("executions[1]: "), "{e}");
    }

    #[test]
    fn batch_size_is_bounded_both_ways() {
        let one = serde_json::json!({"language": "bash", "code": "true"});
        for n in [0, 4] {
            let e = batch(serde_json::json!({"executions": vec![one.clone(); n]})).unwrap_err();
            assert_eq!(e.code(), "batch_size", "{n}");
        }
        let e = batch(serde_json::json!({"executions": [], "extra": 1})).unwrap_err();
        assert_eq!(e.code(), "invalid_json");
    }

    #[test]
    fn outcomes_serialize_as_the_result_or_the_state() {
        let pending = ExecutionOutcome::Pending(ExecutionState {
            id: "x".into(),
            status: AsyncStatus::Queued,
            age_ms: 3,
            error: None,
        });
        assert_eq!(
            serde_json::to_value(&pending).unwrap(),
            serde_json::json!({"id": "x", "status": "queued", "age_ms": 3})
        );
    }
}
