//! The shell that runs inside the VM: Lima provisioning scripts (k3s, Istio), readiness
//! probes, and the commands pyrolima runs with `limactl shell` after start. Version
//! strings are validated (`versions::check_k3s`/`check_istio`) before they get here, so
//! interpolating them is safe.

use crate::spec::{Arch, VmSpec, VmType};

/// Where the deploy bundle (deploy/k8s + pyrolima's overlays) is unpacked in the guest.
pub const GUEST_DIR: &str = "/tmp/pyrolima";
/// Where the bundle tarball is copied to.
pub const GUEST_BUNDLE: &str = "/tmp/pyrolima-bundle.tar";
/// Where the pyrovm OCI archive is copied to.
pub const GUEST_OCI: &str = "/tmp/pyrolima-pyrovm.oci.tar";
/// The label the `istio` overlay's DaemonSet selects (deploy/k8s/base/daemonset.yaml).
pub const KVM_NODE_LABEL: &str = "tvm.dev/kvm=true";
/// The kubeconfig k3s writes (mode 644 by `--write-kubeconfig-mode 644`).
pub const KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";

/// `mode: system` script 1: k3s, pinned, through the k3s install script of the same
/// release tag (it downloads the binary and checks it against the release's
/// `sha256sum-<arch>.txt`). Idempotent: Lima runs system scripts on every boot.
pub fn install_k3s(spec: &VmSpec) -> String {
    let version = &spec.k3s_version;
    let tag_in_url = version.replace('+', "%2B");
    let binfmt = if spec.arch == Arch::Aarch64 && spec.vm_type != VmType::Vz {
        // The pyrovm image is linux/amd64; without Rosetta (vz) it needs qemu-user.
        "if [ ! -e /proc/sys/fs/binfmt_misc/qemu-x86_64 ]; then\n  \
         # the pyrovm image is linux/amd64: run it through qemu-user on this aarch64 VM\n  \
         install_pkg qemu-user-static\nfi\n"
    } else {
        ""
    };
    format!(
        r#"#!/bin/sh
# pyrolima: install k3s {version} (pinned; the install script verifies the binary
# against the release's sha256sum file).
set -eux
K3S_VERSION='{version}'
install_pkg() {{
  if command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
  elif command -v dnf >/dev/null; then
    dnf install -y "$@"
  else
    echo "pyrolima: cannot install $* (no apt-get or dnf)" >&2
    exit 1
  fi
}}
command -v curl >/dev/null || install_pkg curl
{binfmt}if [ ! -d /run/systemd/system ]; then
  echo "pyrolima: k3s needs systemd as init (on WSL2: [boot] systemd=true in /etc/wsl.conf)" >&2
  exit 1
fi
if ! {{ [ -x /usr/local/bin/k3s ] && /usr/local/bin/k3s --version | grep -qF "k3s version $K3S_VERSION"; }}; then
  script=$(mktemp)
  curl -fsSL --retry 3 -o "$script" 'https://raw.githubusercontent.com/k3s-io/k3s/{tag_in_url}/install.sh' \
    || curl -fsSL --retry 3 -o "$script" https://get.k3s.io
  INSTALL_K3S_VERSION="$K3S_VERSION" \
  INSTALL_K3S_EXEC='server --disable traefik --write-kubeconfig-mode 644' \
  INSTALL_K3S_SKIP_SELINUX_RPM=true INSTALL_K3S_SELINUX_WARN=true \
    sh "$script"
  rm -f "$script"
fi
"#
    )
}

/// `mode: system` script 2: istioctl from the pinned release tarball, verified against
/// the published `.sha256`, then `istioctl install --set profile=minimal` (istiod only;
/// TVM's ingress gateway comes with deploy/k8s).
pub fn install_istio(spec: &VmSpec) -> String {
    let version = &spec.istio_version;
    format!(
        r#"#!/bin/sh
# pyrolima: install Istio {version} (pinned; tarball checked against its .sha256).
set -eux
ISTIO_VERSION='{version}'
case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) echo "pyrolima: no Istio build for $(uname -m)" >&2; exit 1 ;;
esac
if ! {{ [ -x /usr/local/bin/istioctl ] && /usr/local/bin/istioctl version --remote=false 2>/dev/null | grep -qF "$ISTIO_VERSION"; }}; then
  tmp=$(mktemp -d)
  f="istio-$ISTIO_VERSION-linux-$arch.tar.gz"
  url="https://github.com/istio/istio/releases/download/$ISTIO_VERSION/$f"
  curl -fsSL --retry 3 -o "$tmp/$f" "$url"
  curl -fsSL --retry 3 -o "$tmp/$f.sha256" "$url.sha256"
  (cd "$tmp" && echo "$(cut -d' ' -f1 "$f.sha256")  $f" | sha256sum -c -)
  tar -xzf "$tmp/$f" -C "$tmp"
  install -m 0755 "$tmp/istio-$ISTIO_VERSION/bin/istioctl" /usr/local/bin/istioctl
  rm -rf "$tmp"
fi
export KUBECONFIG={KUBECONFIG}
timeout 600 sh -c 'until k3s kubectl get --raw /readyz >/dev/null 2>&1; do sleep 3; done'
if ! k3s kubectl -n istio-system get deployment istiod >/dev/null 2>&1; then
  istioctl install --set profile=minimal -y
fi
"#
    )
}

/// Readiness probe: the k3s node is Ready.
pub fn probe_node_ready() -> String {
    format!(
        r#"#!/bin/bash
set -eu -o pipefail
export KUBECONFIG={KUBECONFIG}
if ! timeout 60s bash -c 'until test -r "$KUBECONFIG" && k3s kubectl wait --for=condition=Ready node --all --timeout=10s >/dev/null 2>&1; do sleep 3; done'; then
  echo >&2 "the k3s node is not Ready yet"
  exit 1
fi
"#
    )
}

/// Readiness probe: istiod is rolled out.
pub fn probe_istiod_ready() -> String {
    format!(
        r#"#!/bin/bash
set -eu -o pipefail
export KUBECONFIG={KUBECONFIG}
if ! timeout 60s bash -c 'until k3s kubectl -n istio-system rollout status deployment/istiod --timeout=10s >/dev/null 2>&1; do sleep 3; done'; then
  echo >&2 "istiod is not ready yet"
  exit 1
fi
"#
    )
}

/// Hint Lima prints when the node probe fails.
pub fn hint_node(name: &str) -> String {
    format!(
        "k3s did not become Ready. Run \"limactl shell {name} sudo journalctl -u k3s\" and look at \
         the end of /var/log/cloud-init-output.log (the k3s install) in the VM.\n"
    )
}

/// Hint Lima prints when the istiod probe fails.
pub fn hint_istiod(name: &str) -> String {
    format!(
        "istiod is not ready. Run \"limactl shell {name} sudo k3s kubectl -n istio-system get pods\" \
         and look at the end of /var/log/cloud-init-output.log (the istioctl install) in the VM.\n"
    )
}

/// argv for `limactl shell`: unpack the bundle.
pub fn unpack_bundle() -> Vec<String> {
    sh(&format!(
        "mkdir -p {GUEST_DIR} && tar -xf {GUEST_BUNDLE} -C {GUEST_DIR} && rm -f {GUEST_BUNDLE}"
    ))
}

/// argv for `limactl shell`: is KVM usable here? Prints `kvm=yes` or `kvm=no` (the same
/// rule as `tvm_vmm::accel`: /dev/kvm read-write and `vmx`/`svm` in /proc/cpuinfo — so a
/// PVM-style or arm64 /dev/kvm, which cannot run the x86 guests, counts as no).
pub fn kvm_check() -> Vec<String> {
    sudo_sh(
        "if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; \
         then echo kvm=yes; else echo kvm=no; fi",
    )
}

/// argv for `limactl shell`: import the OCI archive into k3s's containerd (namespace
/// k8s.io, the one the kubelet uses), check `reference` is there, remove the archive.
pub fn import_image(reference: &str) -> Vec<String> {
    sudo_sh(&format!(
        "k3s ctr -n k8s.io images import --platform linux/amd64 {GUEST_OCI} \
         && k3s ctr -n k8s.io images ls -q | grep -qxF '{reference}' \
         && rm -f {GUEST_OCI}"
    ))
}

/// argv for `limactl shell`: label the node so the `istio` overlay's DaemonSet runs.
pub fn label_kvm_node() -> Vec<String> {
    [
        "sudo",
        "k3s",
        "kubectl",
        "label",
        "node",
        "--all",
        KVM_NODE_LABEL,
        "--overwrite",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// argv for `limactl shell`: apply pyrolima's overlay `name`, then delete the token
/// files from the guest whatever the outcome.
pub fn apply_overlay(overlay_dir: &str) -> Vec<String> {
    sudo_sh(&format!(
        "k3s kubectl apply -k {overlay_dir}; rc=$?; rm -f {GUEST_DIR}/overlays/*/tokens; exit $rc"
    ))
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn sudo_sh(script: &str) -> Vec<String> {
    vec!["sudo".into(), "sh".into(), "-c".into(), script.into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k3s_script_pins_the_release_and_disables_traefik() {
        let spec = VmSpec::default();
        let s = install_k3s(&spec);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("K3S_VERSION='v1.33.3+k3s1'"));
        assert!(s.contains("k3s-io/k3s/v1.33.3%2Bk3s1/install.sh"));
        assert!(s.contains("--disable traefik --write-kubeconfig-mode 644"));
        assert!(!s.contains("qemu-user-static"));
    }

    #[test]
    fn aarch64_without_rosetta_gets_qemu_user() {
        let spec = VmSpec {
            arch: Arch::Aarch64,
            vm_type: VmType::Qemu,
            ..VmSpec::default()
        };
        assert!(install_k3s(&spec).contains("install_pkg qemu-user-static"));
        let vz = VmSpec {
            vm_type: VmType::Vz,
            ..spec
        };
        assert!(!install_k3s(&vz).contains("qemu-user-static"));
    }

    #[test]
    fn istio_script_verifies_the_tarball_and_installs_minimal() {
        let s = install_istio(&VmSpec::default());
        assert!(s.contains("ISTIO_VERSION='1.30.3'"));
        assert!(s.contains("sha256sum -c -"));
        assert!(s.contains("istioctl install --set profile=minimal -y"));
    }

    #[test]
    fn guest_commands() {
        assert_eq!(kvm_check()[..3], ["sudo", "sh", "-c"]);
        assert!(kvm_check()[3].contains("/dev/kvm"));
        let import = import_image("localhost/tvm/pyrovm:0.1.0").join(" ");
        assert!(import.contains("k3s ctr -n k8s.io images import"));
        assert!(import.contains("grep -qxF 'localhost/tvm/pyrovm:0.1.0'"));
        assert!(apply_overlay("/tmp/pyrolima/overlays/tcg")[3]
            .starts_with("k3s kubectl apply -k /tmp/pyrolima/overlays/tcg;"));
        assert_eq!(label_kvm_node().last().unwrap(), "--overwrite");
    }
}
