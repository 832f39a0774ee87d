//! Async executions: submitted now, run when the queue gives them a slot, their
//! results held in memory only, for a TTL, readable by the submitting caller only
//! (anyone else gets "not found", as if it did not exist).
//!
//! Every execution reserves its worst-case result size when it is submitted (both
//! output caps, compile and test-case output included, plus the `files_out` cap if
//! it asks for files), so the store's byte cap holds without ever dropping a result;
//! the reservation shrinks to the real size when it finishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tvm_api::{
    ApiError, AsyncStatus, ExecuteCommand, ExecuteResponse, ExecutionOutcome, ExecutionState,
    ExecutionSummary,
};
use tvm_http::middleware::Caller;

use crate::core::{CoreError, Executor};
use crate::metrics::Metrics;
use crate::queue::Wait;

#[derive(Debug, Clone)]
pub struct ExecutionsSettings {
    pub result_ttl: Duration,
    pub max_stored: usize,
    pub max_per_caller: usize,
    pub max_stored_bytes: u64,
    pub max_batch: usize,
    pub queue_timeout: Duration,
    pub max_wait: Duration,
    /// `files_out` cap of one execution (part of its reservation).
    pub max_files_out_bytes: u64,
    /// In a cluster, ids name this node, so any pyrovm forwards to it.
    pub cluster: Option<crate::cluster::Cluster>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AsyncError {
    #[error("no such execution")]
    NotFound,
    #[error("{held} async executions are held ({limit} at most{whose}); retry once results are read or expire")]
    TooMany {
        held: usize,
        limit: usize,
        whose: &'static str,
    },
    #[error("async results would need {need} bytes, {free} of the {cap} kept for them are free; lower max_output_bytes or retry once results are read or expire")]
    NoRoom { need: u64, free: u64, cap: u64 },
    #[error(transparent)]
    Core(CoreError),
}

impl AsyncError {
    /// `Retry-After` seconds for the refusals that pass with time.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            AsyncError::NotFound => None,
            AsyncError::TooMany { .. } | AsyncError::NoRoom { .. } => Some(5),
            AsyncError::Core(e) => Some(e.retry_after_s()),
        }
    }
}

/// Where one execution is.
#[derive(Debug, Clone)]
enum Stage {
    Queued,
    Running,
    Done(Arc<ExecuteResponse>),
    Rejected(ApiError),
}

impl Stage {
    fn finished(&self) -> bool {
        matches!(self, Stage::Done(_) | Stage::Rejected(_))
    }
}

#[derive(Debug)]
struct Record {
    owner: Caller,
    submitted: Instant,
    /// Bytes counted against `max_stored_bytes` for it now.
    bytes: u64,
    /// Set when it finished: then it is forgotten at `finished + result_ttl`.
    finished: Option<Instant>,
    stage: watch::Sender<Stage>,
    task: Option<tokio::task::AbortHandle>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<String, Record>,
    /// Submission order, for listings (ids of forgotten records are skipped).
    order: Vec<String>,
    bytes: u64,
    closed: bool,
}

#[derive(Debug)]
pub struct Executions {
    inner: Mutex<Inner>,
    settings: ExecutionsSettings,
    executor: Arc<Executor>,
    metrics: Arc<Metrics>,
}

impl Executions {
    pub fn new(settings: ExecutionsSettings, executor: Arc<Executor>) -> Arc<Self> {
        let metrics = executor.metrics.clone();
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            settings,
            executor,
            metrics,
        })
    }

    pub fn settings(&self) -> &ExecutionsSettings {
        &self.settings
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::lock(&self.inner)
    }

    /// Accepts every command for `caller`, or none: each is queued for a slot and
    /// its id returned in order.
    pub fn submit(
        self: &Arc<Self>,
        caller: &Caller,
        cmds: Vec<ExecuteCommand>,
    ) -> Result<Vec<ExecutionState>, AsyncError> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if inner.closed {
            return Err(AsyncError::Core(CoreError::ShuttingDown));
        }
        let n = cmds.len();
        let held = inner.records.len();
        if held + n > self.settings.max_stored {
            self.metrics.rejected("async_full");
            return Err(AsyncError::TooMany {
                held,
                limit: self.settings.max_stored,
                whose: " on this node",
            });
        }
        let mine = inner
            .records
            .values()
            .filter(|r| &r.owner == caller)
            .count();
        if mine + n > self.settings.max_per_caller {
            self.metrics.rejected("async_full");
            return Err(AsyncError::TooMany {
                held: mine,
                limit: self.settings.max_per_caller,
                whose: " per token",
            });
        }
        let need: u64 = cmds.iter().map(|c| self.reservation(c)).sum();
        let free = self.settings.max_stored_bytes.saturating_sub(inner.bytes);
        if need > free {
            self.metrics.rejected("async_full");
            return Err(AsyncError::NoRoom {
                need,
                free,
                cap: self.settings.max_stored_bytes,
            });
        }
        let mut accepted = Vec::with_capacity(n);
        for cmd in cmds {
            let local = format!("ex-{}", ulid::Ulid::new().to_string().to_lowercase());
            let id = match &self.settings.cluster {
                Some(c) => c.mint(&local),
                None => local,
            };
            let bytes = self.reservation(&cmd);
            let (stage, _) = watch::channel(Stage::Queued);
            inner.bytes += bytes;
            inner.order.push(id.clone());
            let task = tokio::spawn(self.clone().run(id.clone(), caller.clone(), cmd));
            inner.records.insert(
                id.clone(),
                Record {
                    owner: caller.clone(),
                    submitted: now,
                    bytes,
                    finished: None,
                    stage,
                    task: Some(task.abort_handle()),
                },
            );
            accepted.push(ExecutionState {
                id,
                status: AsyncStatus::Queued,
                age_ms: 0,
                error: None,
            });
        }
        self.metrics.async_stored(inner.records.len(), inner.bytes);
        Ok(accepted)
    }

    /// The most a result of `cmd` can take in memory.
    fn reservation(&self, cmd: &ExecuteCommand) -> u64 {
        let out = 2 * cmd.limits.max_output_bytes;
        let stages = 1 + cmd.tests.len() as u64 + u64::from(cmd.language.compiles());
        let files = if cmd.files_out.is_empty() {
            0
        } else {
            // base64 in the response
            self.settings.max_files_out_bytes.div_ceil(3) * 4
        };
        stages * out + files + RECORD_OVERHEAD
    }

    async fn run(self: Arc<Self>, id: String, caller: Caller, cmd: ExecuteCommand) {
        let wait = Wait {
            max_wait: self.settings.queue_timeout,
            counted: false,
        };
        let admitted = match self.executor.admit(&caller, wait).await {
            Ok(a) => a,
            Err(e) => {
                self.finish(
                    &id,
                    Stage::Rejected(ApiError {
                        code: e.code().into(),
                        message: e.to_string(),
                    }),
                );
                return;
            }
        };
        self.set_stage(&id, Stage::Running);
        let resp = self.executor.run_as(id.clone(), admitted, cmd, None).await;
        crate::core::log_finished(&resp);
        self.finish(&id, Stage::Done(Arc::new(resp)));
    }

    fn set_stage(&self, id: &str, stage: Stage) {
        if let Some(r) = self.lock().records.get(id) {
            r.stage.send_replace(stage);
        }
    }

    fn finish(&self, id: &str, stage: Stage) {
        let status = match &stage {
            Stage::Done(r) => crate::metrics::label(&r.status),
            _ => "rejected".into(),
        };
        self.metrics.async_ended(&status);
        let mut inner = self.lock();
        let Some(r) = inner.records.get_mut(id) else {
            return; // deleted meanwhile
        };
        let real = match &stage {
            Stage::Done(resp) => result_bytes(resp),
            _ => RECORD_OVERHEAD,
        };
        let before = r.bytes;
        r.bytes = real.min(before);
        r.finished = Some(Instant::now());
        r.task = None;
        r.stage.send_replace(stage);
        inner.bytes -= before - real.min(before);
        self.metrics.async_stored(inner.records.len(), inner.bytes);
    }

    /// The result, or where it is. With `wait`, holds until it finishes or `wait`
    /// passes (at most `max_wait`).
    pub async fn get(
        &self,
        caller: &Caller,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<ExecutionOutcome, AsyncError> {
        let (mut rx, submitted) = {
            let mut inner = self.lock();
            self.expire(&mut inner, Instant::now());
            let r = inner
                .records
                .get(id)
                .filter(|r| &r.owner == caller)
                .ok_or(AsyncError::NotFound)?;
            (r.stage.subscribe(), r.submitted)
        };
        if let Some(w) = wait {
            let w = w.min(self.settings.max_wait);
            // A record deleted meanwhile closes the channel: answer what it was.
            let _ = tokio::time::timeout(w, rx.wait_for(Stage::finished)).await;
        }
        let stage = rx.borrow().clone();
        Ok(outcome(id, submitted, stage))
    }

    /// Cancels a pending execution (its VM, if it has one, is destroyed; it leaves
    /// the queue if it waits) and forgets it, or forgets a finished one.
    pub fn delete(&self, caller: &Caller, id: &str) -> Result<(), AsyncError> {
        let mut inner = self.lock();
        if !inner.records.get(id).is_some_and(|r| &r.owner == caller) {
            return Err(AsyncError::NotFound);
        }
        if let Some(r) = inner.records.remove(id) {
            if let Some(task) = &r.task {
                task.abort();
                self.metrics.async_ended("cancelled");
            }
            inner.bytes -= r.bytes;
            inner.order.retain(|i| i != id);
        }
        self.metrics.async_stored(inner.records.len(), inner.bytes);
        Ok(())
    }

    /// The caller's executions on this node, oldest first.
    pub fn list(&self, caller: &Caller) -> Vec<ExecutionSummary> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        inner
            .order
            .iter()
            .filter_map(|id| inner.records.get(id).map(|r| (id, r)))
            .filter(|(_, r)| &r.owner == caller)
            .map(|(id, r)| {
                let status = match &*r.stage.borrow() {
                    Stage::Queued => "queued".to_string(),
                    Stage::Running => "running".to_string(),
                    Stage::Rejected(_) => "rejected".to_string(),
                    Stage::Done(resp) => crate::metrics::label(&resp.status),
                };
                ExecutionSummary {
                    id: id.clone(),
                    status,
                    age_ms: now.duration_since(r.submitted).as_millis() as u64,
                }
            })
            .collect()
    }

    /// Forgets results older than the TTL.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        let ttl = self.settings.result_ttl;
        let before = inner.records.len();
        let mut freed = 0;
        inner.records.retain(|_, r| {
            let keep = r.finished.is_none_or(|t| now.duration_since(t) < ttl);
            if !keep {
                freed += r.bytes;
            }
            keep
        });
        if inner.records.len() != before {
            inner.bytes -= freed;
            let records = &inner.records;
            let mut order = std::mem::take(&mut inner.order);
            order.retain(|id| records.contains_key(id));
            inner.order = order;
            self.metrics.async_stored(inner.records.len(), inner.bytes);
        }
    }

    /// Forgets expired results now and then, so memory is returned while idle.
    pub fn spawn_sweeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Some(this) = this.upgrade() else { return };
                let mut inner = this.lock();
                this.expire(&mut inner, Instant::now());
            }
        })
    }

    /// Stops accepting and cancels every pending execution (the service is stopping;
    /// results live in memory only).
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        for r in inner.records.values_mut() {
            if let Some(task) = r.task.take() {
                task.abort();
            }
        }
    }

    /// Executions held (pending and finished), and the bytes reserved for them.
    pub fn held(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.records.len(), inner.bytes)
    }
}

/// What a record holds besides its output (ids, timings, the JSON around it).
const RECORD_OVERHEAD: u64 = 2048;

fn result_bytes(r: &ExecuteResponse) -> u64 {
    let stage = |s: &tvm_api::StageResult| (s.stdout.len() + s.stderr.len()) as u64;
    (r.stdout.len() + r.stderr.len()) as u64
        + r.compile.as_ref().map_or(0, stage)
        + r.tests
            .iter()
            .flatten()
            .map(|c| (c.stdout.len() + c.stderr.len()) as u64)
            .sum::<u64>()
        + r.files
            .iter()
            .flatten()
            .map(|f| (f.content.len() + f.path.len()) as u64)
            .sum::<u64>()
        + RECORD_OVERHEAD
}

fn outcome(id: &str, submitted: Instant, stage: Stage) -> ExecutionOutcome {
    let age_ms = submitted.elapsed().as_millis() as u64;
    let state = |status, error| {
        ExecutionOutcome::Pending(ExecutionState {
            id: id.to_string(),
            status,
            age_ms,
            error,
        })
    };
    match stage {
        Stage::Queued => state(AsyncStatus::Queued, None),
        Stage::Running => state(AsyncStatus::Running, None),
        Stage::Rejected(e) => state(AsyncStatus::Rejected, Some(e)),
        Stage::Done(resp) => ExecutionOutcome::Done(Box::new((*resp).clone())),
    }
}
