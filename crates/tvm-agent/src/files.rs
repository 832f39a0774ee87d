//! Files under the work dir, for the host: write, read, list, collect.
//!
//! The agent runs as root and the work dir belongs to the job, which may have put
//! symlinks anywhere in it. Every path is therefore resolved with `openat2(2)` and
//! `RESOLVE_BENEATH` from a descriptor of the work dir: the kernel refuses any
//! resolution that would leave it (`..`, an absolute symlink, one pointing out),
//! whatever the job did. A write goes to a temporary file in the target's
//! directory and is renamed over the target, so a failed write changes nothing.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, Mode, SFlag};
use tvm_proto::{
    check_relative_path, DirEntry, EntryKind, FileErrorKind, GuestMsg, JobFile, JOB_UID, WORK_DIR,
};

/// A refused or failed file operation, as it goes back to the host.
#[derive(Debug)]
pub(crate) struct FileError {
    pub(crate) kind: FileErrorKind,
    pub(crate) message: String,
}

impl FileError {
    fn new(kind: FileErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn errno(path: &str, e: Errno) -> Self {
        let kind = match e {
            Errno::ENOENT => FileErrorKind::NotFound,
            Errno::EXDEV | Errno::ELOOP => {
                return Self::new(
                    FileErrorKind::InvalidPath,
                    format!("{path}: resolves outside the work dir (through a symlink)"),
                )
            }
            Errno::ENOTDIR | Errno::EISDIR | Errno::EEXIST | Errno::ENOTEMPTY => {
                FileErrorKind::WrongType
            }
            Errno::EFBIG | Errno::ENOSPC | Errno::EDQUOT => FileErrorKind::TooLarge,
            Errno::EAGAIN => {
                return Self::new(
                    FileErrorKind::Io,
                    format!("{path}: busy (a process in the sandbox holds a lease on it); retry"),
                )
            }
            _ => FileErrorKind::Io,
        };
        Self::new(kind, format!("{path}: {}", e.desc()))
    }

    fn io(path: &str, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Self::errno(path, Errno::from_raw(n)),
            None => Self::new(FileErrorKind::Io, format!("{path}: {e}")),
        }
    }

    pub(crate) fn into_msg(self) -> GuestMsg {
        GuestMsg::FileError {
            kind: self.kind,
            message: self.message,
        }
    }
}

fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful open and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn work_dir() -> Result<OwnedFd, FileError> {
    nix::fcntl::open(
        WORK_DIR,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(owned)
    .map_err(|e| FileError::errno(WORK_DIR, e))
}

/// Opens `rel` beneath the work dir, never leaving it.
fn open_beneath(root: &OwnedFd, rel: &str, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // EAGAIN: a concurrent rename raced the resolution, or (with O_NONBLOCK) the
    // job holds a lease on the file. Retry a little, never spin.
    for attempt in 0..OPEN_ATTEMPTS {
        match openat2(root.as_raw_fd(), rel, how) {
            Err(Errno::EAGAIN | Errno::EINTR) if attempt + 1 < OPEN_ATTEMPTS => {
                std::thread::sleep(std::time::Duration::from_millis(1 << attempt.min(6)));
            }
            r => return r.map(owned),
        }
    }
    Err(Errno::EAGAIN)
}

/// Tries of one open before it fails as busy (about 0.3 s in all).
const OPEN_ATTEMPTS: u32 = 10;

/// Opens a directory beneath the work dir (`""`: the work dir itself).
fn open_dir(root: &OwnedFd, rel: &str, extra: OFlag) -> Result<OwnedFd, Errno> {
    let rel = if rel.is_empty() { "." } else { rel };
    open_beneath(
        root,
        rel,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | extra,
        Mode::empty(),
    )
}

fn checked(rel: &str) -> Result<(), FileError> {
    check_relative_path(rel)
        .map_err(|e| FileError::new(FileErrorKind::InvalidPath, format!("{rel:?}: {e}")))
}

/// Makes every parent directory of `rel` (owned by the job user) and returns the
/// directory that will hold it.
fn make_parents(root: &OwnedFd, rel: &str) -> Result<OwnedFd, FileError> {
    let parts: Vec<&str> = rel.split('/').collect();
    let mut prefix = String::new();
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let parent = if i == 0 {
            None
        } else {
            Some(
                open_dir(root, &prefix, OFlag::empty())
                    .map_err(|e| FileError::errno(&prefix, e))?,
            )
        };
        let parent_fd = parent.as_ref().map_or(root.as_raw_fd(), |f| f.as_raw_fd());
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        match mkdirat(Some(parent_fd), *part, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {
                nix::unistd::fchownat(
                    Some(parent_fd),
                    *part,
                    Some(JOB_UID.into()),
                    Some(JOB_UID.into()),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| FileError::errno(&prefix, e))?;
            }
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(FileError::errno(&prefix, e)),
        }
    }
    open_dir(root, &prefix, OFlag::empty()).map_err(|e| FileError::errno(&prefix, e))
}

/// Writes one file, atomically: a temporary file in the same directory, renamed
/// over the target. Parents are made as needed; everything is owned by the job user.
pub(crate) fn write(f: &JobFile) -> Result<(), FileError> {
    checked(&f.path)?;
    let root = work_dir()?;
    let dir = make_parents(&root, &f.path)?;
    let name = f.path.rsplit('/').next().unwrap_or(&f.path);
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(0o644))
        .resolve(ResolveFlag::RESOLVE_BENEATH);
    // An unpredictable name, and another on a clash: a job that pre-creates names
    // cannot block uploads.
    let mut attempt = 0;
    let (tmp, fd) = loop {
        let tmp = format!(".tvm-upload-{:016x}", unpredictable());
        match openat2(dir.as_raw_fd(), tmp.as_str(), how) {
            Ok(fd) => break (tmp, owned(fd)),
            Err(Errno::EEXIST | Errno::EAGAIN | Errno::EINTR) if attempt < 8 => attempt += 1,
            Err(e) => return Err(FileError::errno(&f.path, e)),
        }
    };
    let mut file = File::from(fd);
    let written = file
        .write_all(&f.content)
        .and_then(|()| std::os::unix::fs::fchown(&file, Some(JOB_UID), Some(JOB_UID)))
        .map_err(|e| FileError::io(&f.path, e))
        .and_then(|()| {
            nix::sys::stat::fchmod(file.as_raw_fd(), Mode::from_bits_truncate(0o644))
                .map_err(|e| FileError::errno(&f.path, e))
        })
        .and_then(|()| {
            nix::fcntl::renameat(
                Some(dir.as_raw_fd()),
                tmp.as_str(),
                Some(dir.as_raw_fd()),
                name,
            )
            .map_err(|e| FileError::errno(&f.path, e))
        });
    if written.is_err() {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            tmp.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
    written
}

/// 64 bits from the kernel's RNG (the clock and a counter if that fails).
fn unpredictable() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut b = [0u8; 8];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_ne_bytes(b);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    now ^ N
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .rotate_left(32)
}

/// Removes one file beneath the work dir (never through a symlink: the last
/// component is unlinked, not followed); errors are ignored.
pub(crate) fn remove(rel: &str) {
    if check_relative_path(rel).is_err() {
        return;
    }
    let Ok(root) = work_dir() else { return };
    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    if let Ok(dir) = open_dir(&root, parent, OFlag::empty()) {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// Reads one regular file, refusing one larger than `max_bytes`.
pub(crate) fn read(rel: &str, max_bytes: u64) -> Result<Vec<u8>, FileError> {
    checked(rel)?;
    let root = work_dir()?;
    read_beneath(&root, rel, max_bytes)
}

fn read_beneath(root: &OwnedFd, rel: &str, max_bytes: u64) -> Result<Vec<u8>, FileError> {
    // O_NONBLOCK: opening a FIFO the job left must not hang the agent.
    let fd = open_beneath(
        root,
        rel,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| FileError::errno(rel, e))?;
    let st = fstat(fd.as_raw_fd()).map_err(|e| FileError::errno(rel, e))?;
    let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFDIR {
        return Err(FileError::new(
            FileErrorKind::WrongType,
            format!("{rel}: is a directory (list it instead)"),
        ));
    }
    if kind != SFlag::S_IFREG {
        return Err(FileError::new(
            FileErrorKind::WrongType,
            format!("{rel}: is not a regular file"),
        ));
    }
    if st.st_size as u64 > max_bytes {
        return Err(FileError::new(
            FileErrorKind::TooLarge,
            format!(
                "{rel}: is {} bytes, more than the {max_bytes} allowed",
                st.st_size
            ),
        ));
    }
    let mut data = Vec::with_capacity(st.st_size as usize);
    File::from(fd)
        .take(max_bytes + 1)
        .read_to_end(&mut data)
        .map_err(|e| FileError::io(rel, e))?;
    if data.len() as u64 > max_bytes {
        return Err(FileError::new(
            FileErrorKind::TooLarge,
            format!("{rel}: grew past the {max_bytes} bytes allowed while being read"),
        ));
    }
    Ok(data)
}

/// Most entries one listing returns (a frame must hold them).
const MAX_LIST_ENTRIES: usize = 10_000;

/// Lists one directory (`""`: the work dir), sorted by name; `true` when entries
/// were left out (more than a frame carries).
pub(crate) fn list(rel: &str) -> Result<(Vec<DirEntry>, bool), FileError> {
    let root = work_dir()?;
    if !rel.is_empty() {
        checked(rel)?;
    }
    let dir = open_dir(&root, rel, OFlag::empty())
        .map_err(|e| FileError::errno(if rel.is_empty() { "." } else { rel }, e))?;
    let (mut entries, mut truncated) = read_dir(&dir).map_err(|e| FileError::errno(rel, e))?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    truncated |= entries.len() > MAX_LIST_ENTRIES;
    entries.truncate(MAX_LIST_ENTRIES);
    Ok((entries, truncated))
}

/// A directory's entries; `true` when there were more than a frame can carry.
fn read_dir(dir: &OwnedFd) -> Result<(Vec<DirEntry>, bool), Errno> {
    let fd = nix::unistd::dup(dir.as_raw_fd())?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let Ok(st) = fstatat(
            Some(dir.as_raw_fd()),
            entry.file_name(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            continue;
        };
        let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => EntryKind::File,
            SFlag::S_IFDIR => EntryKind::Dir,
            SFlag::S_IFLNK => EntryKind::Symlink,
            _ => EntryKind::Other,
        };
        let size = if kind == EntryKind::File {
            st.st_size as u64
        } else {
            0
        };
        out.push(DirEntry { name, kind, size });
        if out.len() > MAX_LIST_ENTRIES * 4 {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

/// How deep and how wide [`collect`] walks before it stops looking.
const MAX_WALK_DEPTH: usize = 32;
const MAX_WALK_ENTRIES: usize = 100_000;

/// Regular files whose relative path matches one of `patterns` (symlinks are not
/// followed), sorted by path, within the caps; `true` when a cap left files out.
pub(crate) fn collect(
    patterns: &[String],
    max_files: u32,
    max_bytes: u64,
) -> Result<(Vec<JobFile>, bool), FileError> {
    let compiled: Vec<glob::Pattern> = patterns
        .iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect();
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let root = work_dir()?;
    let mut matched = Vec::new();
    let mut seen = 0usize;
    // Set when a cap stopped the walk: files may match that were never looked at.
    let mut walk_cut = false;
    let mut stack = vec![String::new()];
    'walk: while let Some(dir) = stack.pop() {
        // Never through a symlink (the walk only descends into real directories).
        let fd = open_dir(&root, &dir, OFlag::O_NOFOLLOW);
        let Ok(fd) = fd else { continue };
        let Ok((entries, cut)) = read_dir(&fd) else {
            continue;
        };
        walk_cut |= cut;
        for e in entries {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                walk_cut = true;
                break 'walk;
            }
            let rel = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            match e.kind {
                EntryKind::Dir if rel.split('/').count() < MAX_WALK_DEPTH => stack.push(rel),
                EntryKind::Dir => walk_cut = true,
                EntryKind::File if compiled.iter().any(|p| p.matches_with(&rel, opts)) => {
                    matched.push((rel, e.size));
                }
                _ => {}
            }
        }
    }
    matched.sort();
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut truncated = walk_cut;
    for (rel, size) in matched {
        if files.len() as u32 >= max_files || total + size > max_bytes {
            truncated = true;
            continue;
        }
        match read_beneath(&root, &rel, max_bytes - total) {
            Ok(content) => {
                total += content.len() as u64;
                files.push(JobFile { path: rel, content });
            }
            Err(e) if e.kind == FileErrorKind::TooLarge => truncated = true,
            Err(_) => {}
        }
    }
    Ok((files, truncated))
}
