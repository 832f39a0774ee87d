//! What VM pyrolima asks Lima for: the host it runs on, the VM type and architecture, its
//! size, the ingress port and the pinned k3s and Istio versions. Validation is pure.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::versions;

/// k3s release installed in the VM (Kubernetes 1.33: the version `deploy/k8s` is checked
/// against; Istio 1.30 supports Kubernetes 1.32 and later).
pub const DEFAULT_K3S_VERSION: &str = "v1.33.3+k3s1";
/// Istio release installed in the VM (1.30.3: the CRDs `deploy/k8s` is validated against).
pub const DEFAULT_ISTIO_VERSION: &str = "1.30.3";
/// Host port the Istio ingress is forwarded to by default.
pub const DEFAULT_INGRESS_PORT: u16 = 18080;

/// Smallest VM that holds k3s, istiod, the gateway and the `tcg` overlay's pyrovm
/// (2.5 CPUs and 2944 MiB requested by pyrovm, 0.5 CPU and 2 GiB by istiod).
pub const MIN_CPUS: u32 = 2;
/// See [`MIN_CPUS`].
pub const MIN_MEMORY_GIB: u32 = 6;
/// Room for the cloud image, k3s and Istio images and the ~160 MiB pyrovm image.
pub const MIN_DISK_GIB: u32 = 20;

/// The operating system pyrolima runs on (decides the default VM type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostOs {
    /// macOS: Virtualization.framework (`vz`).
    Macos,
    /// Linux: QEMU. Usually pyroshell's embedded mode is the better choice here.
    Linux,
    /// Windows: WSL2.
    Windows,
}

impl HostOs {
    /// The OS this binary was built for (anything that is neither macOS nor Windows
    /// counts as Linux).
    pub fn current() -> Self {
        if cfg!(target_os = "macos") {
            HostOs::Macos
        } else if cfg!(windows) {
            HostOs::Windows
        } else {
            HostOs::Linux
        }
    }
}

impl fmt::Display for HostOs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostOs::Macos => "macOS",
            HostOs::Linux => "Linux",
            HostOs::Windows => "Windows",
        })
    }
}

impl FromStr for HostOs {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s.to_ascii_lowercase().as_str() {
            "macos" | "darwin" => Ok(HostOs::Macos),
            "linux" => Ok(HostOs::Linux),
            "windows" => Ok(HostOs::Windows),
            other => Err(SpecError::Invalid {
                field: "host",
                reason: format!("{other:?} is not one of macos, linux, windows"),
            }),
        }
    }
}

/// Lima's `vmType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VmType {
    /// QEMU (Linux hosts; KVM when the host has it).
    Qemu,
    /// Apple Virtualization.framework (macOS 13.5+).
    Vz,
    /// Windows Subsystem for Linux 2 (experimental in Lima).
    Wsl2,
}

impl VmType {
    /// The VM type pyrolima uses on `host` unless told otherwise.
    pub fn default_for(host: HostOs) -> Self {
        match host {
            HostOs::Macos => VmType::Vz,
            HostOs::Linux => VmType::Qemu,
            HostOs::Windows => VmType::Wsl2,
        }
    }

    /// The name in Lima's YAML and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            VmType::Qemu => "qemu",
            VmType::Vz => "vz",
            VmType::Wsl2 => "wsl2",
        }
    }
}

impl Default for VmType {
    /// The default for the host pyrolima runs on.
    fn default() -> Self {
        VmType::default_for(HostOs::current())
    }
}

impl fmt::Display for VmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VmType {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "qemu" => Ok(VmType::Qemu),
            "vz" => Ok(VmType::Vz),
            "wsl2" => Ok(VmType::Wsl2),
            other => Err(SpecError::Invalid {
                field: "vm type",
                reason: format!("{other:?} is not one of qemu, vz, wsl2"),
            }),
        }
    }
}

/// The VM's architecture (Lima's `arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Arch {
    /// `x86_64` (amd64).
    #[serde(rename = "x86_64")]
    X86_64,
    /// `aarch64` (arm64).
    #[serde(rename = "aarch64")]
    Aarch64,
}

impl Arch {
    /// The architecture this binary was built for; anything but aarch64 counts as x86_64.
    pub fn current() -> Self {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// Lima's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The OCI/Go name (`amd64`, `arm64`).
    pub fn oci_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            other => Err(SpecError::Invalid {
                field: "arch",
                reason: format!("{other:?} is not one of x86_64, aarch64"),
            }),
        }
    }
}

/// Everything that decides the Lima config pyrolima writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmSpec {
    /// Lima instance name.
    pub name: String,
    /// Host OS the config is for.
    pub host: HostOs,
    /// Lima `vmType`.
    pub vm_type: VmType,
    /// Lima `arch`.
    pub arch: Arch,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in GiB.
    pub memory_gib: u32,
    /// Disk in GiB.
    pub disk_gib: u32,
    /// Host port (on 127.0.0.1) the Istio ingress is forwarded to.
    pub ingress_port: u16,
    /// k3s release, e.g. `v1.33.3+k3s1`.
    pub k3s_version: String,
    /// Istio release, e.g. `1.30.3`.
    pub istio_version: String,
    /// Ask for nested virtualization (so Firecracker/QEMU in the VM get KVM).
    pub nested: bool,
}

impl Default for VmSpec {
    fn default() -> Self {
        let host = HostOs::current();
        VmSpec {
            name: "tvm".to_owned(),
            host,
            vm_type: VmType::default_for(host),
            arch: Arch::current(),
            cpus: 4,
            memory_gib: 8,
            disk_gib: 40,
            ingress_port: DEFAULT_INGRESS_PORT,
            k3s_version: DEFAULT_K3S_VERSION.to_owned(),
            istio_version: DEFAULT_ISTIO_VERSION.to_owned(),
            nested: true,
        }
    }
}

impl VmSpec {
    /// Checks names, sizes and versions (the versions also go into shell scripts, so
    /// their format is strict). Returns the warnings (e.g. an old k3s) on success.
    pub fn validate(&self) -> Result<Vec<String>, SpecError> {
        validate_name(&self.name)?;
        if self.cpus < MIN_CPUS {
            return Err(invalid(
                "cpus",
                format!("{} is below {MIN_CPUS}", self.cpus),
            ));
        }
        if self.memory_gib < MIN_MEMORY_GIB {
            return Err(invalid(
                "memory",
                format!("{} GiB is below {MIN_MEMORY_GIB} GiB", self.memory_gib),
            ));
        }
        if self.disk_gib < MIN_DISK_GIB {
            return Err(invalid(
                "disk",
                format!("{} GiB is below {MIN_DISK_GIB} GiB", self.disk_gib),
            ));
        }
        if self.ingress_port == 0 {
            return Err(invalid("ingress port", "0 is not a port".to_owned()));
        }
        match (self.vm_type, self.host) {
            (VmType::Vz, HostOs::Macos) | (VmType::Wsl2, HostOs::Windows) | (VmType::Qemu, _) => {}
            (vm, host) => {
                return Err(invalid(
                    "vm type",
                    format!("{vm} does not exist on {host} (vz is macOS only, wsl2 Windows only)"),
                ))
            }
        }
        let mut warnings = Vec::new();
        if let Some(w) = versions::check_k3s(&self.k3s_version)? {
            warnings.push(w);
        }
        versions::check_istio(&self.istio_version)?;
        Ok(warnings)
    }
}

/// Lima instance names: letters and digits, single `.`, `_` or `-` between them (Lima's
/// `identifiers.Validate`).
fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("{name:?}: use letters and digits, with single '.', '_' or '-' between them"),
        ))
    }
}

fn invalid(field: &'static str, reason: String) -> SpecError {
    SpecError::Invalid { field, reason }
}

/// A spec or version that pyrolima will not turn into a Lima config.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field out of range or malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A pinned version below what TVM needs.
    #[error("{component} {found} is too old: TVM needs {need} or later")]
    VersionTooOld {
        /// `k3s`, `Istio` or `Lima`.
        component: &'static str,
        /// The version given.
        found: String,
        /// The minimum.
        need: String,
    },
    /// Nothing pinned for this combination (e.g. a WSL2 rootfs for aarch64).
    #[error("unsupported: {0}")]
    Unsupported(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_the_host() {
        let spec = VmSpec::default();
        assert_eq!(spec.vm_type, VmType::default_for(HostOs::current()));
        assert_eq!((spec.cpus, spec.memory_gib, spec.disk_gib), (4, 8, 40));
        assert_eq!(spec.ingress_port, 18080);
        assert!(spec.validate().expect("default spec").is_empty());
    }

    #[test]
    fn names_follow_lima_rules() {
        for good in ["tvm", "tvm-2", "a.b_c", "X9"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-tvm", "tvm-", "a--b", "a b", "tvm/x", "ümlaut", "a;rm"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_and_vm_types_are_checked() {
        let spec = VmSpec {
            cpus: 1,
            ..VmSpec::default()
        };
        assert!(spec.validate().is_err());
        let spec = VmSpec {
            memory_gib: 4,
            ..VmSpec::default()
        };
        assert!(spec.validate().is_err());
        let spec = VmSpec {
            host: HostOs::Linux,
            vm_type: VmType::Vz,
            ..VmSpec::default()
        };
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("macOS only"), "{err}");
        let spec = VmSpec {
            host: HostOs::Macos,
            vm_type: VmType::Qemu,
            ..VmSpec::default()
        };
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn parses_flag_values() {
        assert_eq!("vz".parse::<VmType>().unwrap(), VmType::Vz);
        assert!("kvm".parse::<VmType>().is_err());
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Aarch64);
        assert_eq!("macOS".parse::<HostOs>().unwrap(), HostOs::Macos);
        assert!("beos".parse::<HostOs>().is_err());
        assert_eq!("x86_64".parse::<Arch>().unwrap(), Arch::X86_64);
        assert!("riscv64".parse::<Arch>().is_err());
    }
}
