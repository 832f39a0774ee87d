//! The initramfs: a newc cpio holding only `/init` (the static agent), the mount
//! points it needs, and `/dev/console`. Written directly (mtime 0, root-owned), so
//! it is byte-for-byte reproducible and needs no root to create a device node.

use std::io::Write;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Writes the initramfs for `agent` (the agent binary's bytes) to `out`.
pub fn write_initramfs<W: Write>(agent: &[u8], out: W) -> std::io::Result<W> {
    let mut w = out;
    let mut ino = 1;
    for dir in [".", "dev", "proc", "sys", "newroot"] {
        let b = cpio::newc::Builder::new(dir)
            .ino(ino)
            .mode(S_IFDIR | 0o755)
            .nlink(2);
        w = b.write(w, 0).finish()?;
        ino += 1;
    }
    let console = cpio::newc::Builder::new("dev/console")
        .ino(ino)
        .mode(S_IFCHR | 0o600)
        .nlink(1)
        .rdev_major(5)
        .rdev_minor(1);
    w = console.write(w, 0).finish()?;
    ino += 1;
    let size = u32::try_from(agent.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "agent too large for cpio")
    })?;
    let mut f = cpio::newc::Builder::new("init")
        .ino(ino)
        .mode(S_IFREG | 0o755)
        .nlink(1)
        .write(w, size);
    f.write_all(agent)?;
    w = f.finish()?;
    cpio::newc::trailer(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_lists_init_and_console_and_is_reproducible() {
        let a = write_initramfs(b"\x7fELF-agent", Vec::new()).unwrap();
        let b = write_initramfs(b"\x7fELF-agent", Vec::new()).unwrap();
        assert_eq!(a, b);
        let mut names = Vec::new();
        let mut rest = &a[..];
        loop {
            let r = cpio::NewcReader::new(rest).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            names.push((e.name().to_string(), e.mode(), e.rdev_major(), e.mtime()));
            rest = r.finish().unwrap();
        }
        assert!(names
            .iter()
            .any(|(n, m, _, t)| n == "init" && m & 0o777 == 0o755 && *t == 0));
        assert!(names
            .iter()
            .any(|(n, m, maj, _)| n == "dev/console" && m & S_IFCHR != 0 && *maj == 5));
        assert!(names.iter().any(|(n, ..)| n == "newroot"));
    }
}
