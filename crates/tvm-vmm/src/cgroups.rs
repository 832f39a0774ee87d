//! Host cgroups for VMM processes, shared by both backends.
//!
//! Every VM gets `tvm/<instance>/<vm-id>` in each relevant hierarchy: cgroup v2 where
//! a cgroup2 mount has the `memory` and `cpu` controllers, else the v1 hierarchies
//! that carry `memory` or `cpu` (a hybrid host such as ours mounts an empty cgroup2 at
//! `/sys/fs/cgroup/unified`). Firecracker's jailer creates its cgroup itself from
//! [`cgroup_settings`]; QEMU's is made here ([`HostCgroups::create`]) and joined between
//! fork and exec by writing `0` to the `cgroup.procs` files opened beforehand. Teardown
//! retries the `rmdir` until the VMM's threads have left ([`remove_vm_cgroup`]); reaping
//! an instance removes `tvm/<instance>` in every hierarchy ([`remove_cgroups`]).

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Which cgroup hierarchy VMs are placed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl CgroupVersion {
    /// `1` or `2` (the jailer's `--cgroup-version`).
    pub fn number(self) -> &'static str {
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

/// The hierarchies VMs go in, for a host whose mounts and cgroup2 controllers are given.
pub fn choose_mounts(
    proc_mounts: &str,
    v2_controllers: Option<&str>,
) -> (CgroupVersion, Vec<PathBuf>) {
    let (v2, v1) = cgroup_mounts(proc_mounts);
    match choose_cgroup_version(v2.as_ref().and(v2_controllers)) {
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

/// Detects this host's choice.
pub fn detect_cgroups() -> (CgroupVersion, Vec<PathBuf>) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (v2, _) = cgroup_mounts(&mounts);
    let controllers = v2
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p.join("cgroup.controllers")).ok());
    choose_mounts(&mounts, controllers.as_deref())
}

/// Every cgroup hierarchy of this host (v2 and all v1 ones a backend may use), for removal.
pub fn all_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (v2, v1) = cgroup_mounts(&mounts);
    v2.into_iter()
        .chain(v1.into_iter().map(|(p, _)| p))
        .collect()
}

/// Limits for the VMM process (guest memory plus the VMM's own overhead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmLimits {
    pub memory_bytes: u64,
    /// CPU time per 100 ms period, in µs (vCPUs plus one for the VMM's own threads).
    pub cpu_quota_us: u64,
}

pub const CPU_PERIOD_US: u64 = 100_000;

impl VmmLimits {
    /// Guest RAM + `overhead_mib` of memory; (vCPUs + 1) × [`CPU_PERIOD_US`] of CPU.
    pub fn for_vm(vcpus: u32, memory_mb: u64, overhead_mib: u64) -> Self {
        Self {
            memory_bytes: (memory_mb + overhead_mib) << 20,
            cpu_quota_us: u64::from(vcpus + 1) * CPU_PERIOD_US,
        }
    }
}

/// `<file>=<value>` settings for the chosen hierarchy (the jailer's `--cgroup` format).
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

/// Removes `<mount>/<parent>/<id>` (every child of `<parent>` when `id` is `None`), then
/// `<mount>/<parent>` and its ancestors if they became empty, in each hierarchy.
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

/// Removes one VM's cgroup (`<mount>/<parent>/<id>`, not the parent), retrying until
/// every thread of the VMM has left it or `until` passes. Returns whether it is gone.
pub fn remove_vm_cgroup(mounts: &[PathBuf], parent: &str, id: &str, until: Instant) -> bool {
    loop {
        let mut left = false;
        for m in mounts {
            let d = m.join(parent).join(id);
            if d.exists() && std::fs::remove_dir(&d).is_err() {
                left = true;
            }
        }
        if !left {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The hierarchies and parent (`tvm/<instance>`) a backend creates VM cgroups under.
#[derive(Debug, Clone)]
pub struct HostCgroups {
    pub version: CgroupVersion,
    pub mounts: Vec<PathBuf>,
    pub parent: String,
}

const V2_CONTROLLERS: &str = "+memory +cpu";

impl HostCgroups {
    /// Detects the hierarchies and creates `<mount>/<parent>` in each (v2: with the
    /// memory and cpu controllers enabled for its children). An error says why VMs
    /// cannot get cgroups here (no hierarchy, no write access).
    pub fn prepare(parent: &str) -> Result<Self, String> {
        let (version, mounts) = detect_cgroups();
        let me = Self {
            version,
            mounts,
            parent: parent.to_string(),
        };
        if me.mounts.is_empty() {
            return Err("no cgroup hierarchy with the memory or cpu controller is mounted".into());
        }
        for m in &me.mounts {
            me.prepare_in(m)?;
        }
        Ok(me)
    }

    fn prepare_in(&self, mount: &Path) -> Result<(), String> {
        let dir = mount.join(&self.parent);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        if self.version == CgroupVersion::V1 {
            return Ok(());
        }
        // v2: a controller is usable in a cgroup only if every ancestor enables it for
        // its children.
        let mut chain: Vec<&Path> = dir
            .ancestors()
            .take_while(|a| a.starts_with(mount))
            .collect();
        chain.reverse();
        let mut first_err = None;
        for d in chain {
            if let Err(e) = std::fs::write(d.join("cgroup.subtree_control"), V2_CONTROLLERS) {
                first_err.get_or_insert(format!("enable {V2_CONTROLLERS} in {}: {e}", d.display()));
            }
        }
        let enabled =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        if choose_cgroup_version(Some(&enabled)) == CgroupVersion::V2 {
            Ok(())
        } else {
            Err(first_err.unwrap_or_else(|| {
                format!(
                    "memory and cpu controllers are not enabled in {}",
                    dir.display()
                )
            }))
        }
    }

    /// Creates `<mount>/<parent>/<id>` in every hierarchy with the limits written, and
    /// opens its `cgroup.procs` files for [`join_current`] in the child. On error,
    /// what was made is removed (the returned guard's drop).
    pub fn create(&self, id: &str, limits: VmmLimits) -> std::io::Result<VmCgroup> {
        let mut cg = VmCgroup {
            mounts: Vec::new(),
            parent: self.parent.clone(),
            id: id.to_string(),
            procs: Vec::new(),
        };
        for m in &self.mounts {
            let d = m.join(&self.parent).join(id);
            std::fs::create_dir(&d).map_err(|e| annotate(e, "create", &d))?;
            cg.mounts.push(m.clone());
        }
        let dirs = cg.dirs();
        write_settings(&dirs, &cgroup_settings(self.version, limits))?;
        for d in &dirs {
            let p = d.join("cgroup.procs");
            let f = OpenOptions::new()
                .write(true)
                .open(&p)
                .map_err(|e| annotate(e, "open", &p))?;
            cg.procs.push(f);
        }
        Ok(cg)
    }
}

/// Writes each `<file>=<value>` into the one of `dirs` that has the file (in v1,
/// `memory.*` lives in the memory hierarchy and `cpu.*` in the cpu one), in order.
fn write_settings(dirs: &[PathBuf], settings: &[String]) -> std::io::Result<()> {
    for setting in settings {
        let (file, value) = setting.split_once('=').unwrap_or((setting, ""));
        let Some(d) = dirs.iter().find(|d| d.join(file).exists()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no cgroup of {dirs:?} has {file}"),
            ));
        };
        std::fs::write(d.join(file), value).map_err(|e| annotate(e, "write", &d.join(file)))?;
    }
    Ok(())
}

fn annotate(e: std::io::Error, what: &str, p: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
}

/// One VM's cgroup in every hierarchy. Dropping it removes it (bounded retries).
#[derive(Debug)]
pub struct VmCgroup {
    mounts: Vec<PathBuf>,
    parent: String,
    id: String,
    procs: Vec<File>,
}

impl VmCgroup {
    /// The open `cgroup.procs` files, for [`join_current`] between fork and exec.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The cgroup dirs, one per hierarchy.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.mounts
            .iter()
            .map(|m| m.join(&self.parent).join(&self.id))
            .collect()
    }

    /// Removes the cgroup, retrying until `until`; whether it is gone.
    pub fn remove(&mut self, until: Instant) -> bool {
        self.procs.clear();
        let gone = remove_vm_cgroup(&self.mounts, &self.parent, &self.id, until);
        if gone {
            self.mounts.clear();
        }
        gone
    }
}

impl Drop for VmCgroup {
    fn drop(&mut self) {
        if !self.mounts.is_empty() {
            self.remove(Instant::now() + Duration::from_millis(500));
        }
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files are `fds`.
/// Async-signal-safe (one `write` each), for use between fork and exec.
pub fn join_current(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: write(2) of a 1-byte static buffer to an fd the parent keeps open.
        let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
        if n != 1 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,nosuid 0 0\n\
                          cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,memory 0 0\n\
                          cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n\
                          cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n\
                          cgroup /sys/fs/cgroup/devices cgroup rw,devices 0 0\n";

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
        let (v2, v1) = cgroup_mounts(HYBRID);
        assert_eq!(v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(v1.len(), 3);
        assert_eq!(v1[1].1, ["cpu", "cpuacct"]);
    }

    #[test]
    fn v1_uses_the_memory_and_cpu_hierarchies_v2_the_unified_one() {
        let (v, m) = choose_mounts(HYBRID, Some(""));
        assert_eq!(v, CgroupVersion::V1);
        assert_eq!(
            m,
            [
                PathBuf::from("/sys/fs/cgroup/memory"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
            ]
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n";
        let (v, m) = choose_mounts(unified, Some("cpuset cpu io memory hugetlb pids"));
        assert_eq!(v, CgroupVersion::V2);
        assert_eq!(m, [PathBuf::from("/sys/fs/cgroup")]);
        // A cgroup2 mount without the controllers and no v1 hierarchy: nothing to use.
        assert!(choose_mounts(unified, Some("pids")).1.is_empty());
    }

    #[test]
    fn limits_and_settings_per_version() {
        let l = VmmLimits::for_vm(1, 448, 64);
        assert_eq!(
            l,
            VmmLimits {
                memory_bytes: 512 << 20,
                cpu_quota_us: 200_000
            }
        );
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

    /// Plain directories stand in for the cgroup hierarchies: each setting goes into
    /// the hierarchy that has its file; removal takes the VM's dir and, for an
    /// instance, everything up to (never including) the mount.
    #[test]
    fn settings_and_removal_in_stand_in_hierarchies() {
        let root = tempfile::tempdir().unwrap();
        let (mem, cpu) = (root.path().join("memory"), root.path().join("cpu"));
        let hc = HostCgroups {
            version: CgroupVersion::V1,
            mounts: vec![mem.clone(), cpu.clone()],
            parent: "tvm/inst".into(),
        };
        for m in &hc.mounts {
            hc.prepare_in(m).unwrap();
        }
        let dirs = [mem.join("tvm/inst/vm1"), cpu.join("tvm/inst/vm1")];
        // What the kernel shows in a new cgroup of each hierarchy.
        for (d, files) in dirs.iter().zip([
            &["memory.limit_in_bytes"][..],
            &["cpu.cfs_period_us", "cpu.cfs_quota_us"][..],
        ]) {
            std::fs::create_dir(d).unwrap();
            for f in files {
                std::fs::write(d.join(f), "").unwrap();
            }
        }
        let settings = cgroup_settings(hc.version, VmmLimits::for_vm(2, 100, 28));
        write_settings(&dirs, &settings).unwrap();
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        assert_eq!(
            read(dirs[0].join("memory.limit_in_bytes")),
            (128u64 << 20).to_string()
        );
        assert_eq!(read(dirs[1].join("cpu.cfs_quota_us")), "300000");
        assert_eq!(read(dirs[1].join("cpu.cfs_period_us")), "100000");
        assert!(write_settings(&dirs, &["pids.max=1".to_string()]).is_err());
        // Real cgroup dirs have no removable files; clear them as the kernel would.
        for d in &dirs {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let until = Instant::now() + Duration::from_millis(100);
        assert!(remove_vm_cgroup(&hc.mounts, &hc.parent, "vm1", until));
        assert!(!dirs[0].exists() && !dirs[1].exists());
        assert!(mem.join("tvm/inst").exists(), "the instance's cgroup stays");
        remove_cgroups(&hc.mounts, &hc.parent, None);
        assert!(!mem.join("tvm").exists() && !cpu.join("tvm").exists());
        assert!(mem.exists(), "never the mount itself");
    }

    #[test]
    fn a_cgroup_that_cannot_be_removed_gives_up_at_the_deadline() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("p/vm");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("busy"), "").unwrap();
        let t = Instant::now();
        assert!(!remove_vm_cgroup(
            &[root.path().to_path_buf()],
            "p",
            "vm",
            t + Duration::from_millis(50)
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    /// The real thing, where this host lets us (root, a writable hierarchy): a child
    /// joins its cgroup before exec, the limits read back, and teardown removes it.
    #[test]
    fn a_child_joins_its_cgroup_before_exec() {
        use std::os::unix::process::CommandExt;
        let parent = format!("tvm/test-{}", ulid::Ulid::new().to_string().to_lowercase());
        let hc = match HostCgroups::prepare(&parent) {
            Ok(hc) => hc,
            Err(reason) => {
                eprintln!("SKIPPED: no host cgroups here: {reason}");
                return;
            }
        };
        let mut cg = hc.create("vm", VmmLimits::for_vm(1, 64, 64)).unwrap();
        let fds = cg.procs_fds();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: join_current only writes to fds we keep open until spawn returns.
        unsafe {
            cmd.pre_exec(move || join_current(&fds));
        }
        let mut child = cmd.spawn().unwrap();
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
        let want = format!("/{parent}/vm");
        let lines: Vec<&str> = cgroup.lines().filter(|l| l.ends_with(&want)).collect();
        let expected = match hc.version {
            CgroupVersion::V2 => 1,
            CgroupVersion::V1 => hc.mounts.len(),
        };
        assert_eq!(lines.len(), expected, "{cgroup}");
        let dirs = cg.dirs();
        let read = |f: &str| {
            dirs.iter()
                .find_map(|d| std::fs::read_to_string(d.join(f)).ok())
                .unwrap_or_default()
        };
        match hc.version {
            CgroupVersion::V2 => {
                assert_eq!(read("memory.max").trim(), (128u64 << 20).to_string());
                assert_eq!(read("cpu.max").trim(), "200000 100000");
            }
            CgroupVersion::V1 => {
                assert_eq!(
                    read("memory.limit_in_bytes").trim(),
                    (128u64 << 20).to_string()
                );
                assert_eq!(read("cpu.cfs_quota_us").trim(), "200000");
            }
        }
        assert!(!cg.remove(Instant::now()), "busy while the child is in it");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(cg.remove(Instant::now() + Duration::from_secs(2)));
        assert!(dirs.iter().all(|d| !d.exists()));
        remove_cgroups(&hc.mounts, &parent, None);
        assert!(hc.mounts.iter().all(|m| !m.join(&parent).exists()));
    }

    #[test]
    fn join_current_writes_zero() {
        let d = tempfile::tempdir().unwrap();
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(d.path().join("cgroup.procs"))
            .unwrap();
        join_current(&[f.as_raw_fd()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("cgroup.procs")).unwrap(),
            "0"
        );
    }
}
