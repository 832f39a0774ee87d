//! Lima mode: pyrolima brings up (and keeps up) a Lima VM running k3s, Istio and
//! pyrovm; its monitor's [`Health`] becomes the gateway's [`UpstreamState`], gated:
//! while the VM starts or is recreated, requests get 503 + `Retry-After` without
//! being sent anywhere.

use std::sync::Arc;
use std::time::Duration;

use pyrolima::{Artifacts, Health, LimaError, Limactl, Manager, MonitorOptions, Timeouts, VmSpec};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::LimaSettings;
use crate::upstream::UpstreamState;

/// The gateway's view of the monitor's state.
pub fn upstream_state(h: &Health) -> UpstreamState {
    let down = |reason: String| UpstreamState::Down {
        reason,
        retry_after_secs: h.retry_after_secs().max(1),
        gate: true,
    };
    match h {
        Health::Ready(_) => UpstreamState::Up,
        Health::Starting => down("the Lima VM is starting (k3s, Istio, pyrovm)".into()),
        Health::Recovering { reason } => down(format!("the Lima VM is being recreated: {reason}")),
        Health::Failed { reason } => down(format!("the Lima VM cannot be started: {reason}")),
    }
}

/// The VM pyroshell asks pyrolima for.
pub fn vm_spec(s: &LimaSettings) -> VmSpec {
    VmSpec {
        name: s.name.clone(),
        cpus: s.cpus,
        memory_gib: s.memory_gib,
        disk_gib: s.disk_gib,
        ingress_port: s.ingress_port,
        nested: s.nested,
        ..VmSpec::default()
    }
}

/// A running Lima upstream.
#[derive(Debug)]
pub struct LimaUpstream {
    pub manager: Arc<Manager>,
    /// For the gateway.
    pub state: watch::Receiver<UpstreamState>,
    /// Resolves with the reason when the monitor gives up (a problem retrying cannot fix).
    pub failed: tokio::sync::oneshot::Receiver<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl LimaUpstream {
    /// Finds limactl and starts the monitor (which creates the VM unless a ready one
    /// of ours exists). `token`: the bearer token pyrovm in the VM will accept
    /// (default: a fresh random one).
    pub fn start(s: &LimaSettings, token: Option<String>) -> Result<Self, LimaError> {
        let spec = vm_spec(s);
        for warning in spec.validate()? {
            tracing::warn!("{warning}");
        }
        let limactl = Limactl::find(s.limactl.clone())?;
        let artifacts = Artifacts {
            oci_archive: s.oci_archive.clone(),
            deploy_dir: s.deploy_dir.clone(),
        };
        let mut manager = Manager::new(spec, limactl, artifacts, Timeouts::default());
        if let Some(t) = token {
            manager = manager.with_token(t);
        }
        let manager = Arc::new(manager);
        let opts = MonitorOptions {
            interval: Duration::from_millis(s.monitor_interval_ms.max(10)),
            ..MonitorOptions::default()
        };
        let (mut health, monitor) = pyrolima::monitor(manager.clone(), opts);
        let (tx, state) = watch::channel(upstream_state(&health.borrow()));
        let (failed_tx, failed) = tokio::sync::oneshot::channel();
        let mapper = tokio::spawn(async move {
            let mut failed_tx = Some(failed_tx);
            loop {
                let h = health.borrow_and_update().clone();
                match &h {
                    Health::Ready(ep) => {
                        tracing::info!(url = %ep.url, kvm = ?ep.kvm, "Lima VM ready")
                    }
                    Health::Starting => tracing::info!("Lima VM starting"),
                    Health::Recovering { reason } => tracing::warn!(reason, "Lima VM recovering"),
                    Health::Failed { reason } => {
                        tracing::error!(reason, "Lima VM failed");
                        if let Some(f) = failed_tx.take() {
                            let _ = f.send(reason.clone());
                        }
                    }
                }
                tx.send_replace(upstream_state(&h));
                if health.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            manager,
            state,
            failed,
            tasks: vec![monitor, mapper],
        })
    }

    /// Splits off the receiver that resolves when the monitor gives up.
    pub fn take_failed(mut self) -> (Self, tokio::sync::oneshot::Receiver<String>) {
        let (_, empty) = tokio::sync::oneshot::channel();
        let failed = std::mem::replace(&mut self.failed, empty);
        (self, failed)
    }

    /// Stops watching; deletes the VM unless `keep`.
    pub async fn stop(self, keep: bool) -> Result<(), LimaError> {
        for t in &self.tasks {
            t.abort();
        }
        if keep {
            tracing::info!(ingress = %self.manager.endpoint().url, "keeping the Lima VM (--keep-vm)");
            return Ok(());
        }
        self.manager.down().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ready_lets_requests_through() {
        let ep = pyrolima::Endpoint {
            url: "http://127.0.0.1:1".into(),
            kvm: None,
        };
        assert_eq!(upstream_state(&Health::Ready(ep)), UpstreamState::Up);
        for h in [
            Health::Starting,
            Health::Recovering {
                reason: "Broken".into(),
            },
            Health::Failed {
                reason: "old".into(),
            },
        ] {
            let UpstreamState::Down {
                gate,
                retry_after_secs,
                reason,
            } = upstream_state(&h)
            else {
                panic!("{h:?} lets requests through");
            };
            assert!(gate, "{h:?}");
            assert!(retry_after_secs >= 1);
            assert!(reason.contains("Lima VM"));
        }
    }
}
