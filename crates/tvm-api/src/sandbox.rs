//! Sandboxes: the wire types of `/v1/sandboxes` and the pure validation of a create
//! request into a [`SandboxCommand`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{Bound, LimitBounds, ValidationError};

/// `POST /v1/sandboxes` body; every field is optional. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    #[serde(default)]
    pub limits: SandboxLimitsRequest,
    /// Seconds the sandbox may live at most, from creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Seconds without any request after which the sandbox ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_s: Option<u64>,
    /// Environment of every exec in it (an exec's own `env` wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Egress for every exec in it, through the host's proxy (off by default); the
    /// limits count over the sandbox's whole life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::NetworkRequest>,
    /// Free-form labels kept with the sandbox and shown when it is listed (at most
    /// 64; keys 1–128 bytes, values up to 1024 bytes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Limits of the whole sandbox: every exec in it shares them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxLimitsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u32>,
    /// Size of the work dir (a tmpfs in guest memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// Resolved limits of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxLimits {
    pub memory_mb: u64,
    pub vcpus: u32,
    pub max_processes: u32,
    pub disk_mb: u64,
}

/// Defaults and maxima of the sandbox-only fields; part of pyrovm's `[sandbox]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxBounds {
    pub ttl_s: Bound,
    pub idle_timeout_s: Bound,
    pub disk_mb: Bound,
}

impl Default for SandboxBounds {
    fn default() -> Self {
        Self {
            ttl_s: Bound {
                default: 600,
                min: 1,
                max: 86_400,
            },
            idle_timeout_s: Bound {
                default: 120,
                min: 1,
                max: 86_400,
            },
            disk_mb: Bound {
                default: 64,
                min: 1,
                max: 1024,
            },
        }
    }
}

/// A create request that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCommand {
    pub limits: SandboxLimits,
    pub ttl_s: u64,
    pub idle_timeout_s: u64,
    pub env: BTreeMap<String, String>,
    pub network: Option<crate::network::NetworkGrant>,
    pub metadata: BTreeMap<String, String>,
}

/// What the API says about one live sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxInfo {
    pub id: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// When the TTL ends it (RFC 3339, UTC); idleness may end it sooner.
    pub expires_at: String,
    /// The last request that used it (RFC 3339, UTC).
    pub last_active_at: String,
    pub ttl_s: u64,
    pub idle_timeout_s: u64,
    pub limits: SandboxLimits,
    /// Names of the environment variables set at creation (values are not echoed).
    pub env_keys: Vec<String>,
    /// Execs run in it so far.
    pub execs: u64,
    pub backend: String,
    /// Milliseconds from the request to a ready VM (creation only; 0 afterwards).
    pub vm_start_ms: u64,
    /// The labels given at creation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// `GET /v1/sandboxes`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxList {
    pub sandboxes: Vec<SandboxInfo>,
    /// In a cluster: pyrovms that did not answer, whose sandboxes are missing here.
    #[serde(default)]
    pub unreachable_nodes: u32,
}

/// `PUT /v1/sandboxes/{id}/files/{path}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileWritten {
    pub path: String,
    pub size: u64,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes, for files (0 otherwise).
    pub size: u64,
}

/// `GET /v1/sandboxes/{id}/files/{dir}/` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileListing {
    /// The directory, relative to the work dir (`""` for the work dir itself).
    pub path: String,
    pub entries: Vec<FileEntry>,
    /// Whether entries were left out (a listing holds at most 10,000).
    pub truncated: bool,
}

/// Parses a create body; an empty body means all defaults.
pub fn parse_create_sandbox(body: &[u8]) -> Result<CreateSandboxRequest, ValidationError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CreateSandboxRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| ValidationError::InvalidJson(e.to_string()))
}

/// Checks a create request against the bounds.
pub fn validate_sandbox(
    req: CreateSandboxRequest,
    limits: &LimitBounds,
    bounds: &SandboxBounds,
) -> Result<SandboxCommand, ValidationError> {
    let l = req.limits;
    let resolved = SandboxLimits {
        memory_mb: crate::validate::bounded("memory_mb", l.memory_mb, limits.memory_mb)?,
        vcpus: crate::validate::bounded("vcpus", l.vcpus.map(u64::from), limits.vcpus)? as u32,
        max_processes: crate::validate::bounded(
            "max_processes",
            l.max_processes.map(u64::from),
            limits.max_processes,
        )? as u32,
        disk_mb: crate::validate::bounded("disk_mb", l.disk_mb, bounds.disk_mb)?,
    };
    let ttl_s = crate::validate::bounded("ttl_s", req.ttl_s, bounds.ttl_s)?;
    let idle_timeout_s =
        crate::validate::bounded("idle_timeout_s", req.idle_timeout_s, bounds.idle_timeout_s)?;
    crate::validate::check_env(&req.env, limits)?;
    let network = crate::network::validate_network(req.network.as_ref(), &limits.egress)?;
    check_metadata(&req.metadata)?;
    Ok(SandboxCommand {
        limits: resolved,
        ttl_s,
        idle_timeout_s,
        env: req.env,
        network,
        metadata: req.metadata,
    })
}

/// Labels at most.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Checks a sandbox's labels: how many, and the size of each key and value.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(ValidationError::Metadata(format!(
            "metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
            metadata.len()
        )));
    }
    for (k, v) in metadata {
        if k.is_empty() || k.len() > 128 {
            return Err(ValidationError::Metadata(format!(
                "metadata key {k:?} must be 1 to 128 bytes"
            )));
        }
        if v.len() > 1024 {
            return Err(ValidationError::Metadata(format!(
                "metadata value of {k:?} is {} bytes; at most 1024 are allowed",
                v.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> SandboxCommand {
        let req = parse_create_sandbox(body.as_bytes()).unwrap();
        validate_sandbox(req, &LimitBounds::default(), &SandboxBounds::default()).unwrap()
    }

    fn err(body: &str) -> ValidationError {
        let req = match parse_create_sandbox(body.as_bytes()) {
            Ok(r) => r,
            Err(e) => return e,
        };
        validate_sandbox(req, &LimitBounds::default(), &SandboxBounds::default()).unwrap_err()
    }

    #[test]
    fn defaults_fill_every_field() {
        for body in ["", "{}", "  \n"] {
            let c = ok(body);
            assert_eq!(c.ttl_s, 600);
            assert_eq!(c.idle_timeout_s, 120);
            assert_eq!(c.limits.memory_mb, 256);
            assert_eq!(c.limits.disk_mb, 64);
        }
        let c = ok(r#"{"limits":{"memory_mb":512,"disk_mb":128},"ttl_s":30,"env":{"A":"b"}}"#);
        assert_eq!(c.limits.memory_mb, 512);
        assert_eq!(c.limits.disk_mb, 128);
        assert_eq!(c.ttl_s, 30);
        assert_eq!(c.env["A"], "b");
    }

    #[test]
    fn refuses_out_of_range_unknown_and_bad_env() {
        assert_eq!(err(r#"{"ttl_s":0}"#).code(), "limit_out_of_range");
        assert_eq!(err(r#"{"ttl_s":999999}"#).code(), "limit_out_of_range");
        assert_eq!(
            err(r#"{"limits":{"disk_mb":0}}"#).code(),
            "limit_out_of_range"
        );
        assert_eq!(
            err(r#"{"limits":{"memory_mb":99999}}"#).code(),
            "limit_out_of_range"
        );
        assert_eq!(err(r#"{"ttl":5}"#).code(), "invalid_json");
        assert_eq!(err(r#"{"limits":{"timeout_ms":5}}"#).code(), "invalid_json");
        assert_eq!(err(r#"{"env":{"1A":"x"}}"#).code(), "invalid_argument");
        assert_eq!(err("[1]").code(), "invalid_json");
        assert_eq!(err(r#"{"metadata":{"":"x"}}"#).code(), "invalid_argument");
        let long = "v".repeat(1025);
        assert_eq!(
            err(&format!(r#"{{"metadata":{{"k":"{long}"}}}}"#)).code(),
            "invalid_argument"
        );
        assert_eq!(ok(r#"{"metadata":{"team":"a"}}"#).metadata["team"], "a");
    }
}
