//! The cached OCI image layout, driven with `umoci`, and the export with `skopeo`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io, run, OciError, DEFAULT_ARGS, ENTRYPOINT, EXPOSED_PORT, PATH_ENV};

const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image layout whose tags name the cached layer stacks.
#[derive(Debug)]
pub struct Layout {
    dir: PathBuf,
    logs: PathBuf,
}

impl Layout {
    pub fn open_or_init(dir: &Path, logs: &Path) -> Result<Self, OciError> {
        let lay = Self {
            dir: dir.to_path_buf(),
            logs: logs.to_path_buf(),
        };
        if !dir.join("index.json").is_file() {
            let _ = fs::remove_dir_all(dir);
            if let Some(parent) = dir.parent() {
                fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
            }
            lay.umoci("init", &["init", "--layout", &lay.path()])?;
        }
        Ok(lay)
    }

    fn path(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.path())
    }

    fn umoci(&self, what: &str, args: &[&str]) -> Result<(), OciError> {
        let log = self.logs.join(format!("umoci-{what}.log"));
        run::run(
            Command::new("umoci").args(args),
            &format!("umoci {what}"),
            &log,
        )
    }

    /// Tags present in the layout.
    pub fn tags(&self) -> Result<Vec<String>, OciError> {
        tags_of(&self.dir)
    }

    pub fn has(&self, tag: &str) -> Result<bool, OciError> {
        Ok(self.tags()?.iter().any(|t| t == tag))
    }

    /// The empty image every stack starts from.
    pub fn ensure_empty(&mut self) -> Result<String, OciError> {
        let tag = "empty".to_string();
        if !self.has(&tag)? {
            self.umoci("new", &["new", "--image", &self.image(&tag)])?;
        }
        Ok(tag)
    }

    /// `to` = `from` + the uncompressed layer `tar` (umoci compresses it).
    pub fn add_layer(
        &mut self,
        from: &str,
        to: &str,
        tar: &Path,
        created: &str,
        created_by: &str,
    ) -> Result<(), OciError> {
        let tar = tar.to_string_lossy();
        self.umoci(
            "add-layer",
            &[
                "raw",
                "add-layer",
                "--image",
                &self.image(from),
                "--tag",
                to,
                "--history.created",
                created,
                "--history.created_by",
                created_by,
                &tar,
            ],
        )
    }

    /// `to` = `from` with the runtime configuration and labels.
    pub fn configure(
        &mut self,
        from: &str,
        to: &str,
        created: &str,
        labels: &[(&str, String)],
    ) -> Result<(), OciError> {
        let mut args: Vec<String> = [
            "config",
            "--image",
            &self.image(from),
            "--tag",
            to,
            "--created",
            created,
            "--history.created",
            created,
            "--history.created_by",
            "tvm-oci: entrypoint, arguments, labels",
            "--architecture",
            "amd64",
            "--os",
            "linux",
            "--config.user",
            "0:0",
            "--config.workingdir",
            "/",
            "--config.stopsignal",
            "SIGTERM",
            "--config.exposedports",
            EXPOSED_PORT,
            "--config.env",
            PATH_ENV,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for e in ENTRYPOINT {
            args.extend(["--config.entrypoint".to_string(), e.to_string()]);
        }
        for a in DEFAULT_ARGS {
            args.extend(["--config.cmd".to_string(), a.to_string()]);
        }
        for (k, v) in labels {
            args.extend(["--config.label".to_string(), format!("{k}={v}")]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.umoci("config", &refs)
    }

    /// Copies `tag` to a fresh layout at `out_layout` and an `oci-archive` at `archive`,
    /// both tagged `reference`; returns the manifest digest.
    pub fn export(
        &self,
        tag: &str,
        out_layout: &Path,
        archive: &Path,
        reference: &str,
    ) -> Result<String, OciError> {
        let _ = fs::remove_dir_all(out_layout);
        let _ = fs::remove_file(archive);
        let tmp = archive.with_extension("tar.tmp");
        let _ = fs::remove_file(&tmp);
        let layout_ref = format!("oci:{}:{reference}", out_layout.display());
        run::run(
            Command::new("skopeo").args([
                "copy",
                "--quiet",
                &format!("oci:{}", self.image(tag)),
                &layout_ref,
            ]),
            "skopeo copy to the output layout",
            &self.logs.join("skopeo-layout.log"),
        )?;
        run::run(
            Command::new("skopeo").args([
                "copy",
                "--quiet",
                &layout_ref,
                &format!("oci-archive:{}:{reference}", tmp.display()),
            ]),
            "skopeo copy to the oci-archive",
            &self.logs.join("skopeo-archive.log"),
        )?;
        fs::rename(&tmp, archive).map_err(io(format!("rename to {}", archive.display())))?;
        manifest_digest(out_layout, reference)
    }

    /// Removes every other tag and the blobs only they used.
    pub fn keep_only(&mut self, keep: &[&str]) -> Result<(), OciError> {
        for t in self.tags()? {
            if !keep.contains(&t.as_str()) {
                self.umoci("remove", &["remove", "--image", &self.image(&t)])?;
            }
        }
        self.umoci("gc", &["gc", "--layout", &self.path()])
    }
}

fn index(dir: &Path) -> Result<serde_json::Value, OciError> {
    let p = dir.join("index.json");
    let text = fs::read(&p).map_err(io(format!("read {}", p.display())))?;
    serde_json::from_slice(&text).map_err(|e| OciError::Malformed {
        what: p.display().to_string(),
        detail: e.to_string(),
    })
}

/// Tags (ref names) of an OCI layout's index.
pub fn tags_of(dir: &Path) -> Result<Vec<String>, OciError> {
    let idx = index(dir)?;
    Ok(idx["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"][REF_NAME].as_str().map(str::to_string))
        .collect())
}

/// Digest of the manifest tagged `reference` in an OCI layout.
pub fn manifest_digest(dir: &Path, reference: &str) -> Result<String, OciError> {
    let idx = index(dir)?;
    idx["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"][REF_NAME].as_str() == Some(reference))
        .and_then(|m| m["digest"].as_str().map(str::to_string))
        .ok_or_else(|| OciError::Malformed {
            what: format!("{}/index.json", dir.display()),
            detail: format!("no manifest tagged {reference}"),
        })
}

/// `epoch` (seconds) as RFC 3339 UTC, for the image's timestamps.
pub fn rfc3339(epoch: u64) -> String {
    let days = i64::try_from(epoch / 86_400).unwrap_or(i64::MAX / 2);
    let secs = epoch % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn reads_tags_and_digests_from_an_index() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("index.json"),
            r#"{"schemaVersion":2,"manifests":[
                {"digest":"sha256:aa","annotations":{"org.opencontainers.image.ref.name":"empty"}},
                {"digest":"sha256:bb","annotations":{"org.opencontainers.image.ref.name":"localhost/x:1"}},
                {"digest":"sha256:cc"}]}"#,
        )
        .unwrap();
        assert_eq!(tags_of(d.path()).unwrap(), ["empty", "localhost/x:1"]);
        assert_eq!(
            manifest_digest(d.path(), "localhost/x:1").unwrap(),
            "sha256:bb"
        );
        assert!(manifest_digest(d.path(), "nope").is_err());
        fs::write(d.path().join("index.json"), "{").unwrap();
        assert!(matches!(tags_of(d.path()), Err(OciError::Malformed { .. })));
    }
}
