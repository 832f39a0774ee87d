//! Holding a sandbox's VM, and serving its egress and its processes while nobody does.
//!
//! A request holds a sandbox's VM through a [`Held`] (one request at a time). A VM's
//! egress connections move, and its spawned processes' output arrives, only while
//! its agent channel is read (see `tvm_vmm::AgentLink`), so when a request of a
//! sandbox with egress or spawned processes lets go, a pump task takes the VM over
//! and reads the channel: a process the sandbox runs in the background keeps its
//! downloads going, and its output reaches its watchers, between requests. The next holder takes the
//! VM back from the pump (no lock round-trip, no race with the pump starting), and
//! the end of the sandbox stops the pump for good.

use crate::lock;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{oneshot, OwnedMutexGuard};
use tokio::task::JoinHandle;
use tvm_vmm::Vm;

/// A sandbox's VM (`None` once it ended).
pub(crate) type VmLock = Arc<tokio::sync::Mutex<Option<Vm>>>;
type Guard = OwnedMutexGuard<Option<Vm>>;

/// Who has the VM between requests.
#[derive(Debug)]
pub(crate) struct Idle {
    /// Only a sandbox with egress, or one that spawned a process, gets a pump.
    pumped: std::sync::atomic::AtomicBool,
    state: Mutex<IdleState>,
}

#[derive(Debug, Default)]
struct IdleState {
    pump: Option<Pump>,
    /// Requests waiting to hold the VM: a released VM goes to them, not to a pump.
    waiting: usize,
    /// The sandbox ended: no pump starts any more.
    closed: bool,
}

#[derive(Debug)]
struct Pump {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Guard>,
}

impl Idle {
    pub(crate) fn new(egress: bool) -> Arc<Self> {
        Arc::new(Self {
            pumped: std::sync::atomic::AtomicBool::new(egress),
            state: Mutex::default(),
        })
    }

    /// Holds the VM: taken back from the pump if one serves it, else as soon as the
    /// request holding it lets go (`None` if that takes longer than `within`).
    pub(crate) async fn hold(self: &Arc<Self>, vm: &VmLock, within: Duration) -> Option<Held> {
        let pump = {
            let mut st = lock(&self.state);
            st.waiting += 1;
            st.pump.take()
        };
        let from_pump = match pump {
            Some(p) => p.take_back().await,
            None => None,
        };
        let guard = match from_pump {
            Some(g) => Some(g),
            None => tokio::time::timeout(within, vm.clone().lock_owned())
                .await
                .ok(),
        };
        lock(&self.state).waiting -= 1;
        guard.map(|g| Held {
            guard: Some(g),
            idle: self.clone(),
        })
    }

    /// The VM for the sandbox's end: stops any pump for good, then holds the lock
    /// (after the request running, if any).
    pub(crate) async fn close(&self, vm: &VmLock) -> Guard {
        let pump = {
            let mut st = lock(&self.state);
            st.closed = true;
            st.pump.take()
        };
        if let Some(p) = pump {
            if let Some(g) = p.take_back().await {
                return g;
            }
        }
        vm.clone().lock_owned().await
    }

    /// From now on a pump reads the channel between requests (the sandbox spawned a
    /// process, whose output and end come whenever they happen).
    pub(crate) fn keep_reading(&self) {
        self.pumped
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a pump holds the VM (so no request does).
    pub(crate) fn pumping(&self) -> bool {
        lock(&self.state).pump.is_some()
    }

    /// A request let go of the VM: to a waiting request, or to a new pump.
    fn release(&self, g: Guard) {
        let mut st = lock(&self.state);
        if !self.pumped.load(std::sync::atomic::Ordering::Acquire)
            || st.closed
            || st.waiting > 0
            || g.is_none()
        {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (stop, stopped) = oneshot::channel();
        let task = rt.spawn(pump(g, stopped));
        st.pump = Some(Pump { stop, task });
    }
}

impl Pump {
    async fn take_back(self) -> Option<Guard> {
        let _ = self.stop.send(());
        // A pump that panicked dropped its guard: the lock is free again.
        self.task.await.ok()
    }
}

/// Reads the VM's channel (its egress frames are served as they come) until told to
/// stop; then gives the VM back.
async fn pump(mut g: Guard, mut stop: oneshot::Receiver<()>) -> Guard {
    if let Some(vm) = g.as_mut() {
        loop {
            tokio::select! {
                _ = &mut stop => break,
                m = vm.channel.next() => match m {
                    Some(Ok(m)) => tracing::warn!(
                        vm = %vm.id,
                        msg = crate::converse::kind(&m),
                        "agent sent a message while no request ran; ignored"
                    ),
                    // The VM is gone: keep it for the next holder, who will see that.
                    _ => {
                        let _ = (&mut stop).await;
                        break;
                    }
                },
            }
        }
    }
    g
}

/// One request's hold on a sandbox's VM; dropping it lets go (see [`Idle`]).
#[derive(Debug)]
pub(crate) struct Held {
    guard: Option<Guard>,
    idle: Arc<Idle>,
}

impl Deref for Held {
    type Target = Option<Vm>;

    fn deref(&self) -> &Option<Vm> {
        // Taken only in `drop`.
        self.guard.as_deref().unwrap_or(&None)
    }
}

impl DerefMut for Held {
    fn deref_mut(&mut self) -> &mut Option<Vm> {
        match self.guard.as_deref_mut() {
            Some(v) => v,
            // Unreachable: the guard is taken only in `drop`.
            None => unreachable!("a hold keeps its guard until dropped"),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(g) = self.guard.take() {
            self.idle.release(g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_egress_a_release_frees_the_lock() {
        let vm: VmLock = Arc::new(tokio::sync::Mutex::new(None));
        let idle = Idle::new(false);
        let held = idle
            .hold(&vm, Duration::from_millis(100))
            .await
            .expect("held");
        assert!(held.is_none());
        drop(held);
        assert!(!idle.pumping());
        assert!(vm.try_lock().is_ok());
    }

    #[tokio::test]
    async fn a_second_holder_waits_then_gets_it() {
        let vm: VmLock = Arc::new(tokio::sync::Mutex::new(None));
        let idle = Idle::new(true);
        let first = idle
            .hold(&vm, Duration::from_millis(100))
            .await
            .expect("held");
        assert!(idle.hold(&vm, Duration::from_millis(50)).await.is_none());
        let (i2, vm2) = (idle.clone(), vm.clone());
        let second =
            tokio::spawn(async move { i2.hold(&vm2, Duration::from_secs(5)).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        assert!(second.await.expect("join"));
        // An empty VM slot (an ended sandbox) never gets a pump.
        assert!(!idle.pumping());
        let _ = idle.close(&vm).await;
    }
}
