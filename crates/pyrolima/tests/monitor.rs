//! The health monitor against the limactl TEST DOUBLE and a TEST DOUBLE of the Istio
//! ingress (tests/common), with short intervals.
#![cfg(unix)] // the test double is a script run through /bin/sh
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{manager, small_timeouts, spec, Double, IngressDouble, TOKEN};
use pyrolima::{monitor, Health, MonitorOptions};
use tokio::sync::watch;

fn opts() -> MonitorOptions {
    MonitorOptions {
        interval: Duration::from_millis(50),
        unready_grace: Duration::from_millis(300),
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(2),
    }
}

/// Records every state the monitor publishes.
fn record(mut rx: watch::Receiver<Health>) -> Arc<Mutex<Vec<Health>>> {
    let seen = Arc::new(Mutex::new(vec![rx.borrow().clone()]));
    let out = seen.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let state = rx.borrow_and_update().clone();
            out.lock().unwrap().push(state);
        }
    });
    seen
}

/// Waits (bounded) until the latest recorded state matches.
async fn wait_for(seen: &Arc<Mutex<Vec<Health>>>, what: &str, pred: impl Fn(&Health) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if seen.lock().unwrap().last().is_some_and(&pred) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what}; saw {:#?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_ready(h: &Health) -> bool {
    matches!(h, Health::Ready(_))
}

fn is_recovering(h: &Health) -> bool {
    matches!(h, Health::Recovering { .. })
}

#[tokio::test]
async fn starting_ready_broken_recovering_ready() {
    let double = Double::new();
    let ingress = IngressDouble::start(TOKEN).await;
    let m = Arc::new(manager(
        &double,
        spec("tvm", ingress.port, 4),
        small_timeouts(),
    ));
    let (rx, task) = monitor(m.clone(), opts());
    let seen = record(rx);
    assert_eq!(seen.lock().unwrap()[0], Health::Starting);
    wait_for(&seen, "Ready", is_ready).await;
    let starts_before = double
        .actions()
        .iter()
        .filter(|a| a.starts_with("start "))
        .count();
    assert_eq!(starts_before, 1);
    let calls_before = double.actions().len();

    double.set_status("tvm", "Broken");
    wait_for(&seen, "Recovering", is_recovering).await;
    wait_for(&seen, "Ready again", is_ready).await;

    let after: Vec<String> = double.actions().split_off(calls_before);
    let delete = after
        .iter()
        .position(|a| a == "delete --force tvm")
        .expect("delete after Broken");
    let start = after
        .iter()
        .position(|a| a.starts_with("start "))
        .expect("start after Broken");
    assert!(delete < start, "{after:#?}");
    let states = seen.lock().unwrap().clone();
    let reason = states.iter().find_map(|h| match h {
        Health::Recovering { reason } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("instance is Broken"), "{states:#?}");
    assert_eq!(double.status("tvm").as_deref(), Some("Running"));
    task.abort();
}

#[tokio::test]
async fn failed_starts_are_retried_with_growing_backoff() {
    let double = Double::new();
    double.set_plan(&["fail 1 first boom", "fail 1 second boom", "ok"]);
    let ingress = IngressDouble::start(TOKEN).await;
    let m = Arc::new(manager(
        &double,
        spec("tvm", ingress.port, 4),
        small_timeouts(),
    ));
    let (rx, task) = monitor(m.clone(), opts());
    let seen = record(rx);
    wait_for(&seen, "Ready", is_ready).await;

    let starts: Vec<f64> = double
        .calls()
        .into_iter()
        .filter(|(_, argv)| argv[0] == "start")
        .map(|(t, _)| t)
        .collect();
    assert_eq!(starts.len(), 3, "three attempts");
    let (gap1, gap2) = (starts[1] - starts[0], starts[2] - starts[1]);
    // Nominal delays 500 ms and 1 s, each jittered down by at most 25 %.
    assert!(gap1 >= 0.375, "first retry after {gap1:.3} s");
    assert!(
        gap2 > gap1 + 0.1,
        "delays must grow: {gap1:.3} s then {gap2:.3} s"
    );

    let states = seen.lock().unwrap().clone();
    let reasons: Vec<&str> = states
        .iter()
        .filter_map(|h| match h {
            Health::Recovering { reason } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("attempt 1 failed") && r.contains("first boom")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.starts_with("attempt 2 failed") && r.contains("second boom")),
        "{reasons:#?}"
    );
    task.abort();
}

#[tokio::test]
async fn an_ingress_unready_past_the_grace_period_gets_the_vm_recreated() {
    let double = Double::new();
    let ingress = IngressDouble::start(TOKEN).await;
    let m = Arc::new(manager(
        &double,
        spec("tvm", ingress.port, 4),
        small_timeouts(),
    ));
    let (rx, task) = monitor(m.clone(), opts());
    let seen = record(rx);
    wait_for(&seen, "Ready", is_ready).await;

    ingress.ready.store(false, Ordering::SeqCst);
    wait_for(&seen, "Recovering", is_recovering).await;
    ingress.ready.store(true, Ordering::SeqCst);
    wait_for(&seen, "Ready again", is_ready).await;
    let states = seen.lock().unwrap().clone();
    assert!(
        states.iter().any(|h| matches!(h, Health::Recovering { reason } if reason.starts_with("ingress not ready"))),
        "{states:#?}"
    );
    assert_eq!(
        double
            .actions()
            .iter()
            .filter(|a| a.starts_with("start "))
            .count(),
        2
    );
    task.abort();
}

#[tokio::test]
async fn down_stops_the_monitor_instead_of_recreating() {
    let double = Double::new();
    let ingress = IngressDouble::start(TOKEN).await;
    let m = Arc::new(manager(
        &double,
        spec("tvm", ingress.port, 4),
        small_timeouts(),
    ));
    let (rx, task) = monitor(m.clone(), opts());
    let seen = record(rx);
    wait_for(&seen, "Ready", is_ready).await;
    m.down().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("monitor ends")
        .unwrap();
    assert_eq!(double.status("tvm"), None);
    assert_eq!(
        double
            .actions()
            .iter()
            .filter(|a| a.starts_with("start "))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_configuration_problem_is_failed_not_retried() {
    let double = Double::new();
    double.set_version("0.13.0");
    let m = Arc::new(manager(&double, spec("tvm", 1, 4), small_timeouts()));
    let (rx, task) = monitor(m, opts());
    let seen = record(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("monitor ends")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let last = seen.lock().unwrap().last().cloned().unwrap();
    match last {
        Health::Failed { reason } => assert!(reason.contains("too old"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(!double.actions().iter().any(|a| a.starts_with("start")));
}
