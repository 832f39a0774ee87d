//! The job's cgroup (v2, inside the guest): memory, pids, and kill-all.

use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug)]
pub(crate) struct JobCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, if it was opened ahead of time.
    procs: Option<File>,
}

/// The first one-shot job's cgroup, made while the VM waits for its job (see
/// [`JobCgroup::prepare`]): what does not depend on the job is written, and the
/// files the job writes are open, so the job itself costs two writes.
struct Ahead {
    dir: PathBuf,
    memory_max: File,
    pids_max: File,
    procs: File,
}

static AHEAD: Mutex<Option<Ahead>> = Mutex::new(None);

/// Name of the first one-shot job's cgroup.
const FIRST: &str = "job";

impl JobCgroup {
    /// Makes the first one-shot job's cgroup ahead of its job: its fixed settings
    /// written and the files it needs open. Nothing runs in it until the job.
    pub(crate) fn prepare() -> std::io::Result<()> {
        let mut ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner());
        if ahead.is_some() {
            return Ok(());
        }
        fs::write(format!("{ROOT}/cgroup.subtree_control"), "+memory +pids")?;
        let dir = PathBuf::from(ROOT).join(FIRST);
        fs::create_dir_all(&dir)?;
        let _ = fs::write(dir.join("memory.swap.max"), "0");
        fs::write(dir.join("memory.oom.group"), "1")?;
        let open = |name: &str| fs::OpenOptions::new().write(true).open(dir.join(name));
        *ahead = Some(Ahead {
            memory_max: open("memory.max")?,
            pids_max: open("pids.max")?,
            procs: open("cgroup.procs")?,
            dir,
        });
        Ok(())
    }

    /// A one-shot job's cgroup: `job` for the first (made ahead of time by
    /// [`JobCgroup::prepare`]), `job2`, `job3`, ... for later jobs of the same VM.
    pub(crate) fn create(memory_bytes: u64, max_processes: u32) -> std::io::Result<Self> {
        static JOBS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n == 1 {
            let ahead = AHEAD.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(mut a) = ahead {
                a.memory_max
                    .write_all(memory_bytes.to_string().as_bytes())?;
                a.pids_max.write_all(max_processes.to_string().as_bytes())?;
                return Ok(Self {
                    dir: a.dir,
                    procs: Some(a.procs),
                });
            }
            return Self::create_named(FIRST, memory_bytes, max_processes);
        }
        Self::create_named(&format!("job{n}"), memory_bytes, max_processes)
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
        Ok(Self { dir, procs: None })
    }

    /// A job's cgroup inside a sandbox's: an OOM kill ends the whole job (and only it).
    pub(crate) fn child(&self, name: &str) -> std::io::Result<Self> {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("memory.oom.group"), "1")?;
        Ok(Self { dir, procs: None })
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

    /// `cgroup.procs` for writing, opened before fork so the child can join with
    /// one write.
    pub(crate) fn open_procs(&self) -> std::io::Result<File> {
        match &self.procs {
            Some(f) => f.try_clone(),
            None => fs::OpenOptions::new()
                .write(true)
                .open(self.dir.join("cgroup.procs")),
        }
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
