//! The Connect protocol (<https://connectrpc.com/docs/protocol>), server side, for
//! axum, over HTTP/1.1 and HTTP/2: what E2B's SDKs speak to envd.
//!
//! - Unary: the body is one bare message (`application/proto` or `application/json`);
//!   an error is an HTTP status chosen by its [`Code`] with a JSON body.
//! - Streaming: the body is a run of envelopes (`application/connect+proto|json`), each
//!   a flag byte, a 4-byte big-endian length and a payload. A server stream always
//!   answers HTTP 200 and ends with an end-stream envelope whose JSON payload carries
//!   the error, if any.
//!
//! Compression is never negotiated: a compressed envelope is refused.

mod envelope;

use std::fmt;
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use envelope::{
    encode_envelope, end_stream, Envelope, EnvelopeDecoder, EnvelopeError, COMPRESSED,
    DEFAULT_MAX_MESSAGE_SIZE, END_STREAM,
};

/// How messages are serialized, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Binary protobuf.
    Proto,
    /// The canonical proto3 JSON mapping.
    Json,
}

/// A request whose Content-Type names no codec we speak; HTTP 415 as a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported content type {found:?}: expected {expected}")]
pub struct UnsupportedMediaType {
    found: String,
    expected: &'static str,
}

impl Codec {
    /// The codec of a unary request: `application/proto` or `application/json`.
    pub fn for_unary(headers: &HeaderMap) -> Result<Self, UnsupportedMediaType> {
        Self::from_content_type(
            headers,
            "application/",
            "application/proto or application/json",
        )
    }

    /// The codec of a streaming request: `application/connect+proto` or `+json`.
    pub fn for_stream(headers: &HeaderMap) -> Result<Self, UnsupportedMediaType> {
        Self::from_content_type(
            headers,
            "application/connect+",
            "application/connect+proto or application/connect+json",
        )
    }

    fn from_content_type(
        headers: &HeaderMap,
        prefix: &str,
        expected: &'static str,
    ) -> Result<Self, UnsupportedMediaType> {
        let raw = headers
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let mut parts = raw.split(';');
        let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let charset_ok = parts.all(|p| match p.split_once('=') {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
                v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        });
        let codec = match essence.strip_prefix(prefix) {
            Some("proto") => Some(Self::Proto),
            Some("json") if charset_ok => Some(Self::Json),
            _ => None,
        };
        codec.ok_or(UnsupportedMediaType {
            found: raw,
            expected,
        })
    }

    /// The Content-Type of a unary response in this codec.
    pub fn unary_content_type(self) -> &'static str {
        match self {
            Self::Proto => "application/proto",
            Self::Json => "application/json",
        }
    }

    /// The Content-Type of a streaming response in this codec.
    pub fn stream_content_type(self) -> &'static str {
        match self {
            Self::Proto => "application/connect+proto",
            Self::Json => "application/connect+json",
        }
    }

    /// Decodes one message; anything malformed is `invalid_argument`. An empty body is
    /// the empty message in either codec (Connect clients send `{}`, but be lenient).
    pub fn decode<M>(self, bytes: &[u8]) -> Result<M, ConnectError>
    where
        M: Message + Default + DeserializeOwned,
    {
        let invalid = |e: &dyn fmt::Display| {
            ConnectError::new(Code::InvalidArgument, format!("cannot decode message: {e}"))
        };
        match self {
            Self::Proto => M::decode(bytes).map_err(|e| invalid(&e)),
            Self::Json if bytes.iter().all(u8::is_ascii_whitespace) => Ok(M::default()),
            Self::Json => serde_json::from_slice(bytes).map_err(|e| invalid(&e)),
        }
    }

    /// Encodes one message; a failure (JSON only, in theory) is `internal`.
    pub fn encode<M>(self, message: &M) -> Result<Vec<u8>, ConnectError>
    where
        M: Message + Serialize,
    {
        match self {
            Self::Proto => Ok(message.encode_to_vec()),
            Self::Json => serde_json::to_vec(message).map_err(|e| {
                ConnectError::new(Code::Internal, format!("cannot encode message: {e}"))
            }),
        }
    }
}

impl IntoResponse for UnsupportedMediaType {
    fn into_response(self) -> Response {
        let error = ConnectError::new(Code::InvalidArgument, self.to_string());
        let mut response = error.into_response();
        *response.status_mut() = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        response
            .headers_mut()
            .insert("accept-post", HeaderValue::from_static(ACCEPT_POST));
        response
    }
}

const ACCEPT_POST: &str = "application/json, application/proto, \
                           application/connect+json, application/connect+proto";

/// Connect's error codes (the gRPC ones, spelled in snake case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// The client cancelled the call.
    Canceled,
    /// An error with no better code.
    Unknown,
    /// The request is malformed, whatever the state of the system.
    InvalidArgument,
    /// The deadline passed before the call finished.
    DeadlineExceeded,
    /// The named thing does not exist.
    NotFound,
    /// The thing to create already exists.
    AlreadyExists,
    /// The caller may not do this.
    PermissionDenied,
    /// A quota or limit is used up.
    ResourceExhausted,
    /// The system is not in the state the call needs.
    FailedPrecondition,
    /// A concurrency conflict; the caller may retry at a higher level.
    Aborted,
    /// A value past the valid range.
    OutOfRange,
    /// Not implemented or not supported.
    Unimplemented,
    /// An invariant broke inside the server.
    Internal,
    /// Temporarily unavailable; retrying may work.
    Unavailable,
    /// Unrecoverable data loss or corruption.
    DataLoss,
    /// No valid credentials.
    Unauthenticated,
}

impl Code {
    /// Every code, in gRPC's numeric order.
    pub const ALL: [Code; 16] = [
        Self::Canceled,
        Self::Unknown,
        Self::InvalidArgument,
        Self::DeadlineExceeded,
        Self::NotFound,
        Self::AlreadyExists,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::OutOfRange,
        Self::Unimplemented,
        Self::Internal,
        Self::Unavailable,
        Self::DataLoss,
        Self::Unauthenticated,
    ];

    /// The code as written in Connect's JSON errors, e.g. `not_found`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canceled => "canceled",
            Self::Unknown => "unknown",
            Self::InvalidArgument => "invalid_argument",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::PermissionDenied => "permission_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Aborted => "aborted",
            Self::OutOfRange => "out_of_range",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::DataLoss => "data_loss",
            Self::Unauthenticated => "unauthenticated",
        }
    }

    /// The code with this wire name, if any.
    pub fn from_wire(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The HTTP status of a unary error with this code, per the Connect spec.
    pub fn http_status(self) -> StatusCode {
        match self {
            // 499 Client Closed Request: nginx's, not in `http`'s constants.
            Self::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::REQUEST_TIMEOUT),
            Self::Unknown | Self::Internal | Self::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            Self::InvalidArgument | Self::FailedPrecondition | Self::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Self::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::AlreadyExists | Self::Aborted => StatusCode::CONFLICT,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Connect error: a code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ConnectError {
    /// What kind of failure.
    pub code: Code,
    /// For the client: say what went wrong, never leak internals.
    pub message: String,
}

impl ConnectError {
    /// An error with this code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The JSON object Connect uses for errors: `{"code":"…","message":"…"}`, with
    /// no `message` when it is empty.
    pub fn to_json(&self) -> serde_json::Value {
        let mut error = serde_json::Map::new();
        error.insert("code".into(), self.code.as_str().into());
        if !self.message.is_empty() {
            error.insert("message".into(), self.message.clone().into());
        }
        serde_json::Value::Object(error)
    }
}

/// The unary rendering: the code's HTTP status and a JSON body.
impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        let body = self.to_json().to_string();
        let mut response = (self.code.http_status(), body).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl From<EnvelopeError> for ConnectError {
    fn from(e: EnvelopeError) -> Self {
        let code = match e {
            EnvelopeError::Compressed => Code::Unimplemented,
            EnvelopeError::TooLarge { .. } => Code::ResourceExhausted,
            EnvelopeError::UnknownFlags(_) | EnvelopeError::Truncated { .. } => {
                Code::InvalidArgument
            }
        };
        Self::new(code, e.to_string())
    }
}

/// Decodes a unary request body; anything malformed is `invalid_argument`.
pub fn decode_unary<M>(codec: Codec, body: &[u8]) -> Result<M, ConnectError>
where
    M: Message + Default + DeserializeOwned,
{
    codec.decode(body)
}

/// A successful unary response: 200, the message in `codec`.
pub fn unary_response<M>(codec: Codec, message: &M) -> Response
where
    M: Message + Serialize,
{
    match codec.encode(message) {
        Ok(body) => {
            let content_type = HeaderValue::from_static(codec.unary_content_type());
            ([(CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// Decodes the request of a server-streaming call: exactly one envelope, flags 0.
pub fn decode_stream_request<M>(codec: Codec, body: &[u8]) -> Result<M, ConnectError>
where
    M: Message + Default + DeserializeOwned,
{
    let mut decoder = EnvelopeDecoder::new();
    decoder.push(body);
    let invalid = |m: &str| ConnectError::new(Code::InvalidArgument, m);
    let first = decoder
        .next_envelope()?
        .ok_or_else(|| invalid("the request holds no message"))?;
    if first.is_end_stream() {
        return Err(invalid("an end-stream envelope in a request"));
    }
    if decoder.next_envelope()?.is_some() {
        return Err(invalid(
            "a server-streaming request holds exactly one message",
        ));
    }
    decoder.finish()?;
    codec.decode(&first.payload)
}

/// The messages of a client stream, decoded as the request body arrives, until it
/// ends. An error ends the stream.
pub fn decode_client_stream<M>(
    codec: Codec,
    body: Body,
    max_message_size: usize,
) -> impl Stream<Item = Result<M, ConnectError>> + Send
where
    M: Message + Default + DeserializeOwned + Send + 'static,
{
    let state = (
        body.into_data_stream(),
        EnvelopeDecoder::with_max_message_size(max_message_size),
    );
    futures_util::stream::unfold(Some(state), move |state| async move {
        let (mut chunks, mut decoder) = state?;
        loop {
            match decoder.next_envelope() {
                Err(e) => return Some((Err(e.into()), None)),
                Ok(Some(envelope)) if envelope.is_end_stream() => {
                    let e = ConnectError::new(
                        Code::InvalidArgument,
                        "an end-stream envelope in a request",
                    );
                    return Some((Err(e), None));
                }
                Ok(Some(envelope)) => {
                    return match codec.decode(&envelope.payload) {
                        Ok(message) => Some((Ok(message), Some((chunks, decoder)))),
                        Err(e) => Some((Err(e), None)),
                    };
                }
                Ok(None) => {}
            }
            match chunks.next().await {
                Some(Ok(chunk)) => decoder.push(&chunk),
                Some(Err(e)) => {
                    let e = ConnectError::new(Code::Canceled, format!("request body: {e}"));
                    return Some((Err(e), None));
                }
                None => return decoder.finish().err().map(|e| (Err(e.into()), None)),
            }
        }
    })
}

/// A server-streaming response: HTTP 200, one envelope per message, then the
/// end-stream envelope, carrying the first error if an item was one (which ends it).
pub fn stream_response<M, S>(codec: Codec, messages: S) -> Response
where
    M: Message + Serialize + Send + 'static,
    S: Stream<Item = Result<M, ConnectError>> + Send + 'static,
{
    let frames = futures_util::stream::unfold(Some(Box::pin(messages)), move |state| async move {
        let mut messages = state?;
        let frame = match messages.next().await {
            Some(Ok(message)) => match codec.encode(&message) {
                Ok(payload) => return Some((encode_envelope(0, &payload), Some(messages))),
                Err(e) => end_stream(Some(&e)),
            },
            Some(Err(e)) => end_stream(Some(&e)),
            None => end_stream(None),
        };
        Some((frame, None))
    });
    stream_body(
        codec,
        Body::from_stream(frames.map(Ok::<_, std::convert::Infallible>)),
    )
}

/// A server-streaming call that failed before its first message: HTTP 200 and only
/// the end-stream envelope, as Connect servers answer.
pub fn stream_error(codec: Codec, error: &ConnectError) -> Response {
    stream_body(codec, Body::from(end_stream(Some(error))))
}

fn stream_body(codec: Codec, body: Body) -> Response {
    let content_type = HeaderValue::from_static(codec.stream_content_type());
    ([(CONTENT_TYPE, content_type)], body).into_response()
}

/// The client's deadline from `Connect-Timeout-Ms`: 1 to 10 ASCII digits, else
/// `invalid_argument`. `None` when the header is absent.
pub fn timeout_from_headers(headers: &HeaderMap) -> Result<Option<Duration>, ConnectError> {
    let Some(value) = headers.get("connect-timeout-ms") else {
        return Ok(None);
    };
    let digits = value.as_bytes();
    let invalid = || {
        let shown = String::from_utf8_lossy(digits);
        ConnectError::new(
            Code::InvalidArgument,
            format!("Connect-Timeout-Ms must be 1 to 10 digits, not {shown:?}"),
        )
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let ms = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(invalid)?;
    Ok(Some(Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests;
