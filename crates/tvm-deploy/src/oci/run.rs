//! Running the Debian tools the builder drives.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{io, OciError};

/// Fails with the package to install when `tool` is not on PATH.
pub fn require_tool(tool: &'static str, package: &'static str) -> Result<(), OciError> {
    if find_in_path(tool).is_some() {
        Ok(())
    } else {
        Err(OciError::MissingTool { tool, package })
    }
}

pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

/// Runs `cmd` with its output in `log`; on failure the error carries the log's last lines.
pub fn run(cmd: &mut Command, what: &str, log: &Path) -> Result<(), OciError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let file = fs::File::create(log).map_err(io(format!("create {}", log.display())))?;
    let err = file
        .try_clone()
        .map_err(io(format!("open {}", log.display())))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|source| OciError::Spawn { program, source })?;
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    Err(OciError::Command {
        what: what.to_string(),
        status,
        log: log.to_path_buf(),
        tail,
    })
}

/// Holds the layer cache for this build: two builds at once would race on the layout's tags.
pub fn lock_cache(
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<nix::fcntl::Flock<fs::File>, OciError> {
    use nix::fcntl::{Flock, FlockArg};
    fs::create_dir_all(cache).map_err(io(format!("create {}", cache.display())))?;
    let path = cache.join("lock");
    let file = fs::File::create(&path).map_err(io(format!("create {}", path.display())))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, _)) => {
            progress(&format!(
                "waiting for another build holding {}",
                path.display()
            ));
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| OciError::Io {
                what: format!("lock {}", path.display()),
                source: std::io::Error::from(errno),
            })
        }
    }
}

/// Under `sudo`, hands the outputs back to the user who ran it, so that `cargo clean`
/// and the next unprivileged build can replace them.
pub fn give_back_to_sudo_user(paths: &[&Path]) {
    let id = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    let (Some(uid), Some(gid)) = (id("SUDO_UID"), id("SUDO_GID")) else {
        return;
    };
    for p in paths {
        chown_tree(p, uid, gid);
    }
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    let _ = std::os::unix::fs::lchown(p, Some(uid), Some(gid));
    if p.is_dir() && !p.is_symlink() {
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                chown_tree(&e.path(), uid, gid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_the_log_tail_and_missing_tools_name_their_package() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        let err = run(
            Command::new("sh").args(["-c", "echo first; echo boom >&2; exit 3"]),
            "demo",
            &log,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("demo failed") && msg.contains("boom"), "{msg}");
        run(&mut Command::new("true"), "ok", &log).unwrap();
        let mut said = Vec::new();
        let held = lock_cache(d.path(), &mut |l| said.push(l.to_string())).unwrap();
        drop(held);
        lock_cache(d.path(), &mut |l| said.push(l.to_string())).unwrap();
        assert!(said.is_empty(), "an unheld lock is taken at once: {said:?}");
        let err = require_tool("tvm-no-such-tool", "tvm-pkg").unwrap_err();
        assert!(err.to_string().contains("tvm-pkg"), "{err}");
    }
}
