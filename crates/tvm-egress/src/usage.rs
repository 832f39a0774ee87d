//! What a grant has used: bytes each way, connections, refusals. Shared by all the
//! connections of one grant; a snapshot goes into API answers as `network`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::policy::Reason;

/// The most refusals kept; later ones are counted only in the logs.
pub(crate) const MAX_REFUSED: usize = 32;

/// Counters for one grant, updated by every connection under it.
#[derive(Debug, Default)]
pub struct Usage {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections: AtomicU64,
    /// Set once a byte cap was reached, so that it is recorded once.
    capped: AtomicBool,
    refused: Mutex<Vec<Refused>>,
}

/// A snapshot of [`Usage`]; serialised with these snake_case field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReport {
    /// Bytes from upstream to the guest.
    pub bytes_in: u64,
    /// Bytes from the guest to upstream.
    pub bytes_out: u64,
    /// Connections admitted.
    pub connections: u64,
    /// The first distinct refusals, at most 32.
    pub refused: Vec<Refused>,
}

/// One refused (or cut) connection. `host` is a name or an IP address (IPv6 without
/// brackets); it is empty and `port` 0 when the request head named no target (a bad
/// request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub host: String,
    pub port: u16,
    pub reason: Reason,
}

/// A direction of the splice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Upstream to guest.
    In,
    /// Guest to upstream.
    Out,
}

impl Usage {
    /// Zero counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters now.
    pub fn snapshot(&self) -> UsageReport {
        UsageReport {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            connections: self.connections.load(Ordering::Relaxed),
            refused: self.refused_list().clone(),
        }
    }

    /// Counts a connection if fewer than `max` were admitted so far.
    pub(crate) fn admit_connection(&self, max: u32) -> bool {
        self.connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < u64::from(max)).then_some(n + 1)
            })
            .is_ok()
    }

    /// Takes up to `wanted` bytes from the budget of `direction` capped at `cap`, and
    /// answers how many may pass; fewer than `wanted` means the cap is reached.
    pub(crate) fn take(&self, direction: Direction, wanted: usize, cap: u64) -> usize {
        let counter = match direction {
            Direction::In => &self.bytes_in,
            Direction::Out => &self.bytes_out,
        };
        let wanted = u64::try_from(wanted).unwrap_or(u64::MAX);
        let before = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            let room = cap.saturating_sub(used);
            (room > 0).then(|| used + wanted.min(room))
        });
        match before {
            // At most `wanted`, which came from a usize.
            Ok(used) => usize::try_from(wanted.min(cap - used)).unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Whether a byte cap is already used up.
    pub(crate) fn exhausted(&self, max_bytes_in: u64, max_bytes_out: u64) -> bool {
        self.bytes_in.load(Ordering::Relaxed) >= max_bytes_in
            || self.bytes_out.load(Ordering::Relaxed) >= max_bytes_out
    }

    /// Records a refusal: each distinct (host, port, reason) once, the first
    /// [`MAX_REFUSED`] of them, and [`Reason::LimitBytes`] only once whatever the host.
    pub(crate) fn refuse(&self, host: &str, port: u16, reason: Reason) {
        if reason == Reason::LimitBytes && self.capped.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut list = self.refused_list();
        let seen = list
            .iter()
            .any(|r| r.reason == reason && r.port == port && r.host == host);
        if !seen && list.len() < MAX_REFUSED {
            list.push(Refused {
                host: host.to_string(),
                port,
                reason,
            });
        }
    }

    fn refused_list(&self) -> std::sync::MutexGuard<'_, Vec<Refused>> {
        // The list stays valid whatever a panicking holder did: pushes are atomic.
        self.refused.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_stop_at_the_limit() {
        let usage = Usage::new();
        assert!(usage.admit_connection(2));
        assert!(usage.admit_connection(2));
        assert!(!usage.admit_connection(2));
        assert_eq!(usage.snapshot().connections, 2);
        assert!(!Usage::new().admit_connection(0));
    }

    #[test]
    fn bytes_are_granted_up_to_the_cap_exactly() {
        let usage = Usage::new();
        assert_eq!(usage.take(Direction::In, 60, 100), 60);
        assert!(!usage.exhausted(100, 100));
        assert_eq!(usage.take(Direction::In, 60, 100), 40);
        assert!(usage.exhausted(100, 100));
        assert_eq!(usage.take(Direction::In, 1, 100), 0);
        assert_eq!(usage.take(Direction::Out, 7, 100), 7);
        let report = usage.snapshot();
        assert_eq!((report.bytes_in, report.bytes_out), (100, 7));
        assert_eq!(Usage::new().take(Direction::Out, 5, 0), 0);
    }

    #[test]
    fn refusals_are_kept_distinct_and_bounded() {
        let usage = Usage::new();
        usage.refuse("a.com", 443, Reason::NotAllowed);
        usage.refuse("a.com", 443, Reason::NotAllowed);
        usage.refuse("a.com", 80, Reason::NotAllowed);
        usage.refuse("b.com", 443, Reason::LimitBytes);
        usage.refuse("c.com", 443, Reason::LimitBytes);
        let hosts: Vec<_> = usage
            .snapshot()
            .refused
            .iter()
            .map(|r| (r.host.clone(), r.port, r.reason))
            .collect();
        assert_eq!(
            hosts,
            [
                ("a.com".to_string(), 443, Reason::NotAllowed),
                ("a.com".to_string(), 80, Reason::NotAllowed),
                ("b.com".to_string(), 443, Reason::LimitBytes),
            ]
        );
        for i in 0..100 {
            usage.refuse(&format!("h{i}.com"), 443, Reason::NotAllowed);
        }
        let refused = usage.snapshot().refused;
        assert_eq!(refused.len(), MAX_REFUSED);
        assert_eq!(refused[3].host, "h0.com");
    }

    #[test]
    fn report_serialises_with_snake_case_names() {
        let usage = Usage::new();
        usage.admit_connection(5);
        usage.take(Direction::In, 10, 100);
        usage.take(Direction::Out, 3, 100);
        usage.refuse("evil.com", 443, Reason::NotAllowed);
        let json = serde_json::to_value(usage.snapshot()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "bytes_in": 10,
                "bytes_out": 3,
                "connections": 1,
                "refused": [{"host": "evil.com", "port": 443, "reason": "not_allowed"}],
            })
        );
        let back: UsageReport = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, usage.snapshot());
    }
}
