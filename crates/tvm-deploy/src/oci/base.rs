//! The base layer: a Debian (or Ubuntu) root filesystem from `mmdebstrap`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use super::{io, run, BuildOptions, OciError, BASE_PACKAGES};

/// Documentation, manuals, translations and ISO code tables: nothing pyrovm or QEMU reads.
const PATH_EXCLUDES: &[&str] = &[
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "--dpkgopt=path-exclude=/usr/share/iso-codes/*",
    "--dpkgopt=path-exclude=/usr/share/xml/iso-codes/*",
];

/// mmdebstrap's hook that merges /usr without installing `usrmerge` (which pulls in Perl).
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// The release the base layer is made of, and the apt sources to fetch it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Suite/codename, e.g. `bookworm` or `noble`.
    pub suite: String,
    /// The host's own apt source files for that suite (empty: mmdebstrap's default mirror).
    pub sources: Vec<PathBuf>,
}

impl Host {
    /// The build host's release (Debian or Ubuntu), unless `suite` overrides it. The image
    /// must be of the host's release: `pyrovm` is linked against the host's C library.
    pub fn detect(suite: Option<&str>) -> Result<Self, OciError> {
        let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
        Self::from_os_release(&os, suite, Path::new("/etc/apt"))
    }

    pub(crate) fn from_os_release(
        os: &str,
        suite: Option<&str>,
        apt_dir: &Path,
    ) -> Result<Self, OciError> {
        let field = |k: &str| {
            os.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(|v| v.trim_matches('"').to_string())
        };
        let id = field("ID").unwrap_or_default();
        let codename = field("VERSION_CODENAME").unwrap_or_default();
        let known = matches!(id.as_str(), "debian" | "ubuntu") && !codename.is_empty();
        let suite = match (suite, known) {
            (Some(s), _) => s.to_string(),
            (None, true) => codename.clone(),
            (None, false) => {
                return Err(OciError::Host(format!(
                    "cannot tell which Debian/Ubuntu release to base the image on (ID={id:?}, \
                     VERSION_CODENAME={codename:?}); pass --suite (the pyrovm binary must run \
                     with that release's C library)"
                )))
            }
        };
        let sources = if known && suite == codename {
            tvm_image::apt_source_files(apt_dir, &suite)
        } else {
            Vec::new()
        };
        Ok(Self { suite, sources })
    }

    /// Key over everything that decides the base layer's recipe.
    pub fn recipe_key(&self, recipe_version: &str) -> Result<String, OciError> {
        let mut h = Sha256::new();
        h.update(recipe_version.as_bytes());
        h.update(self.suite.as_bytes());
        for p in BASE_PACKAGES.iter().chain(PATH_EXCLUDES) {
            h.update(p.as_bytes());
            h.update([0]);
        }
        h.update([Path::new(MERGED_USR_HOOKS).is_dir() as u8]);
        for s in &self.sources {
            let text = fs::read(s).map_err(io(format!("read {}", s.display())))?;
            h.update(&text);
        }
        Ok(hex::encode(h.finalize()))
    }

    fn id_file(cache: &Path, recipe: &str) -> PathBuf {
        cache.join("base").join(format!("{recipe}.id"))
    }

    /// The diff id of the base layer last built from this recipe, if any.
    pub fn cached_base_id(&self, cache: &Path, recipe: &str) -> Option<String> {
        let id = fs::read_to_string(Self::id_file(cache, recipe)).ok()?;
        let id = id.trim();
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    }

    pub fn record_base_id(&self, cache: &Path, recipe: &str, id: &str) -> Result<(), OciError> {
        let p = Self::id_file(cache, recipe);
        fs::write(&p, format!("{id}\n")).map_err(io(format!("write {}", p.display())))
    }

    /// Forgets base layers of other recipes (their layout tags go with the layout's gc).
    pub fn prune_base_ids(&self, cache: &Path, recipe: &str) {
        let keep = format!("{recipe}.id");
        if let Ok(rd) = fs::read_dir(cache.join("base")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy() != keep {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }

    /// Runs mmdebstrap into `<cache>/base/<recipe>.tar` (written to a temp name first).
    pub fn rootfs_tar(
        &self,
        cache: &Path,
        recipe: &str,
        opts: &BuildOptions,
        logs: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<PathBuf, OciError> {
        run::require_tool("mmdebstrap", "mmdebstrap")?;
        let dir = cache.join("base");
        fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        let out = dir.join(format!("{recipe}.tar"));
        let tmp = dir.join(format!("{recipe}.tmp.tar"));
        let _ = fs::remove_file(&tmp);
        progress(&format!(
            "mmdebstrap {} + {} (downloads Debian packages; a minute or two)",
            self.suite,
            BASE_PACKAGES.join(", ")
        ));
        let mut cmd = Command::new("mmdebstrap");
        cmd.arg("--variant=essential")
            .arg("--format=tar")
            .arg(format!("--include={}", BASE_PACKAGES.join(",")))
            .args(PATH_EXCLUDES);
        if Path::new(MERGED_USR_HOOKS).is_dir() {
            cmd.arg(format!("--hook-dir={MERGED_USR_HOOKS}"));
        }
        cmd.arg(
            "--customize-hook=rm -rf \"$1\"/var/cache/apt/* \"$1\"/var/lib/apt/lists/* \"$1\"/var/log/*",
        )
        .arg(&self.suite)
        .arg(&tmp)
        .args(&self.sources)
        .env("SOURCE_DATE_EPOCH", opts.source_date_epoch.to_string());
        run::run(&mut cmd, "mmdebstrap", &logs.join("mmdebstrap.log"))?;
        fs::rename(&tmp, &out).map_err(io(format!("rename to {}", out.display())))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apt(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir.join("sources.list.d")).unwrap();
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn debian_host_uses_its_codename_and_its_own_sources() {
        let d = tempfile::tempdir().unwrap();
        apt(
            d.path(),
            &[
                (
                    "sources.list.d/debian.sources",
                    "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n",
                ),
                ("sources.list.d/other.list", "deb http://x.invalid/ trixie main\n"),
                ("sources.list.d/old.list.disabled", "deb http://x.invalid/ bookworm main\n"),
            ],
        );
        let h = Host::from_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n",
            None,
            d.path(),
        )
        .unwrap();
        assert_eq!(h.suite, "bookworm");
        assert_eq!(
            h.sources,
            vec![d.path().join("sources.list.d/debian.sources")]
        );
    }

    #[test]
    fn ubuntu_is_supported_and_an_override_drops_host_sources() {
        let d = tempfile::tempdir().unwrap();
        apt(
            d.path(),
            &[("sources.list", "deb http://x.invalid/ubuntu noble main\n")],
        );
        let os = "ID=ubuntu\nVERSION_CODENAME=noble\n";
        let h = Host::from_os_release(os, None, d.path()).unwrap();
        assert_eq!((h.suite.as_str(), h.sources.len()), ("noble", 1));
        let h = Host::from_os_release(os, Some("bookworm"), d.path()).unwrap();
        assert_eq!(h.suite, "bookworm");
        assert!(h.sources.is_empty());
    }

    #[test]
    fn unknown_host_needs_an_explicit_suite() {
        let d = tempfile::tempdir().unwrap();
        let err = Host::from_os_release("ID=fedora\nVERSION_ID=40\n", None, d.path()).unwrap_err();
        assert!(err.to_string().contains("--suite"), "{err}");
        let h = Host::from_os_release("ID=fedora\n", Some("bookworm"), d.path()).unwrap();
        assert_eq!(h.suite, "bookworm");
    }

    #[test]
    fn recipe_key_follows_suite_and_sources_and_ids_round_trip() {
        let d = tempfile::tempdir().unwrap();
        apt(
            d.path(),
            &[("sources.list", "deb http://x.invalid/ bookworm main\n")],
        );
        let os = "ID=debian\nVERSION_CODENAME=bookworm\n";
        let h = Host::from_os_release(os, None, d.path()).unwrap();
        let k1 = h.recipe_key("v1").unwrap();
        assert_ne!(k1, h.recipe_key("v2").unwrap());
        fs::write(
            d.path().join("sources.list"),
            "deb http://y.invalid/ bookworm main\n",
        )
        .unwrap();
        assert_ne!(k1, h.recipe_key("v1").unwrap());

        let cache = d.path().join("cache");
        fs::create_dir_all(cache.join("base")).unwrap();
        assert_eq!(h.cached_base_id(&cache, &k1), None);
        let id = "ab".repeat(32);
        h.record_base_id(&cache, &k1, &id).unwrap();
        h.record_base_id(&cache, "other", &id).unwrap();
        assert_eq!(h.cached_base_id(&cache, &k1), Some(id));
        h.prune_base_ids(&cache, &k1);
        assert_eq!(h.cached_base_id(&cache, "other"), None);
        fs::write(Host::id_file(&cache, &k1), "garbage").unwrap();
        assert_eq!(h.cached_base_id(&cache, &k1), None);
    }
}
