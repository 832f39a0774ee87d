//! Warm pool: per size class (vCPUs, guest RAM), keep booted VMs whose agent has
//! said ready. A request takes one; the VM still serves exactly that one request and
//! is destroyed after it, and a refill starts at once. Boots are bounded in
//! parallel. An empty pool means a cold boot. Shutdown drains and destroys them all.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tvm_vmm::{Vm, VmSpec, Vmm};

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
}

#[derive(Debug)]
pub struct Pool {
    vmm: Arc<dyn Vmm>,
    classes: Mutex<HashMap<VmSpec, ClassState>>,
    boots: Arc<Semaphore>,
    closed: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Pool {
    /// `classes` maps guest specs to target sizes; `parallel_boots` bounds concurrent boots.
    pub fn new(
        vmm: Arc<dyn Vmm>,
        classes: Vec<(VmSpec, usize)>,
        parallel_boots: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let map = classes
            .into_iter()
            .filter(|(_, n)| *n > 0)
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
        });
        let specs: Vec<VmSpec> = pool.lock().keys().cloned().collect();
        for spec in specs {
            pool.refill(&spec);
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VmSpec, ClassState>> {
        // A poisoned lock only means a panic elsewhere; the map itself stays usable.
        self.classes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ready VM of this class, if any (a miss is counted and a refill starts);
    /// `None` without counting for a class the pool does not keep.
    pub fn take(self: &Arc<Self>, spec: &VmSpec) -> Option<Vm> {
        let vm = {
            let mut classes = self.lock();
            let class = classes.get_mut(spec)?;
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
                        let started = std::time::Instant::now();
                        let r = pool.vmm.start(&spec).await;
                        pool.metrics
                            .boot_seconds
                            .observe(started.elapsed().as_secs_f64());
                        r.map_err(|e| tracing::warn!(error = %crate::core::error_chain(&e), "pool boot failed")).ok()
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
                        (Some(c), vm) => {
                            c.booting -= 1;
                            vm
                        }
                        (None, vm) => vm,
                    }
                };
                if let Some(vm) = leftover {
                    vm.destroy().await;
                }
            });
        }
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
        // Boots in flight see `closed` and destroy their VM themselves; wait for them
        // (each is bounded by the backend's boot deadline).
        loop {
            let booting: usize = self.lock().values().map(|c| c.booting).sum();
            if booting == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
