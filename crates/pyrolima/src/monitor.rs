//! The health monitor: brings the VM up, then watches `limactl list` and the ingress;
//! a Broken/Stopped/missing VM, or an ingress unready for longer than a grace period,
//! is recreated (delete, then the whole `up` again), with jittered exponential backoff
//! between failed attempts. Every attempt is logged; the state is published on a
//! `watch` channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::sleep;

use crate::limactl::Status;
use crate::manager::{Endpoint, Manager};

/// What the monitor last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The first `up` is running.
    Starting,
    /// TVM answers at the endpoint.
    Ready(Endpoint),
    /// The VM is being recreated (or a recreation failed and will be retried).
    Recovering {
        /// Why, and what happens next.
        reason: String,
    },
    /// A problem retrying will not fix (Lima missing or too old, bad config, a foreign
    /// instance in the way); the monitor has stopped.
    Failed {
        /// Why.
        reason: String,
    },
}

impl Health {
    /// What a gateway should put in `Retry-After` while not ready (0 when ready).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Health::Ready(_) => 0,
            Health::Starting | Health::Recovering { .. } => 30,
            Health::Failed { .. } => 60,
        }
    }
}

/// Monitor settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorOptions {
    /// Between two checks.
    pub interval: Duration,
    /// How long the ingress may fail its probe while the VM runs before the VM is
    /// recreated.
    pub unready_grace: Duration,
    /// First retry delay after a failed recreation.
    pub backoff_base: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            interval: Duration::from_secs(5),
            unready_grace: Duration::from_secs(60),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// The delay before retry number `attempt` (1-based): `base · 2^(attempt-1)` capped at
/// `max`, then jittered down by up to 25 % (so consecutive delays below the cap still
/// grow by at least half a step).
pub fn backoff_delay(attempt: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
    let capped = exp.min(max);
    capped.mul_f64(1.0 - rng.gen_range(0.0..0.25))
}

/// Starts the monitor: it first runs `up()` unless the VM is already running and
/// ready, then checks every `interval`. It ends when every receiver is dropped, after
/// [`Manager::down`], or after a [`Health::Failed`]; abort the handle to stop it at once
/// (an `up` in flight is cancelled and its limactl call killed).
pub fn monitor(
    manager: Arc<Manager>,
    opts: MonitorOptions,
) -> (watch::Receiver<Health>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Health::Starting);
    let handle = tokio::spawn(run(manager, opts, tx));
    (rx, handle)
}

async fn run(manager: Arc<Manager>, opts: MonitorOptions, tx: watch::Sender<Health>) {
    let name = manager.spec().name.clone();
    let already = matches!(manager.status().await, Ok(Some(i)) if i.status == Status::Running)
        && manager.endpoint().kvm.is_some()
        && manager.probe().await.is_ok();
    let mut pending: Option<String> = (!already).then(|| "initial start".to_owned());
    let mut first = true;
    if already {
        let _ = tx.send(Health::Ready(manager.endpoint()));
    }
    let mut failures = 0u32;
    let mut unready_since: Option<Instant> = None;
    loop {
        if tx.is_closed() || manager.is_stopped() {
            tracing::info!(%name, "monitor stopping");
            return;
        }
        if let Some(reason) = pending.take() {
            tracing::info!(%name, %reason, attempt = failures + 1, "bringing the VM up");
            // The first start may reuse a VM this manager already brought up; every later
            // one replaces the VM (delete, then the whole up path).
            let result = if first {
                manager.up().await
            } else {
                manager.recreate().await
            };
            first = false;
            match result {
                Ok(endpoint) => {
                    failures = 0;
                    unready_since = None;
                    let _ = tx.send(Health::Ready(endpoint));
                }
                Err(e) if e.is_config_error() => {
                    tracing::error!(%name, error = %e, "giving up: this needs fixing by hand");
                    let _ = tx.send(Health::Failed {
                        reason: e.to_string(),
                    });
                    return;
                }
                Err(e) if manager.is_stopped() => {
                    tracing::info!(%name, error = %e, "up interrupted by down");
                    return;
                }
                Err(e) => {
                    failures += 1;
                    let delay = backoff_delay(
                        failures,
                        opts.backoff_base,
                        opts.backoff_max,
                        &mut rand::thread_rng(),
                    );
                    tracing::warn!(%name, attempt = failures, error = %e, ?delay, "bringing the VM up failed; retrying");
                    let _ = tx.send(Health::Recovering {
                        reason: format!("attempt {failures} failed: {e}; retrying in {delay:?}"),
                    });
                    sleep(delay).await;
                    pending = Some(format!("retry after failure {failures}"));
                    continue;
                }
            }
        }
        sleep(opts.interval).await;
        if manager.is_stopped() {
            continue;
        }
        let problem = match manager.status().await {
            Ok(Some(inst)) if inst.status == Status::Running => match manager.probe().await {
                Ok(()) => {
                    if unready_since.take().is_some() || !matches!(*tx.borrow(), Health::Ready(_)) {
                        tracing::info!(%name, "ingress ready again");
                        let _ = tx.send(Health::Ready(manager.endpoint()));
                    }
                    None
                }
                Err(e) => unready(
                    &mut unready_since,
                    opts.unready_grace,
                    format!("ingress not ready: {e}"),
                ),
            },
            Ok(Some(inst)) => Some(format!("instance is {}", inst.status)),
            Ok(None) => Some("instance is gone".to_owned()),
            Err(e) => unready(
                &mut unready_since,
                opts.unready_grace,
                format!("limactl list failed: {e}"),
            ),
        };
        if let Some(reason) = problem {
            if manager.is_stopped() {
                continue;
            }
            tracing::warn!(%name, %reason, "recreating the VM");
            first = false;
            let _ = tx.send(Health::Recovering {
                reason: reason.clone(),
            });
            unready_since = None;
            pending = Some(reason);
        }
    }
}

/// Starts (or continues) the unready clock; a reason once it has run past `grace`.
fn unready(since: &mut Option<Instant>, grace: Duration, why: String) -> Option<String> {
    let started = *since.get_or_insert_with(Instant::now);
    let waited = started.elapsed();
    if waited >= grace {
        Some(format!("{why} for {waited:.0?}"))
    } else {
        tracing::debug!(%why, ?waited, "not ready yet; within the grace period");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let base = Duration::from_secs(2);
        let max = Duration::from_secs(60);
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let delays: Vec<Duration> = (1..=8)
                .map(|a| backoff_delay(a, base, max, &mut rng))
                .collect();
            for (i, d) in delays.iter().enumerate() {
                let nominal = base.saturating_mul(1 << i).min(max);
                assert!(
                    *d <= nominal && *d >= nominal.mul_f64(0.75),
                    "attempt {}: {d:?}",
                    i + 1
                );
            }
            for pair in delays.windows(2).take(4) {
                assert!(pair[1] > pair[0], "{delays:?}");
            }
            assert!(delays.iter().all(|d| *d <= max));
        }
        let mut rng = StdRng::seed_from_u64(1);
        assert!(backoff_delay(u32::MAX, base, max, &mut rng) <= max);
    }

    #[test]
    fn retry_after() {
        assert_eq!(Health::Starting.retry_after_secs(), 30);
        assert_eq!(
            Health::Recovering {
                reason: String::new()
            }
            .retry_after_secs(),
            30
        );
        let ready = Health::Ready(Endpoint {
            url: "http://127.0.0.1:18080".into(),
            kvm: Some(false),
        });
        assert_eq!(ready.retry_after_secs(), 0);
    }

    #[test]
    fn grace_period() {
        let mut since = None;
        assert_eq!(
            unready(&mut since, Duration::from_secs(60), "x".into()),
            None
        );
        assert!(since.is_some());
        let mut since = Some(Instant::now() - Duration::from_secs(61));
        assert!(unready(&mut since, Duration::from_secs(60), "x".into())
            .unwrap()
            .starts_with("x for"));
    }
}
