//! Deterministic layer tarballs: fixed owner, modes and timestamps, sorted entries.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io, run, OciError};

/// One thing to put in a layer, at an absolute path inside the image.
#[derive(Debug, Clone)]
pub struct Entry {
    source: Option<PathBuf>,
    dest: String,
    mode: u32,
}

impl Entry {
    pub fn file(source: PathBuf, dest: &str, mode: u32) -> Self {
        Self {
            source: Some(source),
            dest: dest.to_string(),
            mode,
        }
    }

    pub fn dir(dest: &str, mode: u32) -> Self {
        Self {
            source: None,
            dest: dest.to_string(),
            mode,
        }
    }
}

/// Writes `<cache>/build/<name>.tar` holding `entries` (and their parent directories,
/// mode 0755), every entry owned by 0:0 and dated `epoch`.
pub fn write(cache: &Path, name: &str, entries: &[Entry], epoch: u64) -> Result<PathBuf, OciError> {
    let build = cache.join("build");
    let staging = build.join(format!("{name}-staging"));
    let out = build.join(format!("{name}.tar"));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(io(format!("create {}", staging.display())))?;
    for e in entries {
        let rel = e.dest.trim_start_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c == ".." || c == "." || c.is_empty())
        {
            return Err(OciError::Malformed {
                what: "layer path".into(),
                detail: e.dest.clone(),
            });
        }
        let target = staging.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        match &e.source {
            Some(src) => {
                fs::copy(src, &target)
                    .map_err(io(format!("copy {} into the {name} layer", src.display())))?;
            }
            None => {
                fs::create_dir_all(&target).map_err(io(format!("create {}", target.display())))?
            }
        }
    }
    // Parent directories first get 0755, then each entry its own mode.
    set_dir_modes(&staging)?;
    for e in entries {
        let target = staging.join(e.dest.trim_start_matches('/'));
        fs::set_permissions(&target, fs::Permissions::from_mode(e.mode))
            .map_err(io(format!("chmod {}", target.display())))?;
    }
    let mut tops: Vec<String> = fs::read_dir(&staging)
        .map_err(io(format!("list {}", staging.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    tops.sort();
    let _ = fs::remove_file(&out);
    let mut tar = Command::new("tar");
    tar.arg("--create")
        .arg("--file")
        .arg(&out)
        .arg("--directory")
        .arg(&staging)
        .args([
            "--sort=name",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--format=gnu",
        ])
        .arg(format!("--mtime=@{epoch}"))
        .arg("--")
        .args(&tops);
    run::run(
        &mut tar,
        &format!("tar of the {name} layer"),
        &build.join(format!("{name}-tar.log")),
    )?;
    let _ = fs::remove_dir_all(&staging);
    Ok(out)
}

fn set_dir_modes(dir: &Path) -> Result<(), OciError> {
    for e in fs::read_dir(dir)
        .map_err(io(format!("list {}", dir.display())))?
        .flatten()
    {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
                .map_err(io(format!("chmod {}", p.display())))?;
            set_dir_modes(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(tar: &Path) -> String {
        let out = Command::new("tar")
            .args([
                "--list",
                "--verbose",
                "--numeric-owner",
                "--full-time",
                "--file",
            ])
            .arg(tar)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn layers_are_reproducible_with_fixed_owner_modes_and_times() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("bin");
        fs::write(&src, b"\x7fELF...").unwrap();
        fs::set_permissions(&src, fs::Permissions::from_mode(0o700)).unwrap();
        let entries = [
            Entry::file(src.clone(), "/usr/local/bin/pyrovm", 0o755),
            Entry::dir("/tmp", 0o1777),
            Entry::dir("/etc/tvm/config", 0o755),
        ];
        let cache = d.path().join("cache");
        let a = write(&cache, "t", &entries, 0).unwrap();
        let first = fs::read(&a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = write(&cache, "t", &entries, 0).unwrap();
        assert_eq!(first, fs::read(&b).unwrap(), "same inputs, same bytes");
        let list = listing(&b);
        assert!(list.contains("-rwxr-xr-x 0/0"), "{list}");
        assert!(list.contains("drwxrwxrwt 0/0"), "{list}");
        assert!(list.contains("1970-01-01"), "{list}");
        assert!(list.contains("usr/local/bin/pyrovm") && list.contains("etc/tvm/config/"));
        // The source file's own mode is left alone.
        assert_eq!(
            fs::metadata(&src).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(!cache.join("build/t-staging").exists());
    }

    #[test]
    fn refuses_paths_that_escape_the_layer() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["/", "/usr/../etc", "/a//b", "./x"] {
            assert!(
                matches!(
                    write(d.path(), "t", &[Entry::dir(bad, 0o755)], 0),
                    Err(OciError::Malformed { .. })
                ),
                "{bad}"
            );
        }
    }
}
