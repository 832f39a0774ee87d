//! From kernel hand-off to an open host channel: mounts and the switch to the rootfs.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use nix::unistd::{chdir, chroot};

use crate::{nix_err, sys_err, AgentError};

/// Which transport the host gave this VM (kernel command line `tvm.channel=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    VirtioSerial,
    Vsock,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BootConfig {
    pub rootfs_dev: String,
    pub rootfs_type: String,
    pub channel: ChannelKind,
}

/// Reads `tvm.*` keys from the kernel command line; pure so it can be tested.
pub(crate) fn parse_cmdline(cmdline: &str) -> BootConfig {
    let mut cfg = BootConfig {
        rootfs_dev: "/dev/vda".into(),
        rootfs_type: "erofs".into(),
        channel: ChannelKind::VirtioSerial,
    };
    for word in cmdline.split_whitespace() {
        match word.split_once('=') {
            Some(("tvm.rootfs", v)) => cfg.rootfs_dev = v.to_string(),
            Some(("tvm.rootfstype", v)) => cfg.rootfs_type = v.to_string(),
            Some(("tvm.channel", "vsock")) => cfg.channel = ChannelKind::Vsock,
            Some(("tvm.channel", _)) => cfg.channel = ChannelKind::VirtioSerial,
            _ => {}
        }
    }
    cfg
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), AgentError> {
    fs::create_dir_all(target).ok();
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(nix_err(format!("mount {fstype} on {target}")))
}

/// Mounts the read-only rootfs and the kernel filesystems, and makes the rootfs `/`.
pub(crate) fn boot() -> Result<BootConfig, AgentError> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, None)?;
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(sys_err("read /proc/cmdline"))?;
    let cfg = parse_cmdline(&cmdline);

    mount_fs(
        &cfg.rootfs_dev,
        "/newroot",
        &cfg.rootfs_type,
        // nosuid: the rootfs ships setuid-root programs (mount, su, ...); no_new_privs
        // already neuters them for the job, this is the second layer.
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None,
    )?;
    mount_fs(
        "devtmpfs",
        "/newroot/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        None,
    )?;
    mount_fs("proc", "/newroot/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/newroot/sys", "sysfs", nosuid, None)?;
    mount_fs(
        "cgroup2",
        "/newroot/sys/fs/cgroup",
        "cgroup2",
        nosuid,
        Some("nsdelegate"),
    )?;
    mount_fs(
        "tmpfs",
        "/newroot/run",
        "tmpfs",
        nosuid,
        Some("size=1m,mode=0755"),
    )?;
    // The initramfs cannot be pivot_root'ed away: move the new root over it (switch_root).
    chdir("/newroot").map_err(nix_err("chdir /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(nix_err("move rootfs to /"))?;
    chroot(".").map_err(nix_err("chroot"))?;
    chdir("/").map_err(nix_err("chdir /"))?;
    // Allocations succeed and the job's cgroup OOM-kills it, so a memory hog is
    // reported as `memory_limit` rather than as the program's own MemoryError.
    let _ = fs::write("/proc/sys/vm/overcommit_memory", "1");
    // The kernel log (/dev/kmsg, syslog(2)) is the guest's, not the job's: without
    // this the job user could read it (the kernel is built without DMESG_RESTRICT).
    let _ = fs::write("/proc/sys/kernel/dmesg_restrict", "1");
    crate::sys::loopback_up();
    let _ = nix::unistd::sethostname("sandbox");
    Ok(cfg)
}

/// Where connections to the host come from.
pub(crate) enum Channel {
    /// The virtio-serial port: one connection for the VM's whole life.
    Serial(Option<File>),
    /// A vsock listener: a snapshot restore resets connections, so the agent may
    /// accept again (Firecracker resets every vsock connection on restore).
    Vsock(std::os::fd::OwnedFd),
}

impl Channel {
    /// The next connection; `None` once a serial port has been handed out.
    pub(crate) fn next(&mut self) -> Result<Option<File>, AgentError> {
        match self {
            Channel::Serial(f) => Ok(f.take()),
            Channel::Vsock(listener) => {
                // Close-on-exec: a job must never inherit the host channel (it could
                // write frames to the host as the agent).
                let conn = accept4(
                    std::os::fd::AsRawFd::as_raw_fd(listener),
                    SockFlag::SOCK_CLOEXEC,
                )
                .map_err(nix_err("vsock accept"))?;
                // SAFETY: `accept4` returned a fresh descriptor that nothing else owns.
                let owned =
                    unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(conn) };
                Ok(Some(File::from(owned)))
            }
        }
    }
}

/// Finds the virtio-serial port by name, or listens for the host on vsock.
pub(crate) fn open_channel(cfg: &BootConfig) -> Result<Channel, AgentError> {
    match cfg.channel {
        ChannelKind::VirtioSerial => {
            let dev = find_virtio_port(
                Path::new("/sys/class/virtio-ports"),
                tvm_proto::VIRTIO_PORT_NAME,
            )
            .ok_or_else(|| {
                AgentError::NoChannel(format!(
                    "no virtio-serial port named {}",
                    tvm_proto::VIRTIO_PORT_NAME
                ))
            })?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(Path::new("/dev").join(&dev))
                .map_err(sys_err(format!("open /dev/{dev}")))?;
            Ok(Channel::Serial(Some(f)))
        }
        ChannelKind::Vsock => {
            let fd = socket(
                AddressFamily::Vsock,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(nix_err("vsock socket"))?;
            let addr = VsockAddr::new(libc::VMADDR_CID_ANY, tvm_proto::VSOCK_PORT);
            bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(nix_err("vsock bind"))?;
            listen(&fd, Backlog::new(1).map_err(nix_err("backlog"))?)
                .map_err(nix_err("vsock listen"))?;
            Ok(Channel::Vsock(fd))
        }
    }
}

/// Returns the device name (e.g. `vport0p1`) whose `name` attribute is `want`.
pub(crate) fn find_virtio_port(class_dir: &Path, want: &str) -> Option<String> {
    let entries = fs::read_dir(class_dir).ok()?;
    for entry in entries.flatten() {
        let name = fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if name.trim() == want {
            return Some(entry.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_defaults_and_overrides() {
        let d = parse_cmdline("console=ttyS0 quiet");
        assert_eq!(d.rootfs_dev, "/dev/vda");
        assert_eq!(d.channel, ChannelKind::VirtioSerial);
        let c = parse_cmdline("tvm.rootfs=/dev/vdb tvm.rootfstype=ext4 tvm.channel=vsock");
        assert_eq!(c.rootfs_dev, "/dev/vdb");
        assert_eq!(c.rootfs_type, "ext4");
        assert_eq!(c.channel, ChannelKind::Vsock);
    }

    #[test]
    fn finds_port_by_name() {
        let dir = std::env::temp_dir().join(format!("tvm-ports-{}", std::process::id()));
        for (dev, name) in [("vport0p0", "other\n"), ("vport0p1", "tvm.agent\n")] {
            fs::create_dir_all(dir.join(dev)).unwrap();
            fs::write(dir.join(dev).join("name"), name).unwrap();
        }
        assert_eq!(
            find_virtio_port(&dir, "tvm.agent").as_deref(),
            Some("vport0p1")
        );
        assert_eq!(find_virtio_port(&dir, "nope"), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
