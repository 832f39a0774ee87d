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

/// The apt source files under `apt_dir` (classic `sources.list` and `sources.list.d/*.list`,
/// or deb822 `*.sources`) with an active line naming `suite` (or `suite-updates` and the
/// like), in apt's order. Shared by the guest rootfs and the OCI base image builders.
pub fn apt_source_files(apt_dir: &Path, suite: &str) -> Vec<PathBuf> {
    let mut files = vec![apt_dir.join("sources.list")];
    if let Ok(rd) = std::fs::read_dir(apt_dir.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let suite_dash = format!("{suite}-");
    files
        .into_iter()
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("list" | "sources")
            )
        })
        .filter(|p| {
            std::fs::read_to_string(p).is_ok_and(|t| {
                t.lines().any(|l| {
                    let l = l.trim_start();
                    !l.starts_with('#')
                        && l.split_whitespace()
                            .any(|w| w == suite || w.starts_with(&suite_dash))
                })
            })
        })
        .collect()
}

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

/// The installed version of each language, by name, from an image's manifest
/// (upstream versions: `12.2.0-14+deb12u1` is `12.2.0`). Empty when the image has
/// no manifest (one assembled by hand).
pub fn installed_versions(dir: &Path) -> std::collections::BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        #[serde(default)]
        versions: Vec<(String, String)>,
    }
    std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        .map(|m| {
            m.versions
                .into_iter()
                .map(|(lang, v)| (lang, upstream_version(&v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The upstream part of a Debian version: no epoch, no Debian revision, no
/// repack suffix (`+dfsg`, `~deb12u1`); `A+reallyB` is B.
pub fn upstream_version(debian: &str) -> String {
    let v = debian.split_once(':').map_or(debian, |(_, v)| v);
    let v = v.rsplit_once('-').map_or(v, |(v, _)| v);
    let v = v.split_once("+really").map_or(v, |(_, v)| v);
    v.split(['+', '~']).next().unwrap_or(v).to_string()
}

/// The three files of an image directory.
pub fn image_in(dir: &Path) -> tvm_vmm::GuestImage {
    tvm_vmm::GuestImage {
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
        rootfs: dir.join("rootfs.erofs"),
    }
}

/// The guest image tests boot (`$TVM_IMAGE_DIR`, else the cache's `current`), or
/// `None` with `SKIPPED: <reason>` printed when there is none. With `TVM_REQUIRE_VM`
/// set (as `make test` does) a missing image is a failure, not a skip.
pub fn image_for_tests() -> Option<PathBuf> {
    let dir = std::env::var_os("TVM_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| current_dir(&cache_dir()));
    if image_in(&dir).check().is_ok() {
        return Some(dir);
    }
    let reason = format!("no guest image at {} (run `make image`)", dir.display());
    assert!(
        std::env::var_os("TVM_REQUIRE_VM").is_none(),
        "TVM_REQUIRE_VM is set but {reason}"
    );
    eprintln!("SKIPPED: {reason}");
    None
}

#[cfg(test)]
mod version_tests {
    use super::upstream_version as up;

    #[test]
    fn debian_versions_become_upstream_ones() {
        assert_eq!(up("12.2.0-14+deb12u1"), "12.2.0");
        assert_eq!(up("4:12.2.0-3"), "12.2.0");
        assert_eq!(up("1.63.0+dfsg1-2"), "1.63.0");
        assert_eq!(up("17.0.21.1+2-1~deb12u1"), "17.0.21.1");
        assert_eq!(up("3.1.7+really3.1.2-0+deb12u1"), "3.1.2");
        assert_eq!(up("18.20.4+dfsg-1~deb12u3"), "18.20.4");
        assert_eq!(up("5.2.15-2+b9"), "5.2.15");
        assert_eq!(up("3.11"), "3.11");
    }
}
