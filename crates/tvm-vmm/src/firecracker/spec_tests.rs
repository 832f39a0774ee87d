//! Every API call the backend makes, checked against Firecracker's own OpenAPI
//! document (`shared/specs/firecracker/firecracker.yaml`, swagger 2.0): the path
//! and method exist, required fields are present, no field is unknown (Firecracker
//! refuses unknown fields), and types, enums and bounds match.

use std::path::PathBuf;

use serde_json::Value;

use super::api::{parse_fault, ApiCall, ApiError};
use super::snapshot::{freeze_calls, restore_calls};
use super::{configuration_calls, logging_calls};
use crate::VmSpec;

fn spec() -> Option<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/specs/firecracker/firecracker.yaml");
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_yaml::from_str(&text).expect("the spec is valid YAML")),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "the Firecracker spec must be beside the repo in CI: {}: {e}",
                path.display()
            );
            eprintln!(
                "SKIPPED: Firecracker OpenAPI spec not found at {} ({e})",
                path.display()
            );
            None
        }
    }
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.trim_start_matches("#/definitions/");
            &spec["definitions"][name]
        }
        None => schema,
    }
}

/// Checks `value` against `schema`; returns every problem found, with its JSON path.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    let ty = schema
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("object");
    let ok = match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    };
    if !ok {
        problems.push(format!("{at}: expected {ty}, got {value}"));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            problems.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(v)) = (
        schema.get("minimum").and_then(Value::as_f64),
        value.as_f64(),
    ) {
        if v < min {
            problems.push(format!("{at}: {v} < minimum {min}"));
        }
    }
    if let (Some(max), Some(v)) = (
        schema.get("maximum").and_then(Value::as_f64),
        value.as_f64(),
    ) {
        if v > max {
            problems.push(format!("{at}: {v} > maximum {max}"));
        }
    }
    if let Some(obj) = value.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let req = req.as_str().unwrap_or_default();
            if !obj.contains_key(req) {
                problems.push(format!("{at}: required field {req} is missing"));
            }
        }
        for (k, v) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => check(spec, sub, v, &format!("{at}.{k}"), problems),
                None => problems.push(format!("{at}: field {k} is not in the spec")),
            }
        }
    }
}

/// Finds the operation for `method path` (path templates like `/drives/{drive_id}` match).
fn operation<'a>(spec: &'a Value, call: &ApiCall) -> Option<&'a Value> {
    let paths = spec["paths"].as_object()?;
    let want: Vec<&str> = call.path.split('/').collect();
    paths.iter().find_map(|(tpl, ops)| {
        let parts: Vec<&str> = tpl.split('/').collect();
        let matches = parts.len() == want.len()
            && parts
                .iter()
                .zip(&want)
                .all(|(p, w)| p == w || (p.starts_with('{') && p.ends_with('}')));
        if matches {
            ops.get(call.method.to_ascii_lowercase())
        } else {
            None
        }
    })
}

fn validate_call(spec: &Value, call: &ApiCall) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(op) = operation(spec, call) else {
        return vec![format!("{} {} is not in the spec", call.method, call.path)];
    };
    let body_param = op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["in"] == "body"));
    let Some(body_param) = body_param else {
        return vec![format!("{} {} takes no body", call.method, call.path)];
    };
    let schema = &body_param["schema"];
    let named = schema["$ref"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("#/definitions/");
    if named != call.definition {
        problems.push(format!(
            "{}: body is {named} in the spec, we say {}",
            call.path, call.definition
        ));
    }
    check(spec, schema, &call.body, call.definition, &mut problems);
    if !op["responses"]
        .as_object()
        .is_some_and(|r| r.contains_key("204"))
    {
        problems.push(format!("{}: the spec documents no 204 answer", call.path));
    }
    problems
}

#[test]
fn every_configuration_call_matches_the_spec() {
    let Some(spec) = spec() else { return };
    assert_eq!(
        spec["info"]["version"], "1.16.1",
        "spec version changed: review the client"
    );
    for spec_vm in [
        VmSpec {
            vcpus: 1,
            memory_mb: 352,
        },
        VmSpec {
            vcpus: 4,
            memory_mb: 2144,
        },
    ] {
        let calls = configuration_calls(&spec_vm);
        assert_eq!(
            calls.last().map(|c| c.path.as_str()),
            Some("/actions"),
            "InstanceStart comes last"
        );
        for call in &calls {
            let problems = validate_call(&spec, call);
            assert!(
                problems.is_empty(),
                "{} {}: {problems:#?}",
                call.method,
                call.path
            );
        }
    }
}

fn assert_valid(spec: &Value, calls: &[ApiCall]) {
    for call in calls {
        let problems = validate_call(spec, call);
        assert!(
            problems.is_empty(),
            "{} {}: {problems:#?}",
            call.method,
            call.path
        );
    }
}

/// `SnapshotLoadParams` says in prose that exactly one of the `mem_*` fields is sent.
fn one_memory_source(body: &Value) -> bool {
    ["mem_backend", "mem_file_path"]
        .iter()
        .filter(|k| body.get(**k).is_some())
        .count()
        == 1
}

#[test]
fn freeze_calls_match_the_spec() {
    let Some(spec) = spec() else { return };
    let calls = freeze_calls();
    assert_valid(&spec, &calls);
    let route: Vec<(&str, &str)> = calls.iter().map(|c| (c.method, c.path.as_str())).collect();
    assert_eq!(
        route,
        [("PATCH", "/vm"), ("PUT", "/snapshot/create")],
        "pause first: the spec says the microVM should be Paused for a snapshot"
    );
    assert!(spec["paths"]["/snapshot/create"]["put"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("Paused")));
    assert_eq!(calls[0].body["state"], "Paused");
    assert_eq!(calls[1].body["snapshot_type"], "Full");
}

#[test]
fn restore_calls_match_the_spec_and_configure_nothing_before_the_load() {
    let Some(spec) = spec() else { return };
    let calls = restore_calls();
    assert_valid(&spec, &calls);
    let load = calls.last().expect("calls");
    assert_eq!((load.method, load.path.as_str()), ("PUT", "/snapshot/load"));
    assert!(one_memory_source(&load.body), "{}", load.body);
    assert_eq!(load.body["mem_backend"]["backend_type"], "File");
    assert_eq!(load.body["resume_vm"], true);
    // The spec: "Only accepted on a fresh Firecracker process (before configuring any
    // resource other than the Logger and Metrics)".
    let rule = spec["paths"]["/snapshot/load"]["put"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(rule.contains("other than the Logger and Metrics"), "{rule}");
    let before: Vec<&str> = calls[..calls.len() - 1]
        .iter()
        .map(|c| c.path.as_str())
        .collect();
    assert!(
        before.iter().all(|p| *p == "/logger" || *p == "/metrics"),
        "{before:?}"
    );
    // The clone logs like a booted VM does.
    assert_eq!(calls[..calls.len() - 1], logging_calls()[..]);
}

#[test]
fn snapshot_paths_stay_in_the_jail() {
    // The files Firecracker writes and reads are jail paths; the load reads what the
    // create wrote.
    let create = &freeze_calls()[1].body;
    let load = &restore_calls().last().expect("calls").body.clone();
    assert_eq!(create["snapshot_path"], load["snapshot_path"]);
    assert_eq!(create["mem_file_path"], load["mem_backend"]["backend_path"]);
    for p in [&create["snapshot_path"], &create["mem_file_path"]] {
        let p = p.as_str().unwrap_or_default();
        assert!(p.starts_with('/') && !p[1..].contains('/'), "{p}");
    }
}

#[test]
fn the_checker_catches_mistakes() {
    let Some(spec) = spec() else { return };
    let bad = |path: &str, definition: &'static str, body: Value| ApiCall {
        method: "PUT",
        path: path.into(),
        body,
        definition,
    };
    // Missing required field.
    assert!(!validate_call(
        &spec,
        &bad(
            "/boot-source",
            "BootSource",
            serde_json::json!({"boot_args": "x"})
        )
    )
    .is_empty());
    // Unknown field.
    assert!(!validate_call(
        &spec,
        &bad(
            "/vsock",
            "Vsock",
            serde_json::json!({"guest_cid": 3, "uds_path": "/v", "cid": 1})
        )
    )
    .is_empty());
    // Wrong type and out of range.
    assert!(!validate_call(
        &spec,
        &bad(
            "/machine-config",
            "MachineConfiguration",
            serde_json::json!({"vcpu_count": 0, "mem_size_mib": "1"})
        )
    )
    .is_empty());
    // Bad enum.
    assert!(!validate_call(
        &spec,
        &bad(
            "/actions",
            "InstanceActionInfo",
            serde_json::json!({"action_type": "Boot"})
        )
    )
    .is_empty());
    // Unknown path.
    assert!(!validate_call(&spec, &bad("/nope", "Vsock", serde_json::json!({}))).is_empty());
    // Wrong method: /vm is PATCH only.
    assert!(!validate_call(
        &spec,
        &bad("/vm", "Vm", serde_json::json!({"state": "Paused"}))
    )
    .is_empty());
    let patch = |path: &str, definition: &'static str, body: Value| ApiCall {
        method: "PATCH",
        ..bad(path, definition, body)
    };
    assert!(validate_call(
        &spec,
        &patch("/vm", "Vm", serde_json::json!({"state": "Paused"}))
    )
    .is_empty());
    // Bad enum in a PATCH body.
    assert!(!validate_call(
        &spec,
        &patch("/vm", "Vm", serde_json::json!({"state": "Stopped"}))
    )
    .is_empty());
    // Bad enum and missing field in a nested definition ($ref MemoryBackend).
    for mem_backend in [
        serde_json::json!({"backend_type": "Mmap", "backend_path": "/m"}),
        serde_json::json!({"backend_type": "File"}),
    ] {
        assert!(!validate_call(
            &spec,
            &bad(
                "/snapshot/load",
                "SnapshotLoadParams",
                serde_json::json!({"snapshot_path": "/s", "mem_backend": mem_backend})
            )
        )
        .is_empty());
    }
    // Missing required field of a snapshot create, and a bad snapshot type.
    assert!(!validate_call(
        &spec,
        &bad(
            "/snapshot/create",
            "SnapshotCreateParams",
            serde_json::json!({"snapshot_path": "/s"})
        )
    )
    .is_empty());
    assert!(!validate_call(
        &spec,
        &bad(
            "/snapshot/create",
            "SnapshotCreateParams",
            serde_json::json!({"snapshot_path": "/s", "mem_file_path": "/m", "snapshot_type": "Incremental"})
        )
    )
    .is_empty());
    // Both or neither memory source.
    assert!(!one_memory_source(
        &serde_json::json!({"mem_file_path": "/m", "mem_backend": {}})
    ));
    assert!(!one_memory_source(
        &serde_json::json!({"snapshot_path": "/s"})
    ));
}

#[test]
fn fault_bodies_become_typed_errors() {
    let call = ApiCall::action(super::api::ActionType::InstanceStart);
    let e = parse_fault(
        &call,
        400,
        br#"{"fault_message":"Start microvm error: missing kernel"}"#,
    );
    match e {
        ApiError::Fault {
            status,
            ref fault_message,
            ref path,
            ..
        } => {
            assert_eq!(status, 400);
            assert_eq!(path, "/actions");
            assert_eq!(fault_message, "Start microvm error: missing kernel");
        }
        other => panic!("{other:?}"),
    }
    let raw = parse_fault(&call, 500, b"not json");
    assert!(raw.to_string().contains("not json"));
}
