//! The jailer's command line. The cgroup layout it writes into (hierarchy choice,
//! limits, removal) is shared with QEMU and lives in [`crate::cgroups`].
//!
//! Flags follow Firecracker's `docs/jailer.md`: `--id --exec-file --uid --gid
//! --cgroup-version --cgroup <file>=<value> --parent-cgroup --chroot-base-dir
//! --new-pid-ns -- <firecracker args>`. The network namespace is not passed with
//! `--netns`: the jailer is started inside a fresh, empty network namespace
//! (`unshare(CLONE_NEWNET)` between fork and exec), so nothing has to be created
//! or deleted under `/var/run/netns`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::cgroups::CgroupVersion;

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
    v.extend(["--cgroup-version".into(), a.cgroup_version.number().into()]);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::{cgroup_settings, VmmLimits};

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
