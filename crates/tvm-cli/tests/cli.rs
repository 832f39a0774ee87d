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

#[test]
fn compile_errors_and_warnings_go_to_stderr() {
    let rt = tempfile::tempdir().unwrap();
    let Some(url) = server(rt.path()) else { return };
    let dir = tempfile::tempdir().unwrap();
    // Software emulation makes gcc slow: a generous compile deadline.
    let slow = ["--compile-timeout-ms", "120000", "--timeout-ms", "20000"];

    let bad = dir.path().join("bad.c");
    std::fs::write(&bad, "int main(void) { return undeclared_thing; }\n").unwrap();
    let bad = bad.to_str().unwrap();
    for stream in [true, false] {
        let mut args = vec!["run", bad];
        if !stream {
            args.push("--no-stream");
        }
        args.extend(slow);
        let (code, out, err) = tvm(&url, &args, "");
        assert_eq!(code, 1, "stream {stream}: {err}");
        assert_eq!(out, "", "stream {stream}: nothing ran");
        assert!(
            err.contains("undeclared_thing") && err.contains("error"),
            "stream {stream}: {err}"
        );
        assert!(err.contains("the program did not run"), "{err}");
    }

    // A warning reaches stderr; the program's output is printed as for any language.
    let good = dir.path().join("warn.c");
    std::fs::write(
        &good,
        "#include <stdio.h>\n#warning tvm-test-warning\nint main(void) { printf(\"%d\\n\", 6 * 7); return 3; }\n",
    )
    .unwrap();
    let mut args = vec!["run", good.to_str().unwrap(), "--no-stream"];
    args.extend(slow);
    let (code, out, err) = tvm(&url, &args, "");
    assert_eq!((code, out.as_str()), (3, "42\n"), "{err}");
    assert!(err.contains("tvm-test-warning"), "{err}");
}

#[test]
fn languages_lists_the_table() {
    let rt = tempfile::tempdir().unwrap();
    let Some(url) = server(rt.path()) else { return };
    let table = tvm_api::LanguageTable::builtin();

    let (code, out, err) = tvm(&url, &["languages"], "");
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), table.iter().count() + 1, "{out}");
    let header = lines[0];
    assert!(header.starts_with("NAME"), "{out}");
    for col in ["VERSION", "COMPILED", "ALIASES", "EXTENSIONS"] {
        let at = header.find(col).unwrap_or_else(|| panic!("{col}: {out}"));
        // Aligned: every row's cell in this column starts where its header does.
        for line in &lines[1..] {
            let aligned =
                line.len() > at && line[..at].ends_with("  ") && line.as_bytes()[at] != b' ';
            assert!(aligned, "{col} misaligned in {line:?}\n{out}");
        }
    }
    let c = lines.iter().find(|l| l.starts_with("c ")).unwrap();
    let cells: Vec<&str> = c.split_whitespace().collect();
    assert_eq!(cells[0], "c");
    assert_eq!(cells[2], "yes", "{c}");
    assert!(cells.contains(&"gcc") && cells.contains(&".c"), "{c}");
    let py = lines.iter().find(|l| l.starts_with("python ")).unwrap();
    assert!(py.contains(" no ") && py.contains(".py"), "{py}");

    let (code, out, err) = tvm(&url, &["languages", "--json"], "");
    assert_eq!(code, 0, "{err}");
    let v: Vec<tvm_api::LanguageInfo> = serde_json::from_str(&out).unwrap();
    assert_eq!(v.len(), table.iter().count());
    let c = v.iter().find(|l| l.name == "c").unwrap();
    assert!(c.compiled && c.extensions == ["c"], "{c:?}");
}
