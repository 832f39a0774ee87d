//! Shared by pyrolima's tests (and pyroshell's lima-mode tests): the limactl test double (tests/fixtures/limactl-test-double,
//! a stand-in for Lima, which cannot run here), a test double of the Istio ingress, and a
//! tiny OCI archive.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyrolima::{Arch, Artifacts, HostOs, Limactl, Manager, Timeouts, VmSpec, VmType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const TOKEN: &str = "test-token-0123456789";

/// pyrolima's crate dir, also when this module is included by pyroshell's tests
/// (`#[path]`): both crates sit side by side under `crates/`.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pyrolima")
}

pub fn deploy_dir() -> PathBuf {
    crate_dir().join("../../deploy/k8s")
}

/// A state directory for the limactl test double, and a wrapper script that runs the
/// double with `LIMACTL_DOUBLE_DIR` pointing at it (so parallel tests never share state
/// and no test touches its own process environment).
pub struct Double {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
}

impl Double {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("limactl-double-")
            .tempdir()
            .unwrap();
        let script = crate_dir().join("tests/fixtures/limactl-test-double");
        let bin = dir.path().join("limactl");
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\nLIMACTL_DOUBLE_DIR='{}' exec '{}' \"$@\"\n",
                dir.path().display(),
                script.display()
            ),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Double { dir, bin }
    }

    pub fn limactl(&self) -> Limactl {
        Limactl::new(self.bin.clone())
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).unwrap();
    }

    pub fn set_version(&self, v: &str) {
        self.write("version", v);
    }

    pub fn set_plan(&self, steps: &[&str]) {
        self.write(
            "plan",
            &steps.iter().map(|s| format!("{s}\n")).collect::<String>(),
        );
    }

    pub fn set_kvm(&self, yes: bool) {
        self.write("kvm", if yes { "yes" } else { "no" });
    }

    pub fn status(&self, name: &str) -> Option<String> {
        let path = self.dir.path().join("instances").join(name).join("status");
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    }

    pub fn set_status(&self, name: &str, status: &str) {
        let path = self.dir.path().join("instances").join(name).join("status");
        std::fs::write(path, format!("{status}\n")).unwrap();
    }

    /// Creates an instance the way `limactl start` would have, with `config` as its lima.yaml.
    pub fn add_instance(&self, name: &str, status: &str, config: &str) {
        let dir = self.dir.path().join("instances").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("lima.yaml"), config).unwrap();
        self.set_status(name, status);
    }

    pub fn started_config(&self, name: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join("instances")
                .join(name)
                .join("lima.yaml"),
        )
        .unwrap()
    }

    /// Every call so far: (unix time, argv).
    pub fn calls(&self) -> Vec<(f64, Vec<String>)> {
        let log =
            std::fs::read_to_string(self.dir.path().join("invocations.log")).unwrap_or_default();
        log.lines()
            .map(|l| {
                let (t, argv) = l.split_once('\t').unwrap();
                (t.parse().unwrap(), serde_json::from_str(argv).unwrap())
            })
            .collect()
    }

    /// The calls as one line each (subcommand and args joined), version/list calls left out.
    pub fn actions(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .map(|(_, argv)| argv.join(" "))
            .filter(|l| !l.starts_with("--version") && !l.starts_with("list "))
            .collect()
    }

    /// Live (non-zombie) processes that carry this double's state dir in their environment.
    #[cfg(target_os = "linux")]
    pub fn live_processes(&self) -> Vec<u32> {
        let needle = format!("LIMACTL_DOUBLE_DIR={}", self.dir.path().display());
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let hit = environ.split(|&b| b == 0).any(|kv| kv == needle.as_bytes());
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            if hit && !zombie {
                pids.push(pid);
            }
        }
        pids
    }
}

/// A minimal oci-archive like `tvm-oci` writes (index.json → manifest → config), made
/// with the system `tar`.
pub fn oci_archive(dir: &Path, reference: &str, arch: &str) -> PathBuf {
    let layout = dir.join("oci-layout-src");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("blobs/sha256/c0ffee"),
        format!(r#"{{"architecture":"{arch}","os":"linux"}}"#),
    )
    .unwrap();
    std::fs::write(
        layout.join("blobs/sha256/beef"),
        r#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c0ffee","size":2}}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:beef","annotations":{{"org.opencontainers.image.ref.name":"{reference}"}}}}]}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let archive = dir.join("pyrovm.oci.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    archive
}

/// TEST DOUBLE of the Istio ingress that Lima forwards to 127.0.0.1: a raw HTTP/1.1
/// responder. `GET /v1/languages` with the right bearer token → 200 (503 while not
/// ready); without it → 401, as pyrovm answers; anything else → 404, as the gateway
/// answers for paths the VirtualService does not route (e.g. /readyz).
pub struct IngressDouble {
    pub port: u16,
    pub ready: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl IngressDouble {
    pub async fn start(token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ready = Arc::new(AtomicBool::new(true));
        let hits = Arc::new(AtomicUsize::new(0));
        let (r, h, token) = (ready.clone(), hits.clone(), token.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (r, h, token) = (r.clone(), h.clone(), token.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                    let authorized = head.contains(&format!(
                        "authorization: bearer {}",
                        token.to_ascii_lowercase()
                    ));
                    let status = if !head.starts_with("get /v1/languages ") {
                        "404 Not Found"
                    } else if !authorized {
                        "401 Unauthorized"
                    } else if !r.load(Ordering::SeqCst) {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let body = "[]";
                    let reply = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        IngressDouble {
            port,
            ready,
            hits,
            task,
        }
    }
}

impl Drop for IngressDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A spec for the current host (so the config's vm type is valid here) with the given
/// ingress port.
pub fn spec(name: &str, ingress_port: u16, cpus: u32) -> VmSpec {
    VmSpec {
        name: name.to_owned(),
        host: HostOs::Linux,
        vm_type: VmType::Qemu,
        arch: Arch::X86_64,
        cpus,
        // Enough for the `istio` overlay when `cpus` is too.
        memory_gib: pyrolima::ISTIO_MIN_MEMORY_GIB,
        ingress_port,
        ..VmSpec::default()
    }
}

pub fn small_timeouts() -> Timeouts {
    Timeouts {
        start: Duration::from_secs(10),
        command: Duration::from_secs(10),
        ready: Duration::from_secs(3),
    }
}

/// A manager on the double, with a tiny OCI archive, the repository's deploy/k8s and the
/// fixed test token.
pub fn manager(double: &Double, spec: VmSpec, timeouts: Timeouts) -> Manager {
    let archive = oci_archive(double.dir.path(), "localhost/tvm/pyrovm:0.1.0", "amd64");
    let artifacts = Artifacts {
        oci_archive: archive,
        deploy_dir: deploy_dir(),
    };
    Manager::new(spec, double.limactl(), artifacts, timeouts).with_token(TOKEN.to_owned())
}
