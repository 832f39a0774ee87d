//! `tvm sandbox cp` and `ls`: where a path is (`ID:PATH` or local), how it
//! reads inside the sandbox, and how it goes into a URL.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use tvm_api::FileListing;

use super::{parse, print_json, usage};
use crate::client::{self, Body};
use crate::exec;

/// One side of `cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// `-`: stdin as a source, stdout as a destination.
    Stdio,
    Local(PathBuf),
    Sandbox {
        id: String,
        path: String,
    },
}

/// `ID:PATH` is in a sandbox (as `docker cp`); a local path with a `:` in its first
/// component can be written `./a:b`.
fn parse_location(s: &str) -> Location {
    if s == "-" {
        return Location::Stdio;
    }
    if !s.starts_with('/') && !s.starts_with('.') {
        if let Some((id, path)) = s.split_once(':') {
            if !id.is_empty() && !id.contains('/') {
                return Location::Sandbox {
                    id: id.to_string(),
                    path: path.to_string(),
                };
            }
        }
    }
    Location::Local(PathBuf::from(s))
}

/// The guest's work dir (`tvm_proto::WORK_DIR`): sandbox paths are relative to it.
const WORK_DIR: &str = "/work";

/// A path in a sandbox, relative to its work dir.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemotePath {
    /// Normalised: no empty, `.` components; `""` is the work dir.
    path: String,
    /// Named as a directory: the work dir, or written with a trailing `/`.
    dir: bool,
}

/// Accepts `a/b`, `./a//b/`, `/work/a`; refuses `..` and other absolute paths.
fn remote_path(s: &str) -> Result<RemotePath, String> {
    let work = WORK_DIR;
    let rel = if s == work {
        ""
    } else if let Some(rest) = s.strip_prefix(work).and_then(|r| r.strip_prefix('/')) {
        rest
    } else if s.starts_with('/') {
        return Err(format!(
            "{s}: sandbox paths are relative to its work dir ({work})"
        ));
    } else {
        s
    };
    let mut parts = Vec::new();
    for part in rel.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{s}: `..` is not allowed in a sandbox path")),
            p => parts.push(p),
        }
    }
    let path = parts.join("/");
    let dir = path.is_empty() || rel.ends_with('/') || rel.ends_with("/.");
    Ok(RemotePath { path, dir })
}

/// Characters left as they are in a path segment: RFC 3986's unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes each segment of `path`, keeping the `/` between them.
fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|seg| utf8_percent_encode(seg, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// `/v1/sandboxes/{id}` + `tail`.
pub(super) fn sandbox_path(id: &str, tail: &str) -> String {
    format!("/v1/sandboxes/{}{tail}", utf8_percent_encode(id, SEGMENT))
}

/// `…/files/{path}`; `list` asks for a directory listing (trailing `/`, or the root).
fn files_path(id: &str, path: &str, list: bool) -> String {
    match (path.is_empty(), list) {
        (true, _) => sandbox_path(id, "/files"),
        (false, false) => sandbox_path(id, &format!("/files/{}", encode_path(path))),
        (false, true) => sandbox_path(id, &format!("/files/{}/", encode_path(path))),
    }
}

pub(super) fn copy(server: &str, src: &str, dst: &str) -> anyhow::Result<ExitCode> {
    match (parse_location(src), parse_location(dst)) {
        (Location::Sandbox { .. }, Location::Sandbox { .. }) => Ok(usage(
            "cannot copy between sandboxes; copy out to a local file, then in",
        )),
        (from, Location::Sandbox { id, path }) => upload(server, &from, &id, &path),
        (Location::Sandbox { id, path }, to) => download(server, &id, &path, &to),
        _ => Ok(usage(
            "one side of `cp` must be in a sandbox: ID:PATH (see `tvm sandbox cp --help`)",
        )),
    }
}

fn upload(server: &str, from: &Location, id: &str, dst: &str) -> anyhow::Result<ExitCode> {
    let dst = match remote_path(dst) {
        Ok(p) => p,
        Err(e) => return Ok(usage(e)),
    };
    let (bytes, name) = match from {
        Location::Local(p) => {
            if p.is_dir() {
                return Ok(usage(format_args!(
                    "{} is a directory; `cp` copies one file",
                    p.display()
                )));
            }
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            (
                bytes,
                p.file_name().and_then(|n| n.to_str()).map(str::to_string),
            )
        }
        _ => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            (bytes, None)
        }
    };
    let join = |dir: &str, name: &str| {
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    };
    let target = match (dst.dir, &name) {
        (false, _) => dst.path.clone(),
        (true, Some(name)) => join(&dst.path, name),
        (true, None) => return Ok(usage("name the file to write: `cp - ID:PATH`")),
    };
    let put = |path: &str, bytes: Vec<u8>| {
        client::call(
            server,
            Method::PUT,
            &files_path(id, path, false),
            Body::Bytes(bytes),
        )
    };
    match put(&target, bytes.clone())? {
        Ok(_) => Ok(ExitCode::SUCCESS),
        // A directory is in the way: copy into it, as `cp` does.
        Err((status, err)) if err.error.code == "wrong_file_type" && !dst.dir => {
            let Some(name) = name else {
                return Ok(exec::refused(status, &err));
            };
            match put(&join(&target, &name), bytes)? {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(_) => Ok(exec::refused(status, &err)),
            }
        }
        Err((status, err)) => Ok(exec::refused(status, &err)),
    }
}

fn download(server: &str, id: &str, src: &str, to: &Location) -> anyhow::Result<ExitCode> {
    let src = match remote_path(src) {
        Ok(p) => p,
        Err(e) => return Ok(usage(e)),
    };
    if src.dir {
        return Ok(usage(format_args!(
            "{id}:{} is a directory; `cp` copies one file (`tvm sandbox ls` lists it)",
            src.path
        )));
    }
    let bytes = match client::call(
        server,
        Method::GET,
        &files_path(id, &src.path, false),
        Body::Empty,
    )? {
        Ok(b) => b,
        Err((status, err)) => return Ok(exec::refused(status, &err)),
    };
    match to {
        Location::Local(p) => {
            let target = local_target(p, &src.path);
            std::fs::write(&target, &bytes)
                .with_context(|| format!("cannot write {}", target.display()))?;
        }
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .context("cannot write to stdout")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a download goes: into `dst` under the source's name when `dst` is a
/// directory (or written as one), else `dst` itself.
fn local_target(dst: &Path, remote: &str) -> PathBuf {
    let as_dir = dst.is_dir() || dst.as_os_str().to_string_lossy().ends_with('/');
    if as_dir {
        let name = remote.rsplit('/').next().unwrap_or(remote);
        dst.join(name)
    } else {
        dst.to_path_buf()
    }
}

pub(super) fn list_files(
    server: &str,
    target: &str,
    path: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (id, path) = match (parse_location(target), path) {
        (Location::Sandbox { id, path }, None) => (id, path),
        (Location::Sandbox { .. }, Some(_)) => {
            return Ok(usage("give ID:PATH or ID PATH, not both"))
        }
        (_, path) if !target.is_empty() => (target.to_string(), path.unwrap_or_default()),
        _ => return Ok(usage("give a sandbox id")),
    };
    let dir = match remote_path(&path) {
        Ok(p) => p,
        Err(e) => return Ok(usage(e)),
    };
    let get = |p: &str| client::call(server, Method::GET, &files_path(&id, p, true), Body::Empty);
    let (bytes, only) = match get(&dir.path)? {
        Ok(b) => (b, None),
        // A file: list its directory, and show only it (as `ls FILE` does).
        Err((status, err)) if err.error.code == "wrong_file_type" && !dir.dir => {
            let (parent, name) = dir.path.rsplit_once('/').unwrap_or(("", &dir.path));
            match get(parent)? {
                Ok(b) => (b, Some(name.to_string())),
                Err(_) => return Ok(exec::refused(status, &err)),
            }
        }
        Err((status, err)) => return Ok(exec::refused(status, &err)),
    };
    if json && only.is_none() {
        return print_json(&bytes);
    }
    let listing: FileListing = parse(&bytes)?;
    let truncated = listing.truncated;
    let entries: Vec<_> = listing
        .entries
        .into_iter()
        .filter(|e| only.as_ref().is_none_or(|n| &e.name == n))
        .collect();
    if json {
        let listing = FileListing {
            path: listing.path,
            entries,
            truncated,
        };
        println!("{}", serde_json::to_string(&listing)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for e in entries {
        let size = if e.kind == "file" {
            e.size.to_string()
        } else {
            "-".into()
        };
        writeln!(out, "{:<7} {:>10} {}", e.kind, size, e.name)?;
    }
    if truncated {
        eprintln!("tvm: the listing was cut at 10,000 entries");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_like_docker_cp() {
        let sb = |id: &str, path: &str| Location::Sandbox {
            id: id.into(),
            path: path.into(),
        };
        let local = |p: &str| Location::Local(PathBuf::from(p));
        assert_eq!(
            parse_location("sb-1:data/in.bin"),
            sb("sb-1", "data/in.bin")
        );
        assert_eq!(parse_location("sb-1:"), sb("sb-1", ""));
        assert_eq!(parse_location("sb-1:a:b"), sb("sb-1", "a:b"));
        assert_eq!(parse_location("sb-1:/work/x"), sb("sb-1", "/work/x"));
        assert_eq!(parse_location("-"), Location::Stdio);
        assert_eq!(parse_location("file.bin"), local("file.bin"));
        assert_eq!(parse_location("./a:b"), local("./a:b"));
        assert_eq!(parse_location("/tmp/a:b"), local("/tmp/a:b"));
        assert_eq!(parse_location("dir/a:b"), local("dir/a:b"));
        assert_eq!(parse_location(":x"), local(":x"));
    }

    #[test]
    fn remote_paths_are_normalised_within_the_work_dir() {
        let ok = |s: &str, path: &str, dir: bool| {
            assert_eq!(
                remote_path(s),
                Ok(RemotePath {
                    path: path.into(),
                    dir
                }),
                "{s}"
            );
        };
        ok("", "", true);
        ok(".", "", true);
        ok("/work", "", true);
        ok("/work/", "", true);
        ok("a.txt", "a.txt", false);
        ok("./a//b.txt", "a/b.txt", false);
        ok("/work/out/", "out", true);
        ok("out/.", "out", true);
        ok("..a", "..a", false);
        assert!(remote_path("a/../b").is_err());
        assert!(remote_path("/etc/passwd").is_err());
        assert!(remote_path("/workshop/x").is_err());
    }

    #[test]
    fn url_paths_are_encoded_per_segment() {
        assert_eq!(encode_path("a/b.txt"), "a/b.txt");
        assert_eq!(
            encode_path("my dir/50%?#x&y=z"),
            "my%20dir/50%25%3F%23x%26y%3Dz"
        );
        assert_eq!(encode_path("é/ü"), "%C3%A9/%C3%BC");
        assert_eq!(files_path("sb-1", "", true), "/v1/sandboxes/sb-1/files");
        assert_eq!(
            files_path("sb-1", "d 1", true),
            "/v1/sandboxes/sb-1/files/d%201/"
        );
        assert_eq!(
            files_path("sb-1", "d/f.bin", false),
            "/v1/sandboxes/sb-1/files/d/f.bin"
        );
        assert_eq!(
            sandbox_path("a/b?", "/execute"),
            "/v1/sandboxes/a%2Fb%3F/execute"
        );
    }

    #[test]
    fn downloads_into_a_directory_keep_the_name() {
        let dir = std::env::temp_dir();
        assert_eq!(local_target(&dir, "out/r.bin"), dir.join("r.bin"));
        assert_eq!(
            local_target(Path::new("x/"), "r.bin"),
            Path::new("x/").join("r.bin")
        );
        assert_eq!(
            local_target(Path::new("no-such-file"), "out/r.bin"),
            PathBuf::from("no-such-file")
        );
    }
}
