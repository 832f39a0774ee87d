//! The `pyrovm` binary: exit codes, and a SIGTERM leaves nothing behind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

#[test]
fn bad_config_exits_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "max_concurency = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pyrovm"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_pyrovm"))
        .arg("--listen")
        .arg("not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn non_loopback_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pyrovm"))
        .args(["--listen", "0.0.0.0:0"])
        .env("TVM_RUNTIME_DIR", dir.path().join("run"))
        .env_remove("TVM_TOKENS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--insecure-no-auth") && err.contains("--token-file"),
        "{err}"
    );
    assert!(
        !dir.path().join("run").exists(),
        "a refused start changes nothing"
    );
}

#[test]
fn missing_image_exits_1_and_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pyrovm"))
        .args(["--listen", "127.0.0.1:0", "--image-dir"])
        .arg(dir.path().join("nope"))
        .env("TVM_RUNTIME_DIR", dir.path().join("run"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tvm image build"));
}

#[test]
fn sigterm_stops_cleanly_and_removes_the_runtime_dir() {
    let Some(image) = common::image_dir() else {
        return;
    };
    let run = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pyrovm"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--image-dir"])
        .arg(&image)
        .env("TVM_RUNTIME_DIR", run.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    rt.block_on(async {
        loop {
            if reqwest::get(format!("{url}/healthz"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                break;
            }
            assert!(Instant::now() < deadline, "pyrovm did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let v: serde_json::Value = reqwest::Client::new()
            .post(format!("{url}/v1/execute"))
            .json(&serde_json::json!({"language": "bash", "code": "echo via-binary"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["stdout"], "via-binary\n", "{v}");
    });
    assert_eq!(
        std::fs::read_dir(run.path()).unwrap().count(),
        1,
        "one instance dir while running"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        std::fs::read_dir(run.path()).unwrap().count(),
        0,
        "instance dir left behind"
    );
    assert!(common::vmm_processes(run.path()).is_empty());
}
