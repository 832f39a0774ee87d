//! `tvm run` / `tvm exec` against a real pyrovm (in-process) booting real microVMs.

// Test helpers outside #[test] functions may panic on setup failures.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn image() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("TVM_IMAGE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tvm_image::current_dir(&tvm_image::cache_dir()));
    if tvm_image::image_in(&dir).check().is_ok() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("TVM_REQUIRE_VM").is_none(),
        "TVM_REQUIRE_VM is set but there is no image at {}",
        dir.display()
    );
    eprintln!("SKIPPED: no guest image at {}", dir.display());
    None
}

/// Starts pyrovm on a loopback port in a background thread; returns its URL.
fn server(runtime: &std::path::Path) -> Option<String> {
    let image = image()?;
    let config = pyrovm::Config {
        image_dir: Some(image),
        runtime_dir: Some(runtime.to_path_buf()),
        // Every request cold-boots: no idle pool VMs outlive the test.
        pool: Vec::new(),
        ..pyrovm::Config::default()
    };
    let service = pyrovm::Service::new(&config).unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", std_listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            service
                .serve(listener, std::future::pending())
                .await
                .unwrap();
        });
    });
    Some(url)
}

fn tvm(url: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tvm"))
        .arg("--server")
        .arg(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
