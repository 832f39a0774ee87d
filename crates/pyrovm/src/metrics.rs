//! Prometheus metrics (`GET /metrics`), with prometheus-client.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tvm_api::ExecuteResponse;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    pub vcpus: u32,
    pub memory_mb: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Debug)]
pub struct Metrics {
    pool_ready: Family<ClassLabel, Gauge>,
    pool_takes: Family<ResultLabel, Counter>,
    restores: Family<ResultLabel, Counter>,
    pub(crate) restore_seconds: Histogram,
    snapshots: Gauge,
    registry: Registry,
    executions: Family<StatusLabel, Counter>,
    rejected: Family<ReasonLabel, Counter>,
    pub(crate) vm_boots: Counter,
    inflight: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub(crate) boot_seconds: Histogram,
    duration_seconds: Histogram,
    output_bytes: Counter<u64, AtomicU64>,
    sandboxes_active: Gauge,
    sandbox_ends: Family<ReasonLabel, Counter>,
    sandbox_execs: Counter,
    sandbox_processes: Counter,
    compiles: Family<StatusLabel, Counter>,
    test_cases: Family<VerdictLabel, Counter>,
    queue_depth: Gauge,
    queue_wait_seconds: Histogram,
    slots_in_use: Gauge,
    async_executions: Family<StatusLabel, Counter>,
    async_stored: Gauge,
    async_stored_bytes: Gauge,
    egress_bytes: Family<DirectionLabel, Counter<u64, AtomicU64>>,
    egress_connections: Counter,
    egress_refused: Family<ReasonLabel, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: String,
}

/// The snake_case name serde gives a value (its metric label).
pub(crate) fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tvm");
        let executions = Family::<StatusLabel, Counter>::default();
        registry.register(
            "executions",
            "Executions by final status",
            executions.clone(),
        );
        let rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "rejected",
            "Requests refused before a VM started",
            rejected.clone(),
        );
        let sandboxes_active = Gauge::default();
        registry.register(
            "sandboxes_active",
            "Sandboxes alive now",
            sandboxes_active.clone(),
        );
        let sandbox_processes = Counter::default();
        registry.register(
            "sandbox_processes_started",
            "Processes spawned in sandboxes to run alongside their requests (E2B commands)",
            sandbox_processes.clone(),
        );
        let sandbox_ends = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "sandbox_ends",
            "Sandboxes ended, by reason (deleted, ttl, idle, vm_died, shutdown, failed)",
            sandbox_ends.clone(),
        );
        let sandbox_execs = Counter::default();
        registry.register(
            "sandbox_execs",
            "Executions run inside sandboxes (also counted in tvm_executions_total)",
            sandbox_execs.clone(),
        );
        let compiles = Family::<StatusLabel, Counter>::default();
        registry.register(
            "compiles",
            "Compile stages run, by how the compiler ended (completed with any exit code, timeout, memory_limit, output_limit)",
            compiles.clone(),
        );
        let test_cases = Family::<VerdictLabel, Counter>::default();
        registry.register(
            "test_cases",
            "Test cases run, by verdict (none: could not be judged)",
            test_cases.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Requests waiting for an execution slot now (async submissions included)",
            queue_depth.clone(),
        );
        // 0 (a free slot) lands in the first bucket; the last is the 30 s default timeout.
        let queue_wait_seconds = Histogram::new([
            0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
        ]);
        registry.register(
            "queue_wait_seconds",
            "Time a request waited for its execution slot (0 when one was free)",
            queue_wait_seconds.clone(),
        );
        let slots_in_use = Gauge::default();
        registry.register(
            "slots_in_use",
            "Execution slots held now: running jobs, VMs still being destroyed, sandboxes",
            slots_in_use.clone(),
        );
        let async_executions = Family::<StatusLabel, Counter>::default();
        registry.register(
            "async_executions",
            "Async executions by how they ended (completed, timeout, ..., cancelled, rejected, expired)",
            async_executions.clone(),
        );
        let async_stored = Gauge::default();
        registry.register(
            "async_stored",
            "Async executions held in memory now (pending and finished)",
            async_stored.clone(),
        );
        let async_stored_bytes = Gauge::default();
        registry.register(
            "async_stored_bytes",
            "Bytes reserved for async results now (a pending one reserves its worst case)",
            async_stored_bytes.clone(),
        );
        let egress_bytes = Family::<DirectionLabel, Counter<u64, AtomicU64>>::default();
        registry.register(
            "egress_bytes",
            "Bytes jobs exchanged through the egress proxy (in: received from destinations)",
            egress_bytes.clone(),
        );
        let egress_connections = Counter::default();
        registry.register(
            "egress_connections",
            "Proxy connections jobs opened (refused ones included)",
            egress_connections.clone(),
        );
        let egress_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "egress_refused",
            "Proxy connections refused or cut, by reason (not_allowed, special_address, limit_bytes, ...)",
            egress_refused.clone(),
        );
        let vm_boots = Counter::default();
        registry.register("vm_boots", "VM starts attempted", vm_boots.clone());
        let inflight = Gauge::default();
        registry.register(
            "inflight_executions",
            "Executions running now",
            inflight.clone(),
        );
        let boot_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 10));
        registry.register(
            "vm_boot_seconds",
            "Time from VMM spawn to agent ready",
            boot_seconds.clone(),
        );
        let duration_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        registry.register(
            "execution_seconds",
            "End-to-end execution time",
            duration_seconds.clone(),
        );
        let pool_ready = Family::<ClassLabel, Gauge>::default();
        registry.register(
            "pool_ready_vms",
            "Booted VMs waiting in the warm pool, per size class (guest RAM)",
            pool_ready.clone(),
        );
        let pool_takes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "pool_takes",
            "Requests served from the pool (hit) or cold-booted (miss)",
            pool_takes.clone(),
        );
        let restores = Family::<ResultLabel, Counter>::default();
        registry.register(
            "snapshot_restores",
            "VM starts from a snapshot: ok, or failed (then cold-booted instead)",
            restores.clone(),
        );
        let restore_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 12));
        registry.register(
            "vm_restore_seconds",
            "Time from VMM spawn to a restored clone's agent ready",
            restore_seconds.clone(),
        );
        let snapshots = Gauge::default();
        registry.register(
            "snapshots_ready",
            "Snapshot templates held in memory (one per size class)",
            snapshots.clone(),
        );
        let output_bytes = Counter::default();
        registry.register(
            "output_bytes",
            "Bytes of stdout and stderr returned",
            output_bytes.clone(),
        );
        Self {
            pool_ready,
            pool_takes,
            restores,
            restore_seconds,
            snapshots,
            registry,
            executions,
            rejected,
            vm_boots,
            inflight,
            boot_seconds,
            duration_seconds,
            output_bytes,
            sandboxes_active,
            sandbox_ends,
            sandbox_execs,
            sandbox_processes,
            compiles,
            test_cases,
            queue_depth,
            queue_wait_seconds,
            slots_in_use,
            async_executions,
            async_stored,
            async_stored_bytes,
            egress_bytes,
            egress_connections,
            egress_refused,
        }
    }

    /// What one request's (or one sandbox exec's) egress did.
    pub(crate) fn egress(&self, u: &tvm_api::NetworkUsage) {
        for (direction, n) in [("in", u.bytes_in), ("out", u.bytes_out)] {
            self.egress_bytes
                .get_or_create(&DirectionLabel {
                    direction: direction.into(),
                })
                .inc_by(n);
        }
        self.egress_connections.inc_by(u.connections);
        for r in &u.refused {
            self.egress_refused
                .get_or_create(&ReasonLabel {
                    reason: r.reason.clone(),
                })
                .inc();
        }
    }

    pub fn queue_depth(&self, n: usize) {
        self.queue_depth.set(n as i64);
    }

    pub fn queue_waited(&self, d: std::time::Duration) {
        self.queue_wait_seconds.observe(d.as_secs_f64());
    }

    pub fn slots_in_use(&self, n: usize) {
        self.slots_in_use.set(n as i64);
    }

    pub fn async_ended(&self, status: &str) {
        self.async_executions
            .get_or_create(&StatusLabel {
                status: status.into(),
            })
            .inc();
    }

    pub fn async_stored(&self, count: usize, bytes: u64) {
        self.async_stored.set(count as i64);
        self.async_stored_bytes.set(bytes as i64);
    }

    pub fn sandbox_process_started(&self) {
        self.sandbox_processes.inc();
    }

    pub fn sandbox_started(&self) {
        self.sandboxes_active.inc();
    }

    pub fn sandbox_ended(&self, reason: &str) {
        self.sandboxes_active.dec();
        self.sandbox_ends
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn sandbox_exec(&self) {
        self.sandbox_execs.inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn finished(&self, r: &ExecuteResponse) {
        self.executions
            .get_or_create(&StatusLabel {
                status: label(&r.status),
            })
            .inc();
        if let Some(c) = &r.compile {
            self.compiles
                .get_or_create(&StatusLabel {
                    status: label(&c.status),
                })
                .inc();
        }
        for case in r.tests.iter().flatten() {
            let verdict = case.verdict.as_ref().map_or_else(|| "none".into(), label);
            self.test_cases
                .get_or_create(&VerdictLabel { verdict })
                .inc();
        }
        self.duration_seconds
            .observe(r.timings_ms.total as f64 / 1000.0);
        self.output_bytes
            .inc_by((r.stdout.len() + r.stderr.len()) as u64);
    }

    pub fn pool_size(&self, spec: &tvm_vmm::VmSpec, n: usize) {
        self.pool_ready
            .get_or_create(&ClassLabel {
                vcpus: spec.vcpus,
                memory_mb: spec.memory_mb,
            })
            .set(n as i64);
    }

    pub fn pool_hit(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.pool_takes
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn restored(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.restores
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    pub fn snapshots_ready(&self, n: usize) {
        self.snapshots.set(n as i64);
    }

    /// Executions running now.
    pub fn inflight(&self) -> i64 {
        self.inflight.get()
    }

    pub fn inflight_guard(&self) -> InflightGuard<'_> {
        self.inflight.inc();
        InflightGuard(&self.inflight)
    }

    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

#[derive(Debug)]
pub struct InflightGuard<'a>(&'a Gauge<i64, std::sync::atomic::AtomicI64>);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
