//! What each cached part depends on. Change any input and the key changes.

use sha2::{Digest, Sha256};
use tvm_api::LanguageTable;

/// The kernel config fragment kept in the repo.
pub const KERNEL_FRAGMENT: &str = include_str!("../../../guest/kernel/tvm.config");

/// Bump when the build steps themselves change in a way that alters outputs.
const KERNEL_RECIPE_VERSION: &str = "kernel-v1";
/// v3: `/home/user` is a symlink to the work dir (the E2B SDKs' home and default cwd).
const ROOTFS_RECIPE_VERSION: &str = "rootfs-v3";

/// Debian suite the rootfs is built from.
pub const SUITE: &str = "bookworm";

/// Packages every rootfs gets, besides the language table's.
pub const BASE_PACKAGES: &[&str] = &["ca-certificates"];

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Key of the kernel: fragment, source identity (package version or file size), recipe version.
pub fn kernel_key(source_identity: &str) -> String {
    let mut h = Sha256::new();
    h.update(KERNEL_RECIPE_VERSION);
    h.update([0]);
    h.update(source_identity);
    h.update([0]);
    h.update(KERNEL_FRAGMENT);
    hex(h.finalize())[..16].to_string()
}

/// The packages installed into the rootfs.
pub fn rootfs_packages(table: &LanguageTable) -> Vec<String> {
    let mut p = table.packages();
    p.extend(BASE_PACKAGES.iter().map(|s| s.to_string()));
    p.sort();
    p.dedup();
    p
}

/// Key of the rootfs: suite, packages, the version checks, recipe version.
pub fn rootfs_key(table: &LanguageTable) -> String {
    let mut h = Sha256::new();
    h.update(ROOTFS_RECIPE_VERSION);
    h.update([0]);
    h.update(SUITE);
    for p in rootfs_packages(table) {
        h.update([0]);
        h.update(p);
    }
    for l in table.iter() {
        h.update([1]);
        h.update(&l.version_package);
        h.update([0]);
        h.update(&l.version);
        if let Some(setup) = &l.setup {
            h.update([2]);
            h.update(setup);
        }
    }
    hex(h.finalize())[..16].to_string()
}

/// Key of anything else: a hash of its bytes.
pub fn bytes_key(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    hex(h.finalize())[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_sensitive() {
        assert_eq!(kernel_key("6.1.1"), kernel_key("6.1.1"));
        assert_ne!(kernel_key("6.1.1"), kernel_key("6.1.2"));
        let t = LanguageTable::builtin();
        assert_eq!(rootfs_key(t), rootfs_key(t));
        assert_ne!(bytes_key(&[b"a"]), bytes_key(&[b"b"]));
        assert!(rootfs_packages(t).contains(&"nodejs".to_string()));
    }
}
