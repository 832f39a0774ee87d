//! When the gateway may send a request again: only when it provably never reached
//! the upstream, after a jittered exponential backoff, and within a retry budget
//! (a share of recent requests, so a dead upstream cannot multiply the load).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tower::retry::budget::{Budget, TpsBudget};

/// What became of one attempt to send a request upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Not one byte of the request reached the upstream (the connection was never
    /// established, or hyper handed the request back unsent): safe to send again.
    NotSent,
    /// The request was (or may have been) written: never sent again.
    MaybeSent,
}

/// Retry settings (config `[forward]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Retries may add at most this share of the requests seen in the last 10 s ...
    pub budget_ratio: f32,
    /// ... or this many per second, whichever is more.
    pub budget_min_per_sec: u32,
}

/// The upper bound of the delay before retry number `retry` (1-based):
/// `base · 2^(retry-1)`, capped at `max`. The delay itself is drawn uniformly
/// below it ("full jitter"), so clients that failed together do not return together.
pub fn backoff_ceiling(retry: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32 << retry.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(max)
}

/// The retry policy of one gateway: shared by all requests.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    settings: RetrySettings,
    budget: Arc<TpsBudget>,
}

impl RetryPolicy {
    pub fn new(settings: RetrySettings) -> Self {
        let budget = TpsBudget::new(
            Duration::from_secs(10),
            settings.budget_min_per_sec,
            settings.budget_ratio,
        );
        Self {
            settings,
            budget: Arc::new(budget),
        }
    }

    /// Every request pays into the budget once.
    pub fn record_request(&self) {
        self.budget.deposit();
    }

    /// After attempt number `attempt` (1-based) ended as `outcome`: the delay before
    /// the next attempt, or `None` when the request must not be sent again.
    pub fn next_delay(&self, attempt: u32, outcome: Attempt) -> Option<Duration> {
        if outcome != Attempt::NotSent || attempt >= self.settings.max_attempts {
            return None;
        }
        if !self.budget.withdraw() {
            return None;
        }
        let ceiling = backoff_ceiling(
            attempt,
            self.settings.backoff_base,
            self.settings.backoff_max,
        );
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Some(Duration::from_nanos(
            rand::thread_rng().gen_range(0..=nanos),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RetrySettings {
        RetrySettings {
            max_attempts: 3,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(80),
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
        }
    }

    #[test]
    fn ceilings_double_then_cap() {
        let (b, m) = (Duration::from_millis(25), Duration::from_millis(80));
        assert_eq!(backoff_ceiling(1, b, m), Duration::from_millis(25));
        assert_eq!(backoff_ceiling(2, b, m), Duration::from_millis(50));
        assert_eq!(backoff_ceiling(3, b, m), Duration::from_millis(80));
        assert_eq!(backoff_ceiling(60, b, m), Duration::from_millis(80));
    }

    #[test]
    fn a_sent_request_is_never_retried() {
        let p = RetryPolicy::new(settings());
        p.record_request();
        assert_eq!(p.next_delay(1, Attempt::MaybeSent), None);
    }

    #[test]
    fn unsent_requests_retry_with_jitter_up_to_the_attempt_limit() {
        let p = RetryPolicy::new(settings());
        p.record_request();
        let d1 = p.next_delay(1, Attempt::NotSent).expect("first retry");
        assert!(d1 <= Duration::from_millis(25));
        let d2 = p.next_delay(2, Attempt::NotSent).expect("second retry");
        assert!(d2 <= Duration::from_millis(50));
        assert_eq!(p.next_delay(3, Attempt::NotSent), None, "3 attempts in all");
    }

    #[test]
    fn the_budget_runs_out() {
        let p = RetryPolicy::new(RetrySettings {
            max_attempts: 1000,
            budget_min_per_sec: 1,
            budget_ratio: 0.0,
            ..settings()
        });
        // A reserve of min_per_sec × ttl (10 s) retries, then nothing without new requests.
        let granted = (1..1000)
            .take_while(|&a| p.next_delay(a, Attempt::NotSent).is_some())
            .count();
        assert!((5..=20).contains(&granted), "granted {granted}");
    }
}
