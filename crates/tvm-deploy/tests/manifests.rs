//! deploy/k8s: rendered with `kubectl kustomize`, validated against the upstream Kubernetes
//! and Istio schemas, and held to the deployment's policies — checked against pyrovm's own
//! code (its config parser, OpenAPI document, auth exemptions) rather than against copies.
//!
//! No Kubernetes API server, Istio or container runtime runs here; this is what can be
//! checked without one.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::{
    all, describe, ingress_gateway, kind, name, namespace, one, pyrovm_config, pyrovm_container,
};
use serde_json::{json, Value};

/// Istio >= 1.16 serves these; networking/security `v1` came only with 1.22.
const ISTIO_API_VERSIONS: &[&str] = &["networking.istio.io/v1beta1", "security.istio.io/v1beta1"];

fn is_istio(o: &Value) -> bool {
    o["apiVersion"]
        .as_str()
        .is_some_and(|a| a.contains(".istio.io/"))
}

fn with_mesh(overlay: &str) -> bool {
    overlay != "base"
}

#[test]
fn kustomize_renders_base_istio_and_tcg() {
    common::for_each_overlay(|overlay, objs| {
        assert!(!objs.is_empty(), "{overlay}: nothing rendered");
        let mut seen = BTreeSet::new();
        for o in objs {
            assert!(!kind(o).is_empty() && !name(o).is_empty(), "{overlay}: {o}");
            assert!(
                seen.insert((
                    kind(o).to_string(),
                    namespace(o).to_string(),
                    name(o).to_string()
                )),
                "{overlay}: {} rendered twice",
                describe(o)
            );
            if kind(o) != "Namespace" {
                assert!(
                    !namespace(o).is_empty(),
                    "{overlay}: {} has no namespace",
                    describe(o)
                );
            }
        }
        for k in [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "DaemonSet",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ] {
            assert!(!all(objs, k).is_empty(), "{overlay}: no {k}");
        }
        if with_mesh(overlay) {
            for k in [
                "Gateway",
                "VirtualService",
                "DestinationRule",
                "PeerAuthentication",
                "AuthorizationPolicy",
                "Sidecar",
                "Deployment",
                "HorizontalPodAutoscaler",
                "Role",
                "RoleBinding",
            ] {
                assert!(!all(objs, k).is_empty(), "{overlay}: no {k}");
            }
        }
        println!("{overlay}: {} objects rendered", objs.len());
    });
}

#[test]
fn every_object_validates_against_the_upstream_schemas() {
    if common::specs_dir().is_none() {
        return;
    }
    let schemas = common::schemas::shared();
    common::for_each_overlay(|overlay, objs| {
        let mut failures = Vec::new();
        let (mut core, mut istio) = (0, 0);
        for o in objs {
            let errors = schemas.errors(o);
            if is_istio(o) {
                istio += 1;
            } else {
                core += 1;
            }
            failures.extend(errors.into_iter().map(|e| format!("{}: {e}", describe(o))));
        }
        assert!(failures.is_empty(), "{overlay}:\n{}", failures.join("\n"));
        println!("{overlay}: {core} Kubernetes objects (v1.33.0 strict) and {istio} Istio objects (1.30.3 CRDs) valid");
    });
}

/// The validators must actually refuse things, or the test above proves nothing.
#[test]
fn the_validators_refuse_unknown_fields_bad_values_and_broken_rules() {
    if common::specs_dir().is_none() {
        return;
    }
    let schemas = common::schemas::shared();
    let Some(objs) = common::rendered_overlay("istio") else {
        return;
    };
    let mutate = |k: &str, n: &str, f: &dyn Fn(&mut Value)| {
        let mut o = one(objs, k, n).clone();
        f(&mut o);
        schemas.errors(&o)
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "misspelled container field",
            mutate("DaemonSet", "pyrovm", &|o| {
                o["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = json!("Always")
            }),
        ),
        (
            "string where an integer goes",
            mutate("DaemonSet", "pyrovm", &|o| {
                o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!("120")
            }),
        ),
        (
            "wrong apiVersion",
            mutate("PodDisruptionBudget", "pyrovm", &|o| {
                o["apiVersion"] = json!("policy/v1beta1")
            }),
        ),
        (
            "misspelled VirtualService field",
            mutate("VirtualService", "pyrovm", &|o| {
                o["spec"]["http"][0]["timout"] = json!("110s")
            }),
        ),
        (
            "timeout without a unit (CEL duration rule)",
            mutate("VirtualService", "pyrovm", &|o| {
                o["spec"]["http"][0]["timeout"] = json!("110")
            }),
        ),
        (
            "unknown mTLS mode (enum)",
            mutate("PeerAuthentication", "default", &|o| {
                o["spec"]["mtls"]["mode"] = json!("STRICTER")
            }),
        ),
        (
            "two credential sources (CEL rule)",
            mutate("Gateway", "tvm", &|o| {
                o["spec"]["servers"][0]["tls"]["credentialNames"] = json!(["a", "b"])
            }),
        ),
        (
            "unknown metadata field",
            mutate("Sidecar", "pyrovm", &|o| {
                o["metadata"]["labelz"] = json!({})
            }),
        ),
    ];
    for (what, errors) in cases {
        assert!(!errors.is_empty(), "{what}: accepted");
        println!("refused, as it should be — {what}: {}", errors[0]);
    }
    assert!(!schemas
        .errors(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}))
        .is_empty());
}

#[test]
fn istio_objects_use_versions_istio_1_16_serves() {
    common::for_each_overlay(|overlay, objs| {
        for o in objs.iter().filter(|o| is_istio(o)) {
            let api = o["apiVersion"].as_str().unwrap_or("");
            assert!(
                ISTIO_API_VERSIONS.contains(&api),
                "{overlay}: {} uses {api}",
                describe(o)
            );
        }
    });
}

#[test]
fn mtls_is_strict_for_the_pyrovm_namespace() {
    common::for_each_overlay(|overlay, objs| {
        if !with_mesh(overlay) {
            return;
        }
        let ds = one(objs, "DaemonSet", "pyrovm");
        let pas = all(objs, "PeerAuthentication");
        let ns_wide: Vec<_> = pas
            .iter()
            .filter(|p| namespace(p) == namespace(ds) && p["spec"]["selector"].is_null())
            .collect();
        assert_eq!(
            ns_wide.len(),
            1,
            "{overlay}: one namespace-wide PeerAuthentication"
        );
        assert_eq!(ns_wide[0]["spec"]["mtls"]["mode"], "STRICT", "{overlay}");
        for p in &pas {
            assert!(
                p["spec"]["portLevelMtls"].is_null(),
                "{overlay}: no port-level exceptions"
            );
            assert!(
                p["spec"]["mtls"]["mode"] == "STRICT",
                "{overlay}: {} weakens mTLS",
                describe(p)
            );
        }
        let ns = one(objs, "Namespace", namespace(ds));
        assert_eq!(
            ns["metadata"]["labels"]["istio-injection"], "enabled",
            "{overlay}: sidecars injected"
        );
        let dr = one(objs, "DestinationRule", "pyrovm");
        assert_eq!(
            dr["spec"]["trafficPolicy"]["tls"]["mode"], "ISTIO_MUTUAL",
            "{overlay}"
        );
        assert!(
            dr["spec"]["trafficPolicy"]["connectionPool"].is_object(),
            "{overlay}"
        );
        assert!(
            dr["spec"]["trafficPolicy"]["outlierDetection"].is_object(),
            "{overlay}"
        );
        assert!(
            dr["spec"]["trafficPolicy"]["outlierDetection"]["maxEjectionPercent"]
                .as_u64()
                .is_some_and(|p| p < 100),
            "{overlay}: outlier detection must never eject the whole fleet"
        );
    });
}

#[test]
fn authorization_admits_only_the_gateways_service_account() {
    common::for_each_overlay(|overlay, objs| {
        if !with_mesh(overlay) {
            return;
        }
        let (gw, gw_ns, gw_sa) = ingress_gateway(objs);
        assert_eq!(
            gw["spec"]["template"]["metadata"]["annotations"]["inject.istio.io/templates"],
            "gateway",
            "{overlay}: the gateway is an injected Istio gateway"
        );
        let principal = format!("cluster.local/ns/{gw_ns}/sa/{gw_sa}");
        let ds = one(objs, "DaemonSet", "pyrovm");
        // pyrovm pods themselves, forwarding a sandbox's requests to its owner: on
        // the sandbox routes only.
        let peer = format!(
            "cluster.local/ns/{}/sa/{}",
            namespace(ds),
            ds["spec"]["template"]["spec"]["serviceAccountName"]
                .as_str()
                .expect("service account")
        );
        let mut peers_admitted = false;
        let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
        let policies = all(objs, "AuthorizationPolicy");
        let selects_pyrovm = |p: &Value| {
            let labels_match = match p["spec"]["selector"]["matchLabels"].as_object() {
                None => true,
                Some(m) => m.iter().all(|(k, v)| &pod_labels[k] == v),
            };
            namespace(p) == namespace(ds) && labels_match
        };
        let mut allowing = 0;
        for p in policies.iter().filter(|p| selects_pyrovm(p)) {
            let action = p["spec"]["action"].as_str().unwrap_or("ALLOW");
            assert_eq!(action, "ALLOW", "{overlay}: {}", describe(p));
            let rules = p["spec"]["rules"].as_array().cloned().unwrap_or_default();
            for r in &rules {
                let froms = r["from"].as_array().expect("every rule names its source");
                assert!(!froms.is_empty());
                for f in froms {
                    let src = f["source"].as_object().expect("source");
                    assert_eq!(
                        src.keys().collect::<Vec<_>>(),
                        ["principals"],
                        "{overlay}: sources are identified by principal only"
                    );
                    let from_peer = src["principals"] == json!([peer]);
                    assert!(
                        src["principals"] == json!([principal]) || from_peer,
                        "{overlay}: {} admits {}",
                        describe(p),
                        src["principals"]
                    );
                    if from_peer {
                        peers_admitted = true;
                        for t in r["to"].as_array().expect("to") {
                            for path in t["operation"]["paths"].as_array().expect("paths") {
                                let path = path.as_str().unwrap_or("");
                                assert!(
                                    path.starts_with("/v1/sandboxes/")
                                        || path.starts_with("/tvm.v1.Sandboxes/"),
                                    "{overlay}: peers may reach {path}"
                                );
                            }
                        }
                    }
                }
                for t in r["to"].as_array().expect("every rule names what it allows") {
                    assert_eq!(t["operation"]["ports"], json!(["8080"]), "{overlay}");
                }
                allowing += 1;
            }
        }
        assert!(allowing >= 1, "{overlay}: no policy admits the gateway");
        assert!(
            peers_admitted,
            "{overlay}: sandbox forwarding between pods is denied"
        );
        let deny_by_default = policies
            .iter()
            .any(|p| namespace(p) == namespace(ds) && p["spec"] == json!({}));
        assert!(
            deny_by_default,
            "{overlay}: an allow-nothing policy for the rest of the namespace"
        );
    });
}

#[test]
fn networkpolicy_denies_egress_and_admits_only_the_gateway() {
    common::for_each_overlay(|overlay, objs| {
        let ds = one(objs, "DaemonSet", "pyrovm");
        let np = one(objs, "NetworkPolicy", "pyrovm");
        let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
        for (k, v) in np["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .expect("podSelector")
        {
            assert_eq!(
                &pod_labels[k], v,
                "{overlay}: the policy selects pyrovm's pods"
            );
        }
        let types = &np["spec"]["policyTypes"];
        assert!(
            types
                .as_array()
                .is_some_and(|t| t.contains(&json!("Egress")) && t.contains(&json!("Ingress"))),
            "{overlay}"
        );
        let egress = np["spec"]["egress"].as_array().cloned().unwrap_or_default();
        // Another pyrovm pod, on the API port (sandbox forwarding): same namespace, the
        // DaemonSet's pods.
        let pyrovm_pods = |peer: &Value| {
            peer["namespaceSelector"].is_null()
                && peer["ipBlock"].is_null()
                && peer["podSelector"]["matchLabels"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &pod_labels[k] == v))
        };
        let to_peers = |rule: &Value| {
            rule["to"]
                .as_array()
                .is_some_and(|to| !to.is_empty() && to.iter().all(pyrovm_pods))
                && rule["ports"] == json!([{"protocol": "TCP", "port": 8080}])
        };
        let to_dns = |rule: &Value| {
            rule["to"].as_array().is_some_and(|to| {
                !to.is_empty()
                    && to.iter().all(|peer| {
                        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                            == "kube-system"
                            && peer["podSelector"]["matchLabels"] == json!({"k8s-app": "kube-dns"})
                    })
            }) && rule["ports"]
                .as_array()
                .is_some_and(|ps| ps.iter().all(|p| p["port"] == 53))
        };
        if !with_mesh(overlay) {
            assert!(
                egress.iter().all(|r| to_peers(r) || to_dns(r)),
                "{overlay}: pyrovm's only egress is to its peers and DNS: {egress:?}"
            );
            return;
        }
        assert!(egress.iter().any(to_peers), "{overlay}: egress to peers");
        // With a sidecar: only its control plane (istiod 15012, DNS 53) and the peers.
        for rule in egress.iter().filter(|r| !to_peers(r)) {
            let to = rule["to"]
                .as_array()
                .expect("egress rules name their peers");
            assert!(
                !to.is_empty(),
                "{overlay}: an egress rule without peers allows everything"
            );
            for peer in to {
                assert!(peer["ipBlock"].is_null(), "{overlay}: no IP ranges");
                let ns = &peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
                let pods = &peer["podSelector"]["matchLabels"];
                let control_plane = (ns == "istio-system" && pods == &json!({"app": "istiod"}))
                    || (ns == "kube-system" && pods == &json!({"k8s-app": "kube-dns"}));
                assert!(control_plane, "{overlay}: egress to {peer}");
            }
            let ports = rule["ports"].as_array().expect("egress rules name ports");
            for p in ports {
                assert!(
                    [json!(15012), json!(53)].contains(&p["port"]),
                    "{overlay}: port {p}"
                );
            }
        }
        let (gw, gw_ns, _) = ingress_gateway(objs);
        let gw_labels = &gw["spec"]["template"]["metadata"]["labels"];
        let ingress = np["spec"]["ingress"].as_array().expect("ingress rules");
        assert!(!ingress.is_empty());
        for rule in ingress {
            let from = rule["from"].as_array().expect("ingress names its peers");
            if !from.is_empty() && from.iter().all(pyrovm_pods) {
                assert_eq!(rule["ports"], json!([{"protocol": "TCP", "port": 8080}]));
                continue;
            }
            for peer in from {
                assert_eq!(
                    peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                    gw_ns.as_str(),
                    "{overlay}"
                );
                let sel = peer["podSelector"]["matchLabels"]
                    .as_object()
                    .expect("gateway pods");
                assert!(
                    !sel.is_empty() && sel.iter().all(|(k, v)| &gw_labels[k] == v),
                    "{overlay}"
                );
            }
            assert_eq!(
                rule["ports"],
                json!([{"protocol": "TCP", "port": 8080}]),
                "{overlay}"
            );
        }
        let sidecar = one(objs, "Sidecar", "pyrovm");
        assert_eq!(
            sidecar["spec"]["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY",
            "{overlay}"
        );
        for (k, v) in sidecar["spec"]["workloadSelector"]["labels"]
            .as_object()
            .expect("selector")
        {
            assert_eq!(
                &pod_labels[k], v,
                "{overlay}: the Sidecar selects pyrovm's pods"
            );
        }
    });
}

#[test]
fn probes_hit_real_pyrovm_paths() {
    let doc = pyrovm::openapi::document();
    common::for_each_overlay(|overlay, objs| {
        let c = pyrovm_container(objs);
        let (_, config) = pyrovm_config(objs);
        let port = c["ports"][0]["containerPort"]
            .as_u64()
            .expect("container port");
        assert_eq!(
            port,
            u64::from(config.listen.port()),
            "{overlay}: probes and pyrovm agree on the port"
        );
        for (probe, want) in [
            ("livenessProbe", "/healthz"),
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            let get = &c[probe]["httpGet"];
            let path = get["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{overlay}: {probe} is an HTTP GET"));
            assert_eq!(path, want, "{overlay}: {probe}");
            assert_eq!(
                get["port"], c["ports"][0]["name"],
                "{overlay}: {probe} port"
            );
            assert!(
                doc["paths"][path]["get"].is_object(),
                "{overlay}: pyrovm serves no GET {path}"
            );
            assert!(
                pyrovm::middleware::is_public(path),
                "{overlay}: {path} needs a token; kubelet has none"
            );
        }
        assert!(
            doc["paths"]["/readyz"]["get"]["responses"]["503"].is_object(),
            "readiness must be able to fail (503 while shutting down)"
        );
    });
}

#[test]
fn virtualservice_routes_real_apis_with_timeouts_above_the_longest_execution() {
    let doc = pyrovm::openapi::document();
    let proto = std::fs::read_to_string(common::workspace().join("proto/tvm/v1/execution.proto"))
        .expect("proto");
    let package = proto
        .lines()
        .find_map(|l| l.trim().strip_prefix("package ")?.strip_suffix(';'))
        .expect("package");
    let service = proto
        .lines()
        .find_map(|l| l.trim().strip_prefix("service ")?.split_whitespace().next())
        .expect("service");
    let grpc_prefix = format!("/{package}.{service}/");
    assert_eq!(grpc_prefix, "/tvm.v1.Execution/");
    common::for_each_overlay(|overlay, objs| {
        if !with_mesh(overlay) {
            return;
        }
        let (_, config) = pyrovm_config(objs);
        // The longest answer: the longest wait for a slot, two boot attempts, the
        // longest job, the host's slack.
        let longest_ms = config.queue_timeout_ms
            + config.limits.timeout_ms.max
            + 2 * config.boot_timeout_ms
            + config.host_deadline_slack_ms;
        // A sandbox request may first wait for its busy sandbox, then for a slot.
        let longest_sandbox_ms = config.sandbox.busy_timeout_ms
            + config.queue_timeout_ms
            + config.limits.timeout_ms.max
            + config.host_deadline_slack_ms;
        let vs = one(objs, "VirtualService", "pyrovm");
        let svc = one(objs, "Service", "pyrovm");
        let gw = one(objs, "Gateway", "tvm");
        assert_eq!(
            vs["spec"]["gateways"],
            json!([format!("{}/{}", namespace(gw), name(gw))]),
            "{overlay}"
        );
        let routes = vs["spec"]["http"].as_array().expect("http routes");
        let mut prefixes = Vec::new();
        let mut exacts = Vec::new();
        for r in routes {
            let rname = r["name"].as_str().unwrap_or("?");
            let timeout = r["timeout"]
                .as_str()
                .unwrap_or_else(|| panic!("{overlay}: route {rname} has no timeout"));
            let ms = common::duration_ms(timeout).expect("duration");
            assert!(
                ms > longest_ms as f64,
                "{overlay}: route {rname}: {timeout} <= {longest_ms} ms"
            );
            let sandbox_route = r["match"].as_array().is_some_and(|ms| {
                ms.iter().any(|m| {
                    m["uri"]["prefix"]
                        .as_str()
                        .is_some_and(|p| p.contains("andboxes"))
                })
            });
            if sandbox_route {
                assert!(
                    ms > longest_sandbox_ms as f64,
                    "{overlay}: sandbox route {rname}: {timeout} <= {longest_sandbox_ms} ms"
                );
            }
            let retry_on = r["retries"]["retryOn"].as_str().unwrap_or("");
            for cond in retry_on.split(',').filter(|c| !c.is_empty()) {
                assert!(
                    ["connect-failure", "refused-stream"].contains(&cond),
                    "{overlay}: route {rname} retries on {cond}: an execution would run twice"
                );
            }
            assert!(
                r["retries"]["perTryTimeout"].is_null(),
                "{overlay}: a per-try timeout would cut executions"
            );
            for dst in r["route"].as_array().expect("route") {
                assert_eq!(dst["destination"]["host"], name(svc));
                let port = &dst["destination"]["port"]["number"];
                assert!(
                    svc["spec"]["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|p| &p["port"] == port),
                    "{overlay}: route {rname} to a port the Service lacks"
                );
            }
            for m in r["match"].as_array().expect("match") {
                if let Some(p) = m["uri"]["prefix"].as_str() {
                    prefixes.push(p.to_string());
                }
                if let Some(p) = m["uri"]["exact"].as_str() {
                    exacts.push(p.to_string());
                }
            }
        }
        // Every public API path pyrovm documents is routed; probes and metrics are not.
        for path in doc["paths"].as_object().expect("paths").keys() {
            let routed =
                prefixes.iter().any(|p| path.starts_with(p.as_str())) || exacts.contains(path);
            let public_api = path.starts_with("/v1/") || path.starts_with("/api/v2/");
            assert_eq!(routed, public_api, "{overlay}: {path} routed={routed}");
        }
        assert!(
            exacts.contains(&"/v1/execute/stream".to_string()),
            "{overlay}: streaming route"
        );
        assert!(prefixes.contains(&grpc_prefix), "{overlay}: gRPC route");
        let grpc_route = routes
            .iter()
            .find(|r| {
                r["match"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|m| m["uri"]["prefix"] == grpc_prefix.as_str())
            })
            .unwrap();
        let grpc_port = &grpc_route["route"][0]["destination"]["port"]["number"];
        let svc_port = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| &p["port"] == grpc_port)
            .unwrap();
        assert_eq!(
            svc_port["name"], "grpc",
            "{overlay}: gRPC goes to the grpc port"
        );
        // AuthorizationPolicy paths cover exactly the routed APIs.
        let ap = one(objs, "AuthorizationPolicy", "pyrovm-from-ingress");
        let paths: Vec<&str> = ap["spec"]["rules"][0]["to"][0]["operation"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for p in &prefixes {
            assert!(
                paths.contains(&format!("{p}*").as_str()),
                "{overlay}: AuthorizationPolicy misses {p}*"
            );
        }
        println!(
            "{overlay}: every route times out after {} > longest answer {longest_ms} ms",
            routes[0]["timeout"].as_str().unwrap_or("?")
        );
    });
}

#[test]
fn service_ports_are_named_for_istio_protocol_selection() {
    // Istio picks a port's protocol from its name prefix; ports sharing a target port must
    // agree, and gRPC needs HTTP/2 all the way to pyrovm.
    common::for_each_overlay(|overlay, objs| {
        let svc = one(objs, "Service", "pyrovm");
        let c = pyrovm_container(objs);
        let ports = svc["spec"]["ports"].as_array().expect("ports");
        let names: Vec<&str> = ports.iter().filter_map(|p| p["name"].as_str()).collect();
        assert!(
            names.iter().any(|n| n.starts_with("http")),
            "{overlay}: an http port"
        );
        assert!(names.contains(&"grpc"), "{overlay}: a grpc port");
        for p in ports {
            let n = p["name"].as_str().unwrap();
            let proto = n.split('-').next().unwrap();
            assert!(["http2", "grpc"].contains(&proto), "{overlay}: port {n}: the one pod port speaks h2c for gRPC; an `http` port would make the sidecar speak HTTP/1.1 to it");
            assert_eq!(
                p["targetPort"], c["ports"][0]["name"],
                "{overlay}: port {n}"
            );
        }
    });
}
