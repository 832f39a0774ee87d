//! What the host itself allows, checked before asking Lima for nested virtualization
//! (Lima refuses to start a vz VM with `nestedVirtualization: true` on a Mac that cannot
//! do it, and QEMU's `-cpu host` needs KVM on a Linux host).

use crate::spec::{HostOs, VmSpec, VmType};

/// Why this host cannot give the VM nested virtualization, if it cannot. Only checked
/// when the spec is for the host pyrolima runs on.
pub fn nested_blocker(spec: &VmSpec) -> Option<String> {
    if !spec.nested || spec.host != HostOs::current() {
        return None;
    }
    match (spec.host, spec.vm_type) {
        (HostOs::Macos, VmType::Vz) => {
            let brand = command_output("sysctl", &["-n", "machdep.cpu.brand_string"]);
            let version = command_output("sw_vers", &["-productVersion"]);
            macos_nested_capable(&brand, &version).err()
        }
        (HostOs::Linux, VmType::Qemu) if !std::path::Path::new("/dev/kvm").exists() => {
            Some("this host has no /dev/kvm, so Lima runs the whole VM under TCG".to_owned())
        }
        _ => None,
    }
}

/// Virtualization.framework nests only on Apple M3 or later under macOS 15 or later
/// (Lima's vz driver checks both; see also Lima's `nestedVirtualization` docs).
pub fn macos_nested_capable(cpu_brand: &str, product_version: &str) -> Result<(), String> {
    let major: u32 = product_version
        .trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("cannot read the macOS version {product_version:?}"))?;
    if major < 15 {
        return Err(format!(
            "nested virtualization needs macOS 15 or later (this is {})",
            product_version.trim()
        ));
    }
    let chip = cpu_brand
        .trim()
        .strip_prefix("Apple M")
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u32>().ok()
        })
        .ok_or_else(|| {
            format!(
                "nested virtualization needs Apple silicon M3 or later (CPU: {})",
                cpu_brand.trim()
            )
        })?;
    if chip < 3 {
        return Err(format!(
            "nested virtualization needs Apple M3 or later (this is {})",
            cpu_brand.trim()
        ));
    }
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_generations() {
        assert!(macos_nested_capable("Apple M3 Pro\n", "15.1\n").is_ok());
        assert!(macos_nested_capable("Apple M4", "26.0").is_ok());
        let e = macos_nested_capable("Apple M2 Max", "15.3").unwrap_err();
        assert!(e.contains("M3"), "{e}");
        let e = macos_nested_capable("Apple M3", "14.6.1").unwrap_err();
        assert!(e.contains("macOS 15"), "{e}");
        assert!(macos_nested_capable("Intel(R) Core(TM) i9-9980HK", "15.0").is_err());
        assert!(macos_nested_capable("", "").is_err());
    }

    #[test]
    fn other_hosts_are_not_probed() {
        let spec = VmSpec {
            host: if HostOs::current() == HostOs::Windows {
                HostOs::Linux
            } else {
                HostOs::Windows
            },
            vm_type: VmType::Qemu,
            ..VmSpec::default()
        };
        assert_eq!(nested_blocker(&spec), None);
    }
}
