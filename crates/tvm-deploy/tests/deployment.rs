//! deploy/k8s, continued: the pyrovm config the manifests ship, resources derived
//! from the pool and VM sizes, shutdown timing against pyrovm's drain, placement on KVM
//! nodes, disruption budgets, and the image the manifests run versus what the builder makes.
//!
//! No Kubernetes API server, Istio or container runtime runs here; this is what can be
//! checked without one.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    all, describe, ingress_gateway, kind, namespace, one, pyrovm_config, pyrovm_container,
};
use serde_json::{json, Value};

/// Per-VM memory beyond guest RAM (MiB): Firecracker's cgroup allowance, also what a QEMU/KVM
/// process needs; TCG adds its translation cache (measured: QEMU's own 57–70 MiB plus a
/// translation cache of up to 106 MiB, capped at 256 by `tb-size`; see ARCHITECTURE.md).
const VMM_OVERHEAD_KVM_MB: u64 = 64;
const VMM_OVERHEAD_TCG_MB: u64 = 192;
/// Measured idle snapshot clone, primed (26 MiB unprimed); see README "Speed".
const IDLE_CLONE_MB: u64 = 58;
/// pyrovm's own RSS allowance.
const PYROVM_MB: u64 = 64;
/// VM dirs, sockets, logs and jails on the runtime tmpfs.
const RUNTIME_DIRS_MB: u64 = 64;

fn with_mesh(overlay: &str) -> bool {
    overlay != "base"
}

#[test]
fn configmap_is_a_config_pyrovm_accepts_and_it_demands_tokens() {
    common::for_each_overlay(|overlay, objs| {
        let (_, mut config) = pyrovm_config(objs);
        let c = pyrovm_container(objs);
        let ds = one(objs, "DaemonSet", "pyrovm");
        let args: Vec<&str> = c["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let config_path = args
            .windows(2)
            .find(|w| w[0] == "--config")
            .map(|w| w[1])
            .expect("--config");
        let mounts = c["volumeMounts"].as_array().expect("mounts");
        let volumes = ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes");
        let mount_of = |path: &str| {
            mounts
                .iter()
                .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
                .and_then(|m| volumes.iter().find(|v| v["name"] == m["name"]))
                .unwrap_or_else(|| panic!("{overlay}: nothing mounted at {path}"))
        };
        assert!(
            mount_of(config_path)["configMap"].is_object(),
            "{overlay}: --config comes from the ConfigMap"
        );
        let token_file = config.token_file.clone().expect("token_file");
        assert!(
            mount_of(token_file.to_str().unwrap())["secret"]["secretName"] == "pyrovm-tokens",
            "{overlay}: tokens come from a Secret"
        );
        let runtime = config.runtime_dir.clone().expect("runtime_dir");
        assert_eq!(
            mount_of(runtime.to_str().unwrap())["emptyDir"]["medium"],
            "Memory",
            "{overlay}: snapshots must stay on tmpfs"
        );
        assert_eq!(
            config.image_dir.as_deref(),
            Some(std::path::Path::new(tvm_deploy::oci::GUEST_IMAGE_DIR)),
            "{overlay}: image_dir is where the OCI image puts the guest image"
        );
        assert!(
            !config.listen.ip().is_loopback(),
            "{overlay}: the sidecar and Service reach the pod IP"
        );
        assert!(
            !config.insecure_no_auth,
            "{overlay}: auth stays on behind the mesh too"
        );
        // pyrovm's own check: refused without tokens, accepted once the Secret supplies one.
        assert!(
            config.check().is_err(),
            "{overlay}: a non-loopback listen without tokens must be refused"
        );
        config.tokens = vec!["from-the-secret".into()];
        config
            .check()
            .unwrap_or_else(|e| panic!("{overlay}: pyrovm refuses the config: {e}"));
        let defaults = pyrovm::Config::default();
        assert_eq!(
            config.limits.timeout_ms, defaults.limits.timeout_ms,
            "{overlay}: the API's timeout range is pyrovm's"
        );
    });
}

/// Memory (MiB) the pod needs at worst, from the config: see base/daemonset.yaml "Sizing".
fn memory_needed(config: &pyrovm::Config, tcg: bool, firecracker_staging_mb: u64) -> u64 {
    let vmm = if tcg {
        VMM_OVERHEAD_TCG_MB
    } else {
        VMM_OVERHEAD_KVM_MB
    };
    // A compiled language's VM fits the larger of the run and compile limits.
    let largest_guest = config
        .limits
        .memory_mb
        .max
        .max(config.limits.compile_memory_mb.max);
    let largest_vm = largest_guest + config.guest_overhead_mb + vmm;
    let running = config.max_concurrency as u64 * largest_vm;
    // A live sandbox keeps its VM (and may have touched all of its memory).
    let sandboxes = config.sandbox.max_total as u64 * largest_vm;
    let idle: u64 = config
        .pool
        .iter()
        .map(|c| c.size as u64 * IDLE_CLONE_MB)
        .sum();
    let snapshots: u64 = if config.snapshot.enabled {
        config
            .pool
            .iter()
            .map(|c| c.memory_mb + config.guest_overhead_mb)
            .sum()
    } else {
        0
    };
    running + sandboxes + idle + snapshots + firecracker_staging_mb + PYROVM_MB
}

/// The guest image's size, which a Firecracker instance copies onto its tmpfs.
fn guest_image_mb() -> u64 {
    let dir = tvm_deploy::oci::tvm_cache_dir().join("current");
    let measured: u64 = tvm_deploy::oci::GUEST_FILES
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    // The manifests reserve 1792 MiB (the rootfs carries every language's compiler; 1676
    // MiB when this was set); a larger built image would not fit.
    let mb = measured.div_ceil(1 << 20);
    if mb > 0 {
        assert!(mb <= 1792, "the guest image ({mb} MiB) outgrew the 1792 MiB the manifests reserve for Firecracker's staged copy: raise it in deploy/k8s/base/daemonset.yaml (memory and the runtime emptyDir) and here");
    }
    1792
}

#[test]
fn resources_follow_from_the_pool_and_vm_sizes() {
    common::for_each_overlay(|overlay, objs| {
        let (_, config) = pyrovm_config(objs);
        let tcg = overlay == "tcg";
        let fc_staging = if config.backend == pyrovm::BackendChoice::Qemu {
            0
        } else {
            guest_image_mb()
        };
        let need = memory_needed(&config, tcg, fc_staging);
        let c = pyrovm_container(objs);
        let res = &c["resources"];
        let limit = common::mebibytes(&res["limits"]["memory"]);
        let request = common::mebibytes(&res["requests"]["memory"]);
        assert!(
            limit >= need,
            "{overlay}: memory limit {limit} MiB < {need} MiB needed"
        );
        assert!(
            limit <= need + 512,
            "{overlay}: memory limit {limit} MiB is far above the {need} MiB derived"
        );
        assert_eq!(request, limit, "{overlay}: memory requests = limits");
        let cpu = common::millicores(&res["requests"]["cpu"]);
        let cpu_need = config.max_concurrency as u64 * config.limits.vcpus.default * 1000 + 500;
        assert_eq!(
            cpu, cpu_need,
            "{overlay}: cpu request = max_concurrency × vcpus.default + 0.5"
        );
        assert!(
            res["limits"]["cpu"].is_null(),
            "{overlay}: no CPU limit (throttling turns jobs into timeouts)"
        );
        assert!(
            config.max_concurrency <= 64,
            "{overlay}: max_concurrency is set explicitly"
        );
        // The runtime tmpfs holds the snapshots, the Firecracker staging copy and VM dirs.
        let ds = one(objs, "DaemonSet", "pyrovm");
        let runtime = ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "runtime")
            .unwrap();
        let tmpfs = common::mebibytes(&runtime["emptyDir"]["sizeLimit"]);
        let snapshots: u64 = config
            .pool
            .iter()
            .map(|c| c.memory_mb + config.guest_overhead_mb)
            .sum();
        assert!(
            tmpfs >= snapshots + fc_staging + RUNTIME_DIRS_MB,
            "{overlay}: runtime tmpfs {tmpfs} MiB too small"
        );
        println!("{overlay}: memory {limit} MiB >= derived {need} MiB, cpu {cpu}m, runtime tmpfs {tmpfs} MiB");
    });
}

#[test]
fn shutdown_outlasts_pyrovms_drain() {
    common::for_each_overlay(|overlay, objs| {
        let (_, config) = pyrovm_config(objs);
        let ds = one(objs, "DaemonSet", "pyrovm");
        let c = pyrovm_container(objs);
        let grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace period");
        let cmd: Vec<&str> = c["lifecycle"]["preStop"]["exec"]["command"]
            .as_array()
            .expect("preStop exec")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            cmd[0], "/bin/sleep",
            "{overlay}: preStop waits for endpoints to drop the pod"
        );
        let pre_stop: u64 = cmd[1].parse().expect("seconds");
        let drain = config.drain_timeout_ms.div_ceil(1000);
        let longest_ms = config.limits.timeout_ms.max
            + 2 * config.boot_timeout_ms
            + config.host_deadline_slack_ms;
        assert!(
            config.drain_timeout_ms >= longest_ms,
            "{overlay}: drain {drain} s cuts the longest request ({longest_ms} ms)"
        );
        assert!(
            grace >= pre_stop + drain + 10,
            "{overlay}: grace {grace} s < preStop {pre_stop} + drain {drain} + 10 s cleanup"
        );
        if with_mesh(overlay) {
            let proxy: serde_yaml::Value = serde_yaml::from_str(
                ds["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
                    .as_str()
                    .expect("proxy config"),
            )
            .expect("proxy config YAML");
            let sidecar = common::duration_ms(
                proxy["terminationDrainDuration"]
                    .as_str()
                    .expect("terminationDrainDuration"),
            )
            .unwrap()
                / 1000.0;
            let min_drain = common::duration_ms(
                proxy["proxyMetadata"]["MINIMUM_DRAIN_DURATION"]
                    .as_str()
                    .expect("MINIMUM_DRAIN_DURATION"),
            )
            .unwrap()
                / 1000.0;
            assert!(sidecar >= (pre_stop + drain) as f64 && sidecar < grace as f64, "{overlay}: the sidecar must outlive pyrovm's drain and end before the grace period");
            assert!(
                min_drain > pre_stop as f64,
                "{overlay}: the sidecar must not leave during preStop"
            );
            let (gw, _, _) = ingress_gateway(objs);
            let gw_grace = gw["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30);
            let vs = one(objs, "VirtualService", "pyrovm");
            let route_ms = vs["spec"]["http"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|r| common::duration_ms(r["timeout"].as_str()?))
                .fold(0.0, f64::max);
            assert!(
                gw_grace as f64 * 1000.0 > route_ms,
                "{overlay}: the gateway must drain as long as a request may take"
            );
        }
        println!("{overlay}: preStop {pre_stop} s + drain {drain} s < grace {grace} s");
    });
}

#[test]
fn pyrovm_runs_where_kvm_is_except_in_the_labelled_tcg_overlay() {
    common::for_each_overlay(|overlay, objs| {
        let ds = one(objs, "DaemonSet", "pyrovm");
        let spec = &ds["spec"]["template"]["spec"];
        let c = pyrovm_container(objs);
        let (text, config) = pyrovm_config(objs);
        assert_eq!(
            c["securityContext"]["privileged"], true,
            "{overlay}: see daemonset.yaml, \"Reaching /dev/kvm\""
        );
        assert_eq!(
            spec["automountServiceAccountToken"], false,
            "{overlay}: pyrovm needs no API token"
        );
        let terms = &spec["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
        if overlay == "tcg" {
            assert!(spec["affinity"].is_null(), "tcg: any node");
            assert_eq!(
                config.backend,
                pyrovm::BackendChoice::Qemu,
                "tcg: never Firecracker"
            );
            assert_eq!(ds["metadata"]["labels"]["tvm.dev/accel"], "tcg");
            assert!(ds["metadata"]["annotations"]["tvm.dev/warning"]
                .as_str()
                .is_some_and(|w| w.contains("TCG")));
            assert!(text.contains("SLOW"), "tcg: its config says so");
        } else {
            assert_eq!(
                terms[0]["matchExpressions"][0],
                json!({"key": "tvm.dev/kvm", "operator": "In", "values": ["true"]}),
                "{overlay}"
            );
        }
    });
}

#[test]
fn disruption_budgets_select_their_pods() {
    common::for_each_overlay(|overlay, objs| {
        for pdb in all(objs, "PodDisruptionBudget") {
            let sel = pdb["spec"]["selector"]["matchLabels"]
                .as_object()
                .expect("selector");
            let owners: Vec<&Value> = objs
                .iter()
                .filter(|o| {
                    ["DaemonSet", "Deployment"].contains(&kind(o)) && namespace(o) == namespace(pdb)
                })
                .filter(|o| {
                    sel.iter()
                        .all(|(k, v)| &o["spec"]["template"]["metadata"]["labels"][k] == v)
                })
                .collect();
            assert_eq!(
                owners.len(),
                1,
                "{overlay}: {} selects one workload",
                describe(pdb)
            );
            if kind(owners[0]) == "DaemonSet" {
                // No scale subresource: only an integer minAvailable is accepted.
                assert!(
                    pdb["spec"]["minAvailable"].is_u64() && pdb["spec"]["maxUnavailable"].is_null(),
                    "{overlay}"
                );
            }
        }
    });
}

#[test]
fn the_manifests_run_the_image_the_builder_makes() {
    let reference = tvm_deploy::oci::reference();
    common::for_each_overlay(|overlay, objs| {
        let c = pyrovm_container(objs);
        assert_eq!(
            c["image"],
            reference.as_str(),
            "{overlay}: the manifests and `make image` disagree"
        );
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(args.contains(&"--config"), "{overlay}");
        let mounts: Vec<&str> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["mountPath"].as_str())
            .collect();
        for m in &mounts {
            assert!(
                tvm_deploy::oci::MOUNT_POINTS.contains(m),
                "{overlay}: {m} is not a mount point the image provides"
            );
        }
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{overlay}"
        );
    });
}

#[test]
fn the_containerfile_builds_the_same_image() {
    use tvm_deploy::oci;
    let text =
        std::fs::read_to_string(common::workspace().join("Containerfile")).expect("Containerfile");
    for p in oci::BASE_PACKAGES {
        assert!(text.contains(p), "Containerfile lacks package {p}");
    }
    let entry = format!(
        "ENTRYPOINT {}",
        serde_json::to_string(oci::ENTRYPOINT).unwrap()
    )
    .replace(',', ", ");
    assert!(text.contains(&entry), "Containerfile: want `{entry}`");
    let cmd =
        format!("CMD {}", serde_json::to_string(oci::DEFAULT_ARGS).unwrap()).replace(',', ", ");
    assert!(text.contains(&cmd), "Containerfile: want `{cmd}`");
    assert!(text.contains(oci::PYROVM_PATH) && text.contains(oci::GUEST_IMAGE_DIR));
    for m in oci::MOUNT_POINTS {
        assert!(text.contains(m), "Containerfile: mount point {m}");
    }
    assert!(text.contains(&format!("EXPOSE {}", oci::EXPOSED_PORT)));
    assert!(text.contains(&format!(
        "org.opencontainers.image.version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    )));
}
