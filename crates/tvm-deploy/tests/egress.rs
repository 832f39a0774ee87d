//! deploy/k8s/egress: the istio overlay plus job egress (HTTP(S) through pyrovm's forward
//! proxy). Rendered with `kubectl kustomize`, validated against the upstream Kubernetes and
//! Istio schemas like the other overlays (tests/manifests.rs), then held to its contract:
//!
//! - the rendered pyrovm.toml is the base's plus an `[egress]` section, and pyrovm parses it;
//! - the ServiceEntries are exactly the `[egress] allow` ceiling, and pyrovm's Sidecar is
//!   REGISTRY_ONLY and knows exactly those hosts beyond the istio overlay's;
//! - the added NetworkPolicy opens TCP 80/443 only, to public IPv4 addresses (private,
//!   loopback, link-local and CGNAT ranges excepted);
//! - everything else is the istio overlay, object for object, and base, istio and tcg still
//!   deny egress.
//!
//! No Kubernetes API server or Istio runs here; this is what can be checked without one.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use common::{all, describe, kind, name, namespace, one};
use serde_json::{json, Value};

const OVERLAY: &str = "egress";

/// The ranges the egress NetworkPolicy must keep closed: RFC 1918, loopback, link-local
/// (cloud metadata) and carrier-grade NAT.
const SPECIAL: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "127.0.0.0/8",
    "100.64.0.0/10",
];

/// The only ports jobs' connections may use.
const EGRESS_PORTS: &[u64] = &[80, 443];

/// The keys of pyrovm's `[egress]` section.
const EGRESS_KEYS: &[&str] = &[
    "allow",
    "max_bytes_in",
    "max_bytes_out",
    "max_connections",
    "connect_timeout_ms",
];

/// `kubectl kustomize deploy/k8s/egress`, rendered once per test binary (`None`, with the
/// reason printed, without kubectl).
fn egress() -> Option<&'static [Value]> {
    static RENDERED: OnceLock<Option<Vec<Value>>> = OnceLock::new();
    RENDERED.get_or_init(|| common::render(OVERLAY)).as_deref()
}

/// The istio overlay, rendered once (shared with the other overlays' cache).
fn istio() -> Option<&'static [Value]> {
    common::rendered_overlay("istio")
}

/// The pyrovm.toml text of the ConfigMap the DaemonSet mounts.
fn config_text(objs: &[Value]) -> String {
    let ds = one(objs, "DaemonSet", "pyrovm");
    let cm_name = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "config"))
        .and_then(|v| v["configMap"]["name"].as_str())
        .expect("a `config` volume from a ConfigMap");
    one(objs, "ConfigMap", cm_name)["data"]["pyrovm.toml"]
        .as_str()
        .expect("pyrovm.toml in the ConfigMap")
        .to_string()
}

fn config_table(objs: &[Value]) -> toml::Table {
    toml::from_str(&config_text(objs)).expect("pyrovm.toml is TOML")
}

/// `[egress] allow` of a rendered overlay's pyrovm.toml (empty when there is none).
fn ceiling(objs: &[Value]) -> Vec<String> {
    config_table(objs)
        .get("egress")
        .and_then(|e| e.get("allow"))
        .and_then(toml::Value::as_array)
        .map(|a| {
            a.iter()
                .map(|h| h.as_str().expect("allow entries are strings").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A ceiling entry as the mesh must see it: its host and, for `host:port`, its port.
/// IP literals are refused: they need `addresses` on a STATIC ServiceEntry (and, when
/// private, a NetworkPolicy rule) that this overlay does not have.
fn ceiling_host(entry: &str) -> (String, Option<u64>) {
    let (host, port) = match entry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h,
            Some(
                p.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{entry}: bad port")),
            ),
        ),
        _ => (entry, None),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    assert!(
        bare.parse::<std::net::IpAddr>().is_err(),
        "{entry}: an IP literal in the ceiling needs a ServiceEntry with `addresses` \
         (resolution STATIC) and, if private, a NetworkPolicy rule: extend the overlay and this test"
    );
    assert!(
        !host.is_empty()
            && host
                .split('.')
                .enumerate()
                .all(|(i, l)| (i == 0 && l == "*")
                    || (!l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))),
        "{entry}: not a host name or `*.suffix`"
    );
    (host.to_ascii_lowercase(), port)
}

fn cidr(s: &str) -> (u32, u32) {
    let (addr, len) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("{s}: no prefix length"));
    let addr: Ipv4Addr = addr
        .parse()
        .unwrap_or_else(|_| panic!("{s}: not IPv4 (this overlay opens IPv4 only)"));
    let len: u32 = len.parse().unwrap_or_else(|_| panic!("{s}: bad prefix"));
    assert!(len <= 32, "{s}");
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let start = u32::from(addr);
    assert_eq!(start & mask, start, "{s}: host bits set");
    (start, start | !mask)
}

fn covers(outer: &str, inner: &str) -> bool {
    let (a, b) = cidr(outer);
    let (c, d) = cidr(inner);
    a <= c && d <= b
}

fn overlaps(x: &str, y: &str) -> bool {
    let (a, b) = cidr(x);
    let (c, d) = cidr(y);
    a <= d && c <= b
}

fn selects_pyrovm(np: &Value, objs: &[Value]) -> bool {
    let ds = one(objs, "DaemonSet", "pyrovm");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    namespace(np) == namespace(ds)
        && np["spec"]["podSelector"]["matchLabels"]
            .as_object()
            .is_none_or(|m| m.iter().all(|(k, v)| &pod_labels[k] == v))
}

/// What is wrong with the egress NetworkPolicy (empty: it opens only TCP 80/443 to public
/// IPv4 addresses, for pyrovm's pods, and nothing else).
fn egress_policy_problems(np: &Value, objs: &[Value]) -> Vec<String> {
    let mut bad = Vec::new();
    let ds = one(objs, "DaemonSet", "pyrovm");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let sel = np["spec"]["podSelector"]["matchLabels"].as_object();
    if !sel.is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &pod_labels[k] == v))
        || namespace(np) != namespace(ds)
    {
        bad.push(format!(
            "does not select exactly pyrovm's pods: {}",
            np["spec"]["podSelector"]
        ));
    }
    if np["spec"]["policyTypes"] != json!(["Egress"]) || !np["spec"]["ingress"].is_null() {
        bad.push("must be about egress only (ingress stays the istio overlay's)".into());
    }
    let rules = np["spec"]["egress"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        bad.push("no egress rule".into());
    }
    for (i, rule) in rules.iter().enumerate() {
        let ports = rule["ports"].as_array().cloned().unwrap_or_default();
        let mut numbers = BTreeSet::new();
        for p in &ports {
            if p["protocol"] != "TCP" || !p["endPort"].is_null() {
                bad.push(format!("rule {i}: port {p} is not a single TCP port"));
            }
            match p["port"].as_u64() {
                Some(n) => {
                    numbers.insert(n);
                }
                None => bad.push(format!("rule {i}: port {p} is not a number")),
            }
        }
        if numbers.iter().copied().collect::<Vec<_>>() != EGRESS_PORTS {
            bad.push(format!("rule {i}: ports {numbers:?}, want exactly {EGRESS_PORTS:?} (an empty list is every port)"));
        }
        let to = rule["to"].as_array().cloned().unwrap_or_default();
        if to.is_empty() {
            bad.push(format!("rule {i}: no `to` means every destination"));
        }
        for peer in &to {
            let Some(block) = peer["ipBlock"].as_object() else {
                bad.push(format!("rule {i}: {peer} is not an ipBlock"));
                continue;
            };
            if !peer["podSelector"].is_null() || !peer["namespaceSelector"].is_null() {
                bad.push(format!("rule {i}: {peer} mixes selectors into the ipBlock"));
            }
            let c = block["cidr"].as_str().unwrap_or("");
            let except: Vec<&str> = block
                .get("except")
                .and_then(Value::as_array)
                .map(|e| e.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for e in &except {
                if !covers(c, e) || c == *e {
                    bad.push(format!(
                        "rule {i}: except {e} is not a strict sub-range of {c}"
                    ));
                }
            }
            for s in SPECIAL {
                if overlaps(c, s) && !except.iter().any(|e| covers(e, s)) {
                    bad.push(format!("rule {i}: {c} reaches {s} (not excepted)"));
                }
            }
        }
    }
    bad
}

/// What is wrong with the ServiceEntries against the ceiling (empty: one MESH_EXTERNAL,
/// DNS-resolved entry per ceiling host, HTTP on 80 and TLS on 443, visible to pyrovm's
/// namespace only, and no other host).
fn serviceentry_problems(entries: &[&Value], ceiling: &[String], ns: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut want: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for entry in ceiling {
        let (host, port) = ceiling_host(entry);
        let ports = want.entry(host).or_default();
        match port {
            Some(p) => {
                ports.insert(p);
            }
            None => ports.extend(EGRESS_PORTS),
        }
    }
    let mut have: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for se in entries {
        let spec = &se["spec"];
        let what = describe(se);
        if namespace(se) != ns {
            bad.push(format!("{what}: not in pyrovm's namespace {ns}"));
        }
        if spec["location"] != "MESH_EXTERNAL" {
            bad.push(format!("{what}: location {}", spec["location"]));
        }
        if spec["resolution"] != "DNS" {
            bad.push(format!("{what}: resolution {}", spec["resolution"]));
        }
        if spec["exportTo"] != json!(["."]) {
            bad.push(format!(
                "{what}: exported beyond its namespace: {}",
                spec["exportTo"]
            ));
        }
        for k in ["addresses", "endpoints", "workloadSelector"] {
            if !spec[k].is_null() {
                bad.push(format!("{what}: has {k}"));
            }
        }
        let mut ports = BTreeSet::new();
        for p in spec["ports"].as_array().cloned().unwrap_or_default() {
            let n = p["number"].as_u64().unwrap_or(0);
            let want_proto = match n {
                80 => "HTTP",
                443 => "TLS",
                _ => {
                    bad.push(format!("{what}: port {n}"));
                    continue;
                }
            };
            if p["protocol"] != want_proto || !p["targetPort"].is_null() {
                bad.push(format!(
                    "{what}: port {n} is {}, want {want_proto}",
                    p["protocol"]
                ));
            }
            ports.insert(n);
        }
        for h in spec["hosts"].as_array().cloned().unwrap_or_default() {
            let h = h.as_str().unwrap_or("").to_ascii_lowercase();
            if have.insert(h.clone(), ports.clone()).is_some() {
                bad.push(format!("{what}: host {h} registered twice"));
            }
        }
    }
    let want_hosts: BTreeSet<&String> = want.keys().collect();
    let have_hosts: BTreeSet<&String> = have.keys().collect();
    if want_hosts != have_hosts {
        bad.push(format!(
            "ServiceEntry hosts {have_hosts:?} != [egress] allow {want_hosts:?}"
        ));
    }
    for (h, ports) in &want {
        if let Some(got) = have.get(h) {
            if !ports.is_subset(got) {
                bad.push(format!("{h}: ServiceEntry ports {got:?} lack {ports:?}"));
            }
        }
    }
    bad
}

/// Every host a Sidecar's egress listeners name.
fn sidecar_hosts(sc: &Value) -> BTreeSet<String> {
    sc["spec"]["egress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["hosts"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h.as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_egress_overlay_renders() {
    let Some(objs) = egress() else { return };
    let mut seen = BTreeSet::new();
    for o in objs {
        assert!(!kind(o).is_empty() && !name(o).is_empty(), "{o}");
        assert!(
            seen.insert((kind(o), namespace(o), name(o))),
            "{} rendered twice",
            describe(o)
        );
        if kind(o) != "Namespace" {
            assert!(!namespace(o).is_empty(), "{} has no namespace", describe(o));
        }
    }
    for k in [
        "ServiceEntry",
        "Sidecar",
        "NetworkPolicy",
        "ConfigMap",
        "DaemonSet",
        "Gateway",
        "VirtualService",
        "PeerAuthentication",
        "AuthorizationPolicy",
    ] {
        assert!(!all(objs, k).is_empty(), "no {k}");
    }
    one(objs, "NetworkPolicy", "pyrovm");
    one(objs, "NetworkPolicy", "pyrovm-egress");
    println!("{OVERLAY}: {} objects rendered", objs.len());
}

#[test]
fn every_egress_object_validates_against_the_upstream_schemas() {
    if common::specs_dir().is_none() {
        return;
    }
    let Some(objs) = egress() else { return };
    let schemas = common::schemas::shared();
    let mut failures = Vec::new();
    let (mut core, mut istio) = (0, 0);
    for o in objs {
        if o["apiVersion"]
            .as_str()
            .is_some_and(|a| a.contains(".istio.io/"))
        {
            istio += 1;
            // As manifests.rs demands of the other overlays: versions Istio >= 1.16 serves.
            assert!(
                ["networking.istio.io/v1beta1", "security.istio.io/v1beta1"]
                    .contains(&o["apiVersion"].as_str().unwrap()),
                "{} uses {}",
                describe(o),
                o["apiVersion"]
            );
        } else {
            core += 1;
        }
        failures.extend(
            schemas
                .errors(o)
                .into_iter()
                .map(|e| format!("{}: {e}", describe(o))),
        );
    }
    assert!(failures.is_empty(), "{OVERLAY}:\n{}", failures.join("\n"));
    println!("{OVERLAY}: {core} Kubernetes objects (v1.33.0 strict) and {istio} Istio objects (1.30.3 CRDs) valid");

    // The new kinds' validators must refuse things, or the above proves nothing.
    let se = all(objs, "ServiceEntry")[0];
    let np = one(objs, "NetworkPolicy", "pyrovm-egress");
    let mutate = |o: &Value, f: &dyn Fn(&mut Value)| {
        let mut o = o.clone();
        f(&mut o);
        schemas.errors(&o)
    };
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "ServiceEntry: misspelled field",
            mutate(se, &|o| o["spec"]["resolutoin"] = json!("DNS")),
        ),
        (
            "ServiceEntry: unknown resolution (enum)",
            mutate(se, &|o| o["spec"]["resolution"] = json!("DNS_PLEASE")),
        ),
        (
            "ServiceEntry: host `*` (CEL rule)",
            mutate(se, &|o| o["spec"]["hosts"] = json!(["*"])),
        ),
        (
            "ServiceEntry: the same port twice (CEL rule)",
            mutate(se, &|o| {
                o["spec"]["ports"] = json!([
                    {"number": 443, "name": "tls", "protocol": "TLS"},
                    {"number": 443, "name": "https", "protocol": "HTTPS"}
                ])
            }),
        ),
        (
            "ServiceEntry: port 0 (CEL rule)",
            mutate(se, &|o| o["spec"]["ports"][0]["number"] = json!(0)),
        ),
        (
            "ServiceEntry: endpoints with resolution NONE (CEL rule)",
            mutate(se, &|o| {
                o["spec"]["resolution"] = json!("NONE");
                o["spec"]["endpoints"] = json!([{"address": "1.2.3.4"}]);
            }),
        ),
        (
            "NetworkPolicy: misspelled ipBlock field",
            mutate(np, &|o| {
                o["spec"]["egress"][0]["to"][0]["ipBlock"]["excpet"] = json!([])
            }),
        ),
        (
            "NetworkPolicy: port as an object",
            mutate(np, &|o| {
                o["spec"]["egress"][0]["ports"][0]["port"] = json!({"n": 80})
            }),
        ),
    ];
    for (what, errors) in cases {
        assert!(!errors.is_empty(), "{what}: accepted");
        println!("refused, as it should be — {what}: {}", errors[0]);
    }
}

#[test]
fn the_rendered_config_is_bases_plus_an_egress_section_pyrovm_accepts() {
    let (Some(objs), Some(istio)) = (egress(), istio()) else {
        return;
    };
    let text = config_text(objs);
    let mut table = config_table(objs);

    // The [egress] section: the keys pyrovm takes, a non-empty ceiling, positive caps.
    let section = table
        .remove("egress")
        .expect("an [egress] section")
        .as_table()
        .cloned()
        .expect("[egress] is a table");
    for k in section.keys() {
        assert!(
            EGRESS_KEYS.contains(&k.as_str()),
            "[egress] {k}: not a key pyrovm takes"
        );
    }
    let allow = section["allow"]
        .as_array()
        .expect("[egress] allow is an array");
    assert!(!allow.is_empty(), "an empty ceiling turns egress off");
    for k in EGRESS_KEYS.iter().filter(|k| **k != "allow") {
        let v = section
            .get(*k)
            .and_then(toml::Value::as_integer)
            .unwrap_or_else(|| panic!("[egress] {k}: an integer"));
        assert!(v > 0, "[egress] {k} = {v}");
    }

    // Everything else is the base's config (which the istio overlay mounts), so the
    // DaemonSet's sizing (tests/deployment.rs) holds here too.
    assert_eq!(
        toml::Value::Table(table.clone()),
        toml::Value::Table(config_table(istio)),
        "egress/pyrovm.toml drifted from base/pyrovm.toml outside [egress]"
    );

    // pyrovm's own parser and check (with the token the Secret supplies): its [egress]
    // has exactly these keys, and `check` parses every ceiling entry as an allow rule.
    let mut config: pyrovm::Config = toml::from_str(&text)
        .unwrap_or_else(|e| panic!("pyrovm refuses the egress overlay's config: {e}"));
    assert_eq!(
        config.egress.allow,
        ceiling(objs),
        "pyrovm reads the ceiling as written"
    );
    config
        .egress
        .bounds()
        .unwrap_or_else(|e| panic!("pyrovm refuses the ceiling: {e}"));
    config.tokens = vec!["from-the-secret".into()];
    config
        .check()
        .unwrap_or_else(|e| panic!("pyrovm's check refuses the config: {e}"));
}

#[test]
fn serviceentries_are_exactly_the_ceiling() {
    let (Some(objs), Some(istio)) = (egress(), istio()) else {
        return;
    };
    let allow = ceiling(objs);
    assert!(!allow.is_empty(), "no [egress] allow");
    let ds = one(objs, "DaemonSet", "pyrovm");
    let entries = all(objs, "ServiceEntry");
    let bad = serviceentry_problems(&entries, &allow, namespace(ds));
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // pyrovm's Sidecar knows those hosts (in its namespace, where they live) and nothing
    // beyond what the istio overlay gave it.
    let sc = one(objs, "Sidecar", "pyrovm");
    assert_eq!(namespace(sc), namespace(ds));
    let mut want = sidecar_hosts(one(istio, "Sidecar", "pyrovm"));
    want.extend(allow.iter().map(|e| format!("./{}", ceiling_host(e).0)));
    assert_eq!(sidecar_hosts(sc), want, "the Sidecar's egress hosts");

    // Negative controls: a host missing, a host too many, a port missing.
    let mut fewer = allow.clone();
    fewer.pop();
    assert!(!serviceentry_problems(&entries, &fewer, namespace(ds)).is_empty());
    let mut more = allow.clone();
    more.push("example.com".into());
    assert!(!serviceentry_problems(&entries, &more, namespace(ds)).is_empty());
    let mut one_port = entries[0].clone();
    one_port["spec"]["ports"].as_array_mut().unwrap().pop();
    let mut changed: Vec<&Value> = entries.clone();
    changed[0] = &one_port;
    assert!(!serviceentry_problems(&changed, &allow, namespace(ds)).is_empty());
    println!("ServiceEntries = [egress] allow = {allow:?}");
}

#[test]
fn pyrovms_sidecar_is_registry_only() {
    let Some(objs) = egress() else { return };
    let ds = one(objs, "DaemonSet", "pyrovm");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let sidecars: Vec<&Value> = all(objs, "Sidecar")
        .into_iter()
        .filter(|s| {
            namespace(s) == namespace(ds)
                && s["spec"]["workloadSelector"]["labels"]
                    .as_object()
                    .is_none_or(|m| m.iter().all(|(k, v)| &pod_labels[k] == v))
        })
        .collect();
    assert_eq!(sidecars.len(), 1, "one Sidecar applies to pyrovm's pods");
    let sc = sidecars[0];
    assert_eq!(name(sc), "pyrovm");
    assert_eq!(sc["spec"]["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY");
    assert!(
        !sidecar_hosts(sc)
            .iter()
            .any(|h| h.ends_with("/*") && !h.starts_with("istio-system/")),
        "no namespace-wide wildcard beyond istio-system: {:?}",
        sidecar_hosts(sc)
    );
}

#[test]
fn the_egress_networkpolicy_opens_only_80_and_443_to_public_addresses() {
    let (Some(objs), Some(istio)) = (egress(), istio()) else {
        return;
    };
    let np = one(objs, "NetworkPolicy", "pyrovm-egress");
    let bad = egress_policy_problems(np, objs);
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let except: BTreeSet<&str> = np["spec"]["egress"][0]["to"][0]["ipBlock"]["except"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for s in SPECIAL {
        assert!(except.contains(s), "{s} is not excepted: {except:?}");
    }

    // The mesh policy is still the istio overlay's, and no other policy for pyrovm's pods
    // reaches IP ranges.
    assert_eq!(
        one(objs, "NetworkPolicy", "pyrovm"),
        one(istio, "NetworkPolicy", "pyrovm")
    );
    for p in all(objs, "NetworkPolicy") {
        if name(p) == "pyrovm-egress" || !selects_pyrovm(p, objs) {
            continue;
        }
        let rules = p["spec"]["egress"].as_array().cloned().unwrap_or_default();
        for r in rules {
            assert!(
                r["to"].as_array().is_some_and(
                    |to| !to.is_empty() && to.iter().all(|peer| peer["ipBlock"].is_null())
                ),
                "{}: an egress rule to IP ranges or everywhere: {r}",
                describe(p)
            );
        }
    }

    // Negative controls: the checker must notice a wider policy.
    type Mutation<'a> = (&'a str, &'a dyn Fn(&mut Value));
    let cases: Vec<Mutation> = vec![
        ("a special range not excepted", &|o| {
            o["spec"]["egress"][0]["to"][0]["ipBlock"]["except"]
                .as_array_mut()
                .unwrap()
                .retain(|e| e != "169.254.0.0/16")
        }),
        ("another port", &|o| {
            o["spec"]["egress"][0]["ports"]
                .as_array_mut()
                .unwrap()
                .push(json!({"protocol": "TCP", "port": 8080}))
        }),
        ("a port range", &|o| {
            o["spec"]["egress"][0]["ports"][1]["endPort"] = json!(1024)
        }),
        ("UDP", &|o| {
            o["spec"]["egress"][0]["ports"][0]["protocol"] = json!("UDP")
        }),
        ("all ports", &|o| {
            o["spec"]["egress"][0]
                .as_object_mut()
                .unwrap()
                .remove("ports");
        }),
        ("everywhere", &|o| {
            o["spec"]["egress"][0].as_object_mut().unwrap().remove("to");
        }),
        ("a pod selector", &|o| {
            o["spec"]["egress"][0]["to"]
                .as_array_mut()
                .unwrap()
                .push(json!({"namespaceSelector": {}}))
        }),
        ("an ingress rule", &|o| {
            o["spec"]["policyTypes"] = json!(["Egress", "Ingress"])
        }),
    ];
    for (what, f) in cases {
        let mut o = np.clone();
        f(&mut o);
        let bad = egress_policy_problems(&o, objs);
        assert!(!bad.is_empty(), "{what}: not noticed");
        println!("noticed, as it should be — {what}: {}", bad[0]);
    }
}

/// The overlay adds egress and changes nothing else: every object is the istio overlay's,
/// except the config (base's plus [egress], so a new ConfigMap name in the DaemonSet), the
/// Sidecar's hosts, and the new ServiceEntries and NetworkPolicy.
#[test]
fn everything_else_is_the_istio_overlay() {
    let (Some(objs), Some(istio)) = (egress(), istio()) else {
        return;
    };
    let is_config = |o: &Value| kind(o) == "ConfigMap" && name(o).starts_with("pyrovm-config");
    let key = |o: &Value| {
        (
            kind(o).to_string(),
            namespace(o).to_string(),
            name(o).to_string(),
        )
    };
    let istio_by_key: BTreeMap<_, &Value> = istio
        .iter()
        .filter(|o| !is_config(o))
        .map(|o| (key(o), o))
        .collect();
    let istio_cm = name(istio.iter().find(|o| is_config(o)).unwrap());
    let egress_cm = name(objs.iter().find(|o| is_config(o)).unwrap());
    assert_ne!(
        istio_cm, egress_cm,
        "the config's hash changes, so pods roll"
    );
    let mut added = Vec::new();
    let mut matched = BTreeSet::new();
    for o in objs.iter().filter(|o| !is_config(o)) {
        let Some(orig) = istio_by_key.get(&key(o)) else {
            added.push(describe(o));
            continue;
        };
        matched.insert(key(o));
        let mut o = o.clone();
        match kind(&o) {
            "DaemonSet" => {
                for v in o["spec"]["template"]["spec"]["volumes"]
                    .as_array_mut()
                    .unwrap()
                {
                    if v["configMap"]["name"] == egress_cm {
                        v["configMap"]["name"] = json!(istio_cm);
                    }
                }
            }
            "Sidecar" => {
                let allow = ceiling(objs);
                let added: Vec<String> = allow
                    .iter()
                    .map(|e| format!("./{}", ceiling_host(e).0))
                    .collect();
                for l in o["spec"]["egress"].as_array_mut().unwrap() {
                    l["hosts"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|h| !added.iter().any(|a| h == a.as_str()));
                }
            }
            _ => {}
        }
        assert_eq!(
            &o,
            *orig,
            "{} differs from the istio overlay's",
            describe(&o)
        );
    }
    for k in istio_by_key.keys() {
        assert!(matched.contains(k), "the egress overlay lost {k:?}");
    }
    let mut want_added: Vec<String> = all(objs, "ServiceEntry")
        .into_iter()
        .map(describe)
        .collect();
    want_added.push(describe(one(objs, "NetworkPolicy", "pyrovm-egress")));
    want_added.sort();
    added.sort();
    assert_eq!(added, want_added, "objects the egress overlay adds");
    println!("{OVERLAY}: the istio overlay plus {added:?}, the config and the Sidecar's hosts");
}

/// Egress stays opt-in: base, istio and tcg have no ceiling, no ServiceEntry, no policy to
/// IP ranges, and their Sidecars know no outside host.
#[test]
fn base_istio_and_tcg_still_deny_egress() {
    common::for_each_overlay(|overlay, objs| {
        assert!(ceiling(objs).is_empty(), "{overlay}: an [egress] ceiling");
        assert!(
            all(objs, "ServiceEntry").is_empty(),
            "{overlay}: ServiceEntries"
        );
        let nps = all(objs, "NetworkPolicy");
        assert_eq!(
            nps.iter().map(|p| name(p)).collect::<Vec<_>>(),
            ["pyrovm"],
            "{overlay}: one NetworkPolicy"
        );
        for r in nps[0]["spec"]["egress"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let to = r["to"].as_array().cloned().unwrap_or_default();
            assert!(
                !to.is_empty() && to.iter().all(|p| p["ipBlock"].is_null()),
                "{overlay}: egress to IP ranges: {r}"
            );
            for p in r["ports"].as_array().expect("ports") {
                assert!(
                    !EGRESS_PORTS.contains(&p["port"].as_u64().unwrap_or(0)),
                    "{overlay}: egress on {p}"
                );
            }
        }
        if let Some(sc) = all(objs, "Sidecar").first() {
            assert_eq!(
                sc["spec"]["outboundTrafficPolicy"]["mode"], "REGISTRY_ONLY",
                "{overlay}"
            );
            for h in sidecar_hosts(sc) {
                assert!(
                    h.starts_with("istio-system/") || h.ends_with(".svc.cluster.local"),
                    "{overlay}: the Sidecar knows {h}"
                );
            }
        }
    });
}
