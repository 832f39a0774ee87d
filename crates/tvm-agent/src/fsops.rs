//! File-system operations on absolute guest paths (`Fs`, protocol version 6), made
//! with the job user's permissions.
//!
//! The agent runs as root; for these operations the main thread takes the job
//! user's file-system ids (`setfsuid`/`setfsgid` act on the calling thread only, and
//! leaving uid 0 drops the thread's file capabilities such as `CAP_DAC_OVERRIDE`).
//! So the kernel decides what may be read, written or removed exactly as it would
//! for a program of the sandbox: the work dir and /tmp are the job user's, the
//! read-only root is readable, the agent's own files are not reachable. New files
//! and directories are owned by the job user.

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::UNIX_EPOCH;

use tvm_proto::{EntryKind, FileErrorKind, FsEntry, FsOp, GuestMsg, JOB_UID, MAX_FS_ENTRIES};

/// Longest path accepted.
const MAX_PATH: usize = 4096;

/// Answers one operation as the job user.
pub(crate) fn serve(op: FsOp) -> GuestMsg {
    let _user = AsJobUser::enter();
    match answer(op) {
        Ok(msg) => msg,
        Err(e) => e,
    }
}

type Answer = Result<GuestMsg, GuestMsg>;

fn answer(op: FsOp) -> Answer {
    match op {
        FsOp::Stat { path } => {
            check(&path)?;
            Ok(entries(vec![entry(&path, &path)?]))
        }
        FsOp::List { path, depth } => {
            check(&path)?;
            let meta = fs::metadata(&path).map_err(|e| io_error(&path, &e))?;
            if !meta.is_dir() {
                return Err(error(
                    FileErrorKind::WrongType,
                    format!("{path} is not a directory"),
                ));
            }
            let mut out = Vec::new();
            walk(&path, depth.max(1), &mut out)?;
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(entries(out))
        }
        FsOp::MakeDir { path } => {
            check(&path)?;
            if fs::symlink_metadata(&path).is_ok() {
                return Err(error(FileErrorKind::Exists, format!("{path} exists")));
            }
            fs::create_dir_all(&path).map_err(|e| io_error(&path, &e))?;
            Ok(entries(vec![entry(&path, &path)?]))
        }
        FsOp::Move { from, to } => {
            check(&from)?;
            check(&to)?;
            fs::rename(&from, &to).map_err(|e| io_error(&from, &e))?;
            Ok(entries(vec![entry(&to, &to)?]))
        }
        FsOp::Remove { path } => {
            check(&path)?;
            let meta = fs::symlink_metadata(&path).map_err(|e| io_error(&path, &e))?;
            let r = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            r.map_err(|e| io_error(&path, &e))?;
            Ok(GuestMsg::Done)
        }
        FsOp::Read { path, max_bytes } => {
            check(&path)?;
            let mut f = fs::File::open(&path).map_err(|e| io_error(&path, &e))?;
            let meta = f.metadata().map_err(|e| io_error(&path, &e))?;
            if !meta.is_file() {
                return Err(error(
                    FileErrorKind::WrongType,
                    format!("{path} is not a regular file"),
                ));
            }
            if meta.len() > max_bytes {
                return Err(too_large(&path, meta.len(), max_bytes));
            }
            let mut content = Vec::with_capacity(meta.len() as usize);
            // A file growing while it is read is cut at the limit, then refused.
            (&mut f)
                .take(max_bytes + 1)
                .read_to_end(&mut content)
                .map_err(|e| io_error(&path, &e))?;
            if content.len() as u64 > max_bytes {
                return Err(too_large(&path, content.len() as u64, max_bytes));
            }
            Ok(GuestMsg::FileData { content })
        }
        FsOp::Write { path, content } => {
            check(&path)?;
            if let Some(parent) = Path::new(&path).parent() {
                fs::create_dir_all(parent).map_err(|e| io_error(&path, &e))?;
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&path)
                .map_err(|e| io_error(&path, &e))?;
            std::io::Write::write_all(&mut f, &content).map_err(|e| io_error(&path, &e))?;
            Ok(entries(vec![entry(&path, &path)?]))
        }
    }
}

/// Adds the entries under `dir` (shown as `shown`), `depth` levels deep; symlinks
/// are listed, never followed.
fn walk(dir: &str, depth: u32, out: &mut Vec<FsEntry>) -> Result<(), GuestMsg> {
    let rd = fs::read_dir(dir).map_err(|e| io_error(dir, &e))?;
    for item in rd {
        let item = item.map_err(|e| io_error(dir, &e))?;
        if out.len() >= MAX_FS_ENTRIES {
            return Err(error(
                FileErrorKind::TooLarge,
                format!("{dir} has more than {MAX_FS_ENTRIES} entries at this depth"),
            ));
        }
        let name = item.file_name().to_string_lossy().into_owned();
        let shown = format!("{}/{name}", dir.trim_end_matches('/'));
        let e = entry(&shown, &shown)?;
        let descend = depth > 1 && e.kind == EntryKind::Dir && e.symlink_target.is_none();
        out.push(e);
        if descend {
            walk(&shown, depth - 1, out)?;
        }
    }
    Ok(())
}

/// The entry for `path` (reported as `shown`). A symlink reports its target's kind
/// and size when the target exists, and the target itself.
fn entry(path: &str, shown: &str) -> Result<FsEntry, GuestMsg> {
    let lmeta = fs::symlink_metadata(path).map_err(|e| io_error(path, &e))?;
    let (meta, target) = if lmeta.file_type().is_symlink() {
        let target = fs::read_link(path)
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        (fs::metadata(path).ok(), target)
    } else {
        (None, None)
    };
    let m = meta.as_ref().unwrap_or(&lmeta);
    let kind = if m.is_file() {
        EntryKind::File
    } else if m.is_dir() {
        EntryKind::Dir
    } else if m.file_type().is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    };
    let modified_unix_ns = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let name = Path::new(shown)
        .file_name()
        .map_or_else(|| "/".to_string(), |n| n.to_string_lossy().into_owned());
    Ok(FsEntry {
        name,
        path: shown.to_string(),
        kind,
        size: if kind == EntryKind::Dir { 0 } else { m.len() },
        mode: m.mode(),
        uid: m.uid(),
        gid: m.gid(),
        modified_unix_ns,
        symlink_target: target,
    })
}

/// Paths are absolute, bounded, without NUL (the host has checked; this is the
/// guest's own line).
fn check(path: &str) -> Result<(), GuestMsg> {
    if !path.starts_with('/') || path.len() > MAX_PATH || path.contains('\0') {
        return Err(error(
            FileErrorKind::InvalidPath,
            format!("{path:?} is not an absolute path"),
        ));
    }
    Ok(())
}

fn entries(entries: Vec<FsEntry>) -> GuestMsg {
    GuestMsg::Entries { entries }
}

fn error(kind: FileErrorKind, message: String) -> GuestMsg {
    GuestMsg::FileError { kind, message }
}

fn too_large(path: &str, got: u64, max: u64) -> GuestMsg {
    error(
        FileErrorKind::TooLarge,
        format!("{path} is {got} bytes; at most {max} bytes may be read at once"),
    )
}

fn io_error(path: &str, e: &std::io::Error) -> GuestMsg {
    let kind = match e.kind() {
        ErrorKind::NotFound => FileErrorKind::NotFound,
        ErrorKind::PermissionDenied => FileErrorKind::Denied,
        ErrorKind::AlreadyExists => FileErrorKind::Exists,
        ErrorKind::NotADirectory | ErrorKind::IsADirectory | ErrorKind::DirectoryNotEmpty => {
            FileErrorKind::WrongType
        }
        ErrorKind::StorageFull | ErrorKind::FileTooLarge => FileErrorKind::TooLarge,
        _ if e.raw_os_error() == Some(libc::EROFS) => FileErrorKind::Denied,
        _ => FileErrorKind::Io,
    };
    error(kind, format!("{path}: {e}"))
}

/// The calling thread's file-system ids are the job user's until dropped.
struct AsJobUser;

impl AsJobUser {
    fn enter() -> Self {
        // SAFETY: setfsgid/setfsuid take plain ids and change only this thread's
        // file-system credentials; they cannot fail in a way that matters here (the
        // agent is root, so any id is allowed).
        unsafe {
            libc::setfsgid(JOB_UID);
            libc::setfsuid(JOB_UID);
        }
        Self
    }
}

impl Drop for AsJobUser {
    fn drop(&mut self) {
        // SAFETY: as above; back to root (the thread's file capabilities return with
        // fsuid 0).
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_nul_paths_are_refused() {
        for p in ["work/x", "", "/a\0b"] {
            match answer(FsOp::Stat { path: p.into() }) {
                Err(GuestMsg::FileError { kind, .. }) => {
                    assert_eq!(kind, FileErrorKind::InvalidPath, "{p:?}")
                }
                other => panic!("{p:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn write_stat_list_move_remove_round_trip() {
        let dir = std::env::temp_dir().join(format!("tvm-fsops-{}", std::process::id()));
        let d = dir.to_string_lossy().into_owned();
        let file = format!("{d}/sub/a.txt");
        let wrote = answer(FsOp::Write {
            path: file.clone(),
            content: b"hello".to_vec(),
        });
        match wrote {
            Ok(GuestMsg::Entries { entries }) => {
                assert_eq!(entries[0].name, "a.txt");
                assert_eq!(entries[0].size, 5);
                assert_eq!(entries[0].kind, EntryKind::File);
            }
            other => panic!("{other:?}"),
        }
        match answer(FsOp::MakeDir { path: d.clone() }) {
            Err(GuestMsg::FileError { kind, .. }) => assert_eq!(kind, FileErrorKind::Exists),
            other => panic!("{other:?}"),
        }
        match answer(FsOp::List {
            path: d.clone(),
            depth: 2,
        }) {
            Ok(GuestMsg::Entries { entries }) => {
                let paths: Vec<_> = entries.iter().map(|e| e.path.clone()).collect();
                assert_eq!(paths, vec![format!("{d}/sub"), file.clone()]);
            }
            other => panic!("{other:?}"),
        }
        let moved = format!("{d}/b.txt");
        assert!(answer(FsOp::Move {
            from: file.clone(),
            to: moved.clone()
        })
        .is_ok());
        match answer(FsOp::Read {
            path: moved.clone(),
            max_bytes: 4,
        }) {
            Err(GuestMsg::FileError { kind, .. }) => assert_eq!(kind, FileErrorKind::TooLarge),
            other => panic!("{other:?}"),
        }
        match answer(FsOp::Read {
            path: moved,
            max_bytes: 5,
        }) {
            Ok(GuestMsg::FileData { content }) => assert_eq!(content, b"hello"),
            other => panic!("{other:?}"),
        }
        assert_eq!(answer(FsOp::Remove { path: d.clone() }), Ok(GuestMsg::Done));
        match answer(FsOp::Stat { path: d }) {
            Err(GuestMsg::FileError { kind, .. }) => assert_eq!(kind, FileErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
