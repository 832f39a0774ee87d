//! The public shape of TVM: request/response types of the HTTP API, the language
//! table, and the pure validation that turns a request into a typed
//! [`ExecuteCommand`]. Handlers parse and validate with this crate; the core never
//! sees an unvalidated request.

mod cases;
mod executions;
mod languages;
mod network;
mod sandbox;
mod types;
mod validate;
mod verdict;

pub use cases::CaseCommand;
pub use executions::{
    validate_batch, AsyncStatus, BatchAccepted, BatchRequest, ExecutionList, ExecutionOutcome,
    ExecutionState, ExecutionSummary,
};
pub use languages::{public_class, Language, LanguageError, LanguageTable};
pub use network::{
    validate_network, EgressBounds, NetworkGrant, NetworkRequest, NetworkUsage, RefusedDestination,
    MAX_ALLOW_ENTRIES,
};
pub use sandbox::{
    check_metadata, parse_create_sandbox, validate_sandbox, CreateSandboxRequest, FileEntry,
    FileListing, FileWritten, SandboxBounds, SandboxCommand, SandboxInfo, SandboxLimits,
    SandboxLimitsRequest, SandboxList,
};
pub use types::{
    ApiError, CaseLimits, CaseResult, ErrorBody, ExecuteRequest, ExecuteResponse, ExecutionStatus,
    FileEncoding, InputFile, LanguageInfo, OutputFile, RequestLimits, StageResult, StreamExit,
    TestCase, Timings, Utf8Chunker, Verdict,
};
pub use validate::{
    check_env, check_glob, parse_execute, validate, validate_in_sandbox, Bound, ExecuteCommand,
    LimitBounds, Limits, ValidationError,
};
pub use verdict::{judge, normalise_output, output_matches, overall};
