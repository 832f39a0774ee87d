//! A copy of the work dir, kept in the agent's memory, that later jobs start from:
//! test cases each run in a fresh copy of the compiled work dir, so no case sees
//! what another wrote.
//!
//! Both requests come between jobs, when no process of a job is left (a one-shot
//! job's cgroup is emptied when its program exits), so nothing moves the tree
//! under the walk. Symlinks are copied as links, never followed.

use std::fs;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tvm_proto::{FileErrorKind, JOB_UID, WORK_DIR};

use crate::files::FileError;

/// Directories deeper than this are not copied (a job cannot make the agent recurse
/// without bound).
const MAX_DEPTH: usize = 64;
/// At most this many entries.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: PathBuf },
}

/// The saved work dir: paths relative to it, parents before children.
#[derive(Debug, Default)]
pub(crate) struct Checkpoint {
    entries: Vec<(PathBuf, Entry)>,
}

fn too_large(what: impl std::fmt::Display) -> FileError {
    FileError {
        kind: FileErrorKind::TooLarge,
        message: format!("the work dir is too large to keep for the test cases: {what}"),
    }
}

fn io(path: &Path, e: std::io::Error) -> FileError {
    FileError {
        kind: FileErrorKind::Io,
        message: format!("{}: {e}", path.display()),
    }
}

impl Checkpoint {
    /// Copies the work dir, refusing one holding more than `max_bytes` of file data.
    pub(crate) fn take(max_bytes: u64) -> Result<Self, FileError> {
        let mut cp = Self::default();
        let mut bytes = 0u64;
        cp.walk(Path::new(WORK_DIR), Path::new(""), 0, &mut bytes, max_bytes)?;
        Ok(cp)
    }

    fn walk(
        &mut self,
        dir: &Path,
        rel: &Path,
        depth: usize,
        bytes: &mut u64,
        max_bytes: u64,
    ) -> Result<(), FileError> {
        if depth > MAX_DEPTH {
            return Err(too_large(format!("deeper than {MAX_DEPTH} directories")));
        }
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            if self.entries.len() >= MAX_ENTRIES {
                return Err(too_large(format!("more than {MAX_ENTRIES} entries")));
            }
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
            let mode = meta.mode() & 0o7777 & !0o6000; // never keep setuid/setgid
            let ft = meta.file_type();
            if ft.is_dir() {
                self.entries.push((rel.clone(), Entry::Dir { mode }));
                self.walk(&path, &rel, depth + 1, bytes, max_bytes)?;
            } else if ft.is_file() {
                *bytes += meta.len();
                if *bytes > max_bytes {
                    return Err(too_large(format!("more than {max_bytes} bytes")));
                }
                let content = fs::read(&path).map_err(|e| io(&path, e))?;
                self.entries.push((rel, Entry::File { mode, content }));
            } else if ft.is_symlink() {
                let target = fs::read_link(&path).map_err(|e| io(&path, e))?;
                self.entries.push((rel, Entry::Symlink { target }));
            }
            // FIFOs, sockets and devices are not carried over.
        }
        Ok(())
    }

    /// Empties the work dir and /tmp, then puts the saved tree back, owned by the job user.
    pub(crate) fn restore(&self) -> Result<(), FileError> {
        for dir in [WORK_DIR, "/tmp"] {
            empty(Path::new(dir))?;
        }
        let root = Path::new(WORK_DIR);
        for (rel, entry) in &self.entries {
            let path = root.join(rel);
            match entry {
                Entry::Dir { mode } => {
                    fs::create_dir(&path).map_err(|e| io(&path, e))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                        .map_err(|e| io(&path, e))?;
                }
                Entry::File { mode, content } => {
                    fs::write(&path, content).map_err(|e| io(&path, e))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                        .map_err(|e| io(&path, e))?;
                }
                Entry::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &path).map_err(|e| io(&path, e))?;
                }
            }
            lchown(&path, Some(JOB_UID), Some(JOB_UID)).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }
}

/// Removes everything inside `dir` (never following a symlink), keeping `dir`.
fn empty(dir: &Path) -> Result<(), FileError> {
    for e in fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
        let path = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        let r = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        r.map_err(|e| io(&path, e))?;
    }
    Ok(())
}
