//! Warm pool: per size class (vCPUs, guest RAM), keep booted VMs whose agent has
//! said ready. A request takes one; the VM still serves exactly that one request and
//! is destroyed after it, and a refill starts at once. Boots are bounded in
//! parallel. An empty pool means a cold boot. Shutdown drains and destroys them all.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tvm_vmm::{Snapshot, Vm, VmSpec, Vmm, VmmError, WarmSpec};

use crate::metrics::Metrics;

/// One pooled size class, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolClass {
    pub vcpus: u32,
    /// The job's memory limit this class serves (guest RAM adds the overhead).
    pub memory_mb: u64,
    /// VMs kept ready.
    pub size: usize,
}

#[derive(Debug, Default)]
struct ClassState {
    ready: VecDeque<Vm>,
    booting: usize,
    target: usize,
    snapshot: Option<Arc<Snapshot>>,
    template: Template,
}

/// Where a class's snapshot template stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Template {
    /// Snapshots are off: the class boots its VMs.
    #[default]
    None,
    /// Being made (the class cold-boots meanwhile).
    Making,
    /// Frozen: the class starts its VMs as clones.
    Ready,
    /// Could not be made: the class cold-boots.
    Failed,
}

/// How warm one class is (what readiness waits for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warmth {
    pub template: Template,
    /// VMs waiting in the pool, and how many the class keeps.
    pub ready: usize,
    pub target: usize,
}

#[derive(Debug)]
pub struct Pool {
    vmm: Arc<dyn Vmm>,
    classes: Mutex<HashMap<VmSpec, ClassState>>,
    boots: Arc<Semaphore>,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
    /// Snapshot templates in the making (for drain to wait on).
    making: std::sync::atomic::AtomicUsize,
    /// Warm-up every pooled VM runs before it counts as ready (software emulation only).
    prime: Option<WarmSpec>,
    /// Host cores: priming is skipped while this many executions run.
    cores: usize,
}

/// How the pool starts its VMs.
#[derive(Debug, Clone, Default)]
pub struct PoolOptions {
    /// Starts running at once (boots, restores, templates).
    pub parallel_boots: usize,
    /// Snapshot each class with this warm-up and start its VMs as clones.
    pub snapshot_warm: Option<WarmSpec>,
    /// Commands each pooled VM runs while it waits, so that under TCG the VMM's
    /// translation cache already holds the runtimes' start-up code when a job comes.
    /// Ignored by backends that are not software-emulated.
    pub prime: Option<WarmSpec>,
}

impl Pool {
    /// `classes` maps guest specs to target sizes; `parallel_boots` bounds concurrent
    /// boots. With `snapshots`, every class (also one of size 0) gets a template
    /// snapshot first, warmed with those commands.
    pub fn new(
        vmm: Arc<dyn Vmm>,
        classes: Vec<(VmSpec, usize)>,
        opts: PoolOptions,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let snapshots = opts.snapshot_warm;
        let prime = opts
            .prime
            .filter(|p| !p.commands.is_empty() && vmm.software_emulated());
        let parallel_boots = opts.parallel_boots;
        let keep_empty = snapshots.is_some();
        let map = classes
            .into_iter()
            .filter(|(_, n)| *n > 0 || keep_empty)
            .map(|(spec, target)| {
                (
                    spec,
                    ClassState {
                        target,
                        ..ClassState::default()
                    },
                )
            })
            .collect();
        let pool = Arc::new(Self {
            vmm,
            classes: Mutex::new(map),
            boots: Arc::new(Semaphore::new(parallel_boots.max(1))),
            closed: AtomicBool::new(false),
            metrics,
            making: std::sync::atomic::AtomicUsize::new(0),
            prime,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        });
        let specs: Vec<VmSpec> = pool.lock().keys().cloned().collect();
        for spec in specs {
            match &snapshots {
                Some(warm) => pool.make_snapshot(spec, warm.clone()),
                None => pool.refill(&spec),
            }
        }
        pool
    }

    /// Makes the class's template snapshot (one boot slot), then fills the class.
    /// On failure the class keeps cold-booting, and says why.
    fn make_snapshot(self: &Arc<Self>, spec: VmSpec, warm: WarmSpec) {
        self.making.fetch_add(1, Ordering::AcqRel);
        if let Some(c) = self.lock().get_mut(&spec) {
            c.template = Template::Making;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let made = match pool.boots.clone().acquire_owned().await {
                Ok(_permit) if !pool.closed.load(Ordering::Acquire) => {
                    Some(pool.vmm.snapshot(&spec, &warm).await)
                }
                _ => None,
            };
            match made {
                Some(Ok(snap)) => {
                    tracing::info!(
                        vcpus = spec.vcpus,
                        memory_mb = spec.memory_mb,
                        took_ms = snap.took.as_millis() as u64,
                        touched_mib = snap.memory_bytes >> 20,
                        "snapshot ready; this class now starts VMs as clones"
                    );
                    let n = {
                        let mut classes = pool.lock();
                        if !pool.closed.load(Ordering::Acquire) {
                            if let Some(c) = classes.get_mut(&spec) {
                                c.snapshot = Some(Arc::new(snap));
                                c.template = Template::Ready;
                            }
                        }
                        classes.values().filter(|c| c.snapshot.is_some()).count()
                    };
                    pool.metrics.snapshots_ready(n);
                }
                Some(Err(e)) => {
                    tracing::warn!(
                        vcpus = spec.vcpus,
                        memory_mb = spec.memory_mb,
                        error = %crate::core::error_chain(&e),
                        "snapshot failed; this class cold-boots its VMs"
                    );
                    if let Some(c) = pool.lock().get_mut(&spec) {
                        c.template = Template::Failed;
                    }
                }
                None => {}
            }
            pool.making.fetch_sub(1, Ordering::AcqRel);
            pool.refill(&spec);
        });
    }

    /// A new VM of this class, not from the pool: a clone of the class's snapshot
    /// if there is one (a failed restore falls back to a cold boot), else a cold boot.
    pub async fn fresh(&self, spec: &VmSpec) -> Result<Vm, VmmError> {
        let snapshot = self.lock().get(spec).and_then(|c| c.snapshot.clone());
        if let Some(snap) = snapshot {
            let started = std::time::Instant::now();
            match self.vmm.restore(&snap).await {
                Ok(vm) => {
                    self.metrics.restored(true);
                    self.metrics
                        .restore_seconds
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(vm);
                }
                Err(e) => {
                    self.metrics.restored(false);
                    tracing::warn!(
                        snapshot = %snap.id,
                        error = %crate::core::error_chain(&e),
                        "restore failed; clone discarded, cold-booting instead"
                    );
                }
            }
        }
        crate::core::cold_boot(self.vmm.as_ref(), spec, &self.metrics).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VmSpec, ClassState>> {
        // A poisoned lock only means a panic elsewhere; the map itself stays usable.
        crate::lock(&self.classes)
    }

    /// A ready VM of this class, if any (a miss is counted and a refill starts);
    /// `None` without counting for a class the pool does not keep (or keeps only
    /// a snapshot of).
    pub fn take(self: &Arc<Self>, spec: &VmSpec) -> Option<Vm> {
        let vm = {
            let mut classes = self.lock();
            let class = classes.get_mut(spec).filter(|c| c.target > 0)?;
            let vm = class.ready.pop_front();
            self.metrics.pool_size(spec, class.ready.len());
            vm
        };
        match &vm {
            Some(_) => self.metrics.pool_hit(true),
            None => self.metrics.pool_hit(false),
        }
        self.refill(spec);
        vm
    }

    /// A VM for the pool: fresh, then primed (if priming is on); `None` on failure.
    async fn pooled_vm(&self, spec: &VmSpec) -> Option<Vm> {
        let mut vm = self
            .fresh(spec)
            .await
            .map_err(|e| tracing::warn!(error = %crate::core::error_chain(&e), "pool boot failed"))
            .ok()?;
        // Priming is idle work: when executions already fill the cores it would
        // steal their CPU (measured: c16 throughput fell 6x), so it is skipped then.
        let busy = self.metrics.inflight() >= self.cores as i64;
        if let Some(prime) = self.prime.as_ref().filter(|_| !busy) {
            if let Err(e) = vm.warm(prime).await {
                tracing::warn!(vm = %vm.id, error = %crate::core::error_chain(&e), "priming a pooled VM failed; discarded");
                vm.destroy().await;
                return None;
            }
        }
        Some(vm)
    }

    /// Starts boots until ready + booting reaches the target.
    fn refill(self: &Arc<Self>, spec: &VmSpec) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let missing = {
            let mut classes = self.lock();
            let Some(class) = classes.get_mut(spec) else {
                return;
            };
            if class.target == 0 {
                return;
            }
            let missing = class
                .target
                .saturating_sub(class.ready.len() + class.booting);
            class.booting += missing;
            missing
        };
        for _ in 0..missing {
            let pool = self.clone();
            let spec = spec.clone();
            tokio::spawn(async move {
                let booted = match pool.boots.clone().acquire_owned().await {
                    Ok(_permit) if !pool.closed.load(Ordering::Acquire) => {
                        pool.pooled_vm(&spec).await
                    }
                    _ => None,
                };
                let leftover = {
                    let mut classes = pool.lock();
                    let class = classes.get_mut(&spec);
                    match (class, booted) {
                        (Some(c), Some(vm)) if !pool.closed.load(Ordering::Acquire) => {
                            c.booting -= 1;
                            c.ready.push_back(vm);
                            pool.metrics.pool_size(&spec, c.ready.len());
                            None
                        }
                        (Some(c), None) => {
                            c.booting -= 1;
                            None
                        }
                        // Closed: destroy it first, and only then stop counting it as
                        // booting, so drain() does not return while it still exists.
                        (Some(_), Some(vm)) => Some(vm),
                        (None, vm) => vm,
                    }
                };
                if let Some(vm) = leftover {
                    vm.destroy().await;
                    if let Some(c) = pool.lock().get_mut(&spec) {
                        c.booting -= 1;
                    }
                }
            });
        }
    }

    /// Whether this class has a snapshot to clone from (for tests and readiness).
    pub fn has_snapshot(&self, spec: &VmSpec) -> bool {
        self.lock().get(spec).is_some_and(|c| c.snapshot.is_some())
    }

    /// How warm a class is; `None` for a class the pool does not keep.
    pub fn warmth(&self, spec: &VmSpec) -> Option<Warmth> {
        self.lock().get(spec).map(|c| Warmth {
            template: c.template,
            ready: c.ready.len(),
            target: c.target,
        })
    }

    /// Ready VMs per class (for tests and metrics).
    pub fn ready(&self, spec: &VmSpec) -> usize {
        self.lock().get(spec).map(|c| c.ready.len()).unwrap_or(0)
    }

    /// Stops refills and destroys every pooled VM.
    pub async fn drain(&self) {
        self.closed.store(true, Ordering::Release);
        let vms: Vec<Vm> = {
            let mut classes = self.lock();
            classes
                .values_mut()
                .flat_map(|c| c.ready.drain(..))
                .collect()
        };
        for vm in vms {
            vm.destroy().await;
        }
        // Boots and snapshots in flight see `closed` and destroy what they made
        // themselves; wait for them (each is bounded by the backend's deadlines).
        loop {
            let booting: usize = self.lock().values().map(|c| c.booting).sum();
            if booting == 0 && self.making.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Dropping the last reference deletes a snapshot's files.
        for c in self.lock().values_mut() {
            c.snapshot = None;
        }
        self.metrics.snapshots_ready(0);
    }
}
