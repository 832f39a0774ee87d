//! Accelerator choice: KVM only where `/dev/kvm` opens *and* the CPU advertises
//! hardware virtualization (vmx/svm). A `/dev/kvm` without them (e.g. PVM, which
//! hangs standard guest kernels) means TCG software emulation.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// The accelerator and a sentence saying why (printed by `tvm doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Looks at this host.
pub fn detect() -> AccelChoice {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| e.to_string());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    choose(kvm, &cpuinfo)
}

/// Pure decision from what `/dev/kvm` and `/proc/cpuinfo` said.
pub fn choose(kvm_open: Result<(), String>, cpuinfo: &str) -> AccelChoice {
    let hw = cpu_virt_flag(cpuinfo);
    match (kvm_open, hw) {
        (Ok(()), Some(flag)) => AccelChoice {
            accel: Accel::Kvm,
            reason: format!("/dev/kvm opens and the CPU has {flag}"),
        },
        (Ok(()), None) => AccelChoice {
            accel: Accel::Tcg,
            reason:
                "/dev/kvm opens but the CPU shows neither vmx nor svm (paravirtual KVM such as PVM \
                     hangs standard guest kernels), so TCG software emulation"
                    .into(),
        },
        (Err(e), _) => AccelChoice {
            accel: Accel::Tcg,
            reason: format!("/dev/kvm cannot be opened ({e}), so TCG software emulation"),
        },
    }
}

/// `vmx` or `svm` if the first CPU's flags list it.
fn cpu_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v)?;
    flags.split_whitespace().find_map(|f| match f {
        "vmx" => Some("vmx"),
        "svm" => Some("svm"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTEL: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx ept\n";
    const AMD: &str = "processor\t: 0\nflags\t\t: fpu sse2 svm npt\n";
    const PVM: &str = "processor\t: 0\nflags\t\t: fpu sse2 hypervisor\n";

    #[test]
    fn kvm_needs_device_and_flag() {
        assert_eq!(choose(Ok(()), INTEL).accel, Accel::Kvm);
        assert_eq!(choose(Ok(()), AMD).accel, Accel::Kvm);
    }

    #[test]
    fn pvm_without_flags_is_tcg() {
        let c = choose(Ok(()), PVM);
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("neither vmx nor svm"));
    }

    #[test]
    fn unopenable_device_is_tcg() {
        let c = choose(Err("No such file or directory".into()), INTEL);
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("No such file"));
    }

    #[test]
    fn flags_must_be_whole_words() {
        let tricky = "flags\t\t: svmx vmxe\n";
        assert_eq!(choose(Ok(()), tricky).accel, Accel::Tcg);
    }
}
