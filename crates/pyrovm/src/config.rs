//! pyrovm's configuration: a TOML file (`--config`), overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tvm_api::LimitBounds;

/// Which VMM to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Firecracker when usable, else QEMU (KVM where usable, TCG otherwise).
    #[default]
    Auto,
    Qemu,
    Firecracker,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub backend: BackendChoice,
    /// Directory holding vmlinux, initramfs.cpio and rootfs.erofs; default: the
    /// image `tvm image build` made last (`<cache>/current`).
    pub image_dir: Option<PathBuf>,
    /// Parent of this instance's runtime dir; default `/run/tvm` (root) or per-user.
    pub runtime_dir: Option<PathBuf>,
    /// Execution slots: jobs running at once (a sandbox exec or create takes one
    /// too). More requests wait in a queue.
    pub max_concurrency: usize,
    /// Requests that may wait for a slot at once; more get 429 `at_capacity`.
    /// Default: 8 × `max_concurrency`. 0: no queue (refuse when every slot is busy).
    pub max_queued: Option<usize>,
    /// The longest a request waits for a slot (then 429 `queue_timeout`); a gRPC
    /// deadline shortens it to what the job can still use.
    pub queue_timeout_ms: u64,
    /// Slots one token may hold at once (its further requests wait while others
    /// run). Unset: no cap beyond `max_concurrency`.
    pub max_concurrency_per_token: Option<usize>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// A client must send a request's headers within this (else the connection closes).
    pub header_timeout_ms: u64,
    /// ... and its whole body within this (else 408).
    pub body_timeout_ms: u64,
    /// On SIGTERM, in-flight executions get this long to finish; then they are cut.
    pub drain_timeout_ms: u64,
    /// Open client connections at most.
    pub max_connections: usize,
    /// Per-attempt deadline for a guest to boot and say ready.
    pub boot_timeout_ms: u64,
    /// Guest RAM on top of the job's memory limit (kernel, agent, page cache).
    pub guest_overhead_mb: u64,
    /// Size of the guest's tmpfs work dir (and /tmp); counts against the job's memory.
    pub workdir_mb: u64,
    /// Time on top of the job timeout before the host gives up on the agent.
    pub host_deadline_slack_ms: u64,
    /// Firecracker binary (else `$TVM_FIRECRACKER_BIN`, else `firecracker` on PATH).
    pub firecracker_bin: Option<PathBuf>,
    /// Jailer binary (else `$TVM_JAILER_BIN`, else `jailer` on PATH).
    pub jailer_bin: Option<PathBuf>,
    /// Jailed Firecracker processes, and QEMU processes when pyrovm runs as root, run
    /// as uid `jail_uid_base + n`, n < `jail_uid_count` (no two live VMs share one).
    pub jail_uid_base: u32,
    pub jail_uid_count: u32,
    /// File with bearer tokens, one per line (also `--token-file`).
    pub token_file: Option<PathBuf>,
    /// Allow listening on a non-loopback address without tokens.
    pub insecure_no_auth: bool,
    /// Warm pool classes: `[[pool]] vcpus, memory_mb, size`. Empty: every request cold-boots.
    pub pool: Vec<crate::pool::PoolClass>,
    /// Pool boots running at once (default: cores).
    pub pool_parallel_boots: usize,
    /// Snapshot clones for the pool classes: `[snapshot] enabled, warm, warm_timeout_ms`.
    pub snapshot: SnapshotConfig,
    /// Commands each pooled VM runs while it waits, under software emulation (TCG)
    /// only: the new VMM process's translation cache then already holds the runtimes'
    /// start-up code when the job comes. Fixed commands, never user code. `[]`: off.
    pub pool_prime: Vec<Vec<String>>,
    /// Tokens in force: from `token_file` and `TVM_TOKENS`, filled in by the binary.
    #[serde(skip)]
    pub tokens: Vec<String>,
    pub limits: LimitBounds,
    /// Sandboxes: `[sandbox]` caps, defaults and maxima.
    pub sandbox: SandboxConfig,
    /// Several pyrovms behind one ingress: `[cluster]` (docs/deploy.md, "Sandboxes").
    pub cluster: ClusterConfig,
    /// Async executions (`POST /v1/executions`): `[executions]` caps and TTL.
    pub executions: ExecutionsConfig,
    /// Opt-in egress for jobs, through pyrovm's proxy: the operator's ceiling.
    pub egress: EgressConfig,
}

/// `[egress]`: what jobs may reach through pyrovm's egress proxy. A request names
/// its destinations in `network.allow`, each of which must be within `allow` here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// The ceiling: `host`, `*.suffix`, IP literals, each with an optional `:port`
    /// (without one: 80 and 443). Empty (the default): egress is off.
    pub allow: Vec<String>,
    /// Per request (a sandbox: over its life): bytes received, at most and by default.
    pub max_bytes_in: u64,
    /// ... bytes sent.
    pub max_bytes_out: u64,
    /// ... proxy connections opened.
    pub max_connections: u32,
    /// Connecting to a destination (each of its addresses) gives up after this.
    pub connect_timeout_ms: u64,
}

impl Default for EgressConfig {
    fn default() -> Self {
        let b = tvm_api::EgressBounds::default();
        Self {
            allow: Vec::new(),
            max_bytes_in: b.max_bytes_in,
            max_bytes_out: b.max_bytes_out,
            max_connections: b.max_connections,
            connect_timeout_ms: b.connect_timeout_ms,
        }
    }
}

impl EgressConfig {
    /// The ceiling as validation uses it; `Err` names a bad entry or limit.
    pub fn bounds(&self) -> Result<tvm_api::EgressBounds, ConfigError> {
        let ceiling = self
            .allow
            .iter()
            .enumerate()
            .map(|(i, s)| {
                tvm_egress::parse_rule(s)
                    .map_err(|e| ConfigError::Invalid(format!("egress.allow[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_bytes_in == 0
            || self.max_bytes_out == 0
            || self.max_connections == 0
            || self.connect_timeout_ms == 0
        {
            return Err(ConfigError::Invalid(
                "egress: max_bytes_in, max_bytes_out, max_connections and connect_timeout_ms must be positive".into(),
            ));
        }
        Ok(tvm_api::EgressBounds {
            ceiling,
            max_bytes_in: self.max_bytes_in,
            max_bytes_out: self.max_bytes_out,
            max_connections: self.max_connections,
            connect_timeout_ms: self.connect_timeout_ms,
        })
    }
}

/// `[executions]`: async executions and their results, held in memory only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionsConfig {
    /// A finished result is kept this long, then forgotten (404).
    pub result_ttl_ms: u64,
    /// Async executions held at once, pending and finished (more: 429).
    pub max_stored: usize,
    /// ... per token.
    pub max_per_token: usize,
    /// Bytes held for results at once: each pending execution reserves its worst
    /// case (both output caps, plus the `files_out` cap if it asks for files).
    pub max_stored_bytes: u64,
    /// Requests in one `POST /v1/executions/batch`.
    pub max_batch: usize,
    /// The longest a submitted execution waits for a slot (then it ends `rejected`).
    pub queue_timeout_ms: u64,
    /// The longest `GET /v1/executions/{id}?wait=true` holds the request.
    pub max_wait_ms: u64,
}

impl Default for ExecutionsConfig {
    fn default() -> Self {
        Self {
            result_ttl_ms: 600_000,
            max_stored: 1024,
            max_per_token: 256,
            max_stored_bytes: 512 << 20,
            max_batch: 32,
            queue_timeout_ms: 600_000,
            max_wait_ms: 60_000,
        }
    }
}

/// `[cluster]`: set both to give sandbox ids their owner's address, so that any
/// pyrovm forwards a sandbox's requests to the one holding it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// This pyrovm's address as its peers reach it (in Kubernetes: the pod IP and
    /// port); also `TVM_ADVERTISE_ADDR`.
    pub advertise_addr: Option<SocketAddr>,
    /// File holding the route key every pyrovm of the cluster shares (≥ 16 bytes; a
    /// mounted Secret); also `TVM_ROUTE_KEY_FILE`.
    pub route_key_file: Option<PathBuf>,
    /// The host name forwarded requests carry, `<hex addr>.<peer_host>`: in an Istio
    /// mesh, a headless Service of the pyrovm pods (its sidecar then sends the request
    /// to that pod, over mTLS). Unset: the owner's address.
    pub peer_host: Option<String>,
    /// Where the other pyrovms are, for listing a caller's sandboxes across all of
    /// them: `host:port` entries, each resolved at every listing (a headless
    /// Service's name yields every pod). Empty: a listing shows this node's only.
    pub peers: Vec<String>,
}

/// `[sandbox]`: how many sandboxes, how long they live, how large their files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Live sandboxes on this node at most (more: 429 `sandbox_limit`).
    pub max_total: usize,
    /// Live sandboxes per token at most (per node; without tokens, for everyone).
    pub max_per_token: usize,
    /// `ttl_s` of a create request: default and accepted range.
    pub ttl_s: tvm_api::Bound,
    /// `idle_timeout_s`: default and accepted range.
    pub idle_timeout_s: tvm_api::Bound,
    /// `limits.disk_mb` (the work dir, a tmpfs in guest memory): default and range.
    pub disk_mb: tvm_api::Bound,
    /// Largest file uploaded to or downloaded from a sandbox (at most 20 MiB: one
    /// frame of the agent protocol carries it; uploads are also bounded by `max_body_bytes`).
    pub max_file_bytes: u64,
    /// Requests on one sandbox run one at a time; one that cannot start within
    /// this gets 409 `sandbox_busy`.
    pub busy_timeout_ms: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let b = tvm_api::SandboxBounds::default();
        Self {
            max_total: 16,
            max_per_token: 8,
            ttl_s: b.ttl_s,
            idle_timeout_s: b.idle_timeout_s,
            disk_mb: b.disk_mb,
            max_file_bytes: 16 << 20,
            // The longest exec's host deadline (60 s + 10 s of slack, which also
            // covers its files_out), and a little more.
            busy_timeout_ms: 75_000,
        }
    }
}

impl SandboxConfig {
    pub fn bounds(&self) -> tvm_api::SandboxBounds {
        tvm_api::SandboxBounds {
            ttl_s: self.ttl_s,
            idle_timeout_s: self.idle_timeout_s,
            disk_mb: self.disk_mb,
        }
    }
}

/// Largest sandbox file: the agent protocol's frame (32 MiB) must hold it in base64.
pub const MAX_SANDBOX_FILE_BYTES: u64 = 20 << 20;

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            backend: BackendChoice::Auto,
            image_dir: None,
            runtime_dir: None,
            max_concurrency: (cores * 2).max(2),
            max_queued: None,
            queue_timeout_ms: 30_000,
            max_concurrency_per_token: None,
            max_body_bytes: 16 << 20,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            // The longest execution (60 s) plus a boot and the host's slack.
            drain_timeout_ms: 90_000,
            max_connections: 1024,
            boot_timeout_ms: 15_000,
            guest_overhead_mb: 96,
            workdir_mb: 64,
            host_deadline_slack_ms: 10_000,
            firecracker_bin: None,
            jailer_bin: None,
            jail_uid_base: 40_000,
            jail_uid_count: 1_000,
            token_file: None,
            // Sized for a 2-core TCG box: two ready VMs of the default class (~135 MB RSS each).
            pool: vec![crate::pool::PoolClass {
                vcpus: 1,
                memory_mb: 256,
                size: 2,
            }],
            pool_parallel_boots: cores,
            snapshot: SnapshotConfig::default(),
            pool_prime: vec![vec!["/usr/bin/python3".into(), "-c".into(), "pass".into()]],
            insecure_no_auth: false,
            tokens: Vec::new(),
            limits: LimitBounds::default(),
            sandbox: SandboxConfig::default(),
            cluster: ClusterConfig::default(),
            executions: ExecutionsConfig::default(),
            egress: EgressConfig::default(),
        }
    }
}

/// Snapshot clones: at start-up each pool class (also one of size 0) gets a
/// template VM that is booted, warmed with `warm`, and frozen on tmpfs; its VMs are
/// then restored from it instead of booted. Nothing is kept across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    pub enabled: bool,
    /// Commands the template runs before it is frozen, so the language runtimes'
    /// files are in its page cache (absolute paths inside the guest).
    pub warm: Vec<Vec<String>>,
    /// Deadline per warm-up command.
    pub warm_timeout_ms: u64,
    /// Also run every language's `warm` commands from the language table (compilers
    /// included). Off by default. Measured under TCG (hello world, first compile in
    /// a fresh clone, p50 of 2): go 15.6 -> 6.9 s, rust 9.3 -> 7.6 s, c 2.5 -> 2.2 s,
    /// typescript 1.1 -> 0.7 s, C++ and Java unchanged; but the template took 52 s
    /// instead of 5 s to freeze, filled 342 of its 352 MiB with page cache, and
    /// python's first run went 0.26 -> 0.46 s (its pages were evicted by later ones).
    pub warm_all_languages: bool,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        // The interpreters' own warm-ups from the language table (compilers are
        // opt-in: `warm_all_languages`).
        let table = tvm_api::LanguageTable::builtin();
        let warm = ["python", "javascript", "bash"]
            .iter()
            .filter_map(|name| table.get(name))
            .flat_map(|l| l.warm.clone())
            .collect();
        Self {
            enabled: true,
            warm,
            warm_timeout_ms: 30_000,
            warm_all_languages: false,
        }
    }
}

impl Config {
    /// How the pool starts VMs, from `pool_parallel_boots`, `[snapshot]` and `pool_prime`.
    pub fn pool_options(&self) -> crate::pool::PoolOptions {
        crate::pool::PoolOptions {
            parallel_boots: self.pool_parallel_boots,
            snapshot_warm: self.snapshot.warm_spec(),
            prime: (!self.pool_prime.is_empty()).then(|| tvm_vmm::WarmSpec {
                commands: self.pool_prime.clone(),
                per_command: std::time::Duration::from_millis(self.snapshot.warm_timeout_ms),
            }),
        }
    }
}

impl SnapshotConfig {
    /// The warm-up the pool hands the backend, or `None` when snapshots are off.
    pub fn warm_spec(&self) -> Option<tvm_vmm::WarmSpec> {
        let table = self
            .warm_all_languages
            .then(|| {
                tvm_api::LanguageTable::builtin()
                    .iter()
                    .flat_map(|l| l.warm.clone())
            })
            .into_iter()
            .flatten();
        let mut commands = self.warm.clone();
        commands.extend(table.filter(|c| !self.warm.contains(c)));
        self.enabled.then(|| tvm_vmm::WarmSpec {
            commands,
            per_command: std::time::Duration::from_millis(self.warm_timeout_ms),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is invalid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("config: {0}")]
    Invalid(String),
}

impl Config {
    /// Requests that may wait for a slot: `max_queued`, else 8 × `max_concurrency`.
    pub fn max_queued(&self) -> usize {
        self.max_queued
            .unwrap_or(self.max_concurrency.saturating_mul(8))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Cross-field checks a TOML schema cannot express.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_concurrency == 0 {
            return Err(ConfigError::Invalid(
                "max_concurrency must be at least 1".into(),
            ));
        }
        if self
            .max_concurrency_per_token
            .is_some_and(|n| n == 0 || n > self.max_concurrency)
        {
            return Err(ConfigError::Invalid(
                "max_concurrency_per_token must be between 1 and max_concurrency".into(),
            ));
        }
        let e = &self.executions;
        if e.result_ttl_ms == 0
            || e.max_batch == 0
            || e.max_per_token == 0
            || e.max_stored < e.max_batch
            || e.max_wait_ms == 0
        {
            return Err(ConfigError::Invalid(
                "executions: result_ttl_ms, max_batch, max_per_token and max_wait_ms must be positive, and max_stored at least max_batch".into(),
            ));
        }
        for (name, b) in [
            ("timeout_ms", self.limits.timeout_ms),
            ("memory_mb", self.limits.memory_mb),
            ("vcpus", self.limits.vcpus),
            ("max_output_bytes", self.limits.max_output_bytes),
            ("max_processes", self.limits.max_processes),
        ] {
            if !(b.min <= b.default && b.default <= b.max) {
                return Err(ConfigError::Invalid(format!(
                    "limits.{name}: need min <= default <= max"
                )));
            }
        }
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
        .map_err(ConfigError::Invalid)?;
        for (name, b) in [
            ("ttl_s", self.sandbox.ttl_s),
            ("idle_timeout_s", self.sandbox.idle_timeout_s),
            ("disk_mb", self.sandbox.disk_mb),
        ] {
            if !(b.min <= b.default && b.default <= b.max) || b.min == 0 {
                return Err(ConfigError::Invalid(format!(
                    "sandbox.{name}: need 0 < min <= default <= max"
                )));
            }
        }
        if self.sandbox.max_file_bytes == 0 || self.sandbox.max_file_bytes > MAX_SANDBOX_FILE_BYTES
        {
            return Err(ConfigError::Invalid(format!(
                "sandbox.max_file_bytes must be between 1 and {MAX_SANDBOX_FILE_BYTES}"
            )));
        }
        // `files_out` comes back in one protocol frame (32 MiB, base64 inside).
        if self.limits.max_files_out_bytes > MAX_SANDBOX_FILE_BYTES as usize
            || self.limits.max_files_out > 10_000
        {
            return Err(ConfigError::Invalid(format!(
                "limits.max_files_out_bytes must be at most {MAX_SANDBOX_FILE_BYTES} and limits.max_files_out at most 10000"
            )));
        }
        if self.cluster.advertise_addr.is_some() != self.cluster.route_key_file.is_some() {
            return Err(ConfigError::Invalid(
                "cluster.advertise_addr and cluster.route_key_file go together".into(),
            ));
        }
        if let Some(a) = self.cluster.advertise_addr {
            if a.ip().is_unspecified() || a.port() == 0 {
                return Err(ConfigError::Invalid(format!(
                    "cluster.advertise_addr {a} must be an address peers can reach"
                )));
            }
        }
        self.egress.bounds()?;
        if self.limits.memory_mb.min < 16 || self.workdir_mb == 0 {
            return Err(ConfigError::Invalid(
                "memory and work dir sizes are too small".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_tokens_or_an_explicit_opt_out() {
        let mut c = Config {
            listen: "0.0.0.0:8080".parse().unwrap(),
            ..Config::default()
        };
        assert!(matches!(c.check(), Err(ConfigError::Invalid(m)) if m.contains("--token-file")));
        c.tokens = vec!["t".into()];
        c.check().unwrap();
        c.tokens.clear();
        c.insecure_no_auth = true;
        c.check().unwrap();
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().check().unwrap();
    }

    #[test]
    fn snapshot_and_prime_settings_reach_the_pool() {
        let c = Config::default();
        let o = c.pool_options();
        let warm = o.snapshot_warm.unwrap();
        assert!(warm.commands.iter().any(|c| c[0] == "/usr/bin/python3"));
        assert_eq!(warm.per_command.as_millis(), 30_000);
        assert!(o.prime.is_some());
        let off = Config {
            snapshot: SnapshotConfig {
                enabled: false,
                ..SnapshotConfig::default()
            },
            pool_prime: Vec::new(),
            ..Config::default()
        };
        let o = off.pool_options();
        assert!(o.snapshot_warm.is_none() && o.prime.is_none());
        let all = SnapshotConfig {
            warm_all_languages: true,
            ..SnapshotConfig::default()
        };
        let cmds = all.warm_spec().unwrap().commands;
        assert!(
            cmds.iter().any(|c| c.join(" ").contains("javac")),
            "{cmds:?}"
        );
        assert_eq!(
            cmds.iter().filter(|c| c[0] == "/usr/bin/python3").count(),
            1
        );
        let parsed: Config = toml::from_str(
            "pool_prime = []
[snapshot]
enabled = false
warm = [[\"/bin/true\"]]
",
        )
        .unwrap();
        assert!(!parsed.snapshot.enabled);
        assert_eq!(parsed.snapshot.warm, vec![vec!["/bin/true".to_string()]]);
        assert!(toml::from_str::<Config>(
            "[snapshot]
enable = true
"
        )
        .is_err());
    }

    #[test]
    fn sandbox_settings_are_checked() {
        let c: Config = toml::from_str(
            "[sandbox]\nmax_total = 3\nmax_file_bytes = 1048576\n[sandbox.ttl_s]\ndefault = 60\nmin = 1\nmax = 120\n",
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.sandbox.max_total, 3);
        assert_eq!(c.sandbox.bounds().ttl_s.max, 120);
        let mut bad = Config::default();
        bad.sandbox.max_file_bytes = 64 << 20;
        assert!(
            matches!(bad.check(), Err(ConfigError::Invalid(m)) if m.contains("max_file_bytes"))
        );
        let mut bad = Config::default();
        bad.sandbox.ttl_s.default = 0;
        bad.sandbox.ttl_s.min = 0;
        assert!(matches!(bad.check(), Err(ConfigError::Invalid(m)) if m.contains("ttl_s")));
        assert!(toml::from_str::<Config>("[sandbox]\nmax_sandboxes = 1\n").is_err());
    }

    #[test]
    fn connection_deadlines_must_be_positive() {
        for tweak in [
            |c: &mut Config| c.header_timeout_ms = 0,
            |c: &mut Config| c.body_timeout_ms = 0,
            |c: &mut Config| c.max_connections = 0,
        ] {
            let mut c = Config::default();
            tweak(&mut c);
            assert!(matches!(c.check(), Err(ConfigError::Invalid(_))));
        }
    }

    #[test]
    fn file_overrides_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "max_concurrency = 3\n[limits.timeout_ms]\ndefault = 1000\nmin = 100\nmax = 2000\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        assert_eq!(c.max_concurrency, 3);
        assert_eq!(c.limits.timeout_ms.max, 2000);
        std::fs::write(&p, "max_concurency = 3\n").unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Parse { .. })));
        std::fs::write(
            &p,
            "[limits.timeout_ms]\ndefault = 1\nmin = 100\nmax = 2000\n",
        )
        .unwrap();
        assert!(matches!(Config::load(&p), Err(ConfigError::Invalid(_))));
    }
}
