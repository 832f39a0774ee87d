//! The version matrix, as pure functions: which Lima pyrolima accepts and which YAML
//! fields each Lima version understands, and which k3s and Istio pins are acceptable.
//!
//! Field gates were read from Lima's source (`pkg/limayaml/limayaml.go`, since v2
//! `pkg/limatype/lima_yaml.go`) at each release tag:
//!
//! | field | first Lima release |
//! |---|---|
//! | `vmType: vz`, `rosetta`, `cpuType`, `probes`, `portForwards[].ignore` | 0.14.0 |
//! | Kubernetes LoadBalancer/NodePort forwarding in the guest agent | 0.15.0 |
//! | `vmType: wsl2` | 0.18.0 |
//! | `param` | 0.23.0 |
//! | `minimumLimaVersion`, `nestedVirtualization`, `vmOpts.qemu`, `portForwards[].proto: any` | 1.0.0 |
//! | `vmOpts.vz.rosetta` (top-level `rosetta` deprecated) | 2.0.0 |

use semver::Version;

use crate::spec::SpecError;

/// Oldest Lima pyrolima drives (first release with `vz`, `probes` and port-forward
/// `ignore` rules).
pub const MIN_LIMA: Version = Version::new(0, 14, 0);
/// The Lima release whose JSON schema (`../shared/specs/lima`) our configs are checked
/// against; `pyrolima config` assumes it when no Lima is installed.
pub const SCHEMA_LIMA: Version = Version::new(2, 2, 0);
/// Kubernetes below this is refused: `deploy/k8s` needs 1.23 (docs/deploy.md).
pub const MIN_K3S: (u64, u64) = (1, 23);
/// Kubernetes below this gets a warning (kubectl/kustomize v5 era).
pub const RECOMMENDED_K3S: (u64, u64) = (1, 27);
/// Istio below this is refused: every Istio object in `deploy/k8s` is `v1beta1`, served
/// since 1.16, and gateway injection is needed.
pub const MIN_ISTIO: (u64, u64) = (1, 16);

/// Reads the version out of `limactl --version` ("limactl version 0.14.2",
/// "limactl version 2.2.0", a development build "limactl version 2.2.0-153-g183a60d7").
/// A development build counts as the release it is based on.
pub fn parse_limactl_version(output: &str) -> Result<Version, String> {
    let word = output
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .ok_or_else(|| format!("no version in {:?}", output.trim()))?;
    let word = word.strip_prefix('v').unwrap_or(word);
    let core: String = word
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = core.split('.').filter(|p| !p.is_empty());
    let mut next = || -> Result<u64, String> {
        parts.next().map_or(Ok(0), |p| {
            p.parse::<u64>()
                .map_err(|e| format!("bad version {word:?}: {e}"))
        })
    };
    let (major, minor, patch) = (next()?, next()?, next()?);
    if core.is_empty() {
        return Err(format!("bad version {word:?} in {:?}", output.trim()));
    }
    Ok(Version::new(major, minor, patch))
}

/// `Ok(warnings)` when pyrolima can drive this Lima, else `Err(minimum)`.
pub fn check_lima(found: &Version) -> Result<Vec<String>, Version> {
    if *found < MIN_LIMA {
        return Err(MIN_LIMA);
    }
    let mut warnings = Vec::new();
    let features = LimaFeatures::of(found);
    if !features.kubernetes_service_forwarding {
        warnings.push(format!(
            "Lima {found} does not forward Kubernetes LoadBalancer services by itself (0.15 \
             and later do); the ingress reaches the host only through the guest agent's \
             iptables hostPort detection: upgrade Lima if it does not answer"
        ));
    }
    if *found > SCHEMA_LIMA {
        warnings.push(format!(
            "Lima {found} is newer than {SCHEMA_LIMA}, the version pyrolima's config is \
             checked against"
        ));
    }
    Ok(warnings)
}

/// Which config fields and behaviours a Lima version has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimaFeatures {
    /// The guest agent forwards Kubernetes NodePort/LoadBalancer services (0.15).
    pub kubernetes_service_forwarding: bool,
    /// `vmType: wsl2` (0.18).
    pub wsl2: bool,
    /// `param` (0.23).
    pub param: bool,
    /// `minimumLimaVersion` (1.0).
    pub minimum_lima_version: bool,
    /// `nestedVirtualization` (1.0; vz only).
    pub nested_virtualization: bool,
    /// `vmOpts.qemu.cpuType` instead of top-level `cpuType` (1.0).
    pub vm_opts_qemu: bool,
    /// `portForwards[].proto: any` (1.0; earlier only `tcp`).
    pub proto_any: bool,
    /// `vmOpts.vz.rosetta` instead of top-level `rosetta` (2.0).
    pub vm_opts_vz: bool,
}

impl LimaFeatures {
    /// The features of Lima `v`.
    pub fn of(v: &Version) -> Self {
        let at_least = |major, minor| *v >= Version::new(major, minor, 0);
        LimaFeatures {
            kubernetes_service_forwarding: at_least(0, 15),
            wsl2: at_least(0, 18),
            param: at_least(0, 23),
            minimum_lima_version: at_least(1, 0),
            nested_virtualization: at_least(1, 0),
            vm_opts_qemu: at_least(1, 0),
            proto_any: at_least(1, 0),
            vm_opts_vz: at_least(2, 0),
        }
    }
}

/// Checks a k3s release name (`v1.33.3+k3s1`): refused below [`MIN_K3S`], a warning below
/// [`RECOMMENDED_K3S`]. The strict format also keeps it safe inside shell scripts.
pub fn check_k3s(version: &str) -> Result<Option<String>, SpecError> {
    let bad = || SpecError::Invalid {
        field: "k3s version",
        reason: format!("{version:?} is not a k3s release name like v1.33.3+k3s1"),
    };
    let rest = version.strip_prefix('v').ok_or_else(bad)?;
    let (kube, build) = rest.split_once("+k3s").ok_or_else(bad)?;
    if build.is_empty() || !build.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (major, minor, _) = numeric_triple(kube).ok_or_else(bad)?;
    if (major, minor) < MIN_K3S {
        return Err(SpecError::VersionTooOld {
            component: "k3s",
            found: version.to_owned(),
            need: format!("v{}.{}", MIN_K3S.0, MIN_K3S.1),
        });
    }
    if (major, minor) < RECOMMENDED_K3S {
        return Ok(Some(format!(
            "k3s {version} is older than the recommended v{}.{}",
            RECOMMENDED_K3S.0, RECOMMENDED_K3S.1
        )));
    }
    Ok(None)
}

/// Checks an Istio release (`1.30.3`): refused below [`MIN_ISTIO`].
pub fn check_istio(version: &str) -> Result<(), SpecError> {
    let (major, minor, _) = numeric_triple(version).ok_or_else(|| SpecError::Invalid {
        field: "Istio version",
        reason: format!("{version:?} is not an Istio release like 1.30.3"),
    })?;
    if (major, minor) < MIN_ISTIO {
        return Err(SpecError::VersionTooOld {
            component: "Istio",
            found: version.to_owned(),
            need: format!("{}.{}", MIN_ISTIO.0, MIN_ISTIO.1),
        });
    }
    Ok(())
}

/// `"1.33.3"` → (1, 33, 3); anything else (missing parts, signs, letters) → None.
fn numeric_triple(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split('.');
    let mut num = || -> Option<u64> {
        let p = it.next()?;
        if p.is_empty() || p.len() > 6 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let triple = (num()?, num()?, num()?);
    it.next().is_none().then_some(triple)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limactl_version_output() {
        let v = |s| parse_limactl_version(s).unwrap();
        assert_eq!(v("limactl version 0.14.2\n"), Version::new(0, 14, 2));
        assert_eq!(v("limactl version 2.2.0"), Version::new(2, 2, 0));
        assert_eq!(v("limactl version v1.0.7"), Version::new(1, 0, 7));
        assert_eq!(
            v("limactl version 2.2.0-153-g183a60d7"),
            Version::new(2, 2, 0)
        );
        assert_eq!(v("limactl version 1.1"), Version::new(1, 1, 0));
        for bad in ["", "limactl", "limactl version", "limactl version HEAD-abc"] {
            assert!(parse_limactl_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lima_floor_and_warnings() {
        assert_eq!(check_lima(&Version::new(0, 13, 9)), Err(MIN_LIMA));
        assert!(check_lima(&Version::new(0, 14, 0)).unwrap()[0].contains("0.15"));
        assert!(check_lima(&Version::new(2, 2, 0)).unwrap().is_empty());
        assert!(check_lima(&Version::new(3, 0, 0)).unwrap()[0].contains("newer"));
    }

    #[test]
    fn feature_gates_follow_lima_releases() {
        let f = |a, b, c| LimaFeatures::of(&Version::new(a, b, c));
        let old = f(0, 14, 0);
        assert!(!old.param && !old.nested_virtualization && !old.wsl2 && !old.proto_any);
        assert!(f(0, 18, 0).wsl2 && !f(0, 17, 9).wsl2);
        assert!(f(0, 23, 0).param && !f(0, 22, 1).param);
        let v1 = f(1, 0, 0);
        assert!(v1.nested_virtualization && v1.minimum_lima_version && v1.vm_opts_qemu);
        assert!(!v1.vm_opts_vz);
        assert!(f(2, 0, 0).vm_opts_vz);
    }

    #[test]
    fn k3s_pins() {
        assert_eq!(check_k3s("v1.33.3+k3s1").unwrap(), None);
        assert_eq!(check_k3s("v1.27.0+k3s1").unwrap(), None);
        assert!(check_k3s("v1.26.9+k3s2")
            .unwrap()
            .unwrap()
            .contains("v1.27"));
        let err = check_k3s("v1.22.17+k3s1").unwrap_err().to_string();
        assert!(err.contains("too old") && err.contains("v1.23"), "{err}");
        for bad in [
            "1.33.3+k3s1",
            "v1.33+k3s1",
            "v1.33.3",
            "v1.33.3+k3s",
            "v1.33.3+k3s1;reboot",
            "v1.33.3+k3s1 ",
            "v1.33.3-rc1+k3s1",
        ] {
            assert!(
                matches!(check_k3s(bad), Err(SpecError::Invalid { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn istio_pins() {
        assert!(check_istio("1.30.3").is_ok());
        assert!(check_istio("1.16.0").is_ok());
        let err = check_istio("1.15.7").unwrap_err().to_string();
        assert!(err.contains("Istio 1.15.7 is too old"), "{err}");
        for bad in ["1.30", "v1.30.3", "1.30.3-beta.0", "1.30.3'", ""] {
            assert!(check_istio(bad).is_err(), "{bad}");
        }
    }
}
