//! pyroshell processes for tests: an upstream (`pyroshell --mode embedded`, i.e.
//! pyrovm in-process, booting real microVMs) and gateways in front of it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running `pyroshell` process; SIGKILLed on drop if still running.
pub struct Shell {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub config: PathBuf,
    envs: Vec<(String, String)>,
    args: Vec<String>,
}

impl Shell {
    /// Starts `pyroshell --config <dir>/<name>.toml ARGS` with `config` as the file
    /// (a `listen` line for `port` is prepended) and waits (bounded) for `/healthz`.
    pub async fn start(
        dir: &Path,
        name: &str,
        port: u16,
        config: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, format!("listen = \"127.0.0.1:{port}\"\n{config}"))
            .expect("write config");
        let mut me = Self {
            child: Command::new("true").spawn().expect("placeholder"),
            url: format!("http://127.0.0.1:{port}"),
            port,
            config: path,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        let _ = me.child.wait();
        me.spawn().await;
        me
    }

    /// (Re)starts the process with the same config, args and environment.
    pub async fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pyroshell"));
        cmd.arg("--config").arg(&self.config).args(&self.args);
        cmd.env_remove("TVM_TOKENS")
            .env_remove("TVM_UPSTREAM_TOKEN")
            .env_remove("TVM_UPSTREAM");
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let log = std::fs::File::create(self.config.with_extension("log")).expect("log file");
        self.child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn pyroshell");
        self.wait_healthy().await;
    }

    pub async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(format!("{}/healthz", self.url))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "pyroshell exited ({st}) before it served; log: {}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pyroshell did not come up: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.config.with_extension("log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("signal pyroshell");
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "pyroshell did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sum of a metric over its label sets, from `path` (0 when absent or unreachable).
    pub async fn metric(&self, path: &str, name: &str) -> f64 {
        let Ok(resp) = reqwest::get(format!("{}{path}", self.url)).await else {
            return 0.0;
        };
        let text = resp.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.kill();
    }
}

/// pyrovm in-process (`--mode embedded`) on `port`, its runtime dir under `root`,
/// no warm pool and no snapshot (a test's requests cold-boot; nothing idles).
/// `None` (skip, reason printed) without a guest image.
pub async fn upstream(root: &Path, port: u16, envs: &[(&str, &str)]) -> Option<Shell> {
    let image = tvm_image::image_for_tests()?;
    let config = format!(
        "runtime_dir = \"{}\"\nimage_dir = \"{}\"\npool = []\n[snapshot]\nenabled = false\n",
        root.join("run").display(),
        image.display()
    );
    Some(
        Shell::start(
            root,
            &format!("upstream-{port}"),
            port,
            &config,
            &["--mode", "embedded"],
            envs,
        )
        .await,
    )
}

/// A forward-mode gateway to `upstream`, with `extra` lines in `[forward]`.
pub async fn gateway(root: &Path, upstream: &str, extra: &str, envs: &[(&str, &str)]) -> Shell {
    let port = free_port();
    let config = format!("[forward]\nupstream = \"{upstream}\"\n{extra}\n");
    Shell::start(
        root,
        &format!("gateway-{port}"),
        port,
        &config,
        &["--mode", "forward"],
        envs,
    )
    .await
}

/// Polls `url` until it answers `status` (bounded).
pub async fn wait_status(url: &str, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = reqwest::get(url)
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if got == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} answered {got}, not {status}, for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Processes other than pyroshell itself whose command line mentions `root`: the
/// VMMs of an upstream (none may outlive a test).
pub fn vmm_processes(root: &Path) -> Vec<u32> {
    let needle = root.to_string_lossy().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains(&needle) && !c.contains("pyroshell")
                })
                .unwrap_or(false)
        })
        .collect()
}
