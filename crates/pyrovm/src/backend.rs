//! Backend choice: which VMM this node uses, and why (also printed by `tvm doctor`).

use std::sync::Arc;
use std::time::Duration;

use tvm_vmm::accel::{self, Accel};
use tvm_vmm::qemu::{find_qemu, QemuBackend, QemuConfig};
use tvm_vmm::runtime::Runtime;
use tvm_vmm::{GuestImage, Vmm};

use crate::config::BackendChoice;
use crate::StartError;

/// One candidate backend and whether it can be used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub usable: bool,
    pub reason: String,
}

const FIRECRACKER_MISSING: &str =
    "the Firecracker backend is not part of this build yet (tracked as its own issue)";

/// Every candidate, in the order `auto` considers them.
pub fn candidates() -> Vec<Candidate> {
    let a = accel::detect();
    let qemu = find_qemu();
    let qemu_reason = match &qemu {
        Some(p) => format!("{} found; accelerator {}: {}", p.display(), a.accel, a.reason),
        None => "qemu-system-x86_64 not found on PATH (install qemu-system-x86) and TVM_QEMU_BIN is unset".into(),
    };
    vec![
        Candidate {
            name: "firecracker".into(),
            usable: false,
            reason: FIRECRACKER_MISSING.into(),
        },
        Candidate {
            name: format!("qemu-{}", a.accel),
            usable: qemu.is_some(),
            reason: qemu_reason,
        },
    ]
}

pub fn select(
    choice: BackendChoice,
    image: GuestImage,
    runtime: Arc<Runtime>,
    boot_timeout: Duration,
) -> Result<Arc<dyn Vmm>, StartError> {
    match choice {
        BackendChoice::Firecracker => Err(StartError::Backend(format!(
            "--backend firecracker: {FIRECRACKER_MISSING}; use --backend qemu"
        ))),
        BackendChoice::Auto | BackendChoice::Qemu => {
            let binary = find_qemu().ok_or_else(|| {
                StartError::Backend(
                    "no usable backend: qemu-system-x86_64 not found (install qemu-system-x86 or set TVM_QEMU_BIN)"
                        .into(),
                )
            })?;
            let accel = accel::detect();
            // TCG boots are slower; give them more time than KVM ones.
            let boot_timeout = match accel.accel {
                Accel::Kvm => boot_timeout / 2,
                Accel::Tcg => boot_timeout,
            };
            let backend = QemuBackend::new(
                QemuConfig {
                    binary,
                    image,
                    accel,
                    boot_timeout,
                },
                runtime,
            )
            .map_err(|e| StartError::Backend(crate::core::error_chain(&e)))?;
            Ok(Arc::new(backend))
        }
    }
}
