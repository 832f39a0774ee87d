//! Helpers of the integration tests: a real pyrovm in-process on loopback, and
//! the built `tvm` binary.

// Test helpers outside #[test] functions may panic on setup failures; not every
// test file uses every helper.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

pub fn image() -> Option<std::path::PathBuf> {
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
pub fn server(runtime: &std::path::Path) -> Option<String> {
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

/// Runs `tvm --server URL ARGS…` with `stdin`; its exit code, stdout and stderr.
pub fn tvm(url: &str, args: &[&str], stdin: &str) -> (i32, String, String) {
    let (code, out, err) = tvm_bytes(url, args, stdin.as_bytes());
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// As [`tvm`], with stdin and stdout as bytes.
pub fn tvm_bytes(url: &str, args: &[&str], stdin: &[u8]) -> (i32, Vec<u8>, Vec<u8>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tvm"))
        .arg("--server")
        .arg(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
}
