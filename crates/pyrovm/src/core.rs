//! The execution core: admission, one fresh VM per command, the agent
//! conversation, and teardown. It never sees HTTP: handlers give it a validated
//! [`ExecuteCommand`] and get an [`ExecuteResponse`] or a [`CoreError`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use tokio::sync::mpsc;
use tvm_api::{ExecuteCommand, ExecuteResponse, ExecutionStatus, Timings};
use tvm_proto::{ExitReport, Job, JobLimits, Outcome, WORK_DIR};
use tvm_vmm::{Vm, VmSpec, Vmm};

use crate::converse::{collect_files, Output};
pub(crate) use crate::converse::{converse, Conversation};
pub(crate) use crate::converse::{kind, request};
pub use crate::converse::{relay_live, OutputChunk};
use crate::metrics::Metrics;
use crate::queue::{Queue, QueueSettings, Refusal, Slot, Wait};
use tvm_http::middleware::Caller;

/// Why the core did not run a command (a 4xx/5xx, never a 200).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error(
        "all {slots} execution slots are busy and {queued} requests already wait (the queue's limit); retry in {retry_after_s} s"
    )]
    AtCapacity {
        slots: usize,
        queued: usize,
        retry_after_s: u64,
    },
    #[error("no execution slot came free within {waited_ms} ms; retry in {retry_after_s} s")]
    QueueTimeout { waited_ms: u64, retry_after_s: u64 },
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error("the runtime dir has only {free_kib} KiB free; retry shortly")]
    NoSpace { free_kib: u64 },
}

impl CoreError {
    /// The stable error code every front door names this refusal by.
    pub fn code(&self) -> &'static str {
        match self {
            CoreError::AtCapacity { .. } => "at_capacity",
            CoreError::QueueTimeout { .. } => "queue_timeout",
            CoreError::ShuttingDown => "shutting_down",
            CoreError::NoSpace { .. } => "no_space",
        }
    }

    /// Too much asked of this node right now (429 / RESOURCE_EXHAUSTED), as opposed
    /// to the node being unable to serve at all (503 / UNAVAILABLE).
    pub fn is_overload(&self) -> bool {
        matches!(
            self,
            CoreError::AtCapacity { .. } | CoreError::QueueTimeout { .. }
        )
    }

    /// The `Retry-After` (seconds) every front door sends with this refusal.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            CoreError::AtCapacity { retry_after_s, .. }
            | CoreError::QueueTimeout { retry_after_s, .. } => *retry_after_s,
            CoreError::ShuttingDown | CoreError::NoSpace { .. } => 5,
        }
    }
}

impl From<Refusal> for CoreError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Full {
                slots,
                queued,
                retry_after_s,
            } => CoreError::AtCapacity {
                slots,
                queued,
                retry_after_s,
            },
            Refusal::Timeout {
                waited_ms,
                retry_after_s,
            } => CoreError::QueueTimeout {
                waited_ms,
                retry_after_s,
            },
            Refusal::ShuttingDown => CoreError::ShuttingDown,
        }
    }
}

/// Boots a VM the slow way, counting it (`tvm_vm_boots_total`) and its boot time.
pub(crate) async fn cold_boot(
    vmm: &dyn Vmm,
    spec: &tvm_vmm::VmSpec,
    metrics: &Metrics,
) -> Result<tvm_vmm::Vm, tvm_vmm::VmmError> {
    metrics.vm_boots.inc();
    let r = vmm.start(spec).await;
    if let Ok(vm) = &r {
        metrics.boot_seconds.observe(vm.boot_time.as_secs_f64());
    }
    r
}

/// A VM dir needs a few files (logs, pid, sockets): below this much free space
/// in the runtime dir a start would fail half-way, so admission refuses first.
pub const MIN_FREE_BYTES: u64 = 4 << 20;

/// Bytes available to us on the filesystem holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[derive(Debug, Clone)]
pub struct CoreSettings {
    pub max_concurrency: usize,
    /// Requests that may wait for a slot (async submissions not counted).
    pub max_queued: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
    /// Slots one caller (token) may hold at once; `None`: no cap.
    pub max_concurrency_per_caller: Option<usize>,
    pub guest_overhead_mb: u64,
    pub workdir_mb: u64,
    pub host_deadline_slack: Duration,
    /// Where VM dirs go; admission checks it has `min_free_bytes` free.
    pub runtime_dir: Option<std::path::PathBuf>,
    /// Caps of `files_out`: how many files, how many bytes together.
    pub max_files_out: usize,
    pub max_files_out_bytes: usize,
}

#[derive(Debug)]
pub struct Executor {
    vmm: Arc<dyn Vmm>,
    pool: std::sync::OnceLock<Arc<crate::pool::Pool>>,
    queue: Arc<Queue>,
    settings: CoreSettings,
    pub(crate) metrics: Arc<Metrics>,
}

impl Executor {
    pub fn new(vmm: Arc<dyn Vmm>, settings: CoreSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            vmm,
            pool: std::sync::OnceLock::new(),
            queue: Queue::new(
                QueueSettings {
                    slots: settings.max_concurrency,
                    max_queued: settings.max_queued,
                    per_caller: settings.max_concurrency_per_caller,
                },
                metrics.clone(),
            ),
            settings,
            metrics,
        }
    }

    /// Starts the warm pool for these classes (needs a tokio runtime); once.
    /// With snapshots on, each class is first snapshotted and its VMs are clones.
    pub fn start_pool(
        &self,
        classes: &[crate::pool::PoolClass],
        opts: crate::pool::PoolOptions,
    ) -> Option<Arc<crate::pool::Pool>> {
        if classes.is_empty()
            || (opts.snapshot_warm.is_none() && classes.iter().all(|c| c.size == 0))
        {
            return None;
        }
        let specs = classes
            .iter()
            .map(|c| (self.spec_for(c.vcpus, c.memory_mb), c.size))
            .collect();
        let pool = crate::pool::Pool::new(self.vmm.clone(), specs, opts, self.metrics.clone());
        self.pool.set(pool.clone()).ok()?;
        Some(pool)
    }

    /// The warm pool, if one runs.
    pub fn pool(&self) -> Option<&Arc<crate::pool::Pool>> {
        self.pool.get()
    }

    /// Guest shape for a job's limits: its vCPUs, its memory plus the guest overhead.
    pub fn spec_for(&self, vcpus: u32, memory_mb: u64) -> VmSpec {
        VmSpec {
            vcpus,
            memory_mb: memory_mb + self.settings.guest_overhead_mb,
        }
    }

    pub fn backend_name(&self) -> &str {
        self.vmm.name()
    }

    /// Stops admitting: queued requests are refused now (503); running ones finish.
    pub fn close(&self) {
        self.queue.close();
    }

    /// The admission queue (its depth and slots, for probes and shutdown).
    pub fn queue(&self) -> &Arc<Queue> {
        &self.queue
    }

    /// How a request waits for its slot: at most `queue_timeout`, and never longer
    /// than `budget` (what is left of a caller's deadline after the job's own time).
    pub fn wait_for(&self, budget: Option<Duration>) -> Wait {
        let max_wait = match budget {
            Some(b) => b.min(self.settings.queue_timeout),
            None => self.settings.queue_timeout,
        };
        Wait {
            max_wait,
            counted: true,
        }
    }

    /// [`Executor::wait_for`] under a client's deadline: the wait leaves the job
    /// its own run time (compile, run, every test case) before the deadline.
    pub fn wait_within(&self, deadline: Option<Duration>, cmd: &ExecuteCommand) -> Wait {
        self.wait_for(
            deadline.map(|d| d.saturating_sub(Duration::from_millis(cmd.run_time_bound_ms()))),
        )
    }

    /// Takes an execution slot for `caller`: a free one now, else after a fair wait
    /// in the queue (bounded by `wait`), else a refusal (429 / 503 upstream). A
    /// request whose future is dropped while it waits leaves the queue at once.
    pub async fn admit(&self, caller: &Caller, wait: Wait) -> Result<Admitted, CoreError> {
        let received = Instant::now();
        if let Some(free) = self.settings.runtime_dir.as_deref().and_then(free_bytes) {
            if free < MIN_FREE_BYTES {
                self.metrics.rejected("no_space");
                return Err(CoreError::NoSpace {
                    free_kib: free / 1024,
                });
            }
        }
        let slot = self.queue.acquire(caller.id(), wait).await?;
        Ok(Admitted {
            slot,
            received,
            queued_ms: received.elapsed().as_millis() as u64,
        })
    }

    /// Runs one command in a VM that exists for it alone, collecting its output.
    pub async fn execute(
        &self,
        caller: &Caller,
        cmd: ExecuteCommand,
        wait: Wait,
    ) -> Result<ExecuteResponse, CoreError> {
        let admitted = self.admit(caller, wait).await?;
        Ok(self.run(admitted, cmd, None).await)
    }

    /// A VM of this shape: a ready one from the pool, else a clone of the class's
    /// snapshot, else a cold boot. One-shot executions and sandboxes both start here.
    pub(crate) async fn acquire_vm(&self, spec: &VmSpec) -> Result<Vm, tvm_vmm::VmmError> {
        let pool = self.pool.get();
        match (pool.and_then(|p| p.take(spec)), pool) {
            (Some(vm), _) => Ok(vm),
            (None, Some(pool)) => pool.fresh(spec).await,
            (None, None) => cold_boot(self.vmm.as_ref(), spec, &self.metrics).await,
        }
    }

    /// Runs an admitted command. With `live`, output chunks go there as they arrive
    /// (and are not collected); if its receiver goes away the VM is destroyed at once
    /// and the response says `sandbox_error` "cancelled".
    pub async fn run(
        &self,
        admitted: Admitted,
        cmd: ExecuteCommand,
        live: Option<mpsc::Sender<OutputChunk>>,
    ) -> ExecuteResponse {
        self.run_as(ulid::Ulid::new().to_string(), admitted, cmd, live)
            .await
    }

    /// [`Executor::run`] under a given execution id (an async execution's).
    pub(crate) async fn run_as(
        &self,
        id: String,
        admitted: Admitted,
        cmd: ExecuteCommand,
        live: Option<mpsc::Sender<OutputChunk>>,
    ) -> ExecuteResponse {
        let received = admitted.received;
        let queued_ms = admitted.queued_ms;
        let _inflight = self.metrics.inflight_guard();
        let spec = self.spec_for(cmd.limits.vcpus, cmd.vm_memory_mb());
        let boot_started = Instant::now();
        let vm = match self.acquire_vm(&spec).await {
            Ok(vm) => vm,
            Err(e) => {
                tracing::error!(%id, error = %error_chain(&e), "VM failed to start");
                let msg = format!("{}: the microVM failed to start", self.vmm.name());
                let resp = self.sandbox_error(id, &msg, received, queued_ms, 0);
                self.metrics.finished(&resp);
                return resp;
            }
        };
        let vm_start_ms = boot_started.elapsed().as_millis() as u64;
        tracing::debug!(%id, vm = %vm.id, boot_ms = vm_start_ms, guest_boot_ms = vm.guest_boot_ms, "VM ready");
        let mut lease = Lease {
            vm: Some(vm),
            admitted: Some(admitted),
        };
        // Egress: the guest's proxy connections go to this request's grant.
        let usage = cmd.network.as_ref().map(|g| {
            let usage = Arc::new(tvm_egress::Usage::default());
            let port = crate::egress::port(Arc::new(g.to_egress()), usage.clone());
            lease.vm().channel.attach_net(port);
            usage
        });
        let job = self.job_for(&cmd);
        let ctx = JobContext {
            id,
            received,
            queued_ms,
            vm_start_ms,
            detach_on_cancel: false,
        };
        let (mut resp, _) = self.run_stages(lease.vm(), job, &cmd, live, ctx).await;
        if let Some(u) = usage {
            let usage = crate::egress::usage_of(&u);
            self.metrics.egress(&usage);
            resp.network = Some(usage);
        }
        self.metrics.finished(&resp);
        // The answer goes out now; the VM is destroyed right after (see `Lease`).
        drop(lease);
        resp
    }

    /// Runs `job` in `vm` (a fresh VM, or a sandbox's), collects `files_out`, and
    /// builds the response. The second value is `false` when the VM can no longer
    /// be used (it died, or did not report in time); the caller destroys it.
    pub(crate) async fn run_job(
        &self,
        vm: &mut Vm,
        job: Job,
        cmd: &ExecuteCommand,
        live: Option<mpsc::Sender<OutputChunk>>,
        ctx: JobContext,
    ) -> (ExecuteResponse, bool) {
        let JobContext {
            id,
            received,
            queued_ms,
            vm_start_ms,
            detach_on_cancel,
        } = ctx;
        let deadline =
            Duration::from_millis(cmd.limits.timeout_ms) + self.settings.host_deadline_slack;
        let cap = cmd.limits.max_output_bytes as usize;
        let exec_started = Instant::now();
        let conv =
            tokio::time::timeout(deadline, converse(vm, job, cap, live, detach_on_cancel)).await;
        let exec_ms = exec_started.elapsed().as_millis() as u64;
        // `files_out` within what is left of the same deadline (the host's slack: the
        // agent itself ended the job at its timeout), so no answer takes longer.
        let outcome = match conv {
            Ok(conv @ Conversation::Exited(..)) if !cmd.files_out.is_empty() => {
                let files = tokio::time::timeout(
                    deadline.saturating_sub(exec_started.elapsed()),
                    collect_files(
                        vm,
                        &cmd.files_out,
                        self.settings.max_files_out,
                        self.settings.max_files_out_bytes,
                    ),
                )
                .await
                .unwrap_or_else(|_| Err("the agent did not collect files_out in time".into()));
                Ok((conv, Some(files)))
            }
            other => other.map(|c| (c, None)),
        };
        match outcome {
            Ok((Conversation::Exited(report, out), files)) => {
                let mut resp = self.response(id, &report, out, received, queued_ms, vm_start_ms);
                match files {
                    Some(Ok((files, truncated))) => {
                        resp.files = Some(files);
                        resp.files_truncated = Some(truncated);
                    }
                    Some(Err(why)) => {
                        tracing::warn!(id = %resp.id, %why, "collecting files_out failed");
                        return (
                            self.sandbox_error(
                                resp.id,
                                "the guest agent could not collect files_out",
                                received,
                                queued_ms,
                                vm_start_ms,
                            ),
                            false,
                        );
                    }
                    None => {}
                }
                (resp, true)
            }
            Ok((Conversation::Failed(message), _)) => {
                tracing::warn!(%id, %message, console = %vm.console_tail(400), "agent could not run the job");
                let resp = self.sandbox_error(
                    id,
                    &format!("the guest agent could not run the job: {message}"),
                    received,
                    queued_ms,
                    vm_start_ms,
                );
                (resp, true)
            }
            Ok((Conversation::Cancelled, _)) => {
                tracing::info!(%id, "client went away; VM destroyed");
                let resp = self.sandbox_error(
                    id,
                    "cancelled: the client went away",
                    received,
                    queued_ms,
                    vm_start_ms,
                );
                (resp, false)
            }
            Ok((Conversation::Broken(why), _)) => {
                tracing::warn!(%id, %why, console = %vm.console_tail(400), "VM died during the job");
                let resp = self.sandbox_error(
                    id,
                    "the microVM stopped before reporting a result",
                    received,
                    queued_ms,
                    vm_start_ms,
                );
                (resp, false)
            }
            Err(_) => {
                tracing::warn!(%id, ?deadline, "agent did not report in time; VM destroyed");
                let mut r = self.sandbox_error(
                    id,
                    "the guest did not report before the host deadline",
                    received,
                    queued_ms,
                    vm_start_ms,
                );
                r.status = ExecutionStatus::Timeout;
                r.timings_ms.exec = exec_ms;
                (r, false)
            }
        }
    }

    pub(crate) fn job_for(&self, cmd: &ExecuteCommand) -> Job {
        self.job_with_code_file(cmd, &cmd.code_file)
    }

    pub(crate) fn settings(&self) -> &CoreSettings {
        &self.settings
    }

    /// A job whose code goes to `code_file` (relative to the work dir).
    pub(crate) fn job_with_code_file(&self, cmd: &ExecuteCommand, code_file: &str) -> Job {
        let path = format!("{WORK_DIR}/{code_file}");
        let mut entropy = vec![0u8; 64];
        rand::thread_rng().fill_bytes(&mut entropy);
        let workdir_bytes = self.settings.workdir_mb << 20;
        Job {
            argv: cmd.language.argv(&path, &cmd.args),
            code_file: code_file.to_string(),
            code: cmd.code.clone(),
            stdin: cmd.stdin.clone(),
            env: cmd.env.clone(),
            files: cmd.files.clone(),
            limits: JobLimits {
                timeout_ms: cmd.limits.timeout_ms,
                memory_bytes: cmd.limits.memory_mb << 20,
                max_processes: cmd.limits.max_processes,
                max_output_bytes: cmd.limits.max_output_bytes,
                workdir_bytes,
            },
            clock_unix_ns: now_unix_ns(),
            entropy,
            egress: cmd.network.is_some(),
        }
    }

    fn response(
        &self,
        id: String,
        r: &ExitReport,
        out: Output,
        received: Instant,
        queued: u64,
        vm_start: u64,
    ) -> ExecuteResponse {
        let status = status_of(r.outcome);
        ExecuteResponse {
            id,
            status,
            exit_code: r.exit_code,
            signal: r.signal.map(signal_name),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            stdout_truncated: r.stdout_truncated || out.stdout_cut,
            stderr_truncated: r.stderr_truncated || out.stderr_cut,
            timings_ms: Timings {
                queued,
                vm_start,
                exec: r.exec_ms,
                total: received.elapsed().as_millis() as u64,
            },
            backend: self.vmm.name().to_string(),
            error: None,
            files: None,
            files_truncated: None,
            compile: None,
            tests: None,
            verdict: None,
            network: None,
        }
    }

    pub(crate) fn sandbox_error(
        &self,
        id: String,
        msg: &str,
        received: Instant,
        queued: u64,
        vm_start: u64,
    ) -> ExecuteResponse {
        ExecuteResponse {
            id,
            status: ExecutionStatus::SandboxError,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            timings_ms: Timings {
                queued,
                vm_start,
                exec: 0,
                total: received.elapsed().as_millis() as u64,
            },
            backend: self.vmm.name().to_string(),
            error: Some(msg.to_string()),
            files: None,
            files_truncated: None,
            compile: None,
            tests: None,
            verdict: None,
            network: None,
        }
    }
}

/// One log line per finished execution, whichever door it came through.
pub(crate) fn log_finished(resp: &ExecuteResponse) {
    tracing::info!(
        id = %resp.id,
        status = ?resp.status,
        exit_code = ?resp.exit_code,
        total_ms = resp.timings_ms.total,
        vm_start_ms = resp.timings_ms.vm_start,
        "execution finished"
    );
}

/// The API status for how the agent saw a job end.
pub(crate) fn status_of(o: Outcome) -> ExecutionStatus {
    match o {
        Outcome::Completed => ExecutionStatus::Completed,
        Outcome::Timeout => ExecutionStatus::Timeout,
        Outcome::MemoryLimit => ExecutionStatus::MemoryLimit,
        Outcome::OutputLimit => ExecutionStatus::OutputLimit,
    }
}

/// `SIGKILL` for 9; the number itself for signals nix does not name.
pub(crate) fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| sig.to_string())
}

pub(crate) use tvm_proto::error_chain;

/// A one-shot execution's VM and the slot it runs under. Dropping it — after the
/// answer is built, or when the request is abandoned mid-job (client gone, async
/// execution cancelled) — destroys the VM in the background and releases the slot
/// only once the VM is gone: the answer does not wait for the teardown, capacity is
/// never overcommitted, and a free slot means nothing of its execution is left.
struct Lease {
    vm: Option<Vm>,
    admitted: Option<Admitted>,
}

impl Lease {
    fn vm(&mut self) -> &mut Vm {
        // Both are taken only in `drop`.
        self.vm
            .as_mut()
            .expect("a lease holds its VM until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (Some(vm), admitted) = (self.vm.take(), self.admitted.take()) else {
            return;
        };
        let teardown = async move {
            let started = Instant::now();
            let id = vm.id.clone();
            vm.destroy().await;
            tracing::debug!(vm = %id, destroy_ms = started.elapsed().as_millis() as u64, "VM destroyed");
            drop(admitted);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(teardown)),
            // No runtime (it is shutting down): the VM's own `Drop` kills it now.
            Err(_) => drop(teardown),
        }
    }
}

/// A slot taken by [`Executor::admit`]; released when dropped.
#[derive(Debug)]
pub struct Admitted {
    #[allow(dead_code)] // held for its `Drop`
    slot: Slot,
    received: Instant,
    /// How long it waited in the queue.
    queued_ms: u64,
}

/// Where a job's identity and timings so far come from, for its response.
#[derive(Debug)]
pub(crate) struct JobContext {
    pub id: String,
    pub received: Instant,
    pub queued_ms: u64,
    pub vm_start_ms: u64,
    /// A sandbox outlives its client: when the live receiver goes away the job runs
    /// on (bounded by its timeout), its output dropped, instead of the VM being destroyed.
    pub detach_on_cancel: bool,
}

/// The host's wall clock for the guest: nanoseconds since the Unix epoch.
pub(crate) fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(200), "200");
    }
}
