//! The built OCI image (`make oci-image` → target/oci/pyrovm.oci.tar): inspected with
//! Debian's skopeo, unpacked with umoci, and its root filesystem run under chroot — first
//! `pyrovm --help`, then the image's real entrypoint with the Kubernetes manifests' arguments
//! and config, answering probes and enforcing tokens on loopback (no VM is booted: the
//! pool is switched off for this check).
//!
//! Without the archive these tests print `SKIPPED: …`; `TVM_REQUIRE_OCI=1` (set by
//! `make test`) turns that into a failure.

// Test code: a panic with its message is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tvm_deploy::oci;

fn archive() -> Option<PathBuf> {
    let path = std::env::var_os("TVM_OCI_ARCHIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            common::workspace()
                .join("target/oci")
                .join(oci::ARCHIVE_NAME)
        });
    let required = std::env::var("TVM_REQUIRE_OCI").as_deref() == Ok("1");
    let missing = |why: String| {
        if required {
            panic!("{why} and TVM_REQUIRE_OCI=1");
        }
        println!("SKIPPED: {why}");
        None
    };
    if !path.is_file() {
        return missing(format!(
            "no OCI archive at {} (build it with `make oci-image`)",
            path.display()
        ));
    }
    for tool in ["skopeo", "umoci"] {
        if which(tool).is_none() {
            return missing(format!("`{tool}` not installed (make oci-deps)"));
        }
    }
    Some(path)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

fn run_json(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_string())
        .collect()
}

fn owned(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn skopeo_inspects_the_archive() {
    let Some(archive) = archive() else { return };
    let target = format!("oci-archive:{}", archive.display());
    let info = run_json(Command::new("skopeo").args(["inspect", &target]));
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    let layers = info["Layers"].as_array().expect("layers").len();
    assert!(
        (3..=4).contains(&layers),
        "base, guest, [firecracker,] pyrovm: {layers}"
    );
    assert_eq!(
        info["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(info["Labels"]["org.opencontainers.image.title"], "pyrovm");
    let config = run_json(Command::new("skopeo").args(["inspect", "--config", &target]));
    let c = &config["config"];
    assert_eq!(strings(&c["Entrypoint"]), owned(oci::ENTRYPOINT));
    assert_eq!(strings(&c["Cmd"]), owned(oci::DEFAULT_ARGS));
    assert!(c["ExposedPorts"][oci::EXPOSED_PORT].is_object());
    assert_eq!(c["User"], "0:0");
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert!(strings(&c["Env"]).contains(&oci::PATH_ENV.to_string()));
    // Every timestamp is SOURCE_DATE_EPOCH (0 by default): equal inputs, equal digest.
    assert!(
        config["created"]
            .as_str()
            .is_some_and(|t| t.starts_with("1970-01-01")),
        "{}",
        config["created"]
    );
    println!(
        "{}: {} layers, {} MiB",
        info["Digest"],
        layers,
        std::fs::metadata(&archive).unwrap().len() >> 20
    );
}

#[test]
fn the_archive_carries_the_reference_the_manifests_use() {
    let Some(archive) = archive() else { return };
    let out = Command::new("tar")
        .args(["-xOf"])
        .arg(&archive)
        .arg("index.json")
        .output()
        .expect("tar");
    assert!(out.status.success(), "index.json in the archive");
    let index: Value = serde_json::from_slice(&out.stdout).expect("index.json");
    let manifests = index["manifests"].as_array().expect("manifests");
    assert_eq!(manifests.len(), 1);
    let tagged = manifests[0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("ref name");
    assert_eq!(tagged, oci::reference());
    // The DaemonSet as written (no kubectl needed) names the same reference.
    let ds = common::read_yaml(&common::workspace().join("deploy/k8s/base/daemonset.yaml"));
    assert_eq!(
        ds[0]["spec"]["template"]["spec"]["containers"][0]["image"],
        tagged
    );
    // The build report next to it agrees.
    let report_path = archive.with_file_name(oci::REPORT_NAME);
    if let Some(report) = oci::read_report(&report_path) {
        assert_eq!(report.reference, tagged);
        assert_eq!(report.digest, manifests[0]["digest"].as_str().unwrap());
        assert_eq!(
            report.archive_bytes,
            std::fs::metadata(&archive).unwrap().len()
        );
    }
}

#[test]
fn the_unpacked_image_runs_pyrovm_under_chroot() {
    let Some(archive) = archive() else { return };
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: chroot and mounts need root");
        return;
    }
    let scratch = common::workspace().join("target/tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("tvm-oci-test-")
        .tempdir_in(&scratch)
        .unwrap();
    let layout = tmp.path().join("layout");
    let bundle = tmp.path().join("bundle");
    let status = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("oci:{}:test", layout.display()))
        .status()
        .unwrap();
    assert!(status.success(), "skopeo copy to a layout");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rootfs = bundle.join("rootfs");

    // The runtime bundle umoci made says how a runtime would start it.
    let bundle_config: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let process = &bundle_config["process"];
    let mut want_args = owned(oci::ENTRYPOINT);
    want_args.extend(owned(oci::DEFAULT_ARGS));
    assert_eq!(strings(&process["args"]), want_args);
    assert_eq!(process["user"]["uid"], 0);

    // What the image must hold.
    let inside = |p: &str| rootfs.join(p.trim_start_matches('/'));
    for p in [
        oci::PYROVM_PATH,
        "/usr/bin/tini",
        "/usr/bin/qemu-system-x86_64",
        "/bin/sleep",
    ] {
        assert!(inside(p).is_file(), "{p} missing from the image");
    }
    for m in oci::MOUNT_POINTS {
        assert!(inside(m).is_dir(), "mount point {m} missing");
    }
    let built_from = oci::tvm_cache_dir().join("current");
    for f in oci::GUEST_FILES {
        let p = inside(&format!("{}/{f}", oci::GUEST_IMAGE_DIR));
        let len = std::fs::metadata(&p)
            .unwrap_or_else(|_| panic!("{} missing", p.display()))
            .len();
        assert!(len > 0);
        if let Ok(m) = std::fs::metadata(built_from.join(f)) {
            if m.len() != len {
                println!(
                    "note: {f} differs from {} (the image was built from another guest image)",
                    built_from.display()
                );
            }
        }
    }

    // Binaries run with the image's own libraries.
    let chrooted = |args: &[&str]| {
        let out = Command::new("chroot")
            .arg(&rootfs)
            .args(args)
            .env_clear()
            .env("PATH", oci::PATH_ENV.trim_start_matches("PATH="))
            .output()
            .expect("chroot");
        assert!(
            out.status.success(),
            "{args:?} in the image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let help = chrooted(&[oci::PYROVM_PATH, "--help"]);
    for flag in [
        "--listen",
        "--config",
        "--backend",
        "--image-dir",
        "--token-file",
    ] {
        assert!(help.contains(flag), "pyrovm --help lacks {flag}:\n{help}");
    }
    assert!(chrooted(&["/usr/bin/qemu-system-x86_64", "--version"]).contains("QEMU"));
    chrooted(&["/bin/sleep", "0"]);
    chrooted(&["/usr/bin/tini", "--version"]);

    serve_with_the_deployment_config(&rootfs, tmp.path());

    let leaked = mounts_under(tmp.path());
    if !leaked.is_empty() {
        // Never delete through a mount.
        let path = tmp.path().to_path_buf();
        std::mem::forget(tmp);
        panic!("mounts leaked under {}: {leaked:?}", path.display());
    }
}

/// Kills the namespace's processes if the test fails half-way (unshare's --kill-child
/// takes the init down with it).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the image's entrypoint with the DaemonSet's arguments and the ConfigMap's config
/// (pool off, loopback port) in a private mount and PID namespace, with a read-only root
/// and tmpfs where the pod has emptyDirs, then checks probes, auth and a clean SIGTERM exit.
fn serve_with_the_deployment_config(rootfs: &Path, tmp: &Path) {
    let base = common::workspace().join("deploy/k8s/base");
    let ds = common::read_yaml(&base.join("daemonset.yaml"));
    let container = &ds[0]["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&container["args"]);
    let config_path = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1].clone())
        .expect("--config");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut config: toml::Table =
        toml::from_str(&std::fs::read_to_string(base.join("pyrovm.toml")).unwrap()).unwrap();
    config.insert("listen".into(), format!("127.0.0.1:{port}").into());
    config.insert("pool".into(), toml::Value::Array(Vec::new()));
    config.insert("pool_prime".into(), toml::Value::Array(Vec::new()));
    let mut snapshot = toml::Table::new();
    snapshot.insert("enabled".into(), false.into());
    config.insert("snapshot".into(), snapshot.into());
    let token_file = config["token_file"].as_str().unwrap().to_string();
    let at = |p: &str| rootfs.join(p.trim_start_matches('/'));
    std::fs::write(at(&config_path), toml::to_string(&config).unwrap()).unwrap();
    std::fs::write(at(&token_file), "oci-test-token\n").unwrap();

    let script = r#"
set -e
R="$1"; shift
mount --bind "$R" "$R"
mount -o remount,bind,ro "$R"
mount -t tmpfs -o mode=0755,size=8m tvm-dev "$R/dev"
for d in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  n=${d%%:*}; r=${d#*:}
  mknod -m 0666 "$R/dev/$n" c "${r%:*}" "${r#*:}"
done
mkdir "$R/dev/shm" "$R/dev/pts"
mount -t tmpfs -o mode=1777 tvm-shm "$R/dev/shm"
mount -t proc proc "$R/proc"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t tmpfs -o mode=0755,size=768m tvm-run "$R/run/tvm"
mount -t tmpfs -o mode=1777,size=64m tvm-tmp "$R/tmp"
exec chroot "$R" /usr/bin/env -i "$TVM_TEST_PATH" "$@"
"#;
    let log_path = tmp.join("pyrovm.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(rootfs)
    .args(oci::ENTRYPOINT)
    .args(&args)
    .env("TVM_TEST_PATH", oci::PATH_ENV)
    .stdin(Stdio::null())
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let mut guard = KillOnDrop(cmd.spawn().expect("unshare"));
    let child = &mut guard.0;
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("pyrovm exited before listening ({status}):\n{}", logs());
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pyrovm did not listen within 30 s:\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let get = |path: &str, token: Option<&str>| http_get(port, path, token);
    assert_eq!(get("/healthz", None).0, 200, "{}", logs());
    assert_eq!(get("/readyz", None).0, 200, "{}", logs());
    assert_eq!(
        get("/v1/languages", None).0,
        401,
        "tokens are enforced:\n{}",
        logs()
    );
    let (status, body) = get("/v1/languages", Some("oci-test-token"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("python"), "{body}");

    // SIGTERM to the container's PID 1 (tini), as the kubelet would send it.
    let init = child_of(child.id()).expect("the namespace's init process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pyrovm did not stop within 30 s of SIGTERM:\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit {status}:\n{}", logs());
    let text = logs();
    assert!(
        text.contains("pyrovm serving") && text.contains("pyrovm stopped"),
        "{text}"
    );
    let serving = text
        .lines()
        .find(|l| l.contains("pyrovm serving"))
        .unwrap_or_default();
    println!("image entrypoint served probes and enforced tokens, then stopped cleanly on SIGTERM");
    println!("  {serving}");
}

/// The first child of `pid` (unshare's forked init).
fn child_of(pid: u32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Mount points (in this process's namespace) under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}
