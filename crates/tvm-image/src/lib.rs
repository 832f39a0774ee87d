//! The guest image: our own kernel, an initramfs with `tvm-agent` as PID 1, and a
//! read-only erofs root filesystem with the language runtimes. Everything comes
//! from Debian packages (`linux-source-6.1`, `mmdebstrap`, `erofs-utils`).
//!
//! Each part is cached under [`cache_dir`] by a hash of its recipe, so a rebuild
//! only redoes what changed:
//!
//! ```text
//! <cache>/kernel/<key>/vmlinux          key: config fragment + kernel source + builder version
//! <cache>/rootfs/<key>/rootfs.erofs     key: language table packages + suite + hooks
//! <cache>/initramfs/<key>/initramfs.cpio key: the agent binary's bytes
//! <cache>/images/<key>/                 hard links to the three, plus manifest.json
//! <cache>/current -> images/<key>       what pyrovm boots by default
//! ```

mod build;
mod initramfs;
mod progress;
mod recipe;

use std::path::{Path, PathBuf};

pub use build::{build, BuildOptions, BuildReport, ImageError, PartReport};
pub use initramfs::write_initramfs;
pub use recipe::{kernel_key, rootfs_key, KERNEL_FRAGMENT};

/// `$TVM_CACHE_DIR`, else `$XDG_CACHE_HOME/tvm`, else `~/.cache/tvm`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TVM_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("tvm");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/root".into());
    home.join(".cache").join("tvm")
}

/// The image made by the last `tvm image build`.
pub fn current_dir(cache: &Path) -> PathBuf {
    cache.join("current")
}

/// The three files of an image directory.
pub fn image_in(dir: &Path) -> tvm_vmm::GuestImage {
    tvm_vmm::GuestImage {
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
        rootfs: dir.join("rootfs.erofs"),
    }
}
