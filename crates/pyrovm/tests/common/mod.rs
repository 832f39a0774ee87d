//! Helpers for tests that boot real microVMs through the HTTP API on loopback.

#![allow(dead_code)]

pub mod hostile;

use std::path::{Path, PathBuf};
use std::time::Duration;

use pyrovm::{Config, Service};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// The guest image to boot, or `None` (skip, reason printed); see
/// [`tvm_image::image_for_tests`].
pub fn image_dir() -> Option<PathBuf> {
    tvm_image::image_for_tests()
}

/// A pyrovm instance on an ephemeral loopback port with its own runtime root.
pub struct TestServer {
    pub base: String,
    pub runtime_root: tempfile::TempDir,
    pub runtime_dir: PathBuf,
    pub client: reqwest::Client,
    /// A token the server accepts (its first), for the checks this helper makes itself.
    token: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        Self::start_with_addr(|c, _| tweak(c)).await
    }

    /// As [`TestServer::start`]; `tweak` also learns the address it will listen on.
    pub async fn start_with_addr(
        tweak: impl FnOnce(&mut Config, std::net::SocketAddr),
    ) -> Option<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::start_on(listener, tweak).await
    }

    /// As [`TestServer::start_with_addr`], on a listener bound already.
    pub async fn start_on(
        listener: tokio::net::TcpListener,
        tweak: impl FnOnce(&mut Config, std::net::SocketAddr),
    ) -> Option<Self> {
        let image = image_dir()?;
        let runtime_root = tempfile::tempdir().expect("tempdir");
        let addr = listener.local_addr().expect("addr");
        let mut config = Config {
            image_dir: Some(image),
            runtime_dir: Some(runtime_root.path().to_path_buf()),
            // No warm pool unless a test asks: its idle VMs would count as "left behind".
            pool: Vec::new(),
            ..Config::default()
        };
        tweak(&mut config, addr);
        let token = config.tokens.first().cloned();
        let service = Service::new(&config).expect("service starts");
        let runtime_dir = service.runtime_dir().to_path_buf();
        let base = format!("http://{addr}");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(service.serve(listener, async {
            let _ = rx.await;
        }));
        Some(Self {
            base,
            runtime_root,
            runtime_dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            token,
            stop: Some(tx),
            task: Some(task),
        })
    }

    pub async fn execute(&self, body: Value) -> (u16, Value) {
        self.post_raw("/v1/execute", serde_json::to_vec(&body).expect("json"))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// Value of a counter in /metrics (0 if absent), read with the server's token if
    /// it has tokens: a refused read fails the test rather than passing for 0.
    pub async fn metric(&self, name: &str) -> f64 {
        let mut req = self.client.get(format!("{}/metrics", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("metrics");
        assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
        sum_metric(&resp.text().await.expect("metrics body"), name)
    }

    /// Waits until the metric reaches `want`, failing the test after `within`.
    pub async fn wait_metric(&self, name: &str, want: f64, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        while self.metric(name).await < want {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not reach {want} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that no VM of this server is left: no VM dir, no VMM process. A VM is
    /// destroyed right after its answer, holding its execution slot until it is
    /// gone: so this waits for every slot to be free, then nothing may be left.
    pub async fn assert_no_vms(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.metric("tvm_slots_in_use").await > 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "execution slots still held after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let vms: Vec<_> = std::fs::read_dir(self.runtime_dir.join("vms"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(vms.is_empty(), "VM dirs left behind: {vms:?}");
        let procs = vmm_processes(self.runtime_root.path());
        assert!(procs.is_empty(), "VMM processes left behind: {procs:?}");
    }

    /// Where this instance keeps snapshots when its runtime root is not on tmpfs.
    pub fn shm_dir(&self) -> PathBuf {
        Path::new(tvm_vmm::runtime::SHM_ROOT).join(self.runtime_dir.file_name().expect("name"))
    }

    /// Snapshot dirs of this instance (wherever the runtime put them).
    pub fn snapshot_dirs(&self) -> Vec<PathBuf> {
        [
            self.runtime_dir.join("snapshots"),
            self.shm_dir().join("snapshots"),
        ]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect()
    }

    /// Stops the server and asserts that its runtime dir is gone.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("serve");
        }
        assert!(!self.runtime_dir.exists(), "runtime dir left behind");
        let shm = self.shm_dir();
        assert!(!shm.exists(), "snapshot dir {} left behind", shm.display());
        let procs = vmm_processes(self.runtime_root.path());
        assert!(procs.is_empty(), "VMM processes left behind: {procs:?}");
    }
}

/// Sum of a metric's samples in Prometheus text (over its label sets; 0 if absent).
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Pids of processes whose command line mentions `root` (our VMMs do).
pub fn vmm_processes(root: &Path) -> Vec<u32> {
    let needle = root.as_os_str().as_encoded_bytes().to_vec();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| *pid != me)
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The service's own OpenAPI document (the one `GET /openapi.json` serves).
pub fn openapi() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(pyrovm::openapi::document)
}

fn operation(method: &str, path: &str) -> Option<&'static Value> {
    openapi()["paths"].get(path)?.get(method)
}

/// Every documented path must document each status it answers with.
pub fn check_status_documented(method: &str, path: &str, status: u16) {
    if let Some(op) = operation(method, path) {
        assert!(
            op["responses"].get(status.to_string()).is_some(),
            "{method} {path} answered {status}, which the OpenAPI document does not list"
        );
    }
}

/// Validates a JSON response against the schema the OpenAPI document gives for it.
/// Undocumented paths (e.g. a deliberate 404 probe) are skipped.
pub fn check_against_openapi(method: &str, path: &str, status: u16, body: &Value) {
    let Some(op) = operation(method, path) else {
        return;
    };
    check_status_documented(method, path, status);
    let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
    assert!(
        schema.is_object(),
        "{method} {path} {status}: no JSON schema documented"
    );
    check_schema(schema, body, &format!("{method} {path} {status}"));
}

/// Validates `value` against a schema from the document (refs resolve into its components).
pub fn check_schema(schema: &Value, value: &Value, what: &str) {
    let mut root = schema.clone();
    root["components"] = openapi()["components"].clone();
    let validator = jsonschema::validator_for(&root).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{what}: response does not match the OpenAPI schema: {errors:#?}\n{value}"
    );
}

/// A `pyrovm` binary started with `extra` TOML config lines, its own runtime root
/// and a free loopback port; killed (SIGKILL) on drop if still running.
pub struct Binary {
    pub child: std::process::Child,
    pub url: String,
    pub runtime_root: tempfile::TempDir,
}

impl Binary {
    /// Starts it and waits (bounded) for `/healthz`; `None` (skip) without an image.
    pub async fn start(extra: &str) -> Option<Self> {
        let image = image_dir()?;
        let runtime_root = tempfile::tempdir().expect("tempdir");
        let (child, url) = spawn_pyrovm(&image, runtime_root.path(), extra);
        let me = Self {
            child,
            url,
            runtime_root,
        };
        me.wait_healthy().await;
        Some(me)
    }

    /// Starts a new pyrovm on the same runtime root (the previous one must have
    /// exited), as a service restart would, and waits for `/healthz`.
    pub async fn restart(&mut self, extra: &str) {
        let image = image_dir().expect("image");
        let (child, url) = spawn_pyrovm(&image, self.runtime_root.path(), extra);
        self.child = child;
        self.url = url;
        self.wait_healthy().await;
    }

    pub fn run_root(&self) -> PathBuf {
        self.runtime_root.path().join("run")
    }

    pub async fn wait_healthy(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(format!("{}/healthz", self.url))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pyrovm did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Value of a metric (summed over label sets; 0 if absent or unreachable).
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok(resp) = reqwest::get(format!("{}/metrics", self.url)).await else {
            return 0.0;
        };
        let text = resp.text().await.unwrap_or_default();
        sum_metric(&text, name)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal pyrovm");
    }

    /// Waits (bounded) for the process to exit; returns its status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pyrovm did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes a config (free loopback port, runtime dir `<root>/run`, `extra` lines) and
/// spawns the binary with it.
fn spawn_pyrovm(image: &Path, root: &Path, extra: &str) -> (std::process::Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let cfg = root.join(format!("pyrovm-{port}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\nimage_dir = \"{}\"\nruntime_dir = \"{}\"\n{extra}",
            image.display(),
            root.join("run").display()
        ),
    )
    .expect("write config");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_pyrovm"))
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn pyrovm");
    (child, format!("http://127.0.0.1:{port}"))
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
