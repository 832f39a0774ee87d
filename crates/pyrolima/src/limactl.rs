//! The `limactl` driver: every call is a child process with a deadline (killed with its
//! process group when it passes, and on drop), stdin closed, output captured, and a
//! typed error when it fails.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use semver::Version;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::error::LimaError;
use crate::versions;

/// Default deadline of a short limactl call (list, copy, shell, delete…).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default deadline of `limactl start` (cloud image download, k3s and Istio install).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const STDERR_TAIL_LINES: usize = 20;
const STDERR_TAIL_CHARS: usize = 2000;

/// A `limactl` binary and the deadlines of its calls.
#[derive(Debug, Clone)]
pub struct Limactl {
    bin: PathBuf,
    command_timeout: Duration,
    start_timeout: Duration,
}

/// What a successful call printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Limactl {
    /// The given binary, with the default deadlines.
    pub fn new(bin: PathBuf) -> Self {
        Limactl {
            bin,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            start_timeout: DEFAULT_START_TIMEOUT,
        }
    }

    /// `explicit` (the `--limactl` flag), else `$LIMACTL`, else `limactl` on `PATH`.
    pub fn find(explicit: Option<PathBuf>) -> Result<Self, LimaError> {
        let from_env = std::env::var_os("LIMACTL")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        if let Some(path) = explicit.or(from_env) {
            return if path.is_file() {
                Ok(Self::new(path))
            } else {
                Err(LimaError::NotInstalled {
                    searched: format!("{} does not exist", path.display()),
                })
            };
        }
        let names: &[&str] = if cfg!(windows) {
            &["limactl.exe", "limactl"]
        } else {
            &["limactl"]
        };
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
            .find(|p| p.is_file())
            .map(Self::new)
            .ok_or_else(|| LimaError::NotInstalled {
                searched: "not on PATH, --limactl and LIMACTL unset".into(),
            })
    }

    /// Sets the deadlines: `command` for short calls, `start` for `limactl start`.
    pub fn with_timeouts(mut self, command: Duration, start: Duration) -> Self {
        self.command_timeout = command;
        self.start_timeout = start;
        self
    }

    /// The binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `limactl --version`, parsed.
    pub async fn version(&self) -> Result<Version, LimaError> {
        let out = self.run(args(["--version"]), self.command_timeout).await?;
        versions::parse_limactl_version(&out.stdout).map_err(|detail| LimaError::BadOutput {
            cmd: "limactl --version".into(),
            detail,
        })
    }

    /// [`Limactl::version`], refused below [`versions::MIN_LIMA`].
    pub async fn checked_version(&self) -> Result<Version, LimaError> {
        let found = self.version().await?;
        match versions::check_lima(&found) {
            Ok(warnings) => {
                for w in warnings {
                    tracing::warn!("{w}");
                }
                Ok(found)
            }
            Err(need) => Err(LimaError::TooOld { found, need }),
        }
    }

    /// `limactl list --json NAME`: the instance, or None when there is none.
    pub async fn list(&self, name: &str) -> Result<Option<Instance>, LimaError> {
        let cmd_args = args(["list", "--json", name]);
        let out = match self.run(cmd_args, self.command_timeout).await {
            Ok(out) => out,
            // Lima ≥ 1.x exits 1 with "No instance matching NAME found." on stderr.
            Err(LimaError::Failed { stderr, .. }) if stderr.contains("No instance matching") => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        parse_list(&out.stdout, name).map_err(|detail| LimaError::BadOutput {
            cmd: format!("limactl list --json {name}"),
            detail,
        })
    }

    /// `limactl start --tty=false --name NAME --timeout … CONFIG` (non-interactive; returns
    /// when Lima says the instance is running and its probes passed).
    pub async fn start(&self, name: &str, config: &Path) -> Result<(), LimaError> {
        let lima_timeout = format!("{}s", self.start_timeout.as_secs().max(1));
        let mut a = args([
            "start",
            "--tty=false",
            "--name",
            name,
            "--timeout",
            &lima_timeout,
        ]);
        a.push(config.as_os_str().to_owned());
        // Lima gives up by itself at --timeout; the process deadline is a little later.
        let deadline = self.start_timeout + (self.start_timeout / 20).min(Duration::from_secs(60));
        self.run(a, deadline).await.map(drop)
    }

    /// `limactl stop NAME`.
    pub async fn stop(&self, name: &str) -> Result<(), LimaError> {
        self.run(args(["stop", name]), self.command_timeout)
            .await
            .map(drop)
    }

    /// `limactl delete [--force] NAME`.
    pub async fn delete(&self, name: &str, force: bool) -> Result<(), LimaError> {
        let a = if force {
            args(["delete", "--force", name])
        } else {
            args(["delete", name])
        };
        self.run(a, self.command_timeout).await.map(drop)
    }

    /// `limactl copy [-r] SOURCE NAME:GUEST_PATH` (`-r` when `source` is a directory).
    pub async fn copy(&self, name: &str, source: &Path, guest_path: &str) -> Result<(), LimaError> {
        let mut a = args(["copy"]);
        if source.is_dir() {
            a.push("-r".into());
        }
        a.push(source.as_os_str().to_owned());
        a.push(format!("{name}:{guest_path}").into());
        self.run(a, self.command_timeout).await.map(drop)
    }

    /// `limactl shell --workdir / NAME -- ARGV…`; fails unless the command exits 0.
    pub async fn shell(&self, name: &str, argv: &[String]) -> Result<Output, LimaError> {
        let mut a = args(["shell", "--workdir", "/", name, "--"]);
        a.extend(argv.iter().map(OsString::from));
        self.run(a, self.command_timeout).await
    }

    async fn run(&self, args: Vec<OsString>, deadline: Duration) -> Result<Output, LimaError> {
        let cmd_line = display(&args);
        tracing::debug!(cmd = %cmd_line, ?deadline, "limactl");
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command.spawn().map_err(|source| LimaError::Spawn {
            cmd: cmd_line.clone(),
            source,
        })?;
        let pid = child.id();
        let stdout = tokio::spawn(read_to_end(child.stdout.take()));
        let stderr = tokio::spawn(read_to_end(child.stderr.take()));
        let status = match tokio::time::timeout(deadline, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(source)) => {
                return Err(LimaError::Spawn {
                    cmd: cmd_line,
                    source,
                })
            }
            Err(_) => {
                kill_group(pid);
                let _ = child.kill().await;
                stdout.abort();
                stderr.abort();
                tracing::warn!(cmd = %cmd_line, ?deadline, "limactl call timed out; killed");
                return Err(LimaError::Timeout {
                    cmd: cmd_line,
                    after: deadline,
                });
            }
        };
        // A grandchild may hold the pipes open after the child exited: do not wait long.
        let collect = |task: tokio::task::JoinHandle<Vec<u8>>| async move {
            match tokio::time::timeout(Duration::from_secs(2), task).await {
                Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                _ => String::new(),
            }
        };
        let out = Output {
            stdout: collect(stdout).await,
            stderr: collect(stderr).await,
        };
        if status.success() {
            Ok(out)
        } else {
            Err(LimaError::Failed {
                cmd: cmd_line,
                code: status.code(),
                stderr: tail(&out.stderr),
            })
        }
    }
}

fn args<const N: usize>(a: [&str; N]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

async fn read_to_end<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut r) = r {
        let _ = r.read_to_end(&mut buf).await;
    }
    buf
}

/// Kills the child's whole process group (it was started as a group leader), so
/// helpers it spawned do not outlive it.
fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pgid) = pid.and_then(|p| i32::try_from(p).ok()) {
        use nix::sys::signal::{killpg, Signal};
        let _ = killpg(nix::unistd::Pid::from_raw(pgid), Signal::SIGKILL);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// The command line for messages: `limactl` and its arguments, long ones (scripts) cut.
fn display(args: &[OsString]) -> String {
    let mut s = String::from("limactl");
    for a in args {
        let a = a.to_string_lossy();
        let one_line = a.replace('\n', " ");
        s.push(' ');
        if one_line.chars().count() > 120 {
            s.extend(one_line.chars().take(117));
            s.push_str("...");
        } else {
            s.push_str(&one_line);
        }
    }
    s
}

/// The last lines of `stderr`, for error messages.
pub fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    let joined = lines[start..].join("\n");
    let count = joined.chars().count();
    if count > STDERR_TAIL_CHARS {
        joined.chars().skip(count - STDERR_TAIL_CHARS).collect()
    } else {
        joined
    }
}

/// A Lima instance as `limactl list --json` reports it (Lima's `store.Instance`, since v2
/// `limatype.Instance`). Unknown fields are ignored; missing ones are None/empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// Instance name.
    pub name: String,
    /// Lifecycle status.
    pub status: Status,
    /// Its directory under `$LIMA_HOME`.
    pub dir: Option<PathBuf>,
    /// `qemu`, `vz`, `wsl2`.
    pub vm_type: Option<String>,
    /// `x86_64`, `aarch64`.
    pub arch: Option<String>,
    /// vCPUs.
    pub cpus: Option<u32>,
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// Disk in bytes.
    pub disk: Option<u64>,
    /// Lima version that created it (Lima ≥ 1.0).
    pub lima_version: Option<String>,
    /// Template parameters (Lima ≥ 1.0 reports them).
    pub param: BTreeMap<String, String>,
    /// Errors Lima found inspecting it.
    pub errors: Vec<String>,
}

/// Lima's instance status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// "Running".
    Running,
    /// "Stopped".
    Stopped,
    /// "Broken".
    Broken,
    /// Anything else ("Installing", "Uninitialized", "" for unknown…).
    Other(String),
}

impl Status {
    /// Lima's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Status::Running => "Running",
            Status::Stopped => "Stopped",
            Status::Broken => "Broken",
            Status::Other(s) => s,
        }
    }
}

impl From<&str> for Status {
    fn from(s: &str) -> Self {
        match s {
            "Running" => Status::Running,
            "Stopped" => Status::Stopped,
            "Broken" => Status::Broken,
            other => Status::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.as_str().is_empty() {
            "Unknown"
        } else {
            self.as_str()
        })
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInstance {
    name: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    dir: Option<PathBuf>,
    #[serde(default)]
    vm_type: Option<String>,
    #[serde(default)]
    arch: Option<String>,
    #[serde(default)]
    cpus: Option<u32>,
    #[serde(default)]
    memory: Option<u64>,
    #[serde(default)]
    disk: Option<u64>,
    #[serde(default)]
    lima_version: Option<String>,
    #[serde(default)]
    param: Option<BTreeMap<String, String>>,
    #[serde(default)]
    errors: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

impl Instance {
    /// One line of `limactl list --json`.
    pub fn from_json(line: &str) -> Result<Self, serde_json::Error> {
        let raw: RawInstance = serde_json::from_str(line)?;
        let mut param = raw.param.unwrap_or_default();
        // Lima ≥ 1.0 also nests the whole config; its param is the same map.
        if let Some(serde_json::Value::Object(p)) = raw.config.as_ref().and_then(|c| c.get("param"))
        {
            for (k, v) in p {
                if let Some(v) = v.as_str() {
                    param.entry(k.clone()).or_insert_with(|| v.to_owned());
                }
            }
        }
        Ok(Instance {
            name: raw.name,
            status: Status::from(raw.status.as_str()),
            dir: raw.dir,
            vm_type: raw.vm_type,
            arch: raw.arch,
            cpus: raw.cpus,
            memory: raw.memory,
            disk: raw.disk,
            lima_version: raw.lima_version,
            param,
            // Lima < 2 serialises Go errors as `{}`; later versions as strings.
            errors: raw
                .errors
                .unwrap_or_default()
                .into_iter()
                .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                .collect(),
        })
    }

    /// Was this instance created by pyrolima? Lima ≥ 1.0 reports our `managedBy` param;
    /// older versions are recognised by the marker in the `lima.yaml` we wrote.
    pub fn managed_by_pyrolima(&self) -> bool {
        if self.param.get("managedBy").map(String::as_str) == Some(crate::MANAGED_BY) {
            return true;
        }
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.join("lima.yaml")).ok())
            .is_some_and(|text| text.contains(crate::MANAGED_BY_MARKER))
    }
}

/// Parses `limactl list --json` output (one JSON object per line) and picks `name`.
pub fn parse_list(stdout: &str, name: &str) -> Result<Option<Instance>, String> {
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let inst = Instance::from_json(line).map_err(|e| format!("{e} in {line:.200}"))?;
        if inst.name == name {
            return Ok(Some(inst));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Shapes of real `limactl list --json` lines: Lima 2.x (with config and param) and
    // 0.14 (cpuType, no limaVersion, errors as `{}`).
    const V2_RUNNING: &str = r#"{"name":"tvm","hostname":"lima-tvm","status":"Running","dir":"/Users/u/.lima/tvm","vmType":"vz","arch":"aarch64","cpus":4,"memory":8589934592,"disk":42949672960,"network":[{"vzNAT":true}],"sshLocalPort":60022,"sshConfigFile":"/Users/u/.lima/tvm/ssh.config","hostAgentPID":4242,"driverPID":4242,"config":{"vmType":"vz","param":{"managedBy":"pyrolima"}},"sshAddress":"127.0.0.1","protected":false,"limaVersion":"2.2.0","param":{"managedBy":"pyrolima","nested":"true"}}"#;
    const V014_STOPPED: &str = r#"{"name":"tvm","status":"Stopped","dir":"/home/u/.lima/tvm","vmType":"qemu","arch":"x86_64","cpuType":"host","cpus":4,"memory":8589934592,"disk":42949672960,"sshLocalPort":60022}"#;
    const BROKEN: &str = r#"{"name":"tvm","status":"Broken","dir":"/home/u/.lima/tvm","vmType":"qemu","arch":"x86_64","cpus":0,"errors":["open lima.yaml: no such file or directory",{}],"unknownField":{"a":1}}"#;

    #[test]
    fn parses_real_list_lines() {
        let i = parse_list(V2_RUNNING, "tvm").unwrap().unwrap();
        assert_eq!(i.status, Status::Running);
        assert_eq!(i.vm_type.as_deref(), Some("vz"));
        assert_eq!(i.memory, Some(8 << 30));
        assert_eq!(i.lima_version.as_deref(), Some("2.2.0"));
        assert!(i.managed_by_pyrolima());
        let i = parse_list(V014_STOPPED, "tvm").unwrap().unwrap();
        assert_eq!(i.status, Status::Stopped);
        assert!(i.param.is_empty() && !i.managed_by_pyrolima());
        let i = parse_list(BROKEN, "tvm").unwrap().unwrap();
        assert_eq!(i.status, Status::Broken);
        assert_eq!(
            i.errors,
            ["open lima.yaml: no such file or directory", "{}"]
        );
    }

    #[test]
    fn picks_the_named_instance_and_tolerates_odd_statuses() {
        let other = V2_RUNNING.replace("\"name\":\"tvm\"", "\"name\":\"other\"");
        let out = format!("{other}\n\n{V014_STOPPED}\n");
        assert_eq!(
            parse_list(&out, "tvm").unwrap().unwrap().status,
            Status::Stopped
        );
        assert!(parse_list(&out, "nope").unwrap().is_none());
        assert!(parse_list("", "tvm").unwrap().is_none());
        let installing = r#"{"name":"tvm","status":"Installing"}"#;
        let i = parse_list(installing, "tvm").unwrap().unwrap();
        assert_eq!(i.status, Status::Other("Installing".into()));
        assert_eq!(Status::Other(String::new()).to_string(), "Unknown");
        assert!(parse_list("not json", "tvm").is_err());
    }

    #[test]
    fn stderr_tail_and_command_display() {
        let long: String = (0..50).map(|i| format!("line {i}\n")).collect();
        let t = tail(&long);
        assert!(t.starts_with("line 30") && t.ends_with("line 49"), "{t}");
        let d = display(&[OsString::from("shell"), OsString::from("x".repeat(300))]);
        assert!(d.len() < 140 && d.ends_with("..."));
    }
}
