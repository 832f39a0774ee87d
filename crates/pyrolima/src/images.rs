//! Pinned guest images with their digests, taken from Lima v2.2.0's own templates
//! (github.com/lima-vm/lima tag v2.2.0, commit de0816ea4bdc5267b428ab21025889b8dd785526):
//! `templates/_images/ubuntu-24.04.yaml` (release-20260705), `templates/_images/debian-12.yaml`
//! (20260712-2537) and `templates/experimental/wsl2.yaml` (the Finch rootfs, Fedora 42 with
//! systemd enabled in `/etc/wsl.conf`; WSL2 imports a rootfs tarball, not a disk image).
//!
//! Dated cloud images are removed by their publishers after some months; when a download
//! fails Lima tries the next entry for the architecture. Update these together with
//! Lima's templates.

use crate::spec::{Arch, VmType};

/// One `images[]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedImage {
    /// Download URL.
    pub location: &'static str,
    /// Architecture.
    pub arch: Arch,
    /// `sha256:…` or `sha512:…`.
    pub digest: &'static str,
}

const UBUNTU_2404: &[PinnedImage] = &[
    PinnedImage {
        location: "https://cloud-images.ubuntu.com/releases/noble/release-20260705/ubuntu-24.04-server-cloudimg-amd64.img",
        arch: Arch::X86_64,
        digest: "sha256:ffe6203da54deeb6db5d2a98a83f9ec8e55f149d3f7ba622e1abe5fa966ee3d6",
    },
    PinnedImage {
        location: "https://cloud-images.ubuntu.com/releases/noble/release-20260705/ubuntu-24.04-server-cloudimg-arm64.img",
        arch: Arch::Aarch64,
        digest: "sha256:7df0201546f75b8bcc1044594c806c35749421ad3c9bc1be2a3ab806cfae39cc",
    },
];

const DEBIAN_12: &[PinnedImage] = &[
    PinnedImage {
        location: "https://cloud.debian.org/images/cloud/bookworm/20260712-2537/debian-12-genericcloud-amd64-20260712-2537.qcow2",
        arch: Arch::X86_64,
        digest: "sha512:6c2607f1846ee86040830c87d0b723f0967da3e884ea4673d9db4aa8eee13a4b7c663524bfa42082c16fc6919f3aa1bf425c004d07ff06c53a319ad0c42647bb",
    },
    PinnedImage {
        location: "https://cloud.debian.org/images/cloud/bookworm/20260712-2537/debian-12-genericcloud-arm64-20260712-2537.qcow2",
        arch: Arch::Aarch64,
        digest: "sha512:52eb678130e85a9bf9f3cf4f7181e060fa60a5db45373717474c5ff9305645c5e6cab8b05ca042bcfa7921d2ca29cf9fd2e815f75abe2d168557ad7207af127b",
    },
];

const WSL2_ROOTFS: &[PinnedImage] = &[PinnedImage {
    location:
        "https://deps.runfinch.com/common/x86-64/finch-rootfs-production-amd64-1771357941.tar.gz",
    arch: Arch::X86_64,
    digest: "sha256:423d1a0f1cabeaea6801995c90ed896dccc091180068626430f19fd87853fdf3",
}];

/// The images for `vm_type` and `arch`, in the order Lima should try them (Ubuntu 24.04
/// first, Debian 12 second; WSL2 has only the Finch rootfs). Empty when nothing is pinned.
pub fn images_for(vm_type: VmType, arch: Arch) -> Vec<PinnedImage> {
    let lists: &[&[PinnedImage]] = match vm_type {
        VmType::Wsl2 => &[WSL2_ROOTFS],
        VmType::Qemu | VmType::Vz => &[UBUNTU_2404, DEBIAN_12],
    };
    lists
        .iter()
        .flat_map(|l| l.iter())
        .filter(|i| i.arch == arch)
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_image_is_pinned_by_a_well_formed_digest() {
        for list in [UBUNTU_2404, DEBIAN_12, WSL2_ROOTFS] {
            for image in list {
                let (algo, hex) = image.digest.split_once(':').expect("algo:hex");
                let len = match algo {
                    "sha256" => 64,
                    "sha512" => 128,
                    other => panic!("unexpected digest algorithm {other}"),
                };
                assert_eq!(hex.len(), len, "{}", image.location);
                assert!(hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
                assert!(image.location.starts_with("https://"));
                let arch_word = match image.arch {
                    Arch::X86_64 => ["amd64", "x86-64"],
                    Arch::Aarch64 => ["arm64", "arm64"],
                };
                assert!(
                    arch_word.iter().any(|w| image.location.contains(w)),
                    "{} is not {:?}",
                    image.location,
                    image.arch
                );
            }
        }
    }

    #[test]
    fn wsl2_gets_a_rootfs_tarball_and_vms_get_disk_images() {
        let wsl = images_for(VmType::Wsl2, Arch::X86_64);
        assert_eq!(wsl.len(), 1);
        assert!(wsl[0].location.ends_with(".tar.gz"));
        assert!(images_for(VmType::Wsl2, Arch::Aarch64).is_empty());
        for vm in [VmType::Qemu, VmType::Vz] {
            for arch in [Arch::X86_64, Arch::Aarch64] {
                let images = images_for(vm, arch);
                assert_eq!(images.len(), 2);
                assert!(images[0].location.contains("ubuntu-24.04"));
                assert!(images.iter().all(|i| !i.location.ends_with(".tar.gz")));
            }
        }
    }
}
