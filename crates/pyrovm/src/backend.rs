//! Backend choice: which VMM this node uses, and why (also printed by `tvm doctor`).
//!
//! `auto` takes Firecracker when both its binaries are found and KVM is usable,
//! else QEMU with KVM, else QEMU with TCG. A forced backend that cannot work fails
//! at start, naming what is missing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tvm_vmm::accel::{self, Accel, AccelChoice};
use tvm_vmm::firecracker::{find_binary, FirecrackerBackend, FirecrackerConfig};
use tvm_vmm::qemu::{find_qemu, QemuBackend, QemuConfig};
use tvm_vmm::runtime::Runtime;
use tvm_vmm::{GuestImage, Vmm};

use crate::config::{BackendChoice, Config};
use crate::StartError;

/// One candidate backend and whether it can be used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub usable: bool,
    pub reason: String,
}

/// What the host offers, gathered once.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub accel: AccelChoice,
    pub qemu: Option<PathBuf>,
    pub firecracker: Option<PathBuf>,
    pub jailer: Option<PathBuf>,
    pub root: bool,
}

impl HostFacts {
    pub fn detect(config: &Config) -> Self {
        Self {
            accel: accel::detect(),
            qemu: find_qemu(),
            firecracker: find_binary(
                config.firecracker_bin.as_deref(),
                "TVM_FIRECRACKER_BIN",
                "firecracker",
            ),
            jailer: find_binary(config.jailer_bin.as_deref(), "TVM_JAILER_BIN", "jailer"),
            root: nix::unistd::geteuid().is_root(),
        }
    }
}

fn present(p: &Option<PathBuf>) -> Option<&PathBuf> {
    p.as_ref().filter(|p| p.is_file())
}

/// Why Firecracker can or cannot be used (pure, for tests and `tvm doctor`).
pub fn firecracker_candidate(h: &HostFacts) -> Candidate {
    let mut missing = Vec::new();
    match (&h.firecracker, present(&h.firecracker)) {
        (_, Some(_)) => {}
        (Some(p), None) => {
            missing.push(format!("firecracker binary {} does not exist", p.display()))
        }
        (None, None) => {
            missing.push("no firecracker binary (set TVM_FIRECRACKER_BIN or put it on PATH)".into())
        }
    }
    match (&h.jailer, present(&h.jailer)) {
        (_, Some(_)) => {}
        (Some(p), None) => missing.push(format!("jailer binary {} does not exist", p.display())),
        (None, None) => {
            missing.push("no jailer binary (set TVM_JAILER_BIN or put it on PATH)".into())
        }
    }
    if h.accel.accel != Accel::Kvm {
        missing.push(format!("KVM is not usable: {}", h.accel.reason));
    }
    if !h.root {
        missing.push("the jailer needs root".into());
    }
    if missing.is_empty() {
        Candidate {
            name: "firecracker".into(),
            usable: true,
            reason: format!(
                "{} and {} found, KVM usable",
                h.firecracker
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                h.jailer
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        }
    } else {
        Candidate {
            name: "firecracker".into(),
            usable: false,
            reason: missing.join("; "),
        }
    }
}

pub fn qemu_candidate(h: &HostFacts) -> Candidate {
    Candidate {
        name: format!("qemu-{}", h.accel.accel),
        usable: h.qemu.is_some(),
        reason: match &h.qemu {
            Some(p) => format!("{} found; accelerator {}: {}", p.display(), h.accel.accel, h.accel.reason),
            None => "qemu-system-x86_64 not found on PATH (install qemu-system-x86) and TVM_QEMU_BIN is unset".into(),
        },
    }
}

/// Every candidate, in the order `auto` considers them.
pub fn candidates(config: &Config) -> Vec<Candidate> {
    let h = HostFacts::detect(config);
    vec![firecracker_candidate(&h), qemu_candidate(&h)]
}

/// The name `auto` would pick, or a refusal for a forced backend (pure).
pub fn decide(choice: BackendChoice, h: &HostFacts) -> Result<&'static str, String> {
    let fc = firecracker_candidate(h);
    let qemu = qemu_candidate(h);
    match choice {
        BackendChoice::Firecracker if fc.usable => Ok("firecracker"),
        BackendChoice::Firecracker => Err(format!(
            "--backend firecracker cannot work here: {}",
            fc.reason
        )),
        BackendChoice::Qemu if qemu.usable => Ok("qemu"),
        BackendChoice::Qemu => Err(format!("--backend qemu cannot work here: {}", qemu.reason)),
        BackendChoice::Auto if fc.usable => Ok("firecracker"),
        BackendChoice::Auto if qemu.usable => Ok("qemu"),
        BackendChoice::Auto => Err(format!(
            "no usable backend: firecracker: {}; qemu: {}",
            fc.reason, qemu.reason
        )),
    }
}

pub fn select(
    config: &Config,
    image: GuestImage,
    runtime: Arc<Runtime>,
    boot_timeout: Duration,
) -> Result<Arc<dyn Vmm>, StartError> {
    let h = HostFacts::detect(config);
    let chosen = decide(config.backend, &h).map_err(StartError::Backend)?;
    let err = |e: tvm_vmm::VmmError| StartError::Backend(crate::core::error_chain(&e));
    if chosen == "firecracker" {
        let (Some(firecracker), Some(jailer)) = (h.firecracker, h.jailer) else {
            return Err(StartError::Backend("firecracker binaries vanished".into()));
        };
        let backend = FirecrackerBackend::new(
            FirecrackerConfig {
                firecracker,
                jailer,
                image,
                boot_timeout: boot_timeout / 2,
                uid_base: config.jail_uid_base,
                uid_count: config.jail_uid_count,
            },
            runtime,
        )
        .map_err(err)?;
        return Ok(Arc::new(backend));
    }
    let binary = h
        .qemu
        .ok_or_else(|| StartError::Backend("qemu-system-x86_64 vanished".into()))?;
    // TCG boots are slower; give them more time than KVM ones.
    let boot_timeout = match h.accel.accel {
        Accel::Kvm => boot_timeout / 2,
        Accel::Tcg => boot_timeout,
    };
    let backend = QemuBackend::new(
        QemuConfig {
            binary,
            image,
            accel: h.accel,
            boot_timeout,
            // As root, each QEMU runs as its own uid from the range jailed Firecrackers use.
            uid_base: config.jail_uid_base,
            uid_count: config.jail_uid_count,
        },
        runtime,
    )
    .map_err(err)?;
    Ok(Arc::new(backend))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm: bool, fc: bool, qemu: bool) -> HostFacts {
        let exe = std::env::current_exe().unwrap();
        HostFacts {
            accel: AccelChoice {
                accel: if kvm { Accel::Kvm } else { Accel::Tcg },
                reason: if kvm {
                    "vmx".into()
                } else {
                    "no vmx/svm".into()
                },
            },
            qemu: qemu.then(|| PathBuf::from("/usr/bin/qemu-system-x86_64")),
            firecracker: fc.then(|| exe.clone()),
            jailer: fc.then(|| exe.clone()),
            root: true,
        }
    }

    #[test]
    fn auto_prefers_firecracker_only_with_kvm_and_binaries() {
        assert_eq!(
            decide(BackendChoice::Auto, &facts(true, true, true)),
            Ok("firecracker")
        );
        assert_eq!(
            decide(BackendChoice::Auto, &facts(false, true, true)),
            Ok("qemu")
        );
        assert_eq!(
            decide(BackendChoice::Auto, &facts(true, false, true)),
            Ok("qemu")
        );
        assert!(decide(BackendChoice::Auto, &facts(false, false, false)).is_err());
    }

    #[test]
    fn forced_firecracker_names_what_is_missing() {
        let e = decide(BackendChoice::Firecracker, &facts(false, false, true)).unwrap_err();
        assert!(e.contains("TVM_FIRECRACKER_BIN"), "{e}");
        assert!(e.contains("TVM_JAILER_BIN"), "{e}");
        assert!(e.contains("KVM is not usable"), "{e}");
        let mut h = facts(true, true, true);
        h.jailer = Some(PathBuf::from("/nonexistent/jailer"));
        let e = decide(BackendChoice::Firecracker, &h).unwrap_err();
        assert!(e.contains("/nonexistent/jailer does not exist"), "{e}");
    }

    #[test]
    fn forced_qemu_without_binary_fails() {
        assert!(decide(BackendChoice::Qemu, &facts(true, true, false))
            .unwrap_err()
            .contains("qemu-system-x86_64"));
    }
}
