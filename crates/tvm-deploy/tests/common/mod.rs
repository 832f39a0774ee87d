//! Shared by the deploy tests: rendering with `kubectl kustomize`, the upstream schemas,
//! and small readers for Kubernetes values (quantities, durations, objects).
#![allow(dead_code)]

pub mod cel;
pub mod schemas;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The overlays every test looks at.
pub const OVERLAYS: &[&str] = &["base", "istio", "tcg"];

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/tvm-deploy sits two levels below the workspace")
        .to_path_buf()
}

/// `../shared/specs` beside the workspace (or `$TVM_SPECS_DIR`), if present. Absent
/// outside CI, a test using it prints `SKIPPED` (as the Firecracker spec tests do); in
/// CI (`$CI` set) an absent spec dir is a failure.
pub fn specs_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TVM_SPECS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/specs"));
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "upstream schemas must be beside the repo in CI: {} (or set TVM_SPECS_DIR)",
        dir.display()
    );
    eprintln!(
        "SKIPPED: upstream schemas not found at {} (set TVM_SPECS_DIR)",
        dir.display()
    );
    None
}

/// The spec dir; only called after [`specs_dir`] said it exists.
pub fn specs() -> PathBuf {
    specs_dir().expect("upstream schemas")
}

pub fn kubectl() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    })
}

/// Every object `kubectl kustomize deploy/k8s/<overlay>` renders, as JSON. `None` (with a
/// printed reason) when kubectl is missing, unless `TVM_REQUIRE_KUBECTL=1`.
pub fn render(overlay: &str) -> Option<Vec<Value>> {
    let Some(kubectl) = kubectl() else {
        if std::env::var("TVM_REQUIRE_KUBECTL").as_deref() == Ok("1") {
            panic!("kubectl not found and TVM_REQUIRE_KUBECTL=1: install kubectl >= 1.27 (kustomize v5)");
        }
        println!("SKIPPED: kubectl not found: cannot render deploy/k8s/{overlay} (install kubectl >= 1.27)");
        return None;
    };
    let dir = workspace().join("deploy/k8s").join(overlay);
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    Some(parse_yaml_stream(&text))
}

pub fn parse_yaml_stream(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).expect("valid YAML");
            serde_json::to_value(v).expect("YAML maps to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

pub fn read_yaml(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    parse_yaml_stream(&text)
}

pub fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or("")
}

pub fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

pub fn namespace(o: &Value) -> &str {
    o["metadata"]["namespace"].as_str().unwrap_or("")
}

pub fn describe(o: &Value) -> String {
    format!("{} {}/{}", kind(o), namespace(o), name(o))
}

/// The objects of `kind`.
pub fn all<'a>(objs: &'a [Value], k: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| kind(o) == k).collect()
}

/// The one object of `kind` named `name` (panics if absent or repeated).
pub fn one<'a>(objs: &'a [Value], k: &str, n: &str) -> &'a Value {
    let found: Vec<&Value> = objs
        .iter()
        .filter(|o| kind(o) == k && name(o) == n)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {k} {n}, found {}",
        found.len()
    );
    found[0]
}

/// The pyrovm DaemonSet's container.
pub fn pyrovm_container(objs: &[Value]) -> &Value {
    let ds = one(objs, "DaemonSet", "pyrovm");
    ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "pyrovm"))
        .expect("a container named pyrovm")
}

/// The pyrovm config the DaemonSet mounts (the ConfigMap its `config` volume names).
pub fn pyrovm_config(objs: &[Value]) -> (String, pyrovm::Config) {
    let ds = one(objs, "DaemonSet", "pyrovm");
    let cm_name = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "config"))
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("a `config` volume from a ConfigMap");
    let cm = one(objs, "ConfigMap", cm_name);
    let text = cm["data"]["pyrovm.toml"]
        .as_str()
        .expect("pyrovm.toml in the ConfigMap")
        .to_string();
    let config: pyrovm::Config = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("ConfigMap {cm_name}: pyrovm refuses its config: {e}"));
    (text, config)
}

/// A Kubernetes CPU quantity in millicores.
pub fn millicores(q: &Value) -> u64 {
    let s = quantity_str(q);
    if let Some(m) = s.strip_suffix('m') {
        m.parse().expect("millicores")
    } else {
        (s.parse::<f64>().expect("cores") * 1000.0).round() as u64
    }
}

/// A Kubernetes memory quantity in MiB (binary suffixes, or plain bytes).
pub fn mebibytes(q: &Value) -> u64 {
    let s = quantity_str(q);
    for (suffix, mib) in [
        ("Ki", 1.0 / 1024.0),
        ("Mi", 1.0),
        ("Gi", 1024.0),
        ("Ti", 1024.0 * 1024.0),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return (n.parse::<f64>().expect("number") * mib).floor() as u64;
        }
    }
    s.parse::<u64>().expect("bytes") / (1024 * 1024)
}

fn quantity_str(q: &Value) -> String {
    match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("not a quantity: {other}"),
    }
}

/// A Go/Envoy duration string ("110s", "1m30s", "250ms") in milliseconds.
pub fn duration_ms(s: &str) -> Option<f64> {
    cel::go_duration_secs(s).map(|secs| secs * 1000.0)
}

/// An overlay's name and its rendered objects.
pub type Rendered = (String, Vec<Value>);

/// The rendered overlays, rendered once per test binary (`None` without kubectl).
pub fn rendered() -> Option<&'static [Rendered]> {
    static RENDERED: std::sync::OnceLock<Option<Vec<Rendered>>> = std::sync::OnceLock::new();
    RENDERED
        .get_or_init(|| {
            OVERLAYS
                .iter()
                .map(|o| render(o).map(|objs| (o.to_string(), objs)))
                .collect()
        })
        .as_deref()
}

/// One rendered overlay (cached; `None` without kubectl).
pub fn rendered_overlay(overlay: &str) -> Option<&'static [Value]> {
    let Some(all) = rendered() else {
        println!("SKIPPED: kubectl not found: nothing rendered");
        return None;
    };
    all.iter()
        .find(|(o, _)| o == overlay)
        .map(|(_, objs)| objs.as_slice())
}

/// Runs `f` for each rendered overlay (skipping all, with the reason printed, without kubectl).
pub fn for_each_overlay(mut f: impl FnMut(&str, &[Value])) {
    let Some(all) = rendered() else {
        println!("SKIPPED: kubectl not found: nothing rendered");
        return;
    };
    for (overlay, objs) in all {
        f(overlay, objs);
    }
}

/// The gateway Deployment selected by the Gateway resource, with its namespace and
/// service account.
pub fn ingress_gateway(objs: &[Value]) -> (&Value, String, String) {
    let gw = one(objs, "Gateway", "tvm");
    let selector = gw["spec"]["selector"]
        .as_object()
        .expect("Gateway selector");
    let deps: Vec<&Value> = all(objs, "Deployment")
        .into_iter()
        .filter(|d| {
            let labels = &d["spec"]["template"]["metadata"]["labels"];
            selector.iter().all(|(k, v)| &labels[k] == v)
        })
        .collect();
    assert_eq!(
        deps.len(),
        1,
        "one gateway Deployment matches the Gateway's selector"
    );
    let d = deps[0];
    let sa = d["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("the gateway names its service account")
        .to_string();
    let ns = namespace(d).to_string();
    one(objs, "ServiceAccount", &sa);
    (d, ns, sa)
}
