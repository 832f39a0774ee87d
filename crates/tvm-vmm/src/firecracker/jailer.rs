//! The jailer's command line and the host cgroup layout it writes into.
//!
//! Flags follow Firecracker's `docs/jailer.md`: `--id --exec-file --uid --gid
//! --cgroup-version --cgroup <file>=<value> --parent-cgroup --chroot-base-dir
//! --new-pid-ns -- <firecracker args>`. The network namespace is not passed with
//! `--netns`: the jailer is started inside a fresh, empty network namespace
//! (`unshare(CLONE_NEWNET)` between fork and exec), so nothing has to be created
//! or deleted under `/var/run/netns`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy the jailer should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    fn flag(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "1",
            CgroupVersion::V2 => "2",
        }
    }
}

/// v2 where a cgroup2 hierarchy has the memory and cpu controllers; v1 otherwise
/// (a hybrid host such as ours mounts an empty cgroup2 at /sys/fs/cgroup/unified).
/// `v2_controllers` is the content of `cgroup.controllers` of the cgroup2 mount.
pub fn choose_cgroup_version(v2_controllers: Option<&str>) -> CgroupVersion {
    match v2_controllers {
        Some(c)
            if ["memory", "cpu"]
                .iter()
                .all(|want| c.split_whitespace().any(|x| x == *want)) =>
        {
            CgroupVersion::V2
        }
        _ => CgroupVersion::V1,
    }
}

/// Mount points of cgroup hierarchies from /proc/mounts: (cgroup2 mount, v1 mounts with their controllers).
pub fn cgroup_mounts(proc_mounts: &str) -> (Option<PathBuf>, Vec<(PathBuf, Vec<String>)>) {
    let mut v2 = None;
    let mut v1 = Vec::new();
    for line in proc_mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        match f[2] {
            "cgroup2" => v2 = v2.or_else(|| Some(PathBuf::from(f[1]))),
            "cgroup" => {
                let ctrls = f[3]
                    .split(',')
                    .filter(|o| ["cpu", "cpuacct", "memory", "pids", "cpuset"].contains(o))
                    .map(str::to_string)
                    .collect::<Vec<_>>();
                if !ctrls.is_empty() {
                    v1.push((PathBuf::from(f[1]), ctrls));
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// Detects this host's choice.
pub fn detect_cgroups() -> (CgroupVersion, Vec<PathBuf>) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (v2, v1) = cgroup_mounts(&mounts);
    let controllers = v2
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p.join("cgroup.controllers")).ok());
    match choose_cgroup_version(controllers.as_deref()) {
        CgroupVersion::V2 => (CgroupVersion::V2, v2.into_iter().collect()),
        CgroupVersion::V1 => (
            CgroupVersion::V1,
            v1.into_iter()
                .filter(|(_, c)| c.iter().any(|x| x == "cpu" || x == "memory"))
                .map(|(p, _)| p)
                .collect(),
        ),
    }
}

/// Limits for the VMM process (guest memory plus the VMM's own overhead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmLimits {
    pub memory_bytes: u64,
    /// CPU time per 100 ms period, in µs (vCPUs plus one for the VMM's own threads).
    pub cpu_quota_us: u64,
}

pub const CPU_PERIOD_US: u64 = 100_000;

/// `--cgroup` values for the chosen hierarchy.
pub fn cgroup_settings(version: CgroupVersion, l: VmmLimits) -> Vec<String> {
    match version {
        CgroupVersion::V2 => vec![
            format!("memory.max={}", l.memory_bytes),
            format!("cpu.max={} {CPU_PERIOD_US}", l.cpu_quota_us),
        ],
        CgroupVersion::V1 => vec![
            format!("memory.limit_in_bytes={}", l.memory_bytes),
            format!("cpu.cfs_period_us={CPU_PERIOD_US}"),
            format!("cpu.cfs_quota_us={}", l.cpu_quota_us),
        ],
    }
}

#[derive(Debug, Clone)]
pub struct JailerArgs<'a> {
    pub id: &'a str,
    pub exec_file: &'a Path,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: &'a Path,
    pub cgroup_version: CgroupVersion,
    pub parent_cgroup: &'a str,
    pub cgroups: Vec<String>,
    /// Firecracker's API socket, as seen inside the jail.
    pub api_sock: &'a str,
}

/// The jailer's argv (without the program).
pub fn jailer_command_line(a: &JailerArgs<'_>) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec![
        "--id".into(),
        a.id.into(),
        "--exec-file".into(),
        a.exec_file.into(),
    ];
    v.extend([
        "--uid".into(),
        a.uid.to_string().into(),
        "--gid".into(),
        a.gid.to_string().into(),
    ]);
    v.extend(["--chroot-base-dir".into(), a.chroot_base.into()]);
    v.extend(["--cgroup-version".into(), a.cgroup_version.flag().into()]);
    v.extend(["--parent-cgroup".into(), a.parent_cgroup.into()]);
    for c in &a.cgroups {
        v.extend(["--cgroup".into(), c.into()]);
    }
    v.extend([
        "--resource-limit".into(),
        "no-file=1024".into(),
        "--new-pid-ns".into(),
    ]);
    v.extend(["--".into(), "--api-sock".into(), a.api_sock.into()]);
    v
}

/// `<chroot_base>/<exec file name>/<id>/root`, where the jailer builds the jail.
pub fn chroot_dir(chroot_base: &Path, exec_file: &Path, id: &str) -> PathBuf {
    let name = exec_file
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| "firecracker".into());
    chroot_base.join(name).join(id).join("root")
}

/// Removes `<mount>/<parent>/<id>` (and `<mount>/<parent>` if it became empty) in each hierarchy.
pub fn remove_cgroups(mounts: &[PathBuf], parent: &str, id: Option<&str>) {
    for m in mounts {
        let parent_dir = m.join(parent);
        if let Some(id) = id {
            let _ = std::fs::remove_dir(parent_dir.join(id));
        } else if let Ok(rd) = std::fs::read_dir(&parent_dir) {
            for e in rd.flatten().filter(|e| e.path().is_dir()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
        // Then `<parent>` and its ancestors (e.g. the shared `tvm`), if nobody else uses them.
        let mut dir = parent_dir.as_path();
        while dir != m.as_path() {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_host_uses_v1_and_unified_host_v2() {
        assert_eq!(choose_cgroup_version(Some("")), CgroupVersion::V1);
        assert_eq!(choose_cgroup_version(None), CgroupVersion::V1);
        assert_eq!(
            choose_cgroup_version(Some("cpuset cpu io memory pids\n")),
            CgroupVersion::V2
        );
        assert_eq!(choose_cgroup_version(Some("pids io")), CgroupVersion::V1);
    }

    #[test]
    fn parses_hybrid_mounts() {
        let m = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n\
                 cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0\n\
                 cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
                 cgroup /sys/fs/cgroup/devices cgroup rw,devices 0 0\n";
        let (v2, v1) = cgroup_mounts(m);
        assert_eq!(v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(v1.len(), 2);
        assert_eq!(v1[1].1, ["cpu", "cpuacct"]);
    }

    #[test]
    fn settings_per_version() {
        let l = VmmLimits {
            memory_bytes: 512 << 20,
            cpu_quota_us: 200_000,
        };
        assert_eq!(
            cgroup_settings(CgroupVersion::V2, l),
            ["memory.max=536870912", "cpu.max=200000 100000"]
        );
        assert_eq!(
            cgroup_settings(CgroupVersion::V1, l),
            [
                "memory.limit_in_bytes=536870912",
                "cpu.cfs_period_us=100000",
                "cpu.cfs_quota_us=200000"
            ]
        );
    }

    #[test]
    fn command_line_matches_the_documented_flags() {
        let args = JailerArgs {
            id: "01abc-vm",
            exec_file: Path::new("/usr/bin/firecracker"),
            uid: 10042,
            gid: 10042,
            chroot_base: Path::new("/run/tvm/i/jail"),
            cgroup_version: CgroupVersion::V1,
            parent_cgroup: "tvm/i",
            cgroups: cgroup_settings(
                CgroupVersion::V1,
                VmmLimits {
                    memory_bytes: 1,
                    cpu_quota_us: 2,
                },
            ),
            api_sock: "/run/firecracker.socket",
        };
        let v: Vec<String> = jailer_command_line(&args)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let pairs = |flag: &str| -> Vec<&str> {
            v.windows(2)
                .filter(|w| w[0] == flag)
                .map(|w| w[1].as_str())
                .collect()
        };
        assert_eq!(pairs("--id"), ["01abc-vm"]);
        assert_eq!(pairs("--exec-file"), ["/usr/bin/firecracker"]);
        assert_eq!(pairs("--uid"), ["10042"]);
        assert_eq!(pairs("--gid"), ["10042"]);
        assert_eq!(pairs("--chroot-base-dir"), ["/run/tvm/i/jail"]);
        assert_eq!(pairs("--cgroup-version"), ["1"]);
        assert_eq!(pairs("--parent-cgroup"), ["tvm/i"]);
        assert_eq!(pairs("--cgroup").len(), 3);
        assert!(v.contains(&"--new-pid-ns".to_string()));
        assert!(
            !v.contains(&"--daemonize".to_string()),
            "stdout carries the guest console"
        );
        // Everything after `--` goes to firecracker.
        let sep = v.iter().position(|a| a == "--").unwrap();
        assert_eq!(&v[sep + 1..], ["--api-sock", "/run/firecracker.socket"]);
        // The jailer's id rule: alphanumerics and hyphens, at most 64 characters.
        assert!(
            args.id.len() <= 64
                && args
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
        );
    }

    #[test]
    fn chroot_dir_layout() {
        assert_eq!(
            chroot_dir(Path::new("/j"), Path::new("/opt/fc/firecracker-v1.16"), "x"),
            PathBuf::from("/j/firecracker-v1.16/x/root")
        );
    }
}
