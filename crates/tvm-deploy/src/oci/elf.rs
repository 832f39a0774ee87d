//! Just enough ELF reading to refuse the wrong binaries before building an image.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::OciError;

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;

/// `path` must be an x86-64 ELF executable; with `must_be_static`, one without a program
/// interpreter (the jailer runs Firecracker inside a chroot that holds no loader).
pub fn check_executable(
    path: &Path,
    what: &'static str,
    must_be_static: bool,
) -> Result<(), OciError> {
    let bad = |expected: &str| OciError::BadInput {
        path: path.to_path_buf(),
        expected: expected.to_string(),
    };
    let mut f = fs::File::open(path).map_err(|_| OciError::MissingInput {
        what,
        path: path.to_path_buf(),
    })?;
    let mut head = Vec::new();
    f.by_ref()
        .take(64 * 1024)
        .read_to_end(&mut head)
        .map_err(super::io(format!("read {}", path.display())))?;
    let info = parse(&head).ok_or_else(|| bad("an x86-64 ELF executable"))?;
    if info.machine != EM_X86_64 {
        return Err(bad("an x86-64 ELF executable"));
    }
    if must_be_static && info.has_interpreter {
        return Err(bad(
            "statically linked (use the official Firecracker release binaries)",
        ));
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct ElfInfo {
    machine: u16,
    has_interpreter: bool,
}

/// Reads a little-endian ELF64 header and its program headers (within `head`).
fn parse(head: &[u8]) -> Option<ElfInfo> {
    if head.get(..4)? != b"\x7fELF" || *head.get(4)? != 2 || *head.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        head.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    let machine = u16_at(18)?;
    let phoff = usize::try_from(u64_at(32)?).ok()?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    if phentsize < 4 {
        return None;
    }
    let mut has_interpreter = false;
    for i in 0..phnum {
        let p_type = u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)?;
        has_interpreter |= p_type == PT_INTERP;
    }
    Some(ElfInfo {
        machine,
        has_interpreter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with `types` as program header types.
    fn elf(machine: u16, types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[18..20].copy_from_slice(&machine.to_le_bytes());
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn tells_static_from_dynamic_and_checks_the_machine() {
        assert_eq!(
            parse(&elf(EM_X86_64, &[6, PT_INTERP, 1])),
            Some(ElfInfo {
                machine: EM_X86_64,
                has_interpreter: true
            })
        );
        assert_eq!(
            parse(&elf(EM_X86_64, &[1, 1])).map(|i| i.has_interpreter),
            Some(false)
        );
        assert_eq!(parse(b"#!/bin/sh\n"), None);
        let mut truncated = elf(EM_X86_64, &[1]);
        truncated.truncate(62);
        assert_eq!(parse(&truncated), None);
    }

    #[test]
    fn check_executable_reports_each_failure() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bin");
        assert!(matches!(
            check_executable(&p, "x", false),
            Err(OciError::MissingInput { .. })
        ));
        fs::write(&p, elf(183, &[1])).unwrap(); // aarch64
        assert!(matches!(
            check_executable(&p, "x", false),
            Err(OciError::BadInput { .. })
        ));
        fs::write(&p, elf(EM_X86_64, &[PT_INTERP])).unwrap();
        check_executable(&p, "x", false).unwrap();
        let err = check_executable(&p, "x", true).unwrap_err();
        assert!(err.to_string().contains("statically linked"), "{err}");
        // This test binary itself is a real x86-64 executable.
        let me = std::env::current_exe().unwrap();
        check_executable(&me, "x", false).unwrap();
    }
}
