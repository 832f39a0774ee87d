//! `tvm sandbox …` against a real pyrovm (in-process) booting a real microVM.

// Test helpers outside #[test] functions may panic on setup failures.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;

use common::{server, tvm, tvm_bytes};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_session_keeps_files_and_ends_on_rm() {
    let rt = tempfile::tempdir().unwrap();
    let Some(url) = server(rt.path()) else { return };
    let dir = tempfile::tempdir().unwrap();

    let (code, out, err) = tvm(
        &url,
        &["sandbox", "create", "--ttl", "5m", "-e", "GREETING=hi"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let id = out.trim_end_matches('\n').to_string();
    assert!(
        id.starts_with("sb-") && !id.contains(char::is_whitespace),
        "{out:?}"
    );

    // 1 MiB and a bit of random bytes, in and out again byte for byte.
    let mut data = vec![0u8; (1 << 20) + 7];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let local = dir.path().join("in.bin");
    std::fs::write(&local, &data).unwrap();
    // A destination ending in `/` keeps the source's name.
    let remote_dir = format!("{id}:data/");
    let (code, _, err) = tvm(
        &url,
        &["sandbox", "cp", local.to_str().unwrap(), &remote_dir],
        "",
    );
    assert_eq!(code, 0, "{err}");

    let digest = hex(&Sha256::digest(&data));
    let code_py = "import hashlib, os\n\
                   b = open('data/in.bin', 'rb').read()\n\
                   print(hashlib.sha256(b).hexdigest(), len(b), os.environ['GREETING'])\n\
                   open('data/copy.bin', 'wb').write(b)\n";
    let (code, out, err) = tvm(
        &url,
        &["sandbox", "exec", &id, "-l", "python", "-c", code_py],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{digest} {} hi\n", data.len()));

    // Streamed and not, stdin and args, and the exit code mirrors the program.
    let (code, out, err) = tvm(
        &url,
        &[
            "sandbox",
            "exec",
            &id,
            "--no-stream",
            "-l",
            "bash",
            "-c",
            "read x; echo \"$x $1\"; ls data; exit 3",
            "--",
            "arg",
        ],
        "line\n",
    );
    assert_eq!(
        (code, out.as_str()),
        (3, "line arg\ncopy.bin\nin.bin\n"),
        "{err}"
    );

    let out_file = dir.path().join("out.bin");
    let (code, _, err) = tvm(
        &url,
        &[
            "sandbox",
            "cp",
            &format!("{id}:data/copy.bin"),
            out_file.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        std::fs::read(&out_file).unwrap() == data,
        "downloaded bytes differ"
    );
    let (code, out, err) = tvm_bytes(
        &url,
        &["sandbox", "cp", &format!("{id}:/work/data/in.bin"), "-"],
        b"",
    );
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert!(out == data, "bytes on stdout differ");

    let (code, out, err) = tvm(&url, &["sandbox", "ls", &id, "data"], "");
    assert_eq!(code, 0, "{err}");
    let size = data.len().to_string();
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["file", size.as_str(), "copy.bin"],
            vec!["file", size.as_str(), "in.bin"]
        ],
        "{out}"
    );
    let (code, out, err) = tvm(&url, &["sandbox", "ls", &id], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["dir", "-", "data"]),
        "{out}"
    );
    let (code, out, err) = tvm(&url, &["sandbox", "ls", &format!("{id}:data/in.bin")], "");
    assert_eq!(
        (code, out.split_whitespace().collect::<Vec<_>>()),
        (0, vec!["file", size.as_str(), "in.bin"]),
        "{err}"
    );
    let (code, out, _) = tvm(&url, &["sandbox", "ls", "--json", &id, "data/"], "");
    assert_eq!(code, 0);
    let listing: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listing["entries"][1]["name"], "in.bin");

    let (code, out, _) = tvm(&url, &["sandbox", "list", "-q"], "");
    assert_eq!((code, out.lines().any(|l| l == id)), (0, true), "{out}");
    let (code, out, _) = tvm(&url, &["sandbox", "info", "--json", &id], "");
    assert_eq!(code, 0);
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (info["execs"].as_u64(), info["env_keys"][0].as_str()),
        (Some(2), Some("GREETING"))
    );

    // A file that is not there, and one that may not be named, are refusals.
    let (code, _, err) = tvm(&url, &["sandbox", "cp", &format!("{id}:nope"), "-"], "");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("file_not_found"), "{err}");
    let (code, _, err) = tvm(
        &url,
        &["sandbox", "cp", &format!("{id}:../etc/passwd"), "-"],
        "",
    );
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = tvm(&url, &["sandbox", "rm", &id], "");
    assert_eq!((code, out.trim()), (0, id.as_str()), "{err}");
    let (code, _, err) = tvm(
        &url,
        &["sandbox", "exec", &id, "-l", "python", "-c", "1"],
        "",
    );
    assert_eq!(code, 2, "{err}");
    // A deleted sandbox is forgotten (404); one that ended by itself answers 410.
    assert!(
        err.contains("not_found") || err.contains("sandbox_ended"),
        "{err}"
    );
    let (code, out, _) = tvm(&url, &["sandbox", "list", "-q"], "");
    assert_eq!((code, out.as_str()), (0, ""));
}

#[test]
fn usage_mistakes_exit_2_without_a_server() {
    let url = "http://127.0.0.1:9";
    for args in [
        &["sandbox", "cp", "a", "b"][..],
        &["sandbox", "cp", "sb-1:a", "sb-2:b"],
        &["sandbox", "cp", "-", "sb-1:dir/"],
        &["sandbox", "cp", "sb-1:a/../../b", "-"],
        &["sandbox", "cp", "sb-1:/etc/passwd", "-"],
        &["sandbox", "exec", "sb-1"],
        &["sandbox", "exec", "sb-1", "-c", "1"],
        &["sandbox", "rm"],
        &["sandbox", "create", "--ttl", "soon"],
        &["sandbox", "create", "-e", "=x"],
    ] {
        let (code, _, err) = tvm(url, args, "");
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    let (code, _, err) = tvm(url, &["sandbox", "create"], "");
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
}
