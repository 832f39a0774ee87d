//! Unix socket paths longer than `sun_path` (108 bytes) — a jail under a runtime dir
//! easily is — are reached through `/proc/self/fd/<dir fd>/<name>`, which the kernel
//! resolves like the real path while the directory stays open.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Longest path `connect`/`bind` accept (sun_path minus the NUL).
pub const MAX_SUN_PATH: usize = 107;

/// A path usable for `connect`/`bind`; keep it alive until the call returns.
#[derive(Debug)]
pub struct SocketPath {
    _dir: Option<File>,
    path: PathBuf,
}

impl SocketPath {
    pub fn new(p: &Path) -> std::io::Result<Self> {
        if p.as_os_str().len() <= MAX_SUN_PATH {
            return Ok(Self {
                _dir: None,
                path: p.to_path_buf(),
            });
        }
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "socket path has no parent",
            ));
        };
        let dir = File::open(parent)?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        if path.as_os_str().len() > MAX_SUN_PATH {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "socket file name too long",
            ));
        }
        Ok(Self {
            _dir: Some(dir),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_paths_are_reachable() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("s.sock");
        assert!(sock.as_os_str().len() > MAX_SUN_PATH);
        let bind_at = SocketPath::new(&sock).unwrap();
        let l = tokio::net::UnixListener::bind(bind_at.path()).unwrap();
        assert!(sock.exists(), "bound at the real path");
        let at = SocketPath::new(&sock).unwrap();
        let (c, s) = tokio::join!(tokio::net::UnixStream::connect(at.path()), l.accept());
        c.unwrap();
        s.unwrap();
        // Short paths pass through unchanged.
        assert_eq!(
            SocketPath::new(Path::new("/tmp/x.sock")).unwrap().path(),
            Path::new("/tmp/x.sock")
        );
    }
}
