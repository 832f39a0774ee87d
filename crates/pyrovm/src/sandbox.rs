//! Sandboxes: one microVM kept for a multi-step session, in memory only.
//!
//! The registry maps an id to a [`Sandbox`]: its owner (the caller that made it),
//! its deadlines, and its VM behind an async mutex, so requests on one sandbox run
//! one at a time, in arrival order; a request that cannot start within
//! `busy_timeout` gets [`SandboxError::Busy`]. A background task ends sandboxes at
//! their TTL, after their idle timeout, and when their VMM process has died.
//! Ending one kills its VMM at once (even mid-exec) and then destroys the VM (dir,
//! cgroup, sockets). Nothing is written to host disk: the files live in the guest.
//! Handlers never see a VM: they call the methods here with a validated command.

use crate::lock;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tvm_api::{
    ExecuteCommand, ExecuteResponse, FileEntry, FileListing, FileWritten, SandboxBounds,
    SandboxCommand, SandboxInfo, SandboxLimits,
};
use tvm_http::middleware::Caller;
use tvm_proto::{EntryKind, FileErrorKind, GuestMsg, HostMsg, JobFile, SessionSpec};
use tvm_vmm::Vm;

use crate::core::{kind, request, CoreError, Executor, JobContext, OutputChunk};

/// Operator settings (`[sandbox]` in pyrovm.toml).
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    pub max_total: usize,
    pub max_per_caller: usize,
    pub max_file_bytes: u64,
    pub busy_timeout: Duration,
    pub bounds: SandboxBounds,
    /// The work dir size the pool's VMs are made for; a larger `disk_mb` adds the
    /// difference to the VM's memory (the work dir is a tmpfs in guest RAM).
    pub base_workdir_mb: u64,
    /// In a cluster, ids carry this pyrovm's address (see [`crate::cluster`]).
    pub cluster: Option<crate::cluster::Cluster>,
}

/// Why a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Deleted,
    Ttl,
    Idle,
    VmDied,
    Shutdown,
}

impl EndReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::Ttl => "ttl",
            Self::Idle => "idle",
            Self::VmDied => "vm_died",
            Self::Shutdown => "shutdown",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Deleted => "it was deleted",
            Self::Ttl => "its TTL ran out",
            Self::Idle => "it was idle for longer than its idle timeout",
            Self::VmDied => "its microVM stopped",
            Self::Shutdown => "the service shut down",
        }
    }
}

/// Why a sandbox request was not served.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no sandbox {0} (it never existed, or belongs to another token)")]
    NotFound(String),
    #[error("sandbox {id} has ended: {}", reason.describe())]
    Ended { id: String, reason: EndReason },
    #[error("the {scope} limit of {max} sandboxes is reached; delete one first")]
    TooMany { scope: &'static str, max: usize },
    #[error("sandbox {id} is still busy with another request after {waited_ms} ms; retry when it finishes")]
    Busy { id: String, waited_ms: u64 },
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("{message}")]
    File {
        kind: FileErrorKind,
        message: String,
    },
    #[error("the upload is {got} bytes; a sandbox file may be at most {max} bytes")]
    UploadTooLarge { got: u64, max: u64 },
    #[error("{0}")]
    StartFailed(String),
    #[error("no running process {0} in this sandbox")]
    NoProcess(u32),
    #[error("{0}")]
    Invalid(String),
    #[error("internal error; see the service log")]
    Internal,
}

/// How long a file request may take in the guest before the VM counts as lost.
const FILE_OP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an ended sandbox is remembered (so its id answers 410, not 404).
const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
const MAX_TOMBSTONES: usize = 4096;
/// How often deadlines and VM liveness are checked.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// One live sandbox.
#[derive(Debug)]
pub struct Sandbox {
    pub id: String,
    owner: Caller,
    created: SystemTime,
    created_mono: Instant,
    /// From creation; `set_ttl` moves it.
    ttl: Mutex<Duration>,
    idle: Duration,
    limits: SandboxLimits,
    env: BTreeMap<String, String>,
    last_active: Mutex<(Instant, SystemTime)>,
    execs: AtomicU64,
    vm_start_ms: u64,
    pid: Option<u32>,
    pub(crate) ended: AtomicBool,
    vm: Arc<tokio::sync::Mutex<Option<Vm>>>,
    /// What its egress has done so far (with `network` only).
    egress: Option<Arc<tvm_egress::Usage>>,
    /// Who has the VM between requests (with egress or processes: a pump serving it).
    pub(crate) between: Arc<crate::hold::Idle>,
    /// Processes spawned in it that still run.
    pub(crate) procs: Arc<crate::procs::ProcTable>,
    /// Labels given at creation.
    metadata: BTreeMap<String, String>,
    /// A secret of this sandbox: whoever shows it acts as its owner on the E2B
    /// envd door (the SDKs send it as `X-Access-Token`). Never shown on `/v1`.
    access_token: String,
}

type VmGuard = crate::hold::Held;

/// An exec that passed every check and holds its sandbox (and an execution slot).
#[derive(Debug)]
pub struct PreparedExec {
    sb: Arc<Sandbox>,
    guard: VmGuard,
    admitted: crate::core::Admitted,
    received: Instant,
}

impl Sandbox {
    fn touch(&self) {
        *lock(&self.last_active) = (Instant::now(), SystemTime::now());
    }

    fn idle_for(&self) -> Duration {
        lock(&self.last_active).0.elapsed()
    }

    fn info(&self, backend: &str) -> SandboxInfo {
        let last = lock(&self.last_active).1;
        SandboxInfo {
            id: self.id.clone(),
            created_at: rfc3339(self.created),
            expires_at: rfc3339(self.created + self.ttl()),
            last_active_at: rfc3339(last),
            ttl_s: self.ttl().as_secs(),
            idle_timeout_s: self.idle.as_secs(),
            limits: self.limits,
            env_keys: self.env.keys().cloned().collect(),
            execs: self.execs.load(Ordering::Relaxed),
            backend: backend.to_string(),
            vm_start_ms: self.vm_start_ms,
            metadata: self.metadata.clone(),
        }
    }

    fn ttl(&self) -> Duration {
        *lock(&self.ttl)
    }

    pub(crate) fn ttl_cell(&self) -> &Mutex<Duration> {
        &self.ttl
    }

    /// Time since creation.
    pub(crate) fn age(&self) -> Duration {
        self.created_mono.elapsed()
    }

    pub(crate) fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    pub(crate) fn owner(&self) -> &Caller {
        &self.owner
    }

    pub(crate) fn access_token(&self) -> &str {
        &self.access_token
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<String, Arc<Sandbox>>,
    /// Creations under way, per caller (they count against the caps).
    starting: HashMap<Caller, usize>,
    ended: VecDeque<Tombstone>,
    /// Shutdown has begun: no new sandboxes (live ones serve on until `closed`).
    no_new: bool,
    /// Every sandbox has been ended; the sweeper stops.
    closed: bool,
}

#[derive(Debug)]
struct Tombstone {
    id: String,
    owner: Caller,
    reason: EndReason,
    at: Instant,
}

impl Inner {
    fn count(&self, caller: &Caller) -> (usize, usize) {
        let starting_total: usize = self.starting.values().sum();
        let mine = self.live.values().filter(|s| &s.owner == caller).count()
            + self.starting.get(caller).copied().unwrap_or(0);
        (self.live.len() + starting_total, mine)
    }
}

/// The registry of live sandboxes of this node.
#[derive(Debug)]
pub struct Sandboxes {
    inner: Mutex<Inner>,
    settings: SandboxSettings,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Releases a creation's place in the caps when the creation ends either way.
struct Reservation<'a> {
    reg: &'a Sandboxes,
    caller: Caller,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut inner = lock(&self.reg.inner);
        if let Some(n) = inner.starting.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                inner.starting.remove(&self.caller);
            }
        }
    }
}

impl Sandboxes {
    pub fn new(settings: SandboxSettings, metrics: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            settings,
            metrics,
        })
    }

    pub fn settings(&self) -> &SandboxSettings {
        &self.settings
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The live sandbox `id`, whoever owns it (for a check of its access token).
    pub(crate) fn live(&self, id: &str) -> Option<Arc<Sandbox>> {
        lock(&self.inner).live.get(id).cloned()
    }

    /// Ends sandboxes at their TTL, idle timeout, or when their VMM died; runs until
    /// the registry is dropped or closed.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(reg) = weak.upgrade() else { return };
                if lock(&reg.inner).closed {
                    return;
                }
                reg.sweep();
            }
        })
    }

    fn sweep(&self) {
        let live: Vec<Arc<Sandbox>> = lock(&self.inner).live.values().cloned().collect();
        for sb in live {
            if sb.created_mono.elapsed() >= sb.ttl() {
                self.end(&sb, EndReason::Ttl);
            } else if sb.pid.is_some_and(|p| !process_alive(p)) {
                self.end(&sb, EndReason::VmDied);
            } else if sb.idle_for() >= sb.idle {
                // Idle means no request is running either; holding the sandbox while
                // it ends keeps one from starting in between.
                if let Ok(_held) = sb.vm.try_lock() {
                    if sb.idle_for() >= sb.idle {
                        self.end(&sb, EndReason::Idle);
                    }
                } else if sb.between.pumping() {
                    // Only its egress pump holds it: no request runs.
                    self.end(&sb, EndReason::Idle);
                }
            }
        }
    }

    /// Creates a sandbox owned by `caller`: a VM from the pool (or a snapshot clone,
    /// or a cold boot), made a sandbox by the agent.
    pub async fn create(
        &self,
        executor: &Executor,
        caller: &Caller,
        cmd: SandboxCommand,
    ) -> Result<SandboxInfo, SandboxError> {
        let _reservation = self.reserve(caller)?;
        let admitted = executor.admit(caller, executor.wait_for(None)).await?;
        let received = Instant::now();
        let extra = cmd
            .limits
            .disk_mb
            .saturating_sub(self.settings.base_workdir_mb);
        let spec = executor.spec_for(cmd.limits.vcpus, cmd.limits.memory_mb + extra);
        let mut vm = executor.acquire_vm(&spec).await.map_err(|e| {
            tracing::error!(error = %crate::core::error_chain(&e), "sandbox VM failed to start");
            SandboxError::StartFailed(format!(
                "{}: the microVM failed to start; retry",
                executor.backend_name()
            ))
        })?;
        let open = HostMsg::Open(SessionSpec {
            memory_bytes: cmd.limits.memory_mb << 20,
            max_processes: cmd.limits.max_processes,
            workdir_bytes: cmd.limits.disk_mb << 20,
            egress: cmd.network.is_some(),
        });
        // Egress: the guest's proxy connections go to the sandbox's grant, whose
        // limits hold over its whole life.
        let egress = cmd.network.as_ref().map(|g| {
            let usage = Arc::new(tvm_egress::Usage::default());
            vm.channel
                .attach_net(crate::egress::port(Arc::new(g.to_egress()), usage.clone()));
            usage
        });
        let procs = crate::procs::ProcTable::new();
        vm.channel.attach_procs(procs.sink());
        match tokio::time::timeout(FILE_OP_TIMEOUT, request(&mut vm, open)).await {
            Ok(Ok(GuestMsg::Done)) => {}
            other => {
                tracing::warn!(?other, console = %vm.console_tail(400), "the agent did not open a sandbox");
                vm.destroy().await;
                return Err(SandboxError::StartFailed(
                    "the guest agent could not set the sandbox up; retry".into(),
                ));
            }
        }
        drop(admitted);
        let now = SystemTime::now();
        let sb = Arc::new(Sandbox {
            id: match &self.settings.cluster {
                Some(c) => c.mint(&new_id()),
                None => new_id(),
            },
            owner: caller.clone(),
            created: now,
            created_mono: Instant::now(),
            ttl: Mutex::new(Duration::from_secs(cmd.ttl_s)),
            idle: Duration::from_secs(cmd.idle_timeout_s),
            limits: cmd.limits,
            env: cmd.env,
            last_active: Mutex::new((Instant::now(), now)),
            execs: AtomicU64::new(0),
            vm_start_ms: received.elapsed().as_millis() as u64,
            pid: vm.pid(),
            ended: AtomicBool::new(false),
            vm: Arc::new(tokio::sync::Mutex::new(Some(vm))),
            between: crate::hold::Idle::new(egress.is_some()),
            egress,
            procs,
            metadata: cmd.metadata,
            access_token: new_secret(),
        });
        let inserted = {
            let mut inner = lock(&self.inner);
            let open = !inner.no_new && !inner.closed;
            if open {
                inner.live.insert(sb.id.clone(), sb.clone());
            }
            open
        };
        if !inserted {
            if let Some(vm) = sb.vm.lock().await.take() {
                vm.destroy().await;
            }
            return Err(CoreError::ShuttingDown.into());
        }
        executor.metrics.sandbox_started();
        tracing::info!(sandbox = %sb.id, caller = caller.id(), vm_start_ms = sb.vm_start_ms, "sandbox created");
        Ok(sb.info(executor.backend_name()))
    }

    fn reserve(&self, caller: &Caller) -> Result<Reservation<'_>, SandboxError> {
        let mut inner = lock(&self.inner);
        if inner.no_new || inner.closed {
            return Err(CoreError::ShuttingDown.into());
        }
        let (total, mine) = inner.count(caller);
        if total >= self.settings.max_total {
            return Err(SandboxError::TooMany {
                scope: "node's",
                max: self.settings.max_total,
            });
        }
        if mine >= self.settings.max_per_caller {
            return Err(SandboxError::TooMany {
                scope: "per-token",
                max: self.settings.max_per_caller,
            });
        }
        *inner.starting.entry(caller.clone()).or_insert(0) += 1;
        Ok(Reservation {
            reg: self,
            caller: caller.clone(),
        })
    }

    /// The caller's live sandbox, or why there is none (another caller's is NotFound).
    pub(crate) fn get(&self, caller: &Caller, id: &str) -> Result<Arc<Sandbox>, SandboxError> {
        let inner = lock(&self.inner);
        if let Some(sb) = inner.live.get(id).filter(|s| &s.owner == caller) {
            return Ok(sb.clone());
        }
        match inner
            .ended
            .iter()
            .find(|t| t.id == id && &t.owner == caller && t.at.elapsed() < TOMBSTONE_TTL)
        {
            Some(t) => Err(SandboxError::Ended {
                id: id.to_string(),
                reason: t.reason,
            }),
            None => Err(SandboxError::NotFound(id.to_string())),
        }
    }

    pub fn info(
        &self,
        executor: &Executor,
        caller: &Caller,
        id: &str,
    ) -> Result<SandboxInfo, SandboxError> {
        Ok(self.get(caller, id)?.info(executor.backend_name()))
    }

    /// The caller's live sandboxes, oldest first.
    pub fn list(&self, executor: &Executor, caller: &Caller) -> Vec<SandboxInfo> {
        let mut mine: Vec<Arc<Sandbox>> = lock(&self.inner)
            .live
            .values()
            .filter(|s| &s.owner == caller)
            .cloned()
            .collect();
        mine.sort_by_key(|s| s.created_mono);
        mine.iter()
            .map(|s| s.info(executor.backend_name()))
            .collect()
    }

    /// Ends the caller's sandbox and waits until its VM is gone.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), SandboxError> {
        let sb = self.get(caller, id)?;
        if let Some(done) = self.end(&sb, EndReason::Deleted) {
            let _ = done.await;
        }
        Ok(())
    }

    /// Marks the sandbox ended, kills its VMM at once, and destroys the VM (as soon
    /// as a running request lets go of it). `None` if it had already ended.
    fn end(&self, sb: &Arc<Sandbox>, reason: EndReason) -> Option<tokio::task::JoinHandle<()>> {
        if sb.ended.swap(true, Ordering::AcqRel) {
            return None;
        }
        tracing::info!(sandbox = %sb.id, reason = reason.label(), "sandbox ended");
        {
            let mut inner = lock(&self.inner);
            inner.live.remove(&sb.id);
            if reason != EndReason::Deleted {
                if inner.ended.len() >= MAX_TOMBSTONES {
                    inner.ended.pop_front();
                }
                inner.ended.push_back(Tombstone {
                    id: sb.id.clone(),
                    owner: sb.owner.clone(),
                    reason,
                    at: Instant::now(),
                });
            }
        }
        self.metrics.sandbox_ended(reason.label());
        sb.procs.close();
        if let Some(pid) = sb.pid {
            // The VMM is our child and is not reaped before `destroy`, so the pid
            // cannot have been reused. A running exec sees its channel break.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let sb = sb.clone();
        Some(tokio::spawn(async move {
            if let Some(vm) = sb.between.close(&sb.vm).await.take() {
                vm.destroy().await;
            }
        }))
    }

    /// Stops creations and ends every sandbox; returns when their VMs are gone.
    pub async fn close_all(&self) {
        let live: Vec<Arc<Sandbox>> = {
            let mut inner = lock(&self.inner);
            inner.no_new = true;
            inner.closed = true;
            inner.live.values().cloned().collect()
        };
        let mut waits = Vec::new();
        for sb in &live {
            waits.extend(self.end(sb, EndReason::Shutdown));
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Stops creations (shutdown has begun); live sandboxes keep serving until
    /// [`Sandboxes::close_all`].
    pub fn stop_creating(&self) {
        lock(&self.inner).no_new = true;
    }

    /// Waits (bounded by `busy_timeout`) for the sandbox to be free, then holds it.
    pub(crate) async fn hold_owned(&self, sb: &Sandbox) -> Result<VmGuard, SandboxError> {
        let guard = sb
            .between
            .hold(&sb.vm, self.settings.busy_timeout)
            .await
            .ok_or_else(|| SandboxError::Busy {
                id: sb.id.clone(),
                waited_ms: self.settings.busy_timeout.as_millis() as u64,
            })?;
        if guard.is_none() || sb.ended.load(Ordering::Acquire) {
            return Err(self.ended_error(sb));
        }
        sb.touch();
        Ok(guard)
    }

    pub(crate) fn ended_error(&self, sb: &Sandbox) -> SandboxError {
        let inner = lock(&self.inner);
        match inner.ended.iter().rev().find(|t| t.id == sb.id) {
            Some(t) => SandboxError::Ended {
                id: sb.id.clone(),
                reason: t.reason,
            },
            None => SandboxError::NotFound(sb.id.clone()),
        }
    }

    /// Everything of an exec that can be refused (no such sandbox, busy, at
    /// capacity, a file that cannot be written), done before it runs, so that the
    /// streaming endpoint can still answer those with a plain error.
    pub async fn prepare_exec(
        self: &Arc<Self>,
        executor: &Arc<Executor>,
        caller: &Caller,
        id: &str,
        cmd: &ExecuteCommand,
    ) -> Result<PreparedExec, SandboxError> {
        let (this, ex, caller, id, cmd) = (
            self.clone(),
            executor.clone(),
            caller.clone(),
            id.to_string(),
            cmd.clone(),
        );
        detached(async move { this.prepare_exec_here(&ex, &caller, &id, &cmd).await })
            .await
            .and_then(|r| r)
    }

    async fn prepare_exec_here(
        &self,
        executor: &Executor,
        caller: &Caller,
        id: &str,
        cmd: &ExecuteCommand,
    ) -> Result<PreparedExec, SandboxError> {
        let received = Instant::now();
        let sb = self.get(caller, id)?;
        let mut guard = self.hold_owned(&sb).await?;
        let admitted = executor.admit(caller, executor.wait_for(None)).await?;
        let vm = guard.as_mut().ok_or_else(|| self.ended_error(&sb))?;
        for f in &cmd.files {
            match self
                .file_request(&sb, vm, HostMsg::WriteFile(f.clone()))
                .await?
            {
                GuestMsg::Done => {}
                other => return Err(unexpected(&sb, &other)),
            }
        }
        Ok(PreparedExec {
            sb,
            guard,
            admitted,
            received,
        })
    }

    /// Runs a prepared exec. `live` streams its output; a client that goes away
    /// does not end the sandbox (the exec runs on to its own end, output dropped).
    pub async fn run_exec(
        self: &Arc<Self>,
        executor: &Arc<Executor>,
        prepared: PreparedExec,
        cmd: ExecuteCommand,
        live: Option<mpsc::Sender<OutputChunk>>,
    ) -> ExecuteResponse {
        let (this, ex) = (self.clone(), executor.clone());
        let received = prepared.received;
        let backup = executor.clone();
        match detached(async move { this.run_exec_here(&ex, prepared, cmd, live).await }).await {
            Ok(resp) => resp,
            Err(_) => backup.sandbox_error(
                ulid::Ulid::new().to_string(),
                "internal error while running the exec",
                received,
                0,
                0,
            ),
        }
    }

    async fn run_exec_here(
        &self,
        executor: &Executor,
        prepared: PreparedExec,
        cmd: ExecuteCommand,
        live: Option<mpsc::Sender<OutputChunk>>,
    ) -> ExecuteResponse {
        let PreparedExec {
            sb,
            mut guard,
            admitted,
            received,
        } = prepared;
        let _inflight = executor.metrics.inflight_guard();
        // The code goes to a hidden name in the work dir (so the language's module
        // resolution still sees the work dir) that never clobbers a user's file;
        // the agent removes it after the exec.
        // Java's file must carry its public class's name (javac insists), so it
        // keeps that name; it is removed after the exec all the same.
        let code_file = if cmd.language.public_class_file {
            cmd.code_file.clone()
        } else {
            format!(".tvm-exec-{}", cmd.code_file)
        };
        let mut job = executor.job_with_code_file(&cmd, &code_file);
        job.files.clear();
        let mut env = sb.env.clone();
        env.extend(cmd.env.clone());
        job.env = env;
        let ctx = JobContext {
            id: ulid::Ulid::new().to_string(),
            received,
            queued_ms: received.elapsed().as_millis() as u64,
            vm_start_ms: 0,
            detach_on_cancel: true,
        };
        let net_before = sb.egress.as_deref().map(crate::egress::usage_of);
        let (mut resp, usable) = match guard.as_mut() {
            Some(vm) => executor.run_stages(vm, job, &cmd, live, ctx).await,
            None => (
                executor.sandbox_error(ctx.id, "the sandbox has ended", received, 0, 0),
                false,
            ),
        };
        if let (Some(u), Some(before)) = (sb.egress.as_deref(), net_before) {
            let usage = crate::egress::since(&before, crate::egress::usage_of(u));
            executor.metrics.egress(&usage);
            resp.network = Some(usage);
        }
        sb.execs.fetch_add(1, Ordering::Relaxed);
        sb.touch();
        executor.metrics.finished(&resp);
        executor.metrics.sandbox_exec();
        drop(admitted);
        drop(guard);
        if !usable {
            self.end(&sb, EndReason::VmDied);
        }
        resp
    }

    /// [`Sandboxes::prepare_exec`] then [`Sandboxes::run_exec`], collecting the output.
    pub async fn execute(
        self: &Arc<Self>,
        executor: &Arc<Executor>,
        caller: &Caller,
        id: &str,
        cmd: ExecuteCommand,
    ) -> Result<ExecuteResponse, SandboxError> {
        let prepared = self.prepare_exec(executor, caller, id, &cmd).await?;
        Ok(self.run_exec(executor, prepared, cmd, None).await)
    }

    /// Sends a file request; a broken channel or a silent agent ends the sandbox.
    pub(crate) async fn file_request(
        &self,
        sb: &Arc<Sandbox>,
        vm: &mut Vm,
        msg: HostMsg,
    ) -> Result<GuestMsg, SandboxError> {
        match tokio::time::timeout(FILE_OP_TIMEOUT, request(vm, msg)).await {
            Ok(Ok(GuestMsg::FileError { kind, message })) => {
                Err(SandboxError::File { kind, message })
            }
            Ok(Ok(m)) => Ok(m),
            lost => {
                let why = match lost {
                    Ok(Err(why)) => why,
                    _ => "the agent did not answer in time".into(),
                };
                tracing::warn!(sandbox = %sb.id, %why, "sandbox VM lost during a file request");
                self.end(sb, EndReason::VmDied);
                Err(SandboxError::Ended {
                    id: sb.id.clone(),
                    reason: EndReason::VmDied,
                })
            }
        }
    }

    /// One file operation on the caller's sandbox, with its own hold.
    pub(crate) async fn file_op(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        msg: HostMsg,
    ) -> Result<GuestMsg, SandboxError> {
        let (this, caller, id) = (self.clone(), caller.clone(), id.to_string());
        detached(async move { this.file_op_here(&caller, &id, msg).await })
            .await
            .and_then(|r| r)
    }

    async fn file_op_here(
        &self,
        caller: &Caller,
        id: &str,
        msg: HostMsg,
    ) -> Result<GuestMsg, SandboxError> {
        let sb = self.get(caller, id)?;
        let mut guard = self.hold_owned(&sb).await?;
        let vm = guard.as_mut().ok_or_else(|| self.ended_error(&sb))?;
        let r = self.file_request(&sb, vm, msg).await;
        sb.touch();
        r
    }

    /// Writes `content` to `path` (relative to the work dir) in the caller's sandbox.
    pub async fn write_file(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        path: String,
        content: Vec<u8>,
    ) -> Result<FileWritten, SandboxError> {
        check_path(&path)?;
        let size = content.len() as u64;
        if size > self.settings.max_file_bytes {
            // Still a 404 for someone else's (or no) sandbox.
            self.get(caller, id)?;
            return Err(SandboxError::UploadTooLarge {
                got: size,
                max: self.settings.max_file_bytes,
            });
        }
        let msg = HostMsg::WriteFile(JobFile {
            path: path.clone(),
            content,
        });
        match self.file_op(caller, id, msg).await? {
            GuestMsg::Done => Ok(FileWritten { path, size }),
            other => Err(unexpected_msg(&other)),
        }
    }

    /// The bytes of one file of the caller's sandbox.
    pub async fn read_file(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        path: &str,
    ) -> Result<Vec<u8>, SandboxError> {
        check_path(path)?;
        let msg = HostMsg::ReadFile {
            path: path.to_string(),
            max_bytes: self.settings.max_file_bytes,
        };
        match self.file_op(caller, id, msg).await? {
            GuestMsg::FileData { content } => Ok(content),
            other => Err(unexpected_msg(&other)),
        }
    }

    /// One directory of the caller's sandbox (`""`: the work dir).
    pub async fn list_dir(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        path: &str,
    ) -> Result<FileListing, SandboxError> {
        if !path.is_empty() {
            check_path(path)?;
        }
        let msg = HostMsg::ListDir {
            path: path.to_string(),
        };
        match self.file_op(caller, id, msg).await? {
            GuestMsg::Listing { entries, truncated } => Ok(FileListing {
                path: path.to_string(),
                truncated,
                entries: entries
                    .into_iter()
                    .map(|e| FileEntry {
                        name: e.name,
                        kind: match e.kind {
                            EntryKind::File => "file",
                            EntryKind::Dir => "dir",
                            EntryKind::Symlink => "symlink",
                            EntryKind::Other => "other",
                        }
                        .into(),
                        size: e.size,
                    })
                    .collect(),
            }),
            other => Err(unexpected_msg(&other)),
        }
    }
}

/// Runs a conversation with a sandbox's agent to its end even if the caller stops
/// waiting (a client that disconnects drops the handler's future): a request cut off
/// half-way would leave its answer in the channel for the next request to misread.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::spawn(f).await.map_err(|e| {
        tracing::error!(error = %e, "a sandbox task failed");
        SandboxError::Internal
    })
}

fn check_path(path: &str) -> Result<(), SandboxError> {
    tvm_proto::check_relative_path(path).map_err(|e| SandboxError::File {
        kind: FileErrorKind::InvalidPath,
        message: format!("path {path:?}: {e}"),
    })
}

fn unexpected(sb: &Sandbox, m: &GuestMsg) -> SandboxError {
    tracing::warn!(sandbox = %sb.id, got = kind(m), "unexpected agent answer");
    unexpected_msg(m)
}

pub(crate) fn unexpected_msg(m: &GuestMsg) -> SandboxError {
    SandboxError::StartFailed(format!("the guest agent answered {} unexpectedly", kind(m)))
}

/// A sandbox id: `sb-` and a ULID (sortable by creation, 128 bits, unguessable
/// enough that ownership, not secrecy, is what protects it).
fn new_id() -> String {
    format!("sb-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// 256 random bits, hex.
fn new_secret() -> String {
    use rand::RngCore as _;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether a (child) process is still running: gone or a zombie means dead.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(a.starts_with("sb-") && a.len() == 29, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn liveness_of_processes() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX - 1));
    }

    #[test]
    fn end_reasons_read_well() {
        let e = SandboxError::Ended {
            id: "sb-x".into(),
            reason: EndReason::VmDied,
        };
        assert_eq!(e.to_string(), "sandbox sb-x has ended: its microVM stopped");
        assert_eq!(EndReason::Idle.label(), "idle");
    }
}
