//! Admission: a bounded queue in front of the execution slots, fair between callers.
//!
//! A request takes a free slot at once, or waits in its caller's lane. Slots are
//! handed out round-robin over the lanes (one per token; without tokens everyone is
//! the same caller, so the queue is FIFO), each lane FIFO, skipping a caller that
//! already holds `per_caller` slots. A request waits at most its `max_wait`; a full
//! queue refuses at once — except that a caller with fewer waiting than the
//! longest lane takes the place of that lane's newest waiter, so one token's flood
//! cannot keep another's single request out. A waiter whose future is dropped (its
//! client went away) leaves the queue at once; a slot is released when its
//! [`Slot`] drops. Refusals carry a `Retry-After` computed from the rate at which
//! slots were released lately (the queue's real drain rate).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::metrics::Metrics;

/// Why a request got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "all {slots} execution slots are busy and {queued} requests wait (the queue's limit); retry in {retry_after_s} s"
    )]
    Full {
        slots: usize,
        queued: usize,
        retry_after_s: u64,
    },
    #[error("no execution slot came free within {waited_ms} ms; retry in {retry_after_s} s")]
    Timeout { waited_ms: u64, retry_after_s: u64 },
    #[error("the service is shutting down")]
    ShuttingDown,
}

impl Refusal {
    /// The `Retry-After` seconds this refusal advises.
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Refusal::Full { retry_after_s, .. } | Refusal::Timeout { retry_after_s, .. } => {
                *retry_after_s
            }
            Refusal::ShuttingDown => 5,
        }
    }
}

#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// Execution slots (`max_concurrency`).
    pub slots: usize,
    /// Requests that may wait at once (async submissions are not counted here:
    /// their own store bounds them).
    pub max_queued: usize,
    /// Slots one caller may hold at once (`None`: all of them).
    pub per_caller: Option<usize>,
}

/// How one request waits.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Longest time in the queue (0: a free slot now, or a refusal).
    pub max_wait: Duration,
    /// Whether it counts against `max_queued` (not for async submissions).
    pub counted: bool,
}

/// What a waiter is sent: its slot, or why it gets none.
type Grant = Result<Slot, Refusal>;

#[derive(Debug)]
struct Waiter {
    id: u64,
    counted: bool,
    tx: oneshot::Sender<Grant>,
}

#[derive(Debug, Default)]
struct Lane {
    waiting: VecDeque<Waiter>,
    /// Slots this caller holds now.
    holding: usize,
}

impl Lane {
    fn counted(&self) -> usize {
        self.waiting.iter().filter(|w| w.counted).count()
    }
}

#[derive(Debug)]
struct Inner {
    free: usize,
    closed: bool,
    lanes: HashMap<String, Lane>,
    /// Callers with waiters, in round-robin order.
    turn: VecDeque<String>,
    /// Waiters that count against `max_queued`.
    queued: usize,
    /// All waiters.
    waiting: usize,
    next_id: u64,
    /// When the last slots were released (newest last), for the drain rate.
    releases: VecDeque<Instant>,
}

/// How many releases the drain rate looks at, and how far back.
const RATE_SAMPLES: usize = 32;
const RATE_WINDOW: Duration = Duration::from_secs(120);
/// `Retry-After` without any recent release to measure from, and the most it says.
const RETRY_UNKNOWN_S: u64 = 5;
const RETRY_MAX_S: u64 = 600;

#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    settings: QueueSettings,
    metrics: Arc<Metrics>,
    /// Signalled whenever a slot is released (for [`Queue::idle`]).
    released: Notify,
}

impl Queue {
    pub fn new(settings: QueueSettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                free: settings.slots,
                closed: false,
                lanes: HashMap::new(),
                turn: VecDeque::new(),
                queued: 0,
                waiting: 0,
                next_id: 0,
                releases: VecDeque::new(),
            }),
            settings,
            metrics,
            released: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock is a bug elsewhere; the counts stay usable.
        crate::lock(&self.inner)
    }

    pub fn settings(&self) -> &QueueSettings {
        &self.settings
    }

    /// A slot for `caller`: at once if one is free (and the caller is under its
    /// cap), else after waiting in its lane, at most `wait.max_wait`.
    pub async fn acquire(self: &Arc<Self>, caller: &str, wait: Wait) -> Result<Slot, Refusal> {
        let enqueued = Instant::now();
        let (mut rx, id) = {
            let mut inner = self.lock();
            if inner.closed {
                return Err(Refusal::ShuttingDown);
            }
            let cap = self.settings.per_caller.unwrap_or(usize::MAX);
            let lane = inner.lanes.entry(caller.to_string()).or_default();
            if lane.waiting.is_empty() && lane.holding < cap && inner.free > 0 {
                let slot = self.grant(&mut inner, caller);
                drop(inner);
                self.metrics.queue_waited(Duration::ZERO);
                return Ok(slot);
            }
            if wait.max_wait.is_zero() {
                self.forget_if_unused(&mut inner, caller);
                let r = self.full(&inner);
                return Err(r);
            }
            if wait.counted && inner.queued >= self.settings.max_queued {
                match self.evict_for(&mut inner, caller) {
                    Some(evicted) => {
                        let r = self.full(&inner);
                        let _ = evicted.tx.send(Err(r));
                    }
                    None => {
                        self.forget_if_unused(&mut inner, caller);
                        return Err(self.full(&inner));
                    }
                }
            }
            let (tx, rx) = oneshot::channel();
            let id = inner.next_id;
            inner.next_id += 1;
            let lane = inner.lanes.entry(caller.to_string()).or_default();
            lane.waiting.push_back(Waiter {
                id,
                counted: wait.counted,
                tx,
            });
            if lane.waiting.len() == 1 {
                inner.turn.push_back(caller.to_string());
            }
            inner.waiting += 1;
            inner.queued += usize::from(wait.counted);
            self.metrics.queue_depth(inner.waiting);
            (rx, id)
        };
        let mut guard = LeaveOnDrop {
            queue: self,
            caller,
            id,
            armed: true,
        };
        let got = tokio::time::timeout(wait.max_wait, &mut rx).await;
        guard.armed = false;
        let got = match got {
            Ok(Ok(grant)) => grant,
            Ok(Err(_)) => Err(Refusal::ShuttingDown),
            Err(_) => {
                // Timed out; a slot granted in that same instant is still taken.
                let left = self.leave(caller, id);
                match rx.try_recv() {
                    Ok(grant) => grant,
                    Err(_) => {
                        debug_assert!(left);
                        self.metrics.rejected("queue_timeout");
                        let inner = self.lock();
                        Err(Refusal::Timeout {
                            waited_ms: enqueued.elapsed().as_millis() as u64,
                            retry_after_s: self.retry_after(&inner, inner.queued + 1),
                        })
                    }
                }
            }
        };
        if got.is_ok() {
            self.metrics.queue_waited(enqueued.elapsed());
        }
        got
    }

    /// Takes a slot for `caller` (there is one free).
    fn grant(self: &Arc<Self>, inner: &mut Inner, caller: &str) -> Slot {
        inner.free -= 1;
        inner.lanes.entry(caller.to_string()).or_default().holding += 1;
        self.metrics.slots_in_use(self.settings.slots - inner.free);
        Slot {
            queue: self.clone(),
            caller: caller.to_string(),
        }
    }

    /// Hands free slots to waiters, round-robin over the lanes. The grants are sent
    /// by the caller after the lock is released (a refused one drops its slot, which
    /// takes the lock again).
    fn dispatch(self: &Arc<Self>, inner: &mut Inner) -> Vec<(oneshot::Sender<Grant>, Slot)> {
        let cap = self.settings.per_caller.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut skipped = 0;
        while inner.free > 0 && skipped < inner.turn.len() {
            let Some(caller) = inner.turn.pop_front() else {
                break;
            };
            let lane = inner.lanes.entry(caller.clone()).or_default();
            if lane.holding >= cap {
                inner.turn.push_back(caller);
                skipped += 1;
                continue;
            }
            skipped = 0;
            let Some(w) = lane.waiting.pop_front() else {
                continue;
            };
            let more = !lane.waiting.is_empty();
            inner.waiting -= 1;
            inner.queued -= usize::from(w.counted);
            let slot = self.grant(inner, &caller);
            if more {
                inner.turn.push_back(caller);
            }
            out.push((w.tx, slot));
        }
        self.metrics.queue_depth(inner.waiting);
        out
    }

    /// With the queue full: the newest counted waiter of the longest lane, if that
    /// lane is longer than `caller`'s would be with this request.
    fn evict_for(&self, inner: &mut Inner, caller: &str) -> Option<Waiter> {
        let mine = inner.lanes.get(caller).map_or(0, Lane::counted);
        let (victim, n) = inner
            .lanes
            .iter()
            .filter(|(c, _)| c.as_str() != caller)
            .map(|(c, l)| (c.clone(), l.counted()))
            .max_by_key(|(_, n)| *n)?;
        if n <= mine + 1 {
            return None;
        }
        let lane = inner.lanes.get_mut(&victim)?;
        let at = lane.waiting.iter().rposition(|w| w.counted)?;
        let w = lane.waiting.remove(at)?;
        if lane.waiting.is_empty() {
            inner.turn.retain(|c| c != &victim);
        }
        inner.waiting -= 1;
        inner.queued -= 1;
        Some(w)
    }

    fn full(&self, inner: &Inner) -> Refusal {
        self.metrics.rejected("queue_full");
        Refusal::Full {
            slots: self.settings.slots,
            queued: inner.queued,
            retry_after_s: self.retry_after(inner, 1),
        }
    }

    /// Seconds until `ahead` more slots are likely released, at the recent rate.
    fn retry_after(&self, inner: &Inner, ahead: usize) -> u64 {
        let now = Instant::now();
        let recent: Vec<&Instant> = inner
            .releases
            .iter()
            .filter(|t| now.duration_since(**t) < RATE_WINDOW)
            .collect();
        let (Some(first), Some(last)) = (recent.first(), recent.last()) else {
            return RETRY_UNKNOWN_S;
        };
        // From the oldest sample to now: a queue that stopped draining reads slow.
        let span = now
            .duration_since(**first)
            .max(last.duration_since(**first));
        if recent.len() < 2 || span.is_zero() {
            return RETRY_UNKNOWN_S;
        }
        let rate = recent.len() as f64 / span.as_secs_f64();
        ((ahead.max(1) as f64 / rate).ceil() as u64).clamp(1, RETRY_MAX_S)
    }

    /// Removes waiter `id` of `caller` if it still waits; `true` if it did.
    fn leave(&self, caller: &str, id: u64) -> bool {
        let mut inner = self.lock();
        let Some(lane) = inner.lanes.get_mut(caller) else {
            return false;
        };
        let Some(at) = lane.waiting.iter().position(|w| w.id == id) else {
            return false;
        };
        let w = lane.waiting.remove(at);
        let empty = lane.waiting.is_empty();
        if empty {
            inner.turn.retain(|c| c != caller);
        }
        inner.waiting -= 1;
        inner.queued -= usize::from(w.is_some_and(|w| w.counted));
        self.forget_if_unused(&mut inner, caller);
        self.metrics.queue_depth(inner.waiting);
        true
    }

    fn forget_if_unused(&self, inner: &mut Inner, caller: &str) {
        if inner
            .lanes
            .get(caller)
            .is_some_and(|l| l.waiting.is_empty() && l.holding == 0)
        {
            inner.lanes.remove(caller);
        }
    }

    fn release(self: &Arc<Self>, caller: &str) {
        let grants = {
            let mut inner = self.lock();
            inner.free += 1;
            if let Some(lane) = inner.lanes.get_mut(caller) {
                lane.holding = lane.holding.saturating_sub(1);
            }
            self.forget_if_unused(&mut inner, caller);
            inner.releases.push_back(Instant::now());
            if inner.releases.len() > RATE_SAMPLES {
                inner.releases.pop_front();
            }
            self.metrics.slots_in_use(self.settings.slots - inner.free);
            if inner.closed {
                Vec::new()
            } else {
                self.dispatch(&mut inner)
            }
        };
        send_all(grants);
        self.released.notify_waiters();
    }

    /// Stops admitting: every waiter is answered `ShuttingDown` now; slots in use
    /// stay theirs until released.
    pub fn close(&self) {
        let waiters: Vec<Waiter> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.turn.clear();
            inner.waiting = 0;
            inner.queued = 0;
            let mut all = Vec::new();
            for lane in inner.lanes.values_mut() {
                all.extend(lane.waiting.drain(..));
            }
            inner.lanes.retain(|_, l| l.holding > 0);
            self.metrics.queue_depth(0);
            all
        };
        for w in waiters {
            self.metrics.rejected("shutting_down");
            let _ = w.tx.send(Err(Refusal::ShuttingDown));
        }
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Slots in use now (executions, VMs being destroyed, sandboxes).
    pub fn in_use(&self) -> usize {
        self.settings.slots - self.lock().free
    }

    /// Waits until no slot is in use, at most `within`; `true` if none is.
    pub async fn idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let released = self.released.notified();
            if self.in_use() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return self.in_use() == 0;
            }
        }
    }
}

fn send_all(grants: Vec<(oneshot::Sender<Grant>, Slot)>) {
    for (tx, slot) in grants {
        // A waiter that is gone drops the slot here, which releases it again.
        let _ = tx.send(Ok(slot));
    }
}

/// An execution slot; released (and handed to the next waiter) when dropped.
#[derive(Debug)]
pub struct Slot {
    queue: Arc<Queue>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.queue.release(&self.caller);
    }
}

/// Takes a waiter out of the queue when its future is dropped (client gone).
struct LeaveOnDrop<'a> {
    queue: &'a Arc<Queue>,
    caller: &'a str,
    id: u64,
    armed: bool,
}

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.queue.leave(self.caller, self.id);
        }
    }
}

#[cfg(test)]
impl Queue {
    /// Runs the dispatcher once: it must grant nothing a release would not.
    fn kick(self: &Arc<Self>) {
        let grants = {
            let mut inner = self.lock();
            self.dispatch(&mut inner)
        };
        send_all(grants);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(slots: usize, max_queued: usize, per_caller: Option<usize>) -> Arc<Queue> {
        Queue::new(
            QueueSettings {
                slots,
                max_queued,
                per_caller,
            },
            Arc::new(Metrics::new()),
        )
    }

    const WAIT: Wait = Wait {
        max_wait: Duration::from_secs(30),
        counted: true,
    };

    /// Spawns a waiter that records its grant order and holds its slot until told.
    fn waiter(
        q: &Arc<Queue>,
        caller: &'static str,
        order: &Arc<Mutex<Vec<String>>>,
        tag: String,
    ) -> (
        tokio::task::JoinHandle<Result<(), Refusal>>,
        oneshot::Sender<()>,
    ) {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let q = q.clone();
        let order = order.clone();
        let h = tokio::spawn(async move {
            let slot = q.acquire(caller, WAIT).await?;
            order.lock().unwrap().push(tag);
            let _ = done_rx.await;
            drop(slot);
            Ok(())
        });
        (h, done_tx)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn free_slots_are_taken_at_once_and_returned_on_drop() {
        let q = queue(2, 0, None);
        let a = q.acquire("x", WAIT).await.unwrap();
        let b = q.acquire("x", WAIT).await.unwrap();
        assert_eq!(q.in_use(), 2);
        // No queue: the third is refused at once.
        let e = q.acquire("x", WAIT).await.unwrap_err();
        assert!(matches!(e, Refusal::Full { slots: 2, .. }), "{e:?}");
        drop(a);
        assert_eq!(q.in_use(), 1);
        drop(b);
        assert!(q.idle(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn one_caller_is_served_in_order() {
        let q = queue(1, 8, None);
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = q.acquire("a", WAIT).await.unwrap();
        let mut held = Vec::new();
        for i in 0..4 {
            held.push(waiter(&q, "a", &order, format!("a{i}")));
            settle().await;
        }
        assert_eq!(q.waiting(), 4);
        drop(first);
        for (h, tx) in held {
            settle().await;
            let _ = tx.send(());
            h.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["a0", "a1", "a2", "a3"]);
    }

    #[tokio::test]
    async fn lanes_are_served_round_robin() {
        let q = queue(1, 16, None);
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = q.acquire("a", WAIT).await.unwrap();
        let mut held = Vec::new();
        for i in 0..6 {
            held.push(waiter(&q, "a", &order, format!("a{i}")));
            settle().await;
        }
        held.push(waiter(&q, "b", &order, "b0".into()));
        settle().await;
        drop(first);
        // Release each holder as soon as it is granted, in grant order.
        for _ in 0..held.len() {
            settle().await;
            let n = order.lock().unwrap().len();
            let tag = order.lock().unwrap()[n - 1].clone();
            let i = if tag == "b0" {
                6
            } else {
                tag[1..].parse().unwrap()
            };
            let (_, tx) = &mut held[i];
            let (dummy, _) = oneshot::channel();
            let _ = std::mem::replace(tx, dummy).send(());
        }
        settle().await;
        let order = order.lock().unwrap().clone();
        // b waited behind a's whole flood but is served second: a's first, then b.
        assert_eq!(order[..2], ["a0", "b0"], "{order:?}");
        for (h, _) in held {
            h.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn a_full_queue_makes_room_for_a_caller_with_less_waiting() {
        let q = queue(1, 3, None);
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = q.acquire("a", WAIT).await.unwrap();
        let mut a = Vec::new();
        for i in 0..3 {
            a.push(waiter(&q, "a", &order, format!("a{i}")));
            settle().await;
        }
        // a itself is refused at once: it has the longest lane.
        let e = q.acquire("a", WAIT).await.unwrap_err();
        assert!(matches!(e, Refusal::Full { .. }));
        // b takes the place of a's newest waiter, which is refused.
        let (b, b_tx) = waiter(&q, "b", &order, "b0".into());
        settle().await;
        assert_eq!(q.waiting(), 3);
        let (a2, _) = a.pop().unwrap();
        assert!(matches!(a2.await.unwrap(), Err(Refusal::Full { .. })));
        drop(first);
        let mut a = a.into_iter();
        let (a0, a0_tx) = a.next().unwrap();
        settle().await;
        let _ = a0_tx.send(());
        a0.await.unwrap().unwrap();
        settle().await;
        let _ = b_tx.send(());
        b.await.unwrap().unwrap();
        let (a1, a1_tx) = a.next().unwrap();
        settle().await;
        let _ = a1_tx.send(());
        a1.await.unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), ["a0", "b0", "a1"]);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_at_once() {
        let q = queue(1, 4, None);
        let first = q.acquire("a", WAIT).await.unwrap();
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.acquire("a", WAIT).await.map(drop) });
        settle().await;
        assert_eq!(q.waiting(), 1);
        h.abort();
        let _ = h.await;
        assert_eq!(q.waiting(), 0);
        drop(first);
        assert!(q.idle(Duration::from_millis(10)).await);
    }

    #[tokio::test]
    async fn a_waiter_times_out_with_a_retry_after() {
        let q = queue(1, 4, None);
        let first = q.acquire("a", WAIT).await.unwrap();
        let e = q
            .acquire(
                "a",
                Wait {
                    max_wait: Duration::from_millis(200),
                    counted: true,
                },
            )
            .await
            .unwrap_err();
        match e {
            Refusal::Timeout {
                waited_ms,
                retry_after_s,
            } => {
                assert!(waited_ms >= 200);
                assert_eq!(retry_after_s, RETRY_UNKNOWN_S, "no release seen yet");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.waiting(), 0);
        drop(first);
    }

    #[tokio::test]
    async fn per_caller_cap_lets_others_pass() {
        let q = queue(2, 8, Some(1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let a0 = q.acquire("a", WAIT).await.unwrap();
        let (a1, a1_tx) = waiter(&q, "a", &order, "a1".into());
        settle().await;
        // A slot is free, but a holds its one: a1 waits, b goes first.
        assert_eq!(q.waiting(), 1);
        let b = q.acquire("b", WAIT).await.unwrap();
        q.kick();
        settle().await;
        assert!(order.lock().unwrap().is_empty());
        drop(a0);
        settle().await;
        assert_eq!(*order.lock().unwrap(), ["a1"]);
        let _ = a1_tx.send(());
        a1.await.unwrap().unwrap();
        drop(b);
    }

    #[tokio::test]
    async fn close_answers_every_waiter() {
        let q = queue(1, 8, None);
        let first = q.acquire("a", WAIT).await.unwrap();
        let mut hs = Vec::new();
        for c in ["a", "b", "c"] {
            let q = q.clone();
            hs.push(tokio::spawn(
                async move { q.acquire(c, WAIT).await.map(drop) },
            ));
        }
        settle().await;
        assert_eq!(q.waiting(), 3);
        q.close();
        for h in hs {
            assert_eq!(h.await.unwrap(), Err(Refusal::ShuttingDown));
        }
        assert_eq!(
            q.acquire("d", WAIT).await.unwrap_err(),
            Refusal::ShuttingDown
        );
        drop(first);
        assert!(q.idle(Duration::from_millis(10)).await);
    }

    #[test]
    fn retry_after_follows_the_drain_rate() {
        let q = queue(1, 8, None);
        let mut inner = q.lock();
        let now = Instant::now();
        // 10 releases over the last 5 s: 2 per second.
        for i in 0..10 {
            inner
                .releases
                .push_back(now - Duration::from_millis(5000 - i * 500));
        }
        assert_eq!(q.retry_after(&inner, 1), 1);
        let eight = q.retry_after(&inner, 8);
        assert!((4..=5).contains(&eight), "{eight}");
        assert_eq!(q.retry_after(&inner, 10_000), RETRY_MAX_S);
        inner.releases.clear();
        assert_eq!(q.retry_after(&inner, 3), RETRY_UNKNOWN_S);
    }
}
