//! The processes a sandbox spawned (`Spawn`, protocol version 6), as the host sees
//! them: what each was started with, and who is watching its output.
//!
//! The agent sends a spawned process's output and end as `Proc` frames whenever
//! they happen; the VM's channel hands them to [`ProcTable::sink`] (from whichever
//! task reads the channel: a request, or the sandbox's pump between requests). The
//! frames of a process can come before its `Spawned` answer has been read, so
//! frames for a pid nobody registered yet wait (bounded) until [`ProcTable::register`]
//! hands them to the first watcher. Every watcher has its own queue, bounded in
//! bytes: a watcher that does not keep up loses output (it is told how much), never
//! the process's end, and never holds up the channel or another watcher.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tvm_proto::{Outcome, ProcEvent, Stream};

use crate::lock;

/// Output bytes queued for one watcher at most; beyond, its chunks are dropped.
const MAX_QUEUED_BYTES: u64 = 8 << 20;
/// Bytes of early frames kept for a pid not registered yet.
const MAX_EARLY_BYTES: u64 = 1 << 20;
/// Pids with early frames kept at most (a confused guest cannot grow this).
const MAX_EARLY_PIDS: usize = 64;

/// What a spawned process was started with (what `List` shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: u32,
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub tag: Option<String>,
}

/// What a watcher receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcOut {
    Output {
        stream: Stream,
        data: Vec<u8>,
    },
    /// The process ended; nothing follows.
    Exit {
        exit_code: Option<i32>,
        signal: Option<i32>,
        outcome: Outcome,
        /// Output bytes this watcher lost because it did not keep up.
        dropped_bytes: u64,
    },
}

/// One watcher's queue.
#[derive(Debug)]
pub struct Watch {
    rx: mpsc::UnboundedReceiver<ProcOut>,
    queued: Arc<AtomicU64>,
}

impl Watch {
    /// The next event; `None` when the sandbox ended before the process did.
    pub async fn next(&mut self) -> Option<ProcOut> {
        let out = self.rx.recv().await;
        if let Some(ProcOut::Output { data, .. }) = &out {
            self.queued.fetch_sub(data.len() as u64, Ordering::AcqRel);
        }
        out
    }
}

#[derive(Debug)]
struct Watcher {
    tx: mpsc::UnboundedSender<ProcOut>,
    queued: Arc<AtomicU64>,
    dropped: u64,
}

impl Watcher {
    fn new() -> (Self, Watch) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicU64::new(0));
        (
            Self {
                tx,
                queued: queued.clone(),
                dropped: 0,
            },
            Watch { rx, queued },
        )
    }

    /// Queues one event; `false` once the watcher has gone.
    fn offer(&mut self, event: &ProcEvent) -> bool {
        match event {
            ProcEvent::Output { stream, data } => {
                let len = data.len() as u64;
                if self.queued.load(Ordering::Acquire) + len > MAX_QUEUED_BYTES {
                    self.dropped += len;
                    return !self.tx.is_closed();
                }
                self.queued.fetch_add(len, Ordering::AcqRel);
                self.tx
                    .send(ProcOut::Output {
                        stream: *stream,
                        data: data.clone(),
                    })
                    .is_ok()
            }
            ProcEvent::Exit {
                exit_code,
                signal,
                outcome,
            } => self
                .tx
                .send(ProcOut::Exit {
                    exit_code: *exit_code,
                    signal: *signal,
                    outcome: *outcome,
                    dropped_bytes: self.dropped,
                })
                .is_ok(),
        }
    }
}

#[derive(Debug)]
struct Running {
    info: ProcInfo,
    watchers: Vec<Watcher>,
}

#[derive(Debug, Default)]
struct Inner {
    running: HashMap<u32, Running>,
    /// Frames for pids not registered yet, and their bytes.
    early: HashMap<u32, (Vec<ProcEvent>, u64)>,
    closed: bool,
}

/// One sandbox's spawned processes.
#[derive(Debug, Default)]
pub struct ProcTable {
    inner: Mutex<Inner>,
}

impl ProcTable {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The function the VM's channel calls with every `Proc` frame.
    pub fn sink(self: &Arc<Self>) -> tvm_vmm::ProcSink {
        let table = self.clone();
        Box::new(move |pid, event| table.deliver(pid, event))
    }

    fn deliver(&self, pid: u32, event: ProcEvent) {
        let mut inner = lock(&self.inner);
        if inner.closed {
            return;
        }
        let ended = matches!(event, ProcEvent::Exit { .. });
        match inner.running.get_mut(&pid) {
            Some(r) => {
                r.watchers.retain_mut(|w| w.offer(&event));
                if ended {
                    inner.running.remove(&pid);
                }
            }
            None => {
                let len = match &event {
                    ProcEvent::Output { data, .. } => data.len() as u64,
                    ProcEvent::Exit { .. } => 0,
                };
                if !inner.early.contains_key(&pid) && inner.early.len() >= MAX_EARLY_PIDS {
                    return;
                }
                let (events, bytes) = inner.early.entry(pid).or_default();
                if ended || *bytes + len <= MAX_EARLY_BYTES {
                    *bytes += len;
                    events.push(event);
                }
            }
        }
    }

    /// Records a process the agent has just started and returns its first watcher,
    /// which also gets whatever the process did before this call.
    pub fn register(&self, info: ProcInfo) -> Watch {
        let (mut watcher, watch) = Watcher::new();
        let mut inner = lock(&self.inner);
        let mut ended = false;
        if let Some((events, _)) = inner.early.remove(&info.pid) {
            for e in &events {
                watcher.offer(e);
                ended |= matches!(e, ProcEvent::Exit { .. });
            }
        }
        if !ended && !inner.closed {
            inner.running.insert(
                info.pid,
                Running {
                    info,
                    watchers: vec![watcher],
                },
            );
        }
        watch
    }

    /// A new watcher of a running process (from now on), or `None` if it is not running.
    pub fn watch(&self, pid: u32) -> Option<Watch> {
        let mut inner = lock(&self.inner);
        let r = inner.running.get_mut(&pid)?;
        let (watcher, watch) = Watcher::new();
        r.watchers.push(watcher);
        Some(watch)
    }

    /// The pid of the running process with this tag.
    pub fn by_tag(&self, tag: &str) -> Option<u32> {
        lock(&self.inner)
            .running
            .values()
            .find(|r| r.info.tag.as_deref() == Some(tag))
            .map(|r| r.info.pid)
    }

    /// The running processes, by pid.
    pub fn list(&self) -> Vec<ProcInfo> {
        let mut v: Vec<ProcInfo> = lock(&self.inner)
            .running
            .values()
            .map(|r| r.info.clone())
            .collect();
        v.sort_by_key(|i| i.pid);
        v
    }

    /// How many processes run.
    pub fn count(&self) -> usize {
        lock(&self.inner).running.len()
    }

    /// The sandbox ended: every watcher's queue ends (without an `Exit`).
    pub fn close(&self) {
        let mut inner = lock(&self.inner);
        inner.closed = true;
        inner.running.clear();
        inner.early.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32, tag: Option<&str>) -> ProcInfo {
        ProcInfo {
            pid,
            cmd: "/bin/bash".into(),
            args: vec![],
            envs: BTreeMap::new(),
            cwd: None,
            tag: tag.map(str::to_string),
        }
    }

    fn out(s: &str) -> ProcEvent {
        ProcEvent::Output {
            stream: Stream::Stdout,
            data: s.as_bytes().to_vec(),
        }
    }

    fn exit(code: i32) -> ProcEvent {
        ProcEvent::Exit {
            exit_code: Some(code),
            signal: None,
            outcome: Outcome::Completed,
        }
    }

    #[tokio::test]
    async fn frames_before_the_answer_reach_the_first_watcher() {
        let t = ProcTable::new();
        let mut sink = t.sink();
        sink(7, out("early "));
        let mut w = t.register(info(7, Some("web")));
        sink(7, out("late"));
        assert_eq!(t.by_tag("web"), Some(7));
        let mut second = t.watch(7).expect("running");
        sink(7, exit(3));
        let mut got = Vec::new();
        while let Some(ProcOut::Output { data, .. }) = w.next().await {
            got.extend(data);
        }
        assert_eq!(got, b"early late");
        // The second watcher sees only what came after it started watching.
        assert!(matches!(second.next().await, Some(ProcOut::Exit { .. })));
        assert!(t.list().is_empty());
        assert!(t.watch(7).is_none());
    }

    #[tokio::test]
    async fn a_process_that_ended_before_registration_is_not_listed() {
        let t = ProcTable::new();
        let mut sink = t.sink();
        sink(9, out("x"));
        sink(9, exit(0));
        let mut w = t.register(info(9, None));
        assert!(matches!(w.next().await, Some(ProcOut::Output { .. })));
        assert!(matches!(
            w.next().await,
            Some(ProcOut::Exit {
                exit_code: Some(0),
                ..
            })
        ));
        assert_eq!(t.count(), 0);
    }

    #[tokio::test]
    async fn a_slow_watcher_loses_output_but_not_the_end() {
        let t = ProcTable::new();
        let mut sink = t.sink();
        let mut w = t.register(info(5, None));
        let chunk = "x".repeat(1 << 20);
        for _ in 0..10 {
            sink(5, out(&chunk));
        }
        sink(5, exit(0));
        let mut bytes = 0;
        loop {
            match w.next().await {
                Some(ProcOut::Output { data, .. }) => bytes += data.len() as u64,
                Some(ProcOut::Exit { dropped_bytes, .. }) => {
                    assert_eq!(bytes, MAX_QUEUED_BYTES);
                    assert_eq!(dropped_bytes, 2 << 20);
                    break;
                }
                None => panic!("ended without an exit"),
            }
        }
    }

    #[tokio::test]
    async fn closing_ends_every_watch() {
        let t = ProcTable::new();
        let mut w = t.register(info(1, None));
        t.close();
        assert!(w.next().await.is_none());
    }
}
