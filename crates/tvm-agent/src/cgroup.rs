//! The job's cgroup (v2, inside the guest): memory, pids, and kill-all.

use std::fs;
use std::path::PathBuf;

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub(crate) struct JobCgroup {
    dir: PathBuf,
}

impl JobCgroup {
    /// A one-shot job's cgroup: `job` for the first (made ahead of time by
    /// `prepare_ahead`), `job2`, `job3`, ... for later jobs of the same VM.
    pub(crate) fn create(memory_bytes: u64, max_processes: u32) -> std::io::Result<Self> {
        static JOBS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let name = if n == 1 {
            "job".to_string()
        } else {
            format!("job{n}")
        };
        Self::create_named(&name, memory_bytes, max_processes)
    }

    /// A cgroup named `name` under the root, with memory and pids limits; an OOM
    /// kill ends every process in it.
    pub(crate) fn create_named(
        name: &str,
        memory_bytes: u64,
        max_processes: u32,
    ) -> std::io::Result<Self> {
        let cg = Self::limited(name, memory_bytes, max_processes)?;
        fs::write(cg.dir.join("memory.oom.group"), "1")?;
        Ok(cg)
    }

    /// A sandbox's cgroup: the limits of all its jobs together. Jobs go into
    /// children ([`JobCgroup::child`]); only leaves hold processes (cgroup v2).
    pub(crate) fn create_parent(
        name: &str,
        memory_bytes: u64,
        max_processes: u32,
    ) -> std::io::Result<Self> {
        let cg = Self::limited(name, memory_bytes, max_processes)?;
        fs::write(cg.dir.join("cgroup.subtree_control"), "+memory +pids")?;
        Ok(cg)
    }

    fn limited(name: &str, memory_bytes: u64, max_processes: u32) -> std::io::Result<Self> {
        fs::write(format!("{ROOT}/cgroup.subtree_control"), "+memory +pids")?;
        let dir = PathBuf::from(ROOT).join(name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("memory.max"), memory_bytes.to_string())?;
        // No swap exists, but be explicit.
        let _ = fs::write(dir.join("memory.swap.max"), "0");
        fs::write(dir.join("pids.max"), max_processes.to_string())?;
        Ok(Self { dir })
    }

    /// A job's cgroup inside a sandbox's: an OOM kill ends the whole job (and only it).
    pub(crate) fn child(&self, name: &str) -> std::io::Result<Self> {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("memory.oom.group"), "1")?;
        Ok(Self { dir })
    }

    /// Removes children whose processes have all ended (earlier jobs' cgroups that
    /// were still held by background processes when their job reported).
    pub(crate) fn reap_children(&self) {
        if let Ok(rd) = fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(e.path());
                }
            }
        }
    }

    /// Removes the cgroup if no process is left in it.
    pub(crate) fn remove_if_empty(&self) {
        let _ = fs::remove_dir(&self.dir);
    }

    /// Path of `cgroup.procs`, opened before fork so the child can join with one write.
    pub(crate) fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// SIGKILLs every process in the job (cgroup.kill, Linux ≥ 5.14).
    pub(crate) fn kill_all(&self) {
        let _ = fs::write(self.dir.join("cgroup.kill"), "1");
    }

    /// Whether the kernel's OOM killer acted inside the job.
    pub(crate) fn oom_killed(&self) -> bool {
        let events = fs::read_to_string(self.dir.join("memory.events")).unwrap_or_default();
        parse_oom_kills(&events) > 0
    }

    /// Kills everything in it, waits (bounded) for it to empty, and removes it.
    pub(crate) fn remove(self) {
        self.kill_all();
        for _ in 0..100 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|s| s.trim().is_empty())
            .unwrap_or(true)
    }
}

/// Reads the `oom_kill` counter from a memory.events file.
pub(crate) fn parse_oom_kills(events: &str) -> u64 {
    events
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == "oom_kill")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_memory_events() {
        let s = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 1\n";
        assert_eq!(super::parse_oom_kills(s), 2);
        assert_eq!(super::parse_oom_kills("oom 0\n"), 0);
        assert_eq!(super::parse_oom_kills(""), 0);
    }
}
