//! The public shape of TVM: request/response types of the HTTP API, the language
//! table, and the pure validation that turns a request into a typed
//! [`ExecuteCommand`]. Handlers parse and validate with this crate; the core never
//! sees an unvalidated request.

mod languages;
mod types;
mod validate;

pub use languages::{Language, LanguageError, LanguageTable};
pub use types::{
    ApiError, ErrorBody, ExecuteRequest, ExecuteResponse, ExecutionStatus, FileEncoding, InputFile,
    LanguageInfo, RequestLimits, StreamExit, Timings, Utf8Chunker,
};
pub use validate::{
    parse_execute, validate, Bound, ExecuteCommand, LimitBounds, Limits, ValidationError,
};
