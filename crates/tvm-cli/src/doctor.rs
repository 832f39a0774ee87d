//! `tvm doctor`: what this host offers and what TVM would choose.

use std::process::ExitCode;

use tvm_vmm::accel;

pub fn run() -> ExitCode {
    let a = accel::detect();
    println!("accelerator: {} — {}", a.accel, a.reason);
    match tvm_vmm::host_tsc_khz() {
        Some(khz) => println!("host TSC: {khz} kHz (passed to TCG guests as tsc_early_khz)"),
        None => println!("host TSC: unknown"),
    }
    println!("cgroups: {}", cgroup_layout());
    println!("backends (in the order --backend auto tries them):");
    let candidates = pyrovm::backend::candidates(&pyrovm::Config::default());
    let chosen = candidates.iter().find(|c| c.usable).map(|c| c.name.clone());
    for c in &candidates {
        let mark = if Some(&c.name) == chosen.as_ref() {
            "→"
        } else if c.usable {
            "✓"
        } else {
            "✗"
        };
        println!("  {mark} {:<12} {}", c.name, c.reason);
    }
    let cache = tvm_image::cache_dir();
    let dir = tvm_image::current_dir(&cache);
    let image = tvm_image::image_in(&dir);
    let image_ok = image.check().is_ok();
    match image.check() {
        Ok(()) => println!(
            "guest image: {} (ok)",
            std::fs::canonicalize(&dir).unwrap_or(dir.clone()).display()
        ),
        Err(e) => println!("guest image: {e}"),
    }
    let manifest = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let wanted = tvm_image::rootfs_key(tvm_api::LanguageTable::builtin());
    for line in describe_image(manifest.as_ref(), &wanted, &builds_under_way(&cache)) {
        println!("  {line}");
    }
    match (&chosen, image_ok) {
        (Some(name), true) => {
            println!("verdict: pyrovm would run VMs with {name}");
            ExitCode::SUCCESS
        }
        (Some(_), false) => {
            println!("verdict: build the guest image first (`make image` or `tvm image build`)");
            ExitCode::from(1)
        }
        (None, _) => {
            println!("verdict: no usable backend");
            ExitCode::from(1)
        }
    }
}

/// Part builds whose work dirs exist: under way, or cut off (the next build redoes them).
fn builds_under_way(cache: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache.join("build"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What the image holds (its languages and versions), whether it was built from
/// the current recipe, and which part builds are under way; pure, for tests.
fn describe_image(
    manifest: Option<&serde_json::Value>,
    wanted_rootfs: &str,
    building: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    match manifest {
        None => out.push("no manifest: the image has not been built".to_string()),
        Some(m) => {
            let langs: Vec<String> = m["versions"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|p| Some(format!("{} {}", p[0].as_str()?, p[1].as_str()?)))
                        .collect()
                })
                .unwrap_or_default();
            out.push(format!(
                "languages ready ({}): {}",
                langs.len(),
                langs.join(", ")
            ));
            match m["rootfs"]["key"].as_str() {
                Some(k) if k == wanted_rootfs => {
                    out.push("rootfs: built from the current recipe".to_string())
                }
                Some(k) => out.push(format!(
                    "rootfs: built from an older recipe ({k}, now {wanted_rootfs}); `make image` rebuilds it"
                )),
                None => out.push("rootfs: unknown recipe".to_string()),
            }
        }
    }
    if !building.is_empty() {
        out.push(format!(
            "building (or cut off, redone by the next build): {}",
            building.join(", ")
        ));
    }
    out
}

fn cgroup_layout() -> String {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let v2_root = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/cgroup") && f.get(2) == Some(&"cgroup2")
    });
    let v1 = mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("cgroup"));
    match (v2_root, v1) {
        (true, _) => "unified (cgroup v2)".into(),
        (false, true) => "hybrid/legacy (controllers on cgroup v1)".into(),
        _ => "none mounted".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_state_reads_the_manifest() {
        let m = serde_json::json!({
            "rootfs": {"key": "abc"},
            "versions": [["python", "3.11.2"], ["bash", "5.2"]]
        });
        let lines = describe_image(Some(&m), "abc", &[]);
        assert_eq!(lines[0], "languages ready (2): python 3.11.2, bash 5.2");
        assert!(lines[1].contains("current recipe"));
        let lines = describe_image(Some(&m), "def", &["rootfs-def".into()]);
        assert!(lines[1].contains("older recipe"), "{lines:?}");
        assert!(lines[2].contains("rootfs-def"), "{lines:?}");
        assert!(describe_image(None, "x", &[])[0].contains("not been built"));
    }
}
