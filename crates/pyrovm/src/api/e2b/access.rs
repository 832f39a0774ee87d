//! What every envd request of the E2B door needs: which sandbox it is for and as
//! whom (`E2b-Sandbox-Id` + the sandbox's own `X-Access-Token`), the one user, E2B
//! paths in the guest, core refusals as Connect errors, and the unary-call plumbing
//! the process and filesystem services share.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use tvm_http::middleware::Caller;
use tvm_proto::FileErrorKind;

use super::connect::{self, Code, Codec, ConnectError};
use crate::sandbox::SandboxError;
use crate::server::AppState;

/// E2B's home directory of `user`: the sandbox's work dir (a symlink in the image).
pub const HOME: &str = "/home/user";
/// The only user commands run as.
const USER: &str = "user";

/// The sandbox a request is for, and its owner (who its access token says it is).
pub(crate) struct Target {
    pub caller: Caller,
    pub id: String,
}

/// Reads `E2b-Sandbox-Id` and `X-Access-Token`; a wrong token is "no such sandbox".
pub(crate) fn target(st: &AppState, headers: &HeaderMap) -> Result<Target, ConnectError> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = h("e2b-sandbox-id").ok_or_else(|| {
        ConnectError::new(
            Code::InvalidArgument,
            "the E2b-Sandbox-Id header is required (the SDKs send it when E2B_SANDBOX_URL is set)",
        )
    })?;
    let token = h("x-access-token").unwrap_or_default();
    let caller = st
        .sandboxes
        .owner_by_token(id, token)
        .map_err(|e| sandbox_error(&e))?;
    Ok(Target {
        caller,
        id: id.to_string(),
    })
}

/// Refuses any user but `user` (from `Authorization: Basic base64(user:)` or the
/// `username` parameter).
pub(crate) fn check_user(headers: &HeaderMap, username: Option<&str>) -> Result<(), ConnectError> {
    let from_header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .map(|d| {
            let s = String::from_utf8_lossy(&d).into_owned();
            s.split(':').next().unwrap_or_default().to_string()
        });
    for u in [from_header.as_deref(), username].into_iter().flatten() {
        if !u.is_empty() && u != USER {
            return Err(ConnectError::new(
                Code::PermissionDenied,
                format!(
                    "user {u:?} is not available: TVM runs everything in a sandbox as its one unprivileged user, {USER:?}"
                ),
            ));
        }
    }
    Ok(())
}

/// An E2B path in the guest: relative paths are under the home directory.
pub(crate) fn guest_path(p: &str) -> Result<String, ConnectError> {
    if p.contains('\0') {
        return Err(ConnectError::new(
            Code::InvalidArgument,
            "a path must not contain NUL bytes",
        ));
    }
    Ok(if p.starts_with('/') {
        p.to_string()
    } else if p.is_empty() || p == "." || p == "~" {
        HOME.to_string()
    } else {
        let rel = p.strip_prefix("~/").unwrap_or(p);
        format!("{HOME}/{rel}")
    })
}

/// A core refusal as a Connect error.
pub(crate) fn sandbox_error(e: &SandboxError) -> ConnectError {
    let code = match e {
        // The SDKs read "was not found" in an `unavailable` as "the sandbox is gone".
        SandboxError::NotFound(id) => {
            return ConnectError::new(
                Code::Unavailable,
                format!(
                    "sandbox {id} was not found (it ended, or the access token is not its own)"
                ),
            )
        }
        SandboxError::Ended { .. } => Code::Unavailable,
        SandboxError::NoProcess(_) => Code::NotFound,
        SandboxError::File { kind, .. } => match kind {
            FileErrorKind::NotFound => Code::NotFound,
            FileErrorKind::InvalidPath | FileErrorKind::WrongType | FileErrorKind::TooLarge => {
                Code::InvalidArgument
            }
            FileErrorKind::Exists => Code::AlreadyExists,
            FileErrorKind::Denied => Code::PermissionDenied,
            FileErrorKind::Io => Code::Internal,
        },
        SandboxError::UploadTooLarge { .. } | SandboxError::Invalid(_) => Code::InvalidArgument,
        SandboxError::TooMany { .. } => Code::ResourceExhausted,
        SandboxError::Busy { .. } => Code::Aborted,
        SandboxError::Core(_) | SandboxError::StartFailed(_) => Code::Unavailable,
        SandboxError::Internal => Code::Internal,
    };
    ConnectError::new(code, e.to_string())
}

/// A unary call: the codec, the decoded request and the sandbox.
pub(crate) fn unary<M>(
    st: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Codec, M, Target), ConnectError>
where
    M: prost::Message + Default + serde::de::DeserializeOwned,
{
    let codec = Codec::for_unary(headers)
        .map_err(|e| ConnectError::new(Code::InvalidArgument, e.to_string()))?;
    let msg = connect::decode_unary(codec, body)?;
    let t = target(st, headers)?;
    Ok((codec, msg, t))
}

pub(crate) fn respond<M: prost::Message + serde::Serialize>(
    r: Result<(Codec, M), ConnectError>,
) -> Response {
    match r {
        Ok((codec, m)) => connect::unary_response(codec, &m),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_under_home() {
        assert_eq!(guest_path("a.txt").unwrap(), "/home/user/a.txt");
        assert_eq!(guest_path("~/d/a").unwrap(), "/home/user/d/a");
        assert_eq!(guest_path("").unwrap(), HOME);
        assert_eq!(guest_path("/tmp/x").unwrap(), "/tmp/x");
        assert!(guest_path("a\0b").is_err());
    }

    #[test]
    fn only_the_sandbox_user_is_accepted() {
        let mut h = HeaderMap::new();
        assert!(check_user(&h, None).is_ok());
        assert!(check_user(&h, Some("user")).is_ok());
        assert!(check_user(&h, Some("root")).is_err());
        // base64("root:")
        h.insert("authorization", "Basic cm9vdDo=".parse().unwrap());
        assert!(check_user(&h, None).is_err());
        // base64("user:")
        h.insert("authorization", "Basic dXNlcjo=".parse().unwrap());
        assert!(check_user(&h, None).is_ok());
    }
}
