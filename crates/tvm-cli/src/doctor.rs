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
            std::fs::canonicalize(&dir).unwrap_or(dir).display()
        ),
        Err(e) => println!("guest image: {e}"),
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
