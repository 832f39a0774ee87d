//! pyroshell's configuration: pyrovm's TOML format (used whole in embedded mode),
//! whose listener and token keys also drive the gateway, plus `[forward]` and `[lima]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::retry::RetrySettings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Which front door pyroshell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// pyrovm's core in this process (Linux).
    Embedded,
    /// A reverse proxy to `--upstream` (an Istio ingress or any pyrovm).
    Forward,
    /// A Lima VM with k3s, Istio and pyrovm, started by pyrolima, then forward to it.
    Lima,
}

impl Mode {
    /// `embedded` on Linux, `lima` elsewhere (macOS, Windows).
    pub fn default_for_host() -> Self {
        if cfg!(target_os = "linux") {
            Mode::Embedded
        } else {
            Mode::Lima
        }
    }
}

/// The listener and auth keys, shared with pyrovm's config (same names, same meaning).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub insecure_no_auth: bool,
    pub max_body_bytes: usize,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    /// Default 120 s: longer than the longest answer the upstream can give.
    pub drain_timeout_ms: u64,
    pub max_connections: usize,
    /// From `token_file` and `TVM_TOKENS`, filled in by the binary.
    #[serde(skip)]
    pub tokens: Vec<String>,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_file: None,
            insecure_no_auth: false,
            max_body_bytes: 16 << 20,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            drain_timeout_ms: 120_000,
            max_connections: 1024,
            tokens: Vec::new(),
        }
    }
}

/// `[forward]`: how requests reach the upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardSettings {
    /// `http://host:port[/prefix]` (also `--upstream`).
    pub upstream: Option<String>,
    /// A TCP connect must succeed within this, else the attempt counts as not sent.
    pub connect_timeout_ms: u64,
    /// The upstream's response headers must arrive within this (504 after). Longer
    /// than the longest answer pyrovm gives with its defaults: a 30 s wait in its
    /// queue, two 15 s boot attempts, a 60 s execution and 10 s of slack = 130 s.
    pub response_timeout_ms: u64,
    /// Attempts in all for a request that never reached the upstream.
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Retries may add this share (0–1) of recent requests, or `retry_budget_min_per_sec`.
    pub retry_budget_ratio: f32,
    pub retry_budget_min_per_sec: u32,
    /// How often the upstream's readiness is probed ...
    pub health_interval_ms: u64,
    /// ... at this path (2xx = ready; sent with the upstream token). `/readyz` for a
    /// pyrovm; behind deploy/k8s's Istio ingress, which routes only the API, use
    /// `/v1/languages`.
    pub health_path: String,
    /// File holding the bearer token sent upstream (else `TVM_UPSTREAM_TOKEN`, else the
    /// client's own `Authorization` passes through).
    pub upstream_token_file: Option<PathBuf>,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        Self {
            upstream: None,
            connect_timeout_ms: 1_000,
            response_timeout_ms: 140_000,
            max_attempts: 3,
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            retry_budget_ratio: 0.2,
            retry_budget_min_per_sec: 10,
            health_interval_ms: 1_000,
            health_path: "/readyz".into(),
            upstream_token_file: None,
        }
    }
}

impl ForwardSettings {
    pub fn retry(&self) -> RetrySettings {
        RetrySettings {
            max_attempts: self.max_attempts,
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            budget_ratio: self.retry_budget_ratio,
            budget_min_per_sec: self.retry_budget_min_per_sec,
        }
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("[forward] {m}")));
        if self.max_attempts == 0 {
            return bad("max_attempts must be at least 1");
        }
        if !(0.0..=1000.0).contains(&self.retry_budget_ratio) {
            return bad("retry_budget_ratio must be between 0 and 1000");
        }
        if self.connect_timeout_ms == 0 || self.response_timeout_ms == 0 {
            return bad("connect_timeout_ms and response_timeout_ms must be positive");
        }
        if self.health_interval_ms < 50 {
            return bad("health_interval_ms must be at least 50");
        }
        if !self.health_path.starts_with('/')
            || self
                .health_path
                .parse::<axum::http::uri::PathAndQuery>()
                .is_err()
        {
            return bad("health_path must be a path starting with /");
        }
        if self.backoff_base_ms > self.backoff_max_ms {
            return bad("backoff_base_ms must not exceed backoff_max_ms");
        }
        Ok(())
    }
}

/// `[lima]`: the Lima VM of lima mode (flags of the same names override).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimaSettings {
    pub name: String,
    pub cpus: u32,
    pub memory_gib: u32,
    pub disk_gib: u32,
    pub ingress_port: u16,
    pub nested: bool,
    pub limactl: Option<PathBuf>,
    pub oci_archive: PathBuf,
    pub deploy_dir: PathBuf,
    /// Keep the VM when pyroshell exits (else it is deleted).
    pub keep_vm: bool,
    /// How often the monitor looks at the VM.
    pub monitor_interval_ms: u64,
}

impl Default for LimaSettings {
    fn default() -> Self {
        Self {
            name: "tvm".into(),
            cpus: 4,
            memory_gib: 8,
            disk_gib: 40,
            ingress_port: 18080,
            nested: true,
            limactl: None,
            oci_archive: PathBuf::from("target/oci/pyrovm.oci.tar"),
            deploy_dir: PathBuf::from("deploy/k8s"),
            keep_vm: false,
            monitor_interval_ms: 5_000,
        }
    }
}

/// The whole file, split by who uses what.
#[derive(Debug, Clone, Default)]
pub struct ShellConfig {
    pub gateway: GatewaySettings,
    pub forward: ForwardSettings,
    pub lima: LimaSettings,
    /// Everything but `[forward]` and `[lima]`: pyrovm's config, for embedded mode.
    pub node: toml::Table,
}

impl ShellConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let take = |table: &mut toml::Table, key: &str| {
            table
                .remove(key)
                .unwrap_or_else(|| toml::Value::Table(toml::Table::new()))
        };
        let forward: ForwardSettings = take(&mut table, "forward")
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("[forward]: {e}")))?;
        let lima: LimaSettings = take(&mut table, "lima")
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(format!("[lima]: {e}")))?;
        let gateway: GatewaySettings = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        forward.check()?;
        Ok(Self {
            gateway,
            forward,
            lima,
            node: table,
        })
    }

    /// Keys only embedded mode uses (pyrovm's own), to tell the user they are ignored.
    pub fn node_only_keys(&self) -> Vec<String> {
        const GATEWAY: [&str; 8] = [
            "listen",
            "token_file",
            "insecure_no_auth",
            "max_body_bytes",
            "header_timeout_ms",
            "body_timeout_ms",
            "drain_timeout_ms",
            "max_connections",
        ];
        self.node
            .keys()
            .filter(|k| !GATEWAY.contains(&k.as_str()))
            .cloned()
            .collect()
    }
}

impl GatewaySettings {
    /// The same rules as pyrovm's listener (shared in `tvm_http::listen`).
    pub fn check(&self) -> Result<(), ConfigError> {
        tvm_http::listen::check_exposure(
            self.listen,
            !self.tokens.is_empty(),
            self.insecure_no_auth,
        )
        .map_err(ConfigError::Invalid)?;
        tvm_http::listen::check_limits(
            self.header_timeout_ms,
            self.body_timeout_ms,
            self.max_connections,
        )
        .map_err(ConfigError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_split_and_defaults_hold() {
        let c = ShellConfig::parse(
            r#"
            listen = "127.0.0.1:9000"
            max_concurrency = 3
            [forward]
            upstream = "http://10.0.0.1:80"
            max_attempts = 4
            [lima]
            cpus = 2
            keep_vm = true
            "#,
        )
        .expect("parses");
        assert_eq!(c.gateway.listen.port(), 9000);
        assert_eq!(c.forward.upstream.as_deref(), Some("http://10.0.0.1:80"));
        assert_eq!(c.forward.max_attempts, 4);
        assert_eq!(c.forward.connect_timeout_ms, 1_000);
        assert_eq!(c.lima.cpus, 2);
        assert!(c.lima.keep_vm);
        assert_eq!(c.lima.name, "tvm");
        assert!(c.node.contains_key("max_concurrency"));
        assert!(!c.node.contains_key("forward"));
        assert_eq!(c.node_only_keys(), ["max_concurrency"]);
    }

    #[test]
    fn typos_in_gateway_sections_are_refused() {
        let e = ShellConfig::parse("[forward]\nupstreem = \"x\"\n").expect_err("typo");
        assert!(e.to_string().contains("upstreem"), "{e}");
        let e = ShellConfig::parse("[lima]\ncpu = 2\n").expect_err("typo");
        assert!(e.to_string().contains("cpu"), "{e}");
        assert!(ShellConfig::parse("[forward]\nmax_attempts = 0\n").is_err());
        assert!(ShellConfig::parse("[forward]\nhealth_path = \"readyz\"\n").is_err());
        assert!(
            ShellConfig::parse("[forward]\nbackoff_base_ms = 900\nbackoff_max_ms = 100\n").is_err()
        );
    }

    #[test]
    fn off_loopback_needs_tokens() {
        let mut g = GatewaySettings {
            listen: "0.0.0.0:8080".parse().expect("addr"),
            ..Default::default()
        };
        assert!(g.check().is_err());
        g.tokens = vec!["t".into()];
        assert!(g.check().is_ok());
        g.tokens.clear();
        g.insecure_no_auth = true;
        assert!(g.check().is_ok());
    }
}
