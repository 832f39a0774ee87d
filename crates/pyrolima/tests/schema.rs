//! Every Lima config pyrolima writes, parsed from YAML to JSON, validates against Lima
//! v2.2.0's JSON schema (`../shared/specs/lima/schema-limayaml.json`, strict: unknown
//! fields fail), and its quoted values stay strings. Without the spec directory the test
//! prints `SKIPPED: …` (and fails when `$CI` is set), like crates/tvm-deploy's tests.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use jsonschema::{Draft, Validator};
use pyrolima::{render, render_with, Arch, HostOs, RenderOptions, VmSpec, VmType};
use semver::Version;
use serde_json::Value;

fn specs_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TVM_SPECS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/specs"));
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "upstream schemas must be beside the repo in CI: {} (or set TVM_SPECS_DIR)",
        dir.display()
    );
    println!(
        "SKIPPED: upstream schemas not found at {} (set TVM_SPECS_DIR)",
        dir.display()
    );
    None
}

fn validator() -> Option<Validator> {
    let path = specs_dir()?.join("lima/schema-limayaml.json");
    let schema: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    Some(
        jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

fn errors(v: &Validator, config: &Value) -> Vec<String> {
    v.iter_errors(config)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// The configs under test: each host variant, nested on and off, on Lima 2.2.0 (the
/// schema's), 1.0.0 and 0.14.0 (the oldest pyrolima drives; wsl2 needs 0.18).
fn variants() -> Vec<(String, VmSpec, Version)> {
    let base = VmSpec::default();
    let hosts = [
        ("macos-vz-aarch64", HostOs::Macos, VmType::Vz, Arch::Aarch64),
        ("macos-vz-x86_64", HostOs::Macos, VmType::Vz, Arch::X86_64),
        (
            "linux-qemu-x86_64",
            HostOs::Linux,
            VmType::Qemu,
            Arch::X86_64,
        ),
        (
            "linux-qemu-aarch64",
            HostOs::Linux,
            VmType::Qemu,
            Arch::Aarch64,
        ),
        (
            "macos-qemu-x86_64",
            HostOs::Macos,
            VmType::Qemu,
            Arch::X86_64,
        ),
        (
            "windows-wsl2-x86_64",
            HostOs::Windows,
            VmType::Wsl2,
            Arch::X86_64,
        ),
    ];
    let mut out = Vec::new();
    for (label, host, vm_type, arch) in hosts {
        for nested in [true, false] {
            for lima in ["2.2.0", "1.0.0", "0.18.0", "0.14.0"] {
                if vm_type == VmType::Wsl2 && lima == "0.14.0" {
                    continue;
                }
                let spec = VmSpec {
                    host,
                    vm_type,
                    arch,
                    nested,
                    ..base.clone()
                };
                out.push((
                    format!("{label} nested={nested} lima={lima}"),
                    spec,
                    lima.parse().unwrap(),
                ));
            }
        }
    }
    out
}

#[test]
fn every_generated_config_validates_and_keeps_strings() {
    let Some(v) = validator() else { return };
    let variants = variants();
    assert!(variants.len() >= 40);
    for (label, spec, lima) in &variants {
        let yaml = render(spec, lima).unwrap_or_else(|e| panic!("{label}: {e}"));
        let config: Value = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{label}: {e}"));
        let errs = errors(&v, &config);
        assert!(
            errs.is_empty(),
            "{label}:\n{}\n---\n{yaml}",
            errs.join("\n")
        );

        // Quoted values stay strings (the schema wants them so; a YAML 1.1 reader would
        // otherwise turn "true", "18080" or "1.30" into other types).
        for map in ["param", "env"] {
            if let Some(m) = config.get(map) {
                for (k, val) in m.as_object().unwrap() {
                    assert!(val.is_string(), "{label}: {map}.{k} is {val}");
                }
            }
        }
        for p in config["provision"].as_array().unwrap() {
            if let Some(perm) = p.get("permissions") {
                assert!(perm.is_string(), "{label}: permissions {perm}");
            }
        }
        if lima >= &Version::new(0, 23, 0) {
            assert_eq!(config["param"]["ingressPort"], "18080", "{label}");
            assert_eq!(
                config["param"]["nested"],
                Value::String(spec.nested.to_string()),
                "{label}"
            );
            assert!(yaml.contains("ingressPort: '18080'"), "{label}: not quoted");
        } else {
            assert!(
                config.get("param").is_none(),
                "{label}: param before Lima 0.23"
            );
        }

        // What the config must always say.
        assert_eq!(config["mounts"], serde_json::json!([]), "{label}");
        assert_eq!(
            config["containerd"],
            serde_json::json!({"system": false, "user": false}),
            "{label}"
        );
        assert_eq!(config["vmType"], spec.vm_type.as_str(), "{label}");
        assert_eq!(config["arch"], spec.arch.as_str(), "{label}");
        for image in config["images"].as_array().unwrap() {
            let digest = image["digest"].as_str().unwrap_or_default();
            assert!(
                digest.starts_with("sha256:") || digest.starts_with("sha512:"),
                "{label}: {image}"
            );
        }
        let forwards = config["portForwards"].as_array().unwrap();
        assert_eq!(forwards[0]["guestPort"], 80, "{label}");
        assert_eq!(forwards[0]["hostIP"], "127.0.0.1", "{label}");
        assert_eq!(forwards.last().unwrap()["ignore"], true, "{label}");
        assert!(
            yaml.contains("k3s version $K3S_VERSION") && yaml.contains("ISTIO_VERSION='1.30.3'")
        );
        let probes = config["probes"].as_array().unwrap();
        assert_eq!(probes.len(), 2, "{label}");
        for probe in probes {
            assert!(
                probe["script"].as_str().unwrap().starts_with("#!"),
                "{label}"
            );
            assert!(!probe["hint"].as_str().unwrap().is_empty());
        }
    }
}

#[test]
fn the_api_forward_validates_too() {
    let Some(v) = validator() else { return };
    let yaml = render_with(
        &VmSpec::default(),
        &Version::new(2, 2, 0),
        &RenderOptions {
            api_host_port: Some(16443),
        },
    )
    .unwrap();
    let config: Value = serde_yaml::from_str(&yaml).unwrap();
    assert!(errors(&v, &config).is_empty());
}

/// Negative controls: the validator does refuse what Lima's schema forbids.
#[test]
fn the_schema_refuses_unquoted_values_and_unknown_fields() {
    let Some(v) = validator() else { return };
    let spec = VmSpec {
        host: HostOs::Macos,
        vm_type: VmType::Vz,
        arch: Arch::Aarch64,
        ..VmSpec::default()
    };
    let yaml = render(&spec, &Version::new(2, 2, 0)).unwrap();
    assert!(yaml.contains("nested: 'true'"));

    let unquoted = yaml.replace("nested: 'true'", "nested: true");
    let config: Value = serde_yaml::from_str(&unquoted).unwrap();
    assert_eq!(config["param"]["nested"], true);
    let errs = errors(&v, &config);
    assert!(
        errs.iter().any(|e| e.starts_with("/param/nested")),
        "{errs:?}"
    );

    let port = yaml.replace("ingressPort: '18080'", "ingressPort: 18080");
    assert!(!errors(&v, &serde_yaml::from_str(&port).unwrap()).is_empty());

    let mut config: Value = serde_yaml::from_str(&yaml).unwrap();
    config["provision"][0]["permissions"] = Value::from(755);
    assert!(
        !errors(&v, &config).is_empty(),
        "permissions must be a string"
    );

    let mut config: Value = serde_yaml::from_str(&yaml).unwrap();
    config["nestedVirtualisation"] = Value::Bool(true);
    assert!(!errors(&v, &config).is_empty(), "unknown fields must fail");

    let mut config: Value = serde_yaml::from_str(&yaml).unwrap();
    config["portForwards"][0]["hostIP"] = Value::from("localhost");
    assert!(
        !errors(&v, &config).is_empty(),
        "hostIP must be an IPv4 address"
    );
}
