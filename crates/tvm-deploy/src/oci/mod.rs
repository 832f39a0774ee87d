//! The pyrovm OCI image: what goes in it, where, and how it is built without a daemon.
//!
//! Layers, bottom to top — each cached by a key over its inputs, so a rebuild after a
//! change to pyrovm only writes the top one:
//!
//! 1. **base**: a Debian/Ubuntu root filesystem (`mmdebstrap --variant=essential`) with
//!    [`BASE_PACKAGES`], of the build host's own release so that the host-built `pyrovm`
//!    finds the C library it was linked against;
//! 2. **guest**: the guest image (kernel, initramfs, rootfs) in [`GUEST_IMAGE_DIR`];
//! 3. **firecracker** (only when given): `firecracker` and `jailer`, statically linked;
//! 4. **pyrovm**: the binary and the mount points the Kubernetes manifests use.
//!
//! Then the image config (entrypoint, default arguments, labels; every timestamp is
//! `SOURCE_DATE_EPOCH`, so equal inputs give an equal image digest), and the export: an
//! OCI image layout and an `oci-archive` tarball tagged [`reference()`].

mod base;
mod elf;
mod layer;
mod layout;
mod run;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use base::Host;

/// Repository part of the image reference. `localhost/` keeps a bare name from ever
/// resolving to a public registry: push it to yours and set the image in your overlay.
pub const REPOSITORY: &str = "localhost/tvm/pyrovm";

/// The image reference the builder tags and the manifests use: `REPOSITORY:<version>`.
pub fn reference() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// Debian packages in the base layer (besides the `essential` set: coreutils for the
/// preStop `sleep`, and the C library).
pub const BASE_PACKAGES: &[&str] = &["qemu-system-x86", "tini"];
/// Where the guest image lives in the image (pyrovm's `image_dir`).
pub const GUEST_IMAGE_DIR: &str = "/usr/share/tvm/image";
/// The guest image files that must be present.
pub const GUEST_FILES: &[&str] = &["vmlinux", "initramfs.cpio", "rootfs.erofs"];
/// `tvm image build`'s record of the recipe and package versions, copied along when present.
pub const GUEST_MANIFEST: &str = "manifest.json";
/// The pyrovm binary in the image.
pub const PYROVM_PATH: &str = "/usr/local/bin/pyrovm";
/// Firecracker and its jailer in the image (when the builder is given them).
pub const FIRECRACKER_PATH: &str = "/usr/local/bin/firecracker";
pub const JAILER_PATH: &str = "/usr/local/bin/jailer";
/// Directories the manifests mount over (made in the image so that a read-only root
/// filesystem needs no runtime-created mount points).
pub const MOUNT_POINTS: &[&str] = &[
    "/etc/tvm/config",
    "/etc/tvm/tokens",
    "/etc/tvm/route",
    "/run/tvm",
    "/tmp",
];
/// `tini` is PID 1: it forwards SIGTERM to pyrovm and reaps any orphan.
pub const ENTRYPOINT: &[&str] = &["/usr/bin/tini", "--", PYROVM_PATH];
/// Default arguments for a plain `docker run`/`podman run` (Kubernetes replaces them with
/// `--config`). A non-loopback address makes pyrovm demand tokens (`TVM_TOKENS`).
pub const DEFAULT_ARGS: &[&str] = &["--listen", "0.0.0.0:8080", "--image-dir", GUEST_IMAGE_DIR];
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
pub const EXPOSED_PORT: &str = "8080/tcp";
/// File names under the output directory.
pub const ARCHIVE_NAME: &str = "pyrovm.oci.tar";
pub const LAYOUT_NAME: &str = "pyrovm";
pub const REPORT_NAME: &str = "pyrovm.oci.json";

/// Bumped when the build recipe changes in a way the input hashes do not show.
const RECIPE_VERSION: &str = "tvm-oci/1";

/// What to build from.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The pyrovm binary (`cargo build --release -p pyrovm`).
    pub pyrovm: PathBuf,
    /// Directory holding [`GUEST_FILES`] (`<cache>/current` after `tvm image build`).
    pub guest_image: PathBuf,
    /// Statically linked `firecracker` and `jailer`, if the image should carry them.
    pub firecracker: Option<(PathBuf, PathBuf)>,
    /// Where the layout, the archive and the report go.
    pub out_dir: PathBuf,
    /// Where cached layers live between builds.
    pub cache_dir: PathBuf,
    /// The base layer's suite; default: the build host's own release.
    pub suite: Option<String>,
    /// Rebuild the base layer even if cached (to pick up Debian security updates).
    pub refresh_base: bool,
    /// Every timestamp in the image (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
}

impl BuildOptions {
    /// The defaults `make image` uses, relative to the workspace root.
    pub fn new(workspace: &Path) -> Self {
        let cache = tvm_cache_dir();
        Self {
            pyrovm: workspace.join("target/release/pyrovm"),
            guest_image: cache.join("current"),
            firecracker: None,
            out_dir: workspace.join("target/oci"),
            cache_dir: cache.join("oci"),
            suite: None,
            refresh_base: false,
            source_date_epoch: 0,
        }
    }
}

/// TVM's cache dir: the guest image's own rule.
pub use tvm_image::cache_dir as tvm_cache_dir;

/// What a build produced (also written to `<out>/pyrovm.oci.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    pub reference: String,
    /// The image manifest's digest (`sha256:…`): pin deployments to it.
    pub digest: String,
    pub archive: PathBuf,
    pub layout: PathBuf,
    /// Size of the `oci-archive` tarball in bytes.
    pub archive_bytes: u64,
    /// Hash over every input; equal keys mean an equal image.
    pub key: String,
    pub suite: String,
    pub firecracker: bool,
    /// True when nothing had changed and the previous output was kept.
    pub up_to_date: bool,
    /// Seconds per step of this run.
    pub steps: Vec<(String, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{what} not found at {path}")]
    MissingInput { what: &'static str, path: PathBuf },
    #[error("{path} is not {expected}")]
    BadInput { path: PathBuf, expected: String },
    #[error("`{tool}` not found: install Debian's `{package}` (make oci-deps does)")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}); log: {log}\n{tail}")]
    Command {
        what: String,
        status: std::process::ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected {what}: {detail}")]
    Malformed { what: String, detail: String },
    #[error("{0}")]
    Host(String),
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
    let what = what.into();
    move |source| OciError::Io { what, source }
}

/// Builds (or finds up to date) the image. `progress` gets one line per step.
pub fn build(opts: &BuildOptions, progress: &mut dyn FnMut(&str)) -> Result<BuildReport, OciError> {
    let started = Instant::now();
    let mut steps: Vec<(String, f64)> = Vec::new();

    // Inputs, checked before anything is written.
    let t = Instant::now();
    elf::check_executable(&opts.pyrovm, "the pyrovm binary", false)?;
    for f in GUEST_FILES {
        let p = opts.guest_image.join(f);
        if !p.is_file() {
            return Err(OciError::MissingInput {
                what: "a guest image file (run `make guest-image`)",
                path: p,
            });
        }
    }
    if let Some((fc, jailer)) = &opts.firecracker {
        elf::check_executable(fc, "the firecracker binary", true)?;
        elf::check_executable(jailer, "the jailer binary", true)?;
    }
    let host = Host::detect(opts.suite.as_deref())?;

    // Keys: the base layer is known by the sha256 of its tarball (its diff id), recorded
    // when it was built from the recipe; every layer above chains on the one below.
    let recipe = host.recipe_key(RECIPE_VERSION)?;
    let guest_files: Vec<&str> = GUEST_FILES
        .iter()
        .copied()
        .chain(
            opts.guest_image
                .join(GUEST_MANIFEST)
                .is_file()
                .then_some(GUEST_MANIFEST),
        )
        .collect();
    let guest_hash = hash_files(
        &guest_files
            .iter()
            .map(|f| opts.guest_image.join(f))
            .collect::<Vec<_>>(),
    )?;
    let fc_hash = match &opts.firecracker {
        Some((fc, jailer)) => Some(hash_files(&[fc.clone(), jailer.clone()])?),
        None => None,
    };
    let app_hash = hash_files(std::slice::from_ref(&opts.pyrovm))?;
    let keys = |base_id: &str| Keys::new(base_id, &guest_hash, fc_hash.as_deref(), &app_hash, opts);
    mark("hash inputs", t, &mut steps);

    let archive = opts.out_dir.join(ARCHIVE_NAME);
    let out_layout = opts.out_dir.join(LAYOUT_NAME);
    let report_path = opts.out_dir.join(REPORT_NAME);
    let cached_base = if opts.refresh_base {
        None
    } else {
        host.cached_base_id(&opts.cache_dir, &recipe)
    };
    if let (Some(id), Some(prev)) = (&cached_base, read_report(&report_path)) {
        let same_size = fs::metadata(&archive).is_ok_and(|m| m.len() == prev.archive_bytes);
        if prev.key == keys(id).image && same_size && out_layout.join("index.json").is_file() {
            progress(&format!("up to date: {} ({})", prev.reference, prev.digest));
            return Ok(BuildReport {
                up_to_date: true,
                steps,
                ..prev
            });
        }
    }

    run::require_tool("umoci", "umoci")?;
    run::require_tool("skopeo", "skopeo")?;
    run::require_tool("tar", "tar")?;
    let _lock = run::lock_cache(&opts.cache_dir, progress)?;
    let logs = opts.cache_dir.join("logs");
    fs::create_dir_all(&logs).map_err(io(format!("create {}", logs.display())))?;
    let created = layout::rfc3339(opts.source_date_epoch);
    let cache_layout = opts.cache_dir.join("layout");
    let mut lay = layout::Layout::open_or_init(&cache_layout, &logs)?;
    let empty = lay.ensure_empty()?;

    // 1. base
    let t = Instant::now();
    let base_id = match cached_base.filter(|id| lay.has(&base_tag(id)).unwrap_or(false)) {
        Some(id) => {
            progress(&format!("base layer cached ({})", host.suite));
            id
        }
        None => {
            let tar = host.rootfs_tar(&opts.cache_dir, &recipe, opts, &logs, progress)?;
            let id = hash_files(std::slice::from_ref(&tar))?;
            progress("adding the base layer");
            lay.add_layer(
                &empty,
                &base_tag(&id),
                &tar,
                &created,
                &format!(
                    "mmdebstrap --variant=essential {} + {}",
                    host.suite,
                    BASE_PACKAGES.join(" ")
                ),
            )?;
            host.record_base_id(&opts.cache_dir, &recipe, &id)?;
            let _ = fs::remove_file(&tar);
            id
        }
    };
    let base_tag = base_tag(&base_id);
    let keys = keys(&base_id);
    let final_key = keys.image.clone();
    mark("base layer", t, &mut steps);

    // 2. guest image
    let t = Instant::now();
    let guest_tag = format!("guest-{}", short(&keys.guest));
    if !lay.has(&guest_tag)? {
        progress("adding the guest image layer");
        let mut files = Vec::new();
        for f in &guest_files {
            files.push(layer::Entry::file(
                opts.guest_image.join(f),
                &format!("{GUEST_IMAGE_DIR}/{f}"),
                0o644,
            ));
        }
        let tar = layer::write(&opts.cache_dir, "guest", &files, opts.source_date_epoch)?;
        lay.add_layer(
            &base_tag,
            &guest_tag,
            &tar,
            &created,
            "guest image (kernel, initramfs, rootfs)",
        )?;
        let _ = fs::remove_file(&tar);
    } else {
        progress("guest image layer cached");
    }
    mark("guest layer", t, &mut steps);

    // 3. firecracker (optional)
    let t = Instant::now();
    let below_app = match &opts.firecracker {
        Some((fc, jailer)) => {
            let fc_tag = format!("fc-{}", short(&keys.firecracker));
            if !lay.has(&fc_tag)? {
                progress("adding the firecracker layer");
                let files = [
                    layer::Entry::file(fc.clone(), FIRECRACKER_PATH, 0o755),
                    layer::Entry::file(jailer.clone(), JAILER_PATH, 0o755),
                ];
                let tar = layer::write(
                    &opts.cache_dir,
                    "firecracker",
                    &files,
                    opts.source_date_epoch,
                )?;
                lay.add_layer(
                    &guest_tag,
                    &fc_tag,
                    &tar,
                    &created,
                    "firecracker and jailer",
                )?;
                let _ = fs::remove_file(&tar);
            }
            fc_tag
        }
        None => guest_tag.clone(),
    };
    mark("firecracker layer", t, &mut steps);

    // 4. pyrovm, then the config
    let t = Instant::now();
    let app_tag = format!("app-{}", short(&keys.app));
    if !lay.has(&app_tag)? {
        progress("adding the pyrovm layer");
        let mut entries = vec![layer::Entry::file(opts.pyrovm.clone(), PYROVM_PATH, 0o755)];
        for d in MOUNT_POINTS {
            let mode = if *d == "/tmp" { 0o1777 } else { 0o755 };
            entries.push(layer::Entry::dir(d, mode));
        }
        let tar = layer::write(&opts.cache_dir, "pyrovm", &entries, opts.source_date_epoch)?;
        lay.add_layer(&below_app, &app_tag, &tar, &created, "pyrovm")?;
        let _ = fs::remove_file(&tar);
    }
    let final_tag = format!("final-{}", short(&final_key));
    let mut labels = vec![
        ("org.opencontainers.image.title", "pyrovm".to_string()),
        (
            "org.opencontainers.image.description",
            "TVM node service: runs each execution request in a fresh microVM".to_string(),
        ),
        (
            "org.opencontainers.image.version",
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "org.opencontainers.image.licenses",
            "Apache-2.0".to_string(),
        ),
        (
            "org.opencontainers.image.base.name",
            format!("debian-{}", host.suite),
        ),
        (
            "dev.tvm.firecracker",
            opts.firecracker.is_some().to_string(),
        ),
    ];
    labels.sort();
    lay.configure(&app_tag, &final_tag, &created, &labels)?;
    mark("pyrovm layer and config", t, &mut steps);

    // Export.
    let t = Instant::now();
    progress(&format!(
        "writing {} and {}",
        out_layout.display(),
        archive.display()
    ));
    fs::create_dir_all(&opts.out_dir).map_err(io(format!("create {}", opts.out_dir.display())))?;
    let _ = fs::remove_file(&report_path);
    let digest = lay.export(&final_tag, &out_layout, &archive, &reference())?;
    mark("export", t, &mut steps);

    let t = Instant::now();
    lay.keep_only(&[
        &empty, &base_tag, &guest_tag, &below_app, &app_tag, &final_tag,
    ])?;
    host.prune_base_ids(&opts.cache_dir, &recipe);
    mark("cache gc", t, &mut steps);

    let archive_bytes = fs::metadata(&archive)
        .map_err(io(format!("stat {}", archive.display())))?
        .len();
    steps.push(("total".into(), started.elapsed().as_secs_f64()));
    let report = BuildReport {
        reference: reference(),
        digest,
        archive: archive.clone(),
        layout: out_layout.clone(),
        archive_bytes,
        key: final_key,
        suite: host.suite.clone(),
        firecracker: opts.firecracker.is_some(),
        up_to_date: false,
        steps,
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| OciError::Malformed {
        what: "report".into(),
        detail: e.to_string(),
    })?;
    fs::write(&report_path, json).map_err(io(format!("write {}", report_path.display())))?;
    run::give_back_to_sudo_user(&[&archive, &out_layout, &report_path, &opts.out_dir]);
    Ok(report)
}

fn mark(name: &str, t: Instant, steps: &mut Vec<(String, f64)>) {
    steps.push((name.to_string(), t.elapsed().as_secs_f64()));
}

/// The report of the last build in `out_dir`, if any.
pub fn read_report(path: &Path) -> Option<BuildReport> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn base_tag(id: &str) -> String {
    format!("base-{}", short(id))
}

/// Each layer's key, chained on the layers below it.
struct Keys {
    guest: String,
    firecracker: String,
    app: String,
    /// Over everything, including the reference and the timestamps.
    image: String,
}

impl Keys {
    fn new(base_id: &str, guest: &str, fc: Option<&str>, app: &str, opts: &BuildOptions) -> Self {
        let guest = chain(base_id, guest);
        let firecracker = match fc {
            Some(fc) => chain(&guest, fc),
            None => guest.clone(),
        };
        let app = chain(&firecracker, app);
        let image = chain(
            &app,
            &format!(
                "{}|{}|{}",
                reference(),
                opts.source_date_epoch,
                RECIPE_VERSION
            ),
        );
        Self {
            guest,
            firecracker,
            app,
            image,
        }
    }
}

fn chain(below: &str, this: &str) -> String {
    hex::encode(Sha256::digest(format!("{below}\n{this}")))
}

fn short(key: &str) -> &str {
    &key[..32.min(key.len())]
}

/// sha256 over the files' names and contents.
fn hash_files(paths: &[PathBuf]) -> Result<String, OciError> {
    let mut h = Sha256::new();
    for p in paths {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        h.update(name.as_bytes());
        h.update([0]);
        let mut f = fs::File::open(p).map_err(io(format!("open {}", p.display())))?;
        std::io::copy(&mut f, &mut h).map_err(io(format!("read {}", p.display())))?;
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_versioned_and_never_a_bare_docker_hub_name() {
        let r = reference();
        assert_eq!(
            r,
            format!("localhost/tvm/pyrovm:{}", env!("CARGO_PKG_VERSION"))
        );
        // A first path component with a dot, a colon or `localhost` is a registry host.
        assert!(r.split('/').next() == Some("localhost"));
    }

    #[test]
    fn keys_chain_so_a_lower_change_changes_every_upper_key() {
        let a = chain("base1", "guest");
        let b = chain("base2", "guest");
        assert_ne!(a, b);
        assert_ne!(chain(&a, "app"), chain(&b, "app"));
        assert_eq!(chain("x", "y"), chain("x", "y"));
        assert_eq!(short(&a).len(), 32);
    }

    #[test]
    fn hash_files_covers_names_and_contents() {
        let d = tempfile::tempdir().unwrap();
        let (x, y) = (d.path().join("x"), d.path().join("y"));
        fs::write(&x, b"same").unwrap();
        fs::write(&y, b"same").unwrap();
        let hx = hash_files(std::slice::from_ref(&x)).unwrap();
        assert_ne!(hx, hash_files(std::slice::from_ref(&y)).unwrap());
        fs::write(&x, b"other").unwrap();
        assert_ne!(hx, hash_files(std::slice::from_ref(&x)).unwrap());
        assert!(matches!(
            hash_files(&[d.path().join("missing")]),
            Err(OciError::Io { .. })
        ));
    }

    #[test]
    fn mount_points_and_entrypoint_agree_with_paths() {
        assert_eq!(ENTRYPOINT.last(), Some(&PYROVM_PATH));
        assert!(DEFAULT_ARGS.contains(&GUEST_IMAGE_DIR));
        assert!(MOUNT_POINTS.iter().all(|m| m.starts_with('/')));
    }
}
