//! What `/readyz` waits for. Ready means fast: the default size class serves from
//! its warm path — its snapshot template frozen (when snapshots are on) and its warm
//! pool filled once — so the first request a load balancer or a newcomer sends after
//! a 200 is a pool hit, not a cold boot. Before that `/readyz` answers 503 saying
//! what it waits for. Once warm, it stays ready (a pool emptied by a burst refills
//! behind it; taking the node out then would only move the burst elsewhere) until
//! shutdown begins.

use crate::pool::{Template, Warmth};

/// The answer of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// What it waits for, as a sentence.
    Waiting(String),
}

/// Decides readiness from the default class's warmth (`None`: the pool does not
/// keep that class, so there is nothing to warm); `class` names it for the message.
pub fn decide(shutting_down: bool, warmth: Option<Warmth>, class: &str) -> Readiness {
    if shutting_down {
        return Readiness::Waiting("the service is shutting down".into());
    }
    let Some(w) = warmth else {
        return Readiness::Ready;
    };
    if w.template == Template::Making {
        return Readiness::Waiting(format!(
            "waiting for the snapshot template of the default class ({class}) to be made"
        ));
    }
    if w.ready < w.target {
        return Readiness::Waiting(format!(
            "waiting for the warm pool of the default class ({class}): {} of {} VMs ready",
            w.ready, w.target
        ));
    }
    Readiness::Ready
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(template: Template, ready: usize, target: usize) -> Option<Warmth> {
        Some(Warmth {
            template,
            ready,
            target,
        })
    }

    #[test]
    fn waits_for_the_template_then_the_pool() {
        let class = "1 vCPU, 256 MiB";
        match decide(false, w(Template::Making, 0, 2), class) {
            Readiness::Waiting(m) => {
                assert!(m.contains("snapshot template") && m.contains(class), "{m}")
            }
            r => panic!("{r:?}"),
        }
        match decide(false, w(Template::Ready, 1, 2), class) {
            Readiness::Waiting(m) => assert!(m.contains("1 of 2"), "{m}"),
            r => panic!("{r:?}"),
        }
        assert_eq!(
            decide(false, w(Template::Ready, 2, 2), class),
            Readiness::Ready
        );
        // A failed template does not hold readiness forever: the pool of cold boots does.
        assert_eq!(
            decide(false, w(Template::Failed, 1, 1), class),
            Readiness::Ready
        );
        assert_eq!(
            decide(false, w(Template::None, 0, 0), class),
            Readiness::Ready
        );
    }

    #[test]
    fn nothing_to_warm_is_ready_and_shutdown_is_not() {
        assert_eq!(decide(false, None, "x"), Readiness::Ready);
        assert!(matches!(decide(true, None, "x"), Readiness::Waiting(_)));
    }
}
