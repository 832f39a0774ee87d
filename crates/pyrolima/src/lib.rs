//! pyrolima: TVM on macOS and Windows (and optionally Linux) through Lima.
//!
//! It writes an ephemeral Lima config ([`render`]) to a temporary directory, starts the VM
//! with `limactl` ([`Limactl`]), lets Lima's provisioning install pinned k3s and Istio,
//! copies the pyrovm OCI image and `deploy/k8s` into the VM (no host mounts), imports and
//! applies them with the overlay the VM's KVM allows, and waits for the Istio ingress,
//! which Lima forwards to `127.0.0.1:<ingress_port>` ([`Manager`]). [`monitor`] watches
//! the VM and the ingress and recreates the VM when it breaks. docs/lima.md has the
//! details and what has (and has not) been verified.

mod error;
mod host;
mod images;
mod limactl;
mod manager;
mod monitor;
mod overlay;
mod render;
mod scripts;
mod spec;
mod tarball;
mod versions;

pub use error::LimaError;
pub use host::{macos_nested_capable, nested_blocker};
pub use images::{images_for, PinnedImage};
pub use limactl::{parse_list, Instance, Limactl, Output, Status};
pub use manager::{Artifacts, Endpoint, Manager, Timeouts, READY_PATH};
pub use monitor::{backoff_delay, monitor, Health, MonitorOptions};
pub use overlay::{
    choose_overlay, kustomization, Overlay, OverlayChoice, ISTIO_MIN_CPUS, ISTIO_MIN_MEMORY_GIB,
    TCG_WARNING,
};
pub use render::{nested_support, render, render_with, Nested, RenderOptions};
pub use spec::{
    Arch, HostOs, SpecError, VmSpec, VmType, DEFAULT_INGRESS_PORT, DEFAULT_ISTIO_VERSION,
    DEFAULT_K3S_VERSION,
};
pub use tarball::{read_oci_image, OciImage};
pub use versions::{
    check_istio, check_k3s, check_lima, parse_limactl_version, LimaFeatures, MIN_LIMA, SCHEMA_LIMA,
};

/// The `managedBy` param value on instances pyrolima creates.
pub const MANAGED_BY: &str = "pyrolima";
/// The comment in every config pyrolima writes (how instances are recognised on Lima
/// versions that do not report params).
pub const MANAGED_BY_MARKER: &str = "pyrolima-managed-instance";
