//! The Lima instance YAML, built from serde structs (absent fields are skipped, so a
//! field an older Lima does not know is never written) and serialized with serde_yaml,
//! which quotes every string that would otherwise read as a number, bool or null — the
//! Lima schema wants `param`/`env` values as strings.

use std::collections::BTreeMap;

use semver::Version;
use serde::Serialize;

use crate::images;
use crate::scripts;
use crate::spec::{Arch, HostOs, SpecError, VmSpec, VmType};
use crate::versions::{self, LimaFeatures};

/// Extra knobs that are not part of [`VmSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Forward the guest's Kubernetes API (6443) to this host port on 127.0.0.1. Off by
    /// default: only the ingress is exposed.
    pub api_host_port: Option<u16>,
}

/// How nested virtualization turns out for a spec on a Lima version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nested {
    /// Not asked for.
    NotRequested,
    /// Requested through this Lima field (e.g. `nestedVirtualization`).
    Enabled(&'static str),
    /// Outside Lima's config: the host decides (WSL2's `.wslconfig`).
    HostControlled(String),
    /// Not possible here; pyrovm will run under TCG unless the VM has KVM anyway.
    Unavailable(String),
}

/// What nested virtualization this spec gets on Lima `lima`.
pub fn nested_support(spec: &VmSpec, lima: &Version) -> Nested {
    if !spec.nested {
        return Nested::NotRequested;
    }
    let features = LimaFeatures::of(lima);
    match spec.vm_type {
        VmType::Vz if spec.arch != Arch::Aarch64 => Nested::Unavailable(
            "Virtualization.framework offers nested virtualization only on Apple silicon (M3 or later)"
                .into(),
        ),
        VmType::Vz if !features.nested_virtualization => Nested::Unavailable(format!(
            "Lima {lima} has no nestedVirtualization field (Lima 1.0 or later)"
        )),
        VmType::Vz => Nested::Enabled("nestedVirtualization"),
        VmType::Qemu if spec.host != HostOs::Linux => Nested::Unavailable(format!(
            "QEMU on {} has no nested virtualization (HVF/WHPX)",
            spec.host
        )),
        VmType::Qemu if spec.arch != Arch::current() => Nested::Unavailable(format!(
            "a {} VM on this {} host is emulated (TCG)",
            spec.arch,
            Arch::current()
        )),
        VmType::Qemu if features.vm_opts_qemu => Nested::Enabled("vmOpts.qemu.cpuType: host"),
        VmType::Qemu => Nested::Enabled("cpuType: host"),
        VmType::Wsl2 => Nested::HostControlled(
            "WSL2 nested virtualization is a Windows setting, not Lima's: on by default on \
             Windows 11 (x64), off with nestedVirtualization=false under [wsl2] in \
             %UserProfile%\\.wslconfig; Windows 10 hosts generally do not provide it"
                .into(),
        ),
    }
}

/// The Lima YAML for `spec` on Lima `lima`.
pub fn render(spec: &VmSpec, lima: &Version) -> Result<String, SpecError> {
    render_with(spec, lima, &RenderOptions::default())
}

/// [`render`] with [`RenderOptions`].
pub fn render_with(
    spec: &VmSpec,
    lima: &Version,
    options: &RenderOptions,
) -> Result<String, SpecError> {
    spec.validate()?;
    if versions::check_lima(lima).is_err() {
        return Err(SpecError::VersionTooOld {
            component: "Lima",
            found: lima.to_string(),
            need: versions::MIN_LIMA.to_string(),
        });
    }
    let features = LimaFeatures::of(lima);
    if spec.vm_type == VmType::Wsl2 && !features.wsl2 {
        return Err(SpecError::VersionTooOld {
            component: "Lima (for vmType wsl2)",
            found: lima.to_string(),
            need: "0.18.0".into(),
        });
    }
    let images: Vec<Image> = images::images_for(spec.vm_type, spec.arch)
        .into_iter()
        .map(|i| Image {
            location: i.location,
            arch: i.arch.as_str(),
            digest: i.digest,
        })
        .collect();
    if images.is_empty() {
        return Err(SpecError::Unsupported(format!(
            "no pinned {} image for {}",
            spec.vm_type, spec.arch
        )));
    }

    let mut config = LimaConfig {
        minimum_lima_version: None,
        vm_type: spec.vm_type.as_str(),
        vm_opts: None,
        arch: spec.arch.as_str(),
        images,
        cpus: spec.cpus,
        memory: format!("{}GiB", spec.memory_gib),
        disk: format!("{}GiB", spec.disk_gib),
        mounts: Vec::new(),
        mount_type: (spec.vm_type == VmType::Wsl2).then_some("wsl2"),
        ssh: Ssh {
            load_dot_ssh_pub_keys: false,
        },
        containerd: Containerd {
            system: false,
            user: false,
        },
        nested_virtualization: None,
        cpu_type: None,
        rosetta: None,
        provision: vec![
            Provision {
                mode: "system",
                script: scripts::install_k3s(spec),
            },
            Provision {
                mode: "system",
                script: scripts::install_istio(spec),
            },
        ],
        probes: vec![
            Probe {
                mode: "readiness",
                description: "k3s node Ready".into(),
                script: scripts::probe_node_ready(),
                hint: scripts::hint_node(&spec.name),
            },
            Probe {
                mode: "readiness",
                description: "istiod ready".into(),
                script: scripts::probe_istiod_ready(),
                hint: scripts::hint_istiod(&spec.name),
            },
        ],
        port_forwards: port_forwards(spec, options, &features),
        env: BTreeMap::from([("KUBECONFIG".to_owned(), scripts::KUBECONFIG.to_owned())]),
        param: None,
        message: format!(
            "pyrolima: TVM's Istio ingress is forwarded to http://127.0.0.1:{} once pyrolima has \
             deployed it.\n",
            spec.ingress_port
        ),
    };

    let mut needs = Version::new(1, 0, 0);
    if let Nested::Enabled(_) = nested_support(spec, lima) {
        match spec.vm_type {
            VmType::Vz => config.nested_virtualization = Some(true),
            VmType::Qemu => {
                let cpu = BTreeMap::from([(spec.arch.as_str(), "host".to_owned())]);
                if features.vm_opts_qemu {
                    config.vm_opts.get_or_insert_with(VmOpts::default).qemu =
                        Some(QemuOpts { cpu_type: cpu });
                } else {
                    config.cpu_type = Some(cpu);
                }
            }
            VmType::Wsl2 => {}
        }
    }
    if spec.vm_type == VmType::Vz && spec.arch == Arch::Aarch64 {
        // The pyrovm image is linux/amd64: let Rosetta run it.
        let rosetta = Rosetta {
            enabled: true,
            binfmt: true,
        };
        if features.vm_opts_vz {
            config.vm_opts.get_or_insert_with(VmOpts::default).vz = Some(VzOpts { rosetta });
            needs = Version::new(2, 0, 0);
        } else {
            config.rosetta = Some(rosetta);
        }
    }
    if features.param {
        config.param = Some(BTreeMap::from([
            ("managedBy".to_owned(), crate::MANAGED_BY.to_owned()),
            ("k3sVersion".to_owned(), spec.k3s_version.clone()),
            ("istioVersion".to_owned(), spec.istio_version.clone()),
            ("ingressPort".to_owned(), spec.ingress_port.to_string()),
            ("nested".to_owned(), spec.nested.to_string()),
        ]));
    }
    if features.minimum_lima_version {
        config.minimum_lima_version = Some(needs.to_string());
    }

    let body = serde_yaml::to_string(&config).map_err(|e| SpecError::Unsupported(e.to_string()))?;
    Ok(format!(
        "# Generated by pyrolima {} for Lima {lima} ({} on {}). Ephemeral: written to a \
         temporary directory, started, and deleted with the VM.\n# {}: {}\n{body}",
        env!("CARGO_PKG_VERSION"),
        spec.vm_type,
        spec.host,
        crate::MANAGED_BY_MARKER,
        spec.name,
    ))
}

fn port_forwards(spec: &VmSpec, options: &RenderOptions, f: &LimaFeatures) -> Vec<PortForward> {
    let forward = |guest, host| PortForward {
        guest_port: Some(guest),
        host_ip: Some("127.0.0.1"),
        host_port: Some(host),
        ..PortForward::default()
    };
    // The ingress gateway Service is a LoadBalancer on port 80: k3s's ServiceLB puts it on
    // the node and Lima's guest agent reports it (as 0.0.0.0:80), which this rule matches.
    let mut rules = vec![forward(80, spec.ingress_port)];
    if let Some(port) = options.api_host_port {
        rules.push(forward(6443, port));
    }
    // Everything else stays in the VM. guestIP 0.0.0.0 makes the rule match ports bound to
    // any address (a rule with the default 127.0.0.1 would skip 0.0.0.0-bound ports).
    rules.push(PortForward {
        guest_ip: Some("0.0.0.0"),
        guest_port_range: Some([1, 65535]),
        proto: f.proto_any.then_some("any"),
        ignore: Some(true),
        ..PortForward::default()
    });
    rules
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LimaConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    minimum_lima_version: Option<String>,
    vm_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vm_opts: Option<VmOpts>,
    arch: &'static str,
    images: Vec<Image>,
    cpus: u32,
    memory: String,
    disk: String,
    mounts: Vec<Mount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mount_type: Option<&'static str>,
    ssh: Ssh,
    containerd: Containerd,
    #[serde(skip_serializing_if = "Option::is_none")]
    nested_virtualization: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_type: Option<BTreeMap<&'static str, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rosetta: Option<Rosetta>,
    provision: Vec<Provision>,
    probes: Vec<Probe>,
    port_forwards: Vec<PortForward>,
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<BTreeMap<String, String>>,
    message: String,
}

/// Never constructed: `mounts: []`.
#[derive(Serialize)]
struct Mount {}

#[derive(Serialize)]
struct Image {
    location: &'static str,
    arch: &'static str,
    digest: &'static str,
}

#[derive(Serialize, Default)]
struct VmOpts {
    #[serde(skip_serializing_if = "Option::is_none")]
    qemu: Option<QemuOpts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vz: Option<VzOpts>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct QemuOpts {
    cpu_type: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct VzOpts {
    rosetta: Rosetta,
}

#[derive(Serialize)]
struct Rosetta {
    enabled: bool,
    binfmt: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Ssh {
    #[serde(rename = "loadDotSSHPubKeys")]
    load_dot_ssh_pub_keys: bool,
}

#[derive(Serialize)]
struct Containerd {
    system: bool,
    user: bool,
}

#[derive(Serialize)]
struct Provision {
    mode: &'static str,
    script: String,
}

#[derive(Serialize)]
struct Probe {
    mode: &'static str,
    description: String,
    script: String,
    hint: String,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct PortForward {
    #[serde(rename = "guestIP", skip_serializing_if = "Option::is_none")]
    guest_ip: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_port_range: Option<[u16; 2]>,
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    host_ip: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proto: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ignore: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn parsed(spec: &VmSpec, lima: Version) -> Value {
        serde_yaml::from_str(&render(spec, &lima).expect("render")).expect("yaml")
    }

    fn mac_arm() -> VmSpec {
        VmSpec {
            host: HostOs::Macos,
            vm_type: VmType::Vz,
            arch: Arch::Aarch64,
            ..VmSpec::default()
        }
    }

    #[test]
    fn vz_on_current_lima_gets_nested_rosetta_and_a_minimum_version() {
        let y = parsed(&mac_arm(), Version::new(2, 2, 0));
        assert_eq!(y["vmType"], "vz");
        assert_eq!(y["nestedVirtualization"], true);
        assert_eq!(y["vmOpts"]["vz"]["rosetta"]["binfmt"], true);
        assert_eq!(y["minimumLimaVersion"], "2.0.0");
        assert_eq!(y["mounts"], serde_json::json!([]));
        assert_eq!(
            y["containerd"],
            serde_json::json!({"system": false, "user": false})
        );
        assert_eq!(y["param"]["ingressPort"], "18080");
        assert_eq!(y["param"]["nested"], "true");
        assert!(y.get("rosetta").is_none() && y.get("cpuType").is_none());
    }

    #[test]
    fn old_lima_gets_no_new_fields() {
        let y = parsed(&mac_arm(), Version::new(0, 14, 0));
        for field in [
            "nestedVirtualization",
            "minimumLimaVersion",
            "vmOpts",
            "param",
        ] {
            assert!(y.get(field).is_none(), "{field} emitted for Lima 0.14");
        }
        assert_eq!(y["rosetta"]["enabled"], true);
        assert!(y["portForwards"][1].get("proto").is_none());
        let v1 = parsed(&mac_arm(), Version::new(1, 0, 0));
        assert_eq!(v1["nestedVirtualization"], true);
        assert_eq!(v1["minimumLimaVersion"], "1.0.0");
        assert_eq!(v1["rosetta"]["enabled"], true);
        assert_eq!(v1["portForwards"][1]["proto"], "any");
    }

    #[test]
    fn nested_only_where_lima_and_the_host_can() {
        let intel_mac = VmSpec {
            arch: Arch::X86_64,
            ..mac_arm()
        };
        assert!(matches!(
            nested_support(&intel_mac, &Version::new(2, 2, 0)),
            Nested::Unavailable(_)
        ));
        assert!(parsed(&intel_mac, Version::new(2, 2, 0))
            .get("nestedVirtualization")
            .is_none());
        let off = VmSpec {
            nested: false,
            ..mac_arm()
        };
        assert_eq!(
            nested_support(&off, &Version::new(2, 2, 0)),
            Nested::NotRequested
        );
        assert!(parsed(&off, Version::new(2, 2, 0))
            .get("nestedVirtualization")
            .is_none());

        let linux = VmSpec {
            host: HostOs::Linux,
            vm_type: VmType::Qemu,
            arch: Arch::current(),
            ..VmSpec::default()
        };
        let y = parsed(&linux, Version::new(2, 2, 0));
        assert_eq!(
            y["vmOpts"]["qemu"]["cpuType"][Arch::current().as_str()],
            "host"
        );
        let y = parsed(&linux, Version::new(0, 20, 0));
        assert_eq!(y["cpuType"][Arch::current().as_str()], "host");

        let windows = VmSpec {
            host: HostOs::Windows,
            vm_type: VmType::Wsl2,
            arch: Arch::X86_64,
            ..VmSpec::default()
        };
        assert!(matches!(
            nested_support(&windows, &Version::new(2, 2, 0)),
            Nested::HostControlled(_)
        ));
        let y = parsed(&windows, Version::new(2, 2, 0));
        assert_eq!(y["mountType"], "wsl2");
        assert!(y["images"][0]["location"]
            .as_str()
            .unwrap()
            .ends_with(".tar.gz"));
        assert!(y.get("nestedVirtualization").is_none() && y.get("vmOpts").is_none());
    }

    #[test]
    fn only_the_ingress_is_forwarded_unless_asked() {
        let y = parsed(&mac_arm(), Version::new(2, 2, 0));
        let rules = y["portForwards"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0],
            serde_json::json!({"guestPort": 80, "hostIP": "127.0.0.1", "hostPort": 18080})
        );
        assert_eq!(rules[1]["ignore"], true);
        assert_eq!(rules[1]["guestIP"], "0.0.0.0");
        let text = render_with(
            &mac_arm(),
            &Version::new(2, 2, 0),
            &RenderOptions {
                api_host_port: Some(16443),
            },
        )
        .unwrap();
        let y: Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(y["portForwards"][1]["guestPort"], 6443);
        assert_eq!(y["portForwards"][1]["hostPort"], 16443);
    }

    #[test]
    fn refusals() {
        let wsl = VmSpec {
            host: HostOs::Windows,
            vm_type: VmType::Wsl2,
            arch: Arch::X86_64,
            ..VmSpec::default()
        };
        assert!(render(&wsl, &Version::new(0, 17, 0)).is_err());
        let wsl_arm = VmSpec {
            arch: Arch::Aarch64,
            ..wsl
        };
        assert!(matches!(
            render(&wsl_arm, &Version::new(2, 2, 0)),
            Err(SpecError::Unsupported(_))
        ));
        let err = render(&mac_arm(), &Version::new(0, 13, 0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Lima 0.13.0 is too old") && err.contains("0.14.0"),
            "{err}"
        );
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        let spec = VmSpec {
            ingress_port: 8080,
            istio_version: "1.30.0".into(),
            ..mac_arm()
        };
        let text = render(&spec, &Version::new(2, 2, 0)).unwrap();
        assert!(text.contains("ingressPort: '8080'"), "{text}");
        assert!(text.contains("nested: 'true'"), "{text}");
        assert!(text.starts_with("# Generated by pyrolima"));
        assert!(text.contains(crate::MANAGED_BY_MARKER));
    }
}
