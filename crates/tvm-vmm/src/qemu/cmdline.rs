//! QEMU's command line, built by a pure function so it is tested directly.

use std::ffi::OsString;
use std::path::Path;

use super::{
    AGENT_SOCK, CONSOLE_LOG, INITRD_FD, KERNEL_FD, MEMORY_FD, QMP_SOCK, ROOTFS_FD, TCG_TB_SIZE_MIB,
};
use crate::accel::Accel;

/// Everything the command line depends on.
#[derive(Debug)]
pub struct QemuArgs<'a> {
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mb: u64,
    pub tsc_khz: Option<u64>,
    pub memory: GuestMemory,
    /// Open a QMP monitor on `qmp.sock`.
    pub qmp: bool,
    /// Wait for the device state with `-incoming defer`.
    pub incoming: bool,
    /// The VM dir. QEMU runs in it and finds its sockets and console log there by
    /// relative name; its path is also QEMU's `-name`, so the process can be told
    /// apart (reaping kills a recorded pid only if its command line names the VM).
    pub vm_dir: &'a Path,
}

/// Where guest RAM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMemory {
    /// Ordinary anonymous memory (a cold boot).
    Anonymous,
    /// A snapshot template: RAM is the inherited file (fd 4), mapped shared, so it
    /// holds the template's memory when the template is frozen.
    Shared,
    /// A clone: the template's file (fd 4) mapped privately (copy-on-write): clones
    /// share every page they do not write.
    Private,
}

/// The kernel command line. Under TCG: `tsc_early_khz` stops random `calibrate_delay`
/// hangs, and `tsc=reliable` keeps the TSC as the clocksource — the guest's TSC is the
/// host's, but an emulated CPU starved by load made the clocksource watchdog give up on
/// it in 2 of ~12 template boots, and every clone of such a template then timed jobs
/// in 4 ms jiffies.
pub fn kernel_cmdline(accel: Accel, tsc_khz: Option<u64>) -> String {
    let mut s = String::from(
        "console=ttyS0 quiet panic=-1 tvm.channel=virtio-serial tvm.rootfs=/dev/vda tvm.rootfstype=erofs",
    );
    if let (Accel::Tcg, Some(khz)) = (accel, tsc_khz) {
        s.push_str(&format!(" tsc_early_khz={khz} tsc=reliable"));
    }
    s
}

fn inherited(fd: i32) -> String {
    format!("/proc/self/fd/{fd}")
}

/// Builds QEMU's argv (without the program). Pure, so it is tested directly.
pub fn command_line(a: &QemuArgs<'_>) -> Vec<OsString> {
    let mut v: Vec<OsString> = Vec::new();
    let mut push = |s: &str| v.push(s.into());
    push("-M");
    let share = match a.memory {
        GuestMemory::Anonymous => None,
        GuestMemory::Shared => Some("on"),
        GuestMemory::Private => Some("off"),
    };
    if share.is_some() {
        push("microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem");
    } else {
        push("microvm,x-option-roms=off,isa-serial=on,rtc=on");
    }
    match a.accel {
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host");
        }
        Accel::Tcg => {
            push("-accel");
            // A bounded translation cache keeps QEMU within its cgroup's memory limit.
            push(&format!("tcg,tb-size={TCG_TB_SIZE_MIB}"));
            // `max` gives the guest RDRAND, so the kernel RNG is ready at once.
            push("-cpu");
            push("max");
        }
    }
    for s in [
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-sandbox",
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-smp",
    ] {
        push(s);
    }
    push(&a.vcpus.to_string());
    push("-m");
    push(&format!("{}M", a.memory_mb));
    push("-kernel");
    push(&inherited(KERNEL_FD));
    push("-initrd");
    push(&inherited(INITRD_FD));
    push("-append");
    push(&kernel_cmdline(a.accel, a.tsc_khz));
    if let Some(share) = share {
        push("-object");
        push(&format!(
            "memory-backend-file,id=mem,size={}M,share={share},mem-path={}",
            a.memory_mb,
            inherited(MEMORY_FD)
        ));
    }
    if a.qmp {
        push("-chardev");
        push(&format!("socket,id=qmp,path={QMP_SOCK}"));
        push("-mon");
        push("chardev=qmp,mode=control");
    }
    if a.incoming {
        push("-incoming");
        push("defer");
    }
    push("-serial");
    push(&format!("file:{CONSOLE_LOG}"));
    push("-drive");
    push(&format!(
        "id=rootfs,if=none,format=raw,readonly=on,file.locking=off,file={}",
        inherited(ROOTFS_FD)
    ));
    for s in [
        "-device",
        "virtio-blk-device,drive=rootfs",
        "-device",
        "virtio-rng-device",
        "-device",
        "virtio-serial-device,max_ports=2",
        "-chardev",
    ] {
        push(s);
    }
    push(&format!("socket,id=agent,path={AGENT_SOCK}"));
    push("-device");
    push(&format!(
        "virtserialport,chardev=agent,name={}",
        tvm_proto::VIRTIO_PORT_NAME
    ));
    push("-name");
    let mut name = OsString::from("guest=");
    name.push(escape_commas(a.vm_dir));
    v.push(name);
    v
}

/// QEMU's option syntax escapes a comma in a value by doubling it.
fn escape_commas(p: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(accel: Accel) -> Vec<String> {
        args_with(accel, GuestMemory::Anonymous)
    }

    fn args_with(accel: Accel, memory: GuestMemory) -> Vec<String> {
        command_line(&QemuArgs {
            accel,
            vcpus: 2,
            memory_mb: 384,
            tsc_khz: Some(2_445_432),
            memory,
            qmp: false,
            incoming: false,
            vm_dir: Path::new("/run/tvm/i/vms/01jvm,x"),
        })
        .into_iter()
        .map(|s| s.into_string().unwrap())
        .collect()
    }

    fn after<'a>(v: &'a [String], flag: &str) -> Vec<&'a str> {
        v.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn tcg_command_line() {
        let v = args(Accel::Tcg);
        assert_eq!(after(&v, "-accel"), ["tcg,tb-size=256"]);
        assert_eq!(after(&v, "-smp"), ["2"]);
        assert_eq!(after(&v, "-m"), ["384M"]);
        assert!(after(&v, "-append")[0].contains("tsc_early_khz=2445432 tsc=reliable"));
        assert!(after(&v, "-sandbox")[0].starts_with("on,"));
        for deny in [
            "elevateprivileges=deny",
            "spawn=deny",
            "resourcecontrol=deny",
        ] {
            assert!(after(&v, "-sandbox")[0].contains(deny), "{deny}");
        }
        assert!(after(&v, "-drive")[0].contains("readonly=on"));
        assert!(v.contains(&"-no-reboot".to_string()));
    }

    /// QEMU runs as a uid that cannot walk the root-only runtime dir or the image
    /// cache: every file is inherited or relative to its working dir (the VM dir),
    /// and the VM dir still appears in the command line (for reaping and tests).
    #[test]
    fn files_are_inherited_or_relative() {
        let v = args(Accel::Tcg);
        assert_eq!(after(&v, "-kernel"), ["/proc/self/fd/5"]);
        assert_eq!(after(&v, "-initrd"), ["/proc/self/fd/6"]);
        assert!(after(&v, "-drive")[0].ends_with(",file=/proc/self/fd/7"));
        assert_eq!(after(&v, "-serial"), ["file:console.log"]);
        assert_eq!(after(&v, "-chardev"), ["socket,id=agent,path=agent.sock"]);
        assert_eq!(after(&v, "-name"), ["guest=/run/tvm/i/vms/01jvm,,x"]);
        let kernel_cmdline = after(&v, "-append")[0];
        let absolute: Vec<&String> = v
            .iter()
            .filter(|a| a.contains('/') && a.as_str() != kernel_cmdline)
            .filter(|a| !a.contains("/proc/self/fd/") && !a.starts_with("guest="))
            .collect();
        assert!(
            absolute.is_empty(),
            "paths QEMU would have to walk: {absolute:?}"
        );
    }

    #[test]
    fn snapshot_memory_files() {
        let tpl = args_with(Accel::Tcg, GuestMemory::Shared);
        assert!(after(&tpl, "-M")[0].ends_with(",memory-backend=mem"));
        assert_eq!(
            after(&tpl, "-object"),
            ["memory-backend-file,id=mem,size=384M,share=on,mem-path=/proc/self/fd/4"]
        );
        let clone = args_with(Accel::Tcg, GuestMemory::Private);
        assert!(after(&clone, "-object")[0].contains("share=off"));
        let cold = args(Accel::Tcg);
        assert!(after(&cold, "-object").is_empty());
        assert!(!after(&cold, "-M")[0].contains("memory-backend"));
        assert!(after(&cold, "-incoming").is_empty() && after(&cold, "-mon").is_empty());
        let restoring = command_line(&QemuArgs {
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mb: 256,
            tsc_khz: None,
            memory: GuestMemory::Private,
            qmp: true,
            incoming: true,
            vm_dir: Path::new("/v"),
        });
        let restoring: Vec<String> = restoring
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(after(&restoring, "-incoming"), ["defer"]);
        assert_eq!(after(&restoring, "-mon"), ["chardev=qmp,mode=control"]);
        assert!(after(&restoring, "-chardev").contains(&"socket,id=qmp,path=qmp.sock"));
    }

    #[test]
    fn no_network_device_at_all() {
        for accel in [Accel::Tcg, Accel::Kvm] {
            let v = args(accel);
            assert!(after(&v, "-nic").is_empty() && after(&v, "-netdev").is_empty());
            assert!(v.contains(&"-nodefaults".to_string()));
            assert!(!v.iter().any(|a| a.contains("virtio-net")));
        }
    }

    #[test]
    fn kvm_uses_host_cpu_and_no_tsc_hint() {
        let v = args(Accel::Kvm);
        assert_eq!(after(&v, "-accel"), ["kvm"]);
        assert_eq!(after(&v, "-cpu"), ["host"]);
        assert!(!after(&v, "-append")[0].contains("tsc_early_khz"));
    }
}
