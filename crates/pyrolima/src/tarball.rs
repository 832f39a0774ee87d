//! Just enough tar: write the deploy bundle (ustar: regular files and directories) and
//! read the pyrovm OCI archive's `index.json`, manifest and config (its image reference
//! and platform) without unpacking it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

const BLOCK: usize = 512;

/// Builds a ustar archive in memory.
#[derive(Debug, Default)]
pub struct TarWriter {
    out: Vec<u8>,
}

impl TarWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory entry.
    pub fn dir(&mut self, path: &str) -> io::Result<()> {
        let path = format!("{}/", path.trim_end_matches('/'));
        self.header(&path, 0o755, 0, b'5')
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.header(path, mode, data.len() as u64, b'0')?;
        self.out.extend_from_slice(data);
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.out.resize(self.out.len() + pad, 0);
        Ok(())
    }

    /// Adds `dir` (recursively; regular files and directories only, symlinks refused)
    /// under `prefix`.
    pub fn tree(&mut self, dir: &Path, prefix: &str) -> io::Result<()> {
        self.dir(prefix)?;
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            let name = name.to_str().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("non-UTF-8 name in {}", dir.display()),
                )
            })?;
            let path = format!("{prefix}/{name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.tree(&entry.path(), &path)?;
            } else if kind.is_file() {
                self.file(&path, 0o644, &std::fs::read(entry.path())?)?;
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: only files and directories can be bundled",
                        entry.path().display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The archive (with its two zero end blocks).
    pub fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 2 * BLOCK, 0);
        self.out
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) -> io::Result<()> {
        let mut h = [0u8; BLOCK];
        let (prefix, name) = split_name(path)?;
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 0); // mtime
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        octal(&mut h[148..155], sum);
        self.out.extend_from_slice(&h);
        Ok(())
    }
}

/// ustar keeps names ≤ 100 bytes, with up to 155 more in `prefix` (split at a `/`).
fn split_name(path: &str) -> io::Result<(&str, &str)> {
    if path.len() <= 100 {
        return Ok(("", path));
    }
    let too_long = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path too long for ustar: {path}"),
        )
    };
    let trimmed = path.trim_end_matches('/');
    let cut = trimmed
        .char_indices()
        .filter(|(i, c)| *c == '/' && *i <= 155 && path.len() - i - 1 <= 100)
        .map(|(i, _)| i)
        .next()
        .ok_or_else(too_long)?;
    Ok((&path[..cut], &path[cut + 1..]))
}

/// Writes `value` as zero-padded octal with a NUL terminator into `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// Offsets of the regular files in a tar file, by name.
#[derive(Debug)]
pub struct TarIndex {
    file: File,
    entries: BTreeMap<String, (u64, u64)>,
}

impl TarIndex {
    /// Reads every header (seeking over contents).
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let mut entries = BTreeMap::new();
        let mut pos = 0u64;
        let mut h = [0u8; BLOCK];
        loop {
            file.seek(SeekFrom::Start(pos))?;
            if file.read_exact(&mut h).is_err() || h.iter().all(|&b| b == 0) {
                break;
            }
            let size = parse_octal(&h[124..136])?;
            let name = cstr(&h[..100]);
            let prefix = if &h[257..262] == b"ustar" {
                cstr(&h[345..500])
            } else {
                String::new()
            };
            let full = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let full = full.trim_start_matches("./").to_owned();
            if matches!(h[156], b'0' | 0) {
                entries.insert(full, (pos + BLOCK as u64, size));
            }
            pos += BLOCK as u64 + size.div_ceil(BLOCK as u64) * BLOCK as u64;
        }
        Ok(TarIndex { file, entries })
    }

    /// The contents of `name`, if it is a regular file of at most `limit` bytes.
    pub fn read(&mut self, name: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(&(offset, size)) = self.entries.get(name) else {
            return Ok(None);
        };
        if size > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name}: {size} bytes"),
            ));
        }
        self.file.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0; usize::try_from(size).unwrap_or(usize::MAX)];
        self.file.read_exact(&mut buf)?;
        Ok(Some(buf))
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_octal(b: &[u8]) -> io::Result<u64> {
    let s = cstr(b);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("tar size {s:?}: {e}")))
}

/// The image in an OCI archive (`oci-archive`, as `tvm-oci` writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciImage {
    /// `org.opencontainers.image.ref.name` of the (single) manifest, e.g.
    /// `localhost/tvm/pyrovm:0.1.0`.
    pub reference: String,
    /// The config's `architecture` (`amd64`, `arm64`).
    pub architecture: String,
}

/// Reads the reference and architecture of the first manifest in an OCI archive.
pub fn read_oci_image(path: &Path) -> Result<OciImage, String> {
    let mut tar = TarIndex::open(path).map_err(|e| e.to_string())?;
    let json = |tar: &mut TarIndex, name: &str| -> Result<serde_json::Value, String> {
        let bytes = tar
            .read(name, 4 << 20)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("no {name} in the archive"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{name}: {e}"))
    };
    let blob = |digest: &serde_json::Value| -> Result<String, String> {
        let d = digest.as_str().ok_or("descriptor without digest")?;
        let (algo, hex) = d.split_once(':').ok_or_else(|| format!("bad digest {d}"))?;
        Ok(format!("blobs/{algo}/{hex}"))
    };
    let index = json(&mut tar, "index.json")?;
    let manifest_desc = &index["manifests"][0];
    let reference = manifest_desc["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .ok_or("the archive's manifest has no org.opencontainers.image.ref.name")?
        .to_owned();
    let valid = !reference.is_empty()
        && reference
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"./:_@-".contains(&b));
    if !valid {
        return Err(format!("unexpected image reference {reference:?}"));
    }
    let manifest = json(&mut tar, &blob(&manifest_desc["digest"])?)?;
    let config = json(&mut tar, &blob(&manifest["config"]["digest"])?)?;
    let architecture = config["architecture"].as_str().unwrap_or("").to_owned();
    Ok(OciImage {
        reference,
        architecture,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_it_reads() {
        let mut w = TarWriter::new();
        w.dir("a").unwrap();
        w.file("a/one.txt", 0o600, b"hello").unwrap();
        let long = format!("{}/{}", "d".repeat(90), "f".repeat(60));
        w.file(&long, 0o644, &[7u8; 1000]).unwrap();
        let bytes = w.finish();
        assert_eq!(bytes.len() % BLOCK, 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.tar");
        std::fs::write(&path, &bytes).unwrap();
        let mut idx = TarIndex::open(&path).unwrap();
        assert_eq!(idx.read("a/one.txt", 10).unwrap().unwrap(), b"hello");
        assert_eq!(idx.read(&long, 2000).unwrap().unwrap(), vec![7u8; 1000]);
        assert!(
            idx.read("a", 10).unwrap().is_none(),
            "directories are not files"
        );
        assert!(idx.read(&long, 10).is_err(), "limit");
    }

    #[test]
    fn refuses_names_ustar_cannot_hold() {
        assert!(split_name(&"x".repeat(101)).is_err());
        assert_eq!(split_name("a/b").unwrap(), ("", "a/b"));
    }

    #[test]
    fn reads_an_oci_archive() {
        let mut w = TarWriter::new();
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let manifest = br#"{"schemaVersion":2,"config":{"digest":"sha256:cc"}}"#;
        w.file("blobs/sha256/cc", 0o644, config).unwrap();
        w.file("blobs/sha256/mm", 0o644, manifest).unwrap();
        let index = br#"{"manifests":[{"digest":"sha256:mm","annotations":{"org.opencontainers.image.ref.name":"localhost/tvm/pyrovm:0.1.0"}}]}"#;
        w.file("index.json", 0o644, index).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oci.tar");
        std::fs::write(&path, w.finish()).unwrap();
        let image = read_oci_image(&path).unwrap();
        assert_eq!(image.reference, "localhost/tvm/pyrovm:0.1.0");
        assert_eq!(image.architecture, "amd64");
    }
}
