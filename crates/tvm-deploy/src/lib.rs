//! TVM on Kubernetes.
//!
//! [`oci`] builds the OCI image of `pyrovm` without a Docker daemon: a Debian root
//! filesystem made by `mmdebstrap` (QEMU for the TCG/KVM fallback, `tini`), the guest image,
//! optionally Firecracker and its jailer, and the `pyrovm` binary, each in its own cached
//! layer, written with Debian's `umoci` and exported with `skopeo` as an OCI image layout and
//! an `oci-archive` tarball. The `tvm-oci` binary is its command line (`make oci-image`).
//!
//! The Kubernetes manifests live in `deploy/k8s/` (kustomize). This crate's tests render
//! them with `kubectl kustomize`, validate every object against the upstream Kubernetes and
//! Istio schemas, check the deployment's policies against pyrovm's own code, and check the
//! built image (see `tests/`).

pub mod oci;
