//! pyrolima's overlays on top of a copy of the repository's deploy/k8s, laid out as in the
//! VM (`deploy/`, `overlays/<name>/`), rendered with `kubectl kustomize` (prints
//! `SKIPPED` without kubectl, like crates/tvm-deploy's tests).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use pyrolima::{kustomization, Overlay};
use serde_json::Value;

fn kubectl() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    })
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn render(overlay: Overlay) -> Option<Vec<Value>> {
    let Some(kubectl) = kubectl() else {
        println!("SKIPPED: kubectl not found: cannot render pyrolima's {overlay} overlay");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    copy_tree(&common::deploy_dir(), &root.path().join("deploy"));
    let dir = root.path().join("overlays").join(overlay.as_str());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("kustomization.yaml"), kustomization(overlay)).unwrap();
    std::fs::write(dir.join("tokens"), "secret-token\n").unwrap();
    std::fs::write(dir.join("route-key"), "0123456789abcdef0123456789abcdef\n").unwrap();
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("unknown command") || stderr.contains("unknown field") {
            println!("SKIPPED: this kubectl cannot render the kustomizations: {stderr}");
            return None;
        }
        panic!("kubectl kustomize {}: {stderr}", dir.display());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
            .filter(|v| !v.is_null())
            .collect(),
    )
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn check_common(objects: &[Value]) {
    let secret = find(objects, "Secret", "pyrovm-tokens");
    assert_eq!(secret["metadata"]["namespace"], "tvm");
    assert!(secret["data"]["tokens"].is_string(), "{secret}");
    let key = find(objects, "Secret", "pyrovm-route-key");
    assert!(key["data"]["route-key"].is_string(), "{key}");
    let ds = find(objects, "DaemonSet", "pyrovm");
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "pyrovm-tokens"),
        "{volumes:?}"
    );
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        "localhost/tvm/pyrovm:0.1.0"
    );
    let gateway = find(objects, "Gateway", "tvm");
    let servers = gateway["spec"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["port"]["number"], 80);
    assert_eq!(servers[0]["port"]["protocol"], "HTTP");
    assert!(
        servers[0].get("tls").is_none(),
        "no certificate, no redirect: {servers:?}"
    );
    let svc = find(objects, "Service", "tvm-ingressgateway");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert!(svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["port"] == 80));
}

#[test]
fn istio_overlay_keeps_kvm_affinity_and_serves_plain_http() {
    let Some(objects) = render(Overlay::Istio) else {
        return;
    };
    check_common(&objects);
    let ds = find(&objects, "DaemonSet", "pyrovm");
    let terms = &ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    assert_eq!(terms[0]["matchExpressions"][0]["key"], "tvm.dev/kvm");
}

#[test]
fn tcg_overlay_runs_anywhere() {
    let Some(objects) = render(Overlay::Tcg) else {
        return;
    };
    check_common(&objects);
    let ds = find(&objects, "DaemonSet", "pyrovm");
    assert!(ds["spec"]["template"]["spec"].get("affinity").is_none());
}
