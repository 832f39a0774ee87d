//! Building the three parts, each only when its cache entry is missing.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use tvm_api::LanguageTable;

use crate::progress::Step;
use crate::recipe::{self, KERNEL_FRAGMENT, SUITE};

#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub cache: PathBuf,
    /// The statically linked `tvm-agent` to put in the initramfs.
    pub agent_binary: PathBuf,
    /// Debian's kernel source tarball.
    pub kernel_source: PathBuf,
    /// Parallel jobs for the kernel build.
    pub jobs: usize,
    /// Rebuild every part even if cached.
    pub force: bool,
}

impl BuildOptions {
    pub fn new(cache: PathBuf, agent_binary: PathBuf) -> Self {
        Self {
            cache,
            agent_binary,
            kernel_source: PathBuf::from("/usr/src/linux-source-6.1.tar.xz"),
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            force: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}); log: {log} — last lines:\n{tail}")]
    Command {
        command: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("missing build input {path}: {hint}")]
    MissingInput { path: PathBuf, hint: String },
    #[error("kernel config lost options the fragment asks for: {0}")]
    ConfigMismatch(String),
    #[error("package {package} is version {found}, but the language table says {wanted}")]
    VersionMismatch {
        package: String,
        found: String,
        wanted: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Io { what, source }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub key: String,
    pub path: PathBuf,
    pub cached: bool,
    pub seconds: f64,
    pub bytes: u64,
}

impl PartReport {
    /// Ends the part's progress step and reports what is at `path`.
    fn done(key: String, path: PathBuf, cached: bool, step: Step) -> Self {
        let seconds = step
            .finish(if cached { "cached" } else { "built" })
            .as_secs_f64();
        Self {
            key,
            bytes: size(&path),
            path,
            cached,
            seconds,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub dir: PathBuf,
    pub kernel: PartReport,
    pub rootfs: PartReport,
    pub initramfs: PartReport,
    /// Installed versions of the language packages.
    pub versions: Vec<(String, String)>,
}

/// Builds (or finds in the cache) every part and points `<cache>/current` at the result.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, ImageError> {
    let table = LanguageTable::builtin();
    fs::create_dir_all(&opts.cache).map_err(io(format!("create {}", opts.cache.display())))?;
    let kernel = kernel(opts)?;
    let (rootfs, versions) = rootfs(opts, table)?;
    let initramfs = initramfs(opts)?;

    let key = recipe::bytes_key(&[
        kernel.key.as_bytes(),
        rootfs.key.as_bytes(),
        initramfs.key.as_bytes(),
    ]);
    let dir = opts.cache.join("images").join(&key);
    if !dir.join("manifest.json").is_file() {
        let tmp = temp_sibling(&dir);
        fs::create_dir_all(&tmp).map_err(io("create image dir"))?;
        for (src, name) in [
            (&kernel.path, "vmlinux"),
            (&initramfs.path, "initramfs.cpio"),
            (&rootfs.path, "rootfs.erofs"),
        ] {
            link_or_copy(src, &tmp.join(name))?;
        }
        let report = BuildReport {
            dir: dir.clone(),
            kernel: kernel.clone(),
            rootfs: rootfs.clone(),
            initramfs: initramfs.clone(),
            versions: versions.clone(),
        };
        let manifest = serde_json::to_vec_pretty(&report).map_err(|e| ImageError::Io {
            what: "encode manifest".into(),
            source: e.into(),
        })?;
        fs::write(tmp.join("manifest.json"), manifest).map_err(io("write manifest"))?;
        replace_dir(&tmp, &dir)?;
    }
    // Point `current` at this image, atomically.
    let current = crate::current_dir(&opts.cache);
    let link_tmp = opts.cache.join(format!(".current-{}", std::process::id()));
    let _ = fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(Path::new("images").join(&key), &link_tmp)
        .map_err(io("symlink current"))?;
    fs::rename(&link_tmp, &current).map_err(io("replace current"))?;
    Ok(BuildReport {
        dir,
        kernel,
        rootfs,
        initramfs,
        versions,
    })
}

fn temp_sibling(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn replace_dir(tmp: &Path, dst: &Path) -> Result<(), ImageError> {
    if dst.exists() {
        fs::remove_dir_all(dst).map_err(io(format!("remove stale {}", dst.display())))?;
    }
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(io("create cache dir"))?;
    }
    fs::rename(tmp, dst).map_err(io(format!("move {} into place", dst.display())))
}

fn link_or_copy(src: &Path, dst: &Path) -> Result<(), ImageError> {
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst).map_err(io(format!("copy {}", src.display())))?;
    }
    Ok(())
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Runs a command with its output in `log`; each output line goes to `on_line`.
fn run(mut cmd: Command, log: &Path, on_line: &mut dyn FnMut(&str)) -> Result<(), ImageError> {
    let shown = format!("{cmd:?}");
    let mut logf = fs::File::create(log).map_err(io(format!("create {}", log.display())))?;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("start {shown}")))?;
    // Merge stderr into the log from a thread; stdout drives the progress display.
    let stderr = child.stderr.take();
    let log_err = log.with_extension("stderr");
    let err_thread = std::thread::spawn(move || {
        if let (Some(mut e), Ok(mut f)) = (stderr, fs::File::create(&log_err)) {
            let _ = std::io::copy(&mut e, &mut f);
        }
    });
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            use std::io::Write;
            let _ = writeln!(logf, "{line}");
            on_line(&line);
        }
    }
    let status = child.wait().map_err(io(format!("wait for {shown}")))?;
    let _ = err_thread.join();
    let err_text = fs::read_to_string(log.with_extension("stderr")).unwrap_or_default();
    {
        use std::io::Write;
        let _ = logf.write_all(err_text.as_bytes());
    }
    if !status.success() {
        let all = fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = all.lines().rev().take(25).collect();
        return Err(ImageError::Command {
            command: shown,
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
}

/// Identity of the kernel source: the Debian package version if dpkg knows it.
fn kernel_source_identity(src: &Path) -> String {
    let pkg = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "linux-source-6.1"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match pkg {
        Some(v) if !v.is_empty() => format!("linux-source-6.1 {v}"),
        _ => format!("{} {}", src.display(), size(src)),
    }
}

/// Lines of the fragment that the final .config must contain verbatim.
pub(crate) fn fragment_mismatches(fragment: &str, config: &str) -> Vec<String> {
    let have: std::collections::HashSet<&str> = config.lines().collect();
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("CONFIG_") || (l.starts_with("# CONFIG_") && l.ends_with(" is not set"))
        })
        .filter(|l| {
            if have.contains(l) {
                return false;
            }
            // "# CONFIG_X is not set" is also satisfied by the option being absent.
            if let Some(name) = l
                .strip_prefix("# ")
                .and_then(|r| r.strip_suffix(" is not set"))
            {
                let set = format!("{name}=");
                return config.lines().any(|c| c.starts_with(&set));
            }
            true
        })
        .map(str::to_string)
        .collect()
}

fn kernel(opts: &BuildOptions) -> Result<PartReport, ImageError> {
    if !opts.kernel_source.is_file() {
        return Err(ImageError::MissingInput {
            path: opts.kernel_source.clone(),
            hint: "install Debian's linux-source-6.1 package (make deps does this)".into(),
        });
    }
    let key = recipe::kernel_key(&kernel_source_identity(&opts.kernel_source));
    let dir = opts.cache.join("kernel").join(&key);
    let out = dir.join("vmlinux");
    let mut step = Step::start("kernel");
    if out.is_file() && !opts.force {
        return Ok(PartReport::done(key, out, true, step));
    }
    let work = opts.cache.join("build").join(format!("kernel-{key}"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(io("create kernel build dir"))?;
    step.message("unpacking linux-source-6.1");
    let mut tar = Command::new("tar");
    tar.arg("-xf")
        .arg(&opts.kernel_source)
        .arg("-C")
        .arg(&work)
        .arg("--strip-components=1");
    run(
        tar,
        &work.join("..").join(format!("kernel-{key}-tar.log")),
        &mut |_| {},
    )?;
    let frag = work.join("tvm.config");
    fs::write(&frag, KERNEL_FRAGMENT).map_err(io("write fragment"))?;
    let make = |args: &[&str]| {
        let mut c = Command::new("make");
        c.current_dir(&work)
            .args(args)
            .env("KBUILD_BUILD_USER", "tvm")
            .env("KBUILD_BUILD_HOST", "tvm")
            .env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
            .env("KCONFIG_NOTIMESTAMP", "1");
        c
    };
    step.message("make tinyconfig + fragment");
    let log = work.join("..").join(format!("kernel-{key}.log"));
    run(make(&["tinyconfig"]), &log, &mut |_| {})?;
    let mut merge = Command::new("scripts/kconfig/merge_config.sh");
    merge
        .current_dir(&work)
        .args(["-m", ".config", "tvm.config"]);
    run(merge, &log, &mut |_| {})?;
    run(make(&["olddefconfig"]), &log, &mut |_| {})?;
    let config = fs::read_to_string(work.join(".config")).map_err(io("read .config"))?;
    let missing = fragment_mismatches(KERNEL_FRAGMENT, &config);
    if !missing.is_empty() {
        return Err(ImageError::ConfigMismatch(missing.join(", ")));
    }
    let jobs = format!("-j{}", opts.jobs.max(1));
    let mut n = 0usize;
    run(make(&[&jobs, "vmlinux"]), &log, &mut |line| {
        n += 1;
        step.message(&format!("{n} objects, {}", line.trim()));
    })?;
    let tmp = temp_sibling(&dir);
    fs::create_dir_all(&tmp).map_err(io("create kernel cache dir"))?;
    fs::copy(work.join("vmlinux"), tmp.join("vmlinux")).map_err(io("copy vmlinux"))?;
    fs::write(tmp.join("config"), &config).map_err(io("save .config"))?;
    replace_dir(&tmp, &dir)?;
    let _ = fs::remove_dir_all(&work);
    Ok(PartReport::done(key, out, false, step))
}

/// Host apt sources usable for the rootfs suite (Debian hosts of the same suite), else none:
/// mmdebstrap then uses its own default mirror. No mirror host is written here.
fn host_sources() -> Vec<PathBuf> {
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !os.lines().any(|l| l == "ID=debian")
        || !os.lines().any(|l| l == format!("VERSION_CODENAME={SUITE}"))
    {
        return Vec::new();
    }
    crate::apt_source_files(Path::new("/etc/apt"), SUITE)
}

fn rootfs(
    opts: &BuildOptions,
    table: &LanguageTable,
) -> Result<(PartReport, Vec<(String, String)>), ImageError> {
    let key = recipe::rootfs_key(table);
    let dir = opts.cache.join("rootfs").join(&key);
    let out = dir.join("rootfs.erofs");
    let versions_file = dir.join("versions.json");
    let mut step = Step::start("rootfs");
    if out.is_file() && versions_file.is_file() && !opts.force {
        let versions = fs::read(&versions_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        return Ok((PartReport::done(key, out, true, step), versions));
    }
    let work = opts.cache.join("build").join(format!("rootfs-{key}"));
    let _ = fs::remove_dir_all(&work);
    let log = opts.cache.join("build").join(format!("rootfs-{key}.log"));
    fs::create_dir_all(opts.cache.join("build")).map_err(io("create build dir"))?;
    let packages = recipe::rootfs_packages(table).join(",");
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={packages}"))
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/info/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg("--dpkgopt=path-include=/usr/share/locale/locale.alias")
        // OpenJDK's postinst registers its man pages with update-alternatives, which
        // fails when the (excluded) man dir does not exist.
        .arg("--essential-hook=mkdir -p \"$1/usr/share/man/man1\"")
        .arg(format!(
            "--customize-hook=chroot \"$1\" useradd --uid {uid} --user-group --no-create-home --home-dir /work --shell /bin/bash sandbox",
            uid = tvm_proto_uid()
        ))
        .arg("--customize-hook=mkdir -p \"$1/work\" && chmod 0755 \"$1/work\"")
        // E2B code expects its files under /home/user (its home and default cwd):
        // the same place as the work dir.
        .arg("--customize-hook=mkdir -p \"$1/home\" && ln -s /work \"$1/home/user\"")
        .args(table.iter().filter_map(|l| l.setup.as_ref()).map(|script| {
            format!(
                "--customize-hook=chroot \"$1\" /bin/sh -euc {}",
                sh_quote(script)
            )
        }))
        .arg("--customize-hook=rm -rf \"$1/var/cache/apt\" \"$1/var/lib/apt/lists\" \"$1/var/log\"/*")
        .arg(SUITE)
        .arg(&work)
        .args(host_sources())
        .env("SOURCE_DATE_EPOCH", "0");
    step.message("mmdebstrap (downloading and unpacking Debian packages)");
    run(cmd, &log, &mut |line| step.message(line.trim()))?;
    let mut versions = Vec::new();
    for lang in table.iter() {
        let found = dpkg_version(&work, &lang.version_package)?;
        if !found.starts_with(&lang.version) {
            return Err(ImageError::VersionMismatch {
                package: lang.version_package.clone(),
                found,
                wanted: lang.version.clone(),
            });
        }
        versions.push((lang.name.clone(), found));
    }
    step.message("mkfs.erofs");
    let tmp = temp_sibling(&dir);
    fs::create_dir_all(&tmp).map_err(io("create rootfs cache dir"))?;
    let mut mkfs = Command::new("mkfs.erofs");
    mkfs.arg("-T0")
        .arg("-U00000000-0000-0000-0000-000000000000")
        .arg(tmp.join("rootfs.erofs"))
        .arg(&work);
    run(mkfs, &log.with_extension("mkfs.log"), &mut |_| {})?;
    let json = serde_json::to_vec_pretty(&versions).map_err(|e| ImageError::Io {
        what: "encode versions".into(),
        source: e.into(),
    })?;
    fs::write(tmp.join("versions.json"), json).map_err(io("write versions"))?;
    replace_dir(&tmp, &dir)?;
    let _ = fs::remove_dir_all(&work);
    Ok((PartReport::done(key, out, false, step), versions))
}

/// `s` as one single-quoted shell word.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn tvm_proto_uid() -> u32 {
    1000
}

fn dpkg_version(root: &Path, package: &str) -> Result<String, ImageError> {
    let admin = root.join("var/lib/dpkg");
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f", "${Version}", package])
        .output()
        .map_err(io("run dpkg-query"))?;
    if !out.status.success() {
        return Err(ImageError::MissingInput {
            path: admin,
            hint: format!("package {package} is not installed in the rootfs"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn initramfs(opts: &BuildOptions) -> Result<PartReport, ImageError> {
    let agent = fs::read(&opts.agent_binary).map_err(|_| ImageError::MissingInput {
        path: opts.agent_binary.clone(),
        hint: "build it with `make agent` (a static tvm-agent)".into(),
    })?;
    if !is_static_elf(&agent) {
        return Err(ImageError::MissingInput {
            path: opts.agent_binary.clone(),
            hint: "tvm-agent must be statically linked (-C target-feature=+crt-static)".into(),
        });
    }
    let key = recipe::bytes_key(&[&agent]);
    let dir = opts.cache.join("initramfs").join(&key);
    let out = dir.join("initramfs.cpio");
    let step = Step::start("initramfs");
    if out.is_file() && !opts.force {
        return Ok(PartReport::done(key, out, true, step));
    }
    let tmp = temp_sibling(&dir);
    fs::create_dir_all(&tmp).map_err(io("create initramfs cache dir"))?;
    let f = fs::File::create(tmp.join("initramfs.cpio")).map_err(io("create initramfs"))?;
    crate::write_initramfs(&agent, std::io::BufWriter::new(f))
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(io("write initramfs"))?;
    replace_dir(&tmp, &dir)?;
    Ok(PartReport::done(key, out, false, step))
}

/// An ELF with no PT_INTERP program header (no dynamic loader needed).
pub(crate) fn is_static_elf(b: &[u8]) -> bool {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16le = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u64le = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a) as usize
    };
    let (phoff, phentsize, phnum) = (u64le(32), u16le(54), u16le(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3
        o + 4 <= b.len() && u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) != 3
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_check_finds_dropped_options() {
        let frag =
            "# comment\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n# CONFIG_D is not set\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_D=y\n";
        assert_eq!(
            fragment_mismatches(frag, config),
            ["CONFIG_B=y", "# CONFIG_D is not set"]
        );
    }

    #[test]
    fn shell_quoting_keeps_one_word() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf %s {}",
                sh_quote("x'; echo injected; '$HOME")
            ))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"x'; echo injected; '$HOME");
    }

    #[test]
    fn the_fragment_matches_itself() {
        assert!(fragment_mismatches(KERNEL_FRAGMENT, KERNEL_FRAGMENT).is_empty());
    }

    #[test]
    fn static_elf_detection() {
        let me = fs::read("/proc/self/exe").unwrap();
        // Test binaries are dynamically linked.
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
