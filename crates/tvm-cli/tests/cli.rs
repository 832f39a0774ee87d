//! `tvm run` / `tvm exec` against a real pyrovm (in-process) booting real microVMs.

// Test helpers outside #[test] functions may panic on setup failures.
#![allow(clippy::unwrap_used)]

mod common;

use common::{server, tvm};

#[test]
fn exec_and_run_mirror_the_program() {
    let rt = tempfile::tempdir().unwrap();
    let Some(url) = server(rt.path()) else { return };

    let (code, out, _) = tvm(&url, &["exec", "-l", "python", "-c", "print(6*7)"], "");
    assert_eq!((code, out.as_str()), (0, "42\n"));
    let (code, out, _) = tvm(
        &url,
        &["exec", "--no-stream", "-l", "python", "-c", "print(6*7)"],
        "",
    );
    assert_eq!((code, out.as_str()), (0, "42\n"));

    let (code, out, err) = tvm(
        &url,
        &["exec", "-l", "bash", "-c", "echo o; echo e >&2; exit 5"],
        "",
    );
    assert_eq!((code, out.as_str(), err.as_str()), (5, "o\n", "e\n"));

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("echo.py");
    std::fs::write(
        &script,
        "import sys\nprint(input().upper(), sys.argv[1:])\n",
    )
    .unwrap();
    let (code, out, _) = tvm(
        &url,
        &["run", script.to_str().unwrap(), "--", "a", "b"],
        "shout\n",
    );
    assert_eq!((code, out.as_str()), (0, "SHOUT ['a', 'b']\n"));

    let (code, _, err) = tvm(
        &url,
        &[
            "exec",
            "-l",
            "python",
            "-c",
            "while True: pass",
            "--timeout-ms",
            "1000",
        ],
        "",
    );
    assert_eq!(code, 124, "{err}");
    assert!(err.contains("time limit"), "{err}");

    let (code, _, err) = tvm(&url, &["exec", "-l", "cobol", "-c", "x"], "");
    assert_eq!(code, 2);
    assert!(err.contains("unknown_language"), "{err}");

    let unknown = dir.path().join("x.unknown");
    std::fs::write(&unknown, "x").unwrap();
    let (code, _, err) = tvm(&url, &["run", unknown.to_str().unwrap()], "");
    assert_eq!(code, 2);
    assert!(err.contains("-l"), "{err}");
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let (code, _, err) = tvm(
        "http://127.0.0.1:9",
        &["exec", "-l", "python", "-c", "1"],
        "",
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
}
