//! The `network` field of a request (opt-in egress through the host's proxy) and
//! what a response says about it. The rule syntax and the allow/deny decision are
//! `tvm_egress`'s; here a request's rules are checked against the operator's ceiling.

use serde::{Deserialize, Serialize};
use tvm_egress::{check_within, parse_rule, Rule};

use crate::validate::ValidationError;

/// `"network": {"allow": [...]}`: the destinations this request may reach through
/// the egress proxy. Without it (the default) the job has no way out at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// `host`, `*.suffix` (subdomains only), `1.2.3.4` or `[::1]`, each with an
    /// optional `:port` (without one: 80 and 443). Every entry must be within the
    /// server's `[egress] allow`.
    pub allow: Vec<String>,
    /// Bytes the job may receive in total (default and maximum: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_in: Option<u64>,
    /// Bytes the job may send in total (default and maximum: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_out: Option<u64>,
    /// Proxy connections the job may open in total (default and maximum: the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// The operator's ceiling (`[egress]` in pyrovm.toml), parsed once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressBounds {
    /// Empty: egress is off, and a request naming any destination is refused.
    pub ceiling: Vec<Rule>,
    pub max_bytes_in: u64,
    pub max_bytes_out: u64,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

impl Default for EgressBounds {
    fn default() -> Self {
        Self {
            ceiling: Vec::new(),
            max_bytes_in: 256 << 20,
            max_bytes_out: 64 << 20,
            max_connections: 64,
            connect_timeout_ms: 10_000,
        }
    }
}

/// What a validated request may reach, and how much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkGrant {
    pub rules: Vec<Rule>,
    pub max_bytes_in: u64,
    pub max_bytes_out: u64,
    pub max_connections: u32,
    pub connect_timeout_ms: u64,
}

impl NetworkGrant {
    /// The proxy's form of this grant.
    pub fn to_egress(&self) -> tvm_egress::Grant {
        tvm_egress::Grant {
            rules: self.rules.clone(),
            limits: tvm_egress::Limits {
                max_bytes_in: self.max_bytes_in,
                max_bytes_out: self.max_bytes_out,
                max_connections: self.max_connections,
                connect_timeout: std::time::Duration::from_millis(self.connect_timeout_ms),
            },
        }
    }
}

/// Most entries one request may list.
pub const MAX_ALLOW_ENTRIES: usize = 64;

/// Checks a request's `network` against the ceiling: `None` (or an empty `allow`)
/// is no egress; any entry outside the ceiling, or a limit above the server's, is
/// refused and nothing runs.
pub fn validate_network(
    req: Option<&NetworkRequest>,
    bounds: &EgressBounds,
) -> Result<Option<NetworkGrant>, ValidationError> {
    let Some(req) = req else { return Ok(None) };
    if req.allow.is_empty() {
        return Ok(None);
    }
    if bounds.ceiling.is_empty() {
        return Err(ValidationError::Network(
            "egress is off on this server ([egress] allow is empty): the job cannot reach the network"
                .into(),
        ));
    }
    if req.allow.len() > MAX_ALLOW_ENTRIES {
        return Err(ValidationError::TooMany {
            what: "network.allow entries",
            max: MAX_ALLOW_ENTRIES,
        });
    }
    let mut rules = Vec::with_capacity(req.allow.len());
    for (i, entry) in req.allow.iter().enumerate() {
        let rule = parse_rule(entry)
            .map_err(|e| ValidationError::Network(format!("network.allow[{i}]: {e}")))?;
        rules.push(rule);
    }
    check_within(&rules, &bounds.ceiling).map_err(|e| {
        ValidationError::Network(format!(
            "network.allow: {e} (outside the server's [egress] allow)"
        ))
    })?;
    let cap = |name: &'static str, got: Option<u64>, max: u64| match got {
        None => Ok(max),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(v) => Err(ValidationError::Network(format!(
            "network.{name} must be between 1 and {max}, got {v}"
        ))),
    };
    Ok(Some(NetworkGrant {
        rules,
        max_bytes_in: cap("max_bytes_in", req.max_bytes_in, bounds.max_bytes_in)?,
        max_bytes_out: cap("max_bytes_out", req.max_bytes_out, bounds.max_bytes_out)?,
        max_connections: cap(
            "max_connections",
            req.max_connections.map(u64::from),
            u64::from(bounds.max_connections),
        )? as u32,
        connect_timeout_ms: bounds.connect_timeout_ms,
    }))
}

/// What the job did with its egress (present only when it had egress).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkUsage {
    /// Bytes received from destinations (what the job downloaded).
    pub bytes_in: u64,
    /// Bytes sent to destinations.
    pub bytes_out: u64,
    /// Proxy connections the job opened (refused ones included).
    pub connections: u64,
    /// Destinations the proxy refused or cut, first ones first (at most 32).
    pub refused: Vec<RefusedDestination>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefusedDestination {
    pub host: String,
    pub port: u16,
    /// Why: `not_allowed`, `special_address`, `resolve_failed`, `connect_failed`,
    /// `connect_timeout`, `limit_connections`, `limit_bytes`, `bad_request`.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(ceiling: &[&str]) -> EgressBounds {
        EgressBounds {
            ceiling: ceiling
                .iter()
                .map(|s| parse_rule(s).expect("rule"))
                .collect(),
            ..EgressBounds::default()
        }
    }

    fn req(allow: &[&str]) -> NetworkRequest {
        NetworkRequest {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            ..NetworkRequest::default()
        }
    }

    #[test]
    fn no_field_or_empty_allow_is_no_egress() {
        let b = bounds(&["pypi.org"]);
        assert_eq!(validate_network(None, &b).expect("ok"), None);
        assert_eq!(validate_network(Some(&req(&[])), &b).expect("ok"), None);
    }

    #[test]
    fn egress_off_refuses_any_destination() {
        let e =
            validate_network(Some(&req(&["pypi.org"])), &EgressBounds::default()).expect_err("off");
        assert_eq!(e.code(), "network_not_allowed");
        assert!(e.to_string().contains("egress is off"), "{e}");
    }

    #[test]
    fn within_the_ceiling_is_granted_with_the_servers_limits() {
        let b = bounds(&["*.pythonhosted.org", "pypi.org", "127.0.0.2:8000"]);
        let g = validate_network(
            Some(&req(&[
                "files.pythonhosted.org",
                "pypi.org:443",
                "127.0.0.2:8000",
            ])),
            &b,
        )
        .expect("ok")
        .expect("grant");
        assert_eq!(g.rules.len(), 3);
        assert_eq!(g.max_bytes_in, b.max_bytes_in);
        assert_eq!(g.max_connections, b.max_connections);
    }

    #[test]
    fn outside_the_ceiling_bad_syntax_and_high_limits_are_refused() {
        let b = bounds(&["pypi.org", "127.0.0.2:8000"]);
        for r in [
            req(&["example.com"]),
            req(&["pypi.org:8080"]),
            req(&["127.0.0.3:8000"]),
            req(&["*.org"]),
            req(&["not a host"]),
            NetworkRequest {
                max_bytes_in: Some(b.max_bytes_in + 1),
                ..req(&["pypi.org"])
            },
            NetworkRequest {
                max_connections: Some(0),
                ..req(&["pypi.org"])
            },
        ] {
            let e = validate_network(Some(&r), &b).expect_err("refused");
            assert_eq!(e.code(), "network_not_allowed", "{r:?}");
        }
        let many: Vec<String> = (0..=MAX_ALLOW_ENTRIES).map(|_| "pypi.org".into()).collect();
        let r = NetworkRequest {
            allow: many,
            ..NetworkRequest::default()
        };
        assert!(validate_network(Some(&r), &b).is_err());
    }
}
