//! proto/e2b mirrors E2B envd's protos, which are the wire contract of the E2B
//! adapter: every message, field, enum value and service method upstream must exist
//! identically in ours. The upstream copy is read from `$TVM_SPECS_DIR/e2b`, else
//! `shared/specs/e2b` beside the repository; without it the comparison is skipped.

use std::path::{Path, PathBuf};

use protox::prost_reflect::prost_types::FileDescriptorSet;
use protox::prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MethodDescriptor};

const FILES: [&str; 2] = ["process.proto", "filesystem.proto"];
const PACKAGES: [&str; 2] = ["process", "filesystem"];

fn pool(dir: &Path) -> DescriptorPool {
    let fds = protox::compile(FILES, [dir])
        .unwrap_or_else(|e| panic!("compiling the protos in {}: {e}", dir.display()));
    DescriptorPool::from_file_descriptor_set(fds).expect("a valid descriptor set")
}

fn ours() -> DescriptorPool {
    pool(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/e2b"))
}

fn upstream_dir() -> PathBuf {
    std::env::var_os("TVM_SPECS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/specs"))
        .join("e2b")
}

fn in_our_packages(full_name: &str) -> bool {
    PACKAGES.iter().any(|p| {
        full_name
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('.'))
    })
}

fn kind(kind: &Kind) -> String {
    match kind {
        Kind::Message(m) => m.full_name().to_owned(),
        Kind::Enum(e) => e.full_name().to_owned(),
        scalar => format!("{scalar:?}"),
    }
}

/// Everything about a field that the wire or the JSON mapping depends on.
fn field(f: &FieldDescriptor) -> String {
    let oneof = f.containing_oneof().map(|o| o.name().to_owned());
    format!(
        "#{} {} {:?} {} json={} oneof={:?} proto3_optional={}",
        f.number(),
        f.name(),
        f.cardinality(),
        kind(&f.kind()),
        f.json_name(),
        oneof,
        f.field_descriptor_proto().proto3_optional(),
    )
}

/// Upstream definitions that are missing from ours or differ, one line each.
fn differences(upstream: &DescriptorPool, ours: &DescriptorPool) -> Vec<String> {
    let mut out = Vec::new();
    for m in upstream
        .all_messages()
        .filter(|m| in_our_packages(m.full_name()))
    {
        let Some(mine) = ours.get_message_by_name(m.full_name()) else {
            out.push(format!("message {} is missing", m.full_name()));
            continue;
        };
        for f in m.fields() {
            let theirs = field(&f);
            match mine.get_field_by_name(f.name()) {
                None => out.push(format!("{}: field {theirs} is missing", m.full_name())),
                Some(g) if field(&g) != theirs => {
                    out.push(format!(
                        "{}: field {theirs} is {} here",
                        m.full_name(),
                        field(&g)
                    ));
                }
                Some(_) => {}
            }
        }
    }
    for e in upstream
        .all_enums()
        .filter(|e| in_our_packages(e.full_name()))
    {
        let Some(mine) = ours.get_enum_by_name(e.full_name()) else {
            out.push(format!("enum {} is missing", e.full_name()));
            continue;
        };
        for v in e.values() {
            if mine.get_value_by_name(v.name()).map(|w| w.number()) != Some(v.number()) {
                out.push(format!(
                    "{}: {} = {} differs",
                    e.full_name(),
                    v.name(),
                    v.number()
                ));
            }
        }
    }
    for s in upstream.services() {
        let Some(mine) = ours.get_service_by_name(s.full_name()) else {
            out.push(format!("service {} is missing", s.full_name()));
            continue;
        };
        let shape = |m: &MethodDescriptor| {
            format!(
                "{}({}{}) -> {}{}",
                m.name(),
                if m.is_client_streaming() {
                    "stream "
                } else {
                    ""
                },
                m.input().full_name(),
                if m.is_server_streaming() {
                    "stream "
                } else {
                    ""
                },
                m.output().full_name(),
            )
        };
        for m in s.methods() {
            let theirs = shape(&m);
            let here = mine
                .methods()
                .find(|n| n.name() == m.name())
                .map(|n| shape(&n));
            if here.as_deref() != Some(theirs.as_str()) {
                out.push(format!("{}: rpc {theirs} is {here:?} here", s.full_name()));
            }
        }
    }
    out
}

#[test]
fn ours_match_upstream() {
    let dir = upstream_dir();
    if let Some(absent) = FILES.iter().map(|f| dir.join(f)).find(|p| !p.is_file()) {
        println!("SKIP: ours_match_upstream ({} not found)", absent.display());
        return;
    }
    let upstream = pool(&dir);
    let ours = ours();
    assert!(
        upstream.services().count() == 2,
        "upstream defines both services"
    );
    let diff = differences(&upstream, &ours);
    assert!(
        diff.is_empty(),
        "proto/e2b differs from upstream:\n{}",
        diff.join("\n")
    );
}

#[test]
fn ours_define_the_services_sdks_call() {
    let ours = ours();
    for (service, methods) in [
        (
            "process.Process",
            &["Start", "Connect", "List", "SendInput", "SendSignal"][..],
        ),
        (
            "filesystem.Filesystem",
            &["Stat", "ListDir", "MakeDir", "Move", "Remove"][..],
        ),
    ] {
        let s = ours.get_service_by_name(service).expect(service);
        for m in methods {
            assert!(s.methods().any(|n| n.name() == *m), "{service}/{m}");
        }
    }
    // The comparison would catch a changed field; check it can.
    let mut upstream = FileDescriptorSet {
        file: ours.file_descriptor_protos().cloned().collect(),
    };
    let process = upstream
        .file
        .iter_mut()
        .find(|f| f.package() == "process")
        .expect("process");
    let config = process
        .message_type
        .iter_mut()
        .find(|m| m.name() == "ProcessConfig")
        .expect("cfg");
    config.field[0].number = Some(9);
    let upstream = DescriptorPool::from_file_descriptor_set(upstream).expect("still valid");
    let diff = differences(&upstream, &ours);
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(
        diff[0].starts_with("process.ProcessConfig: field #9 cmd"),
        "{diff:?}"
    );
}
