//! The limactl driver against the limactl TEST DOUBLE (tests/fixtures/limactl-test-double;
//! Lima itself cannot run on the build machine).
#![cfg(unix)] // the test double is a script run through /bin/sh
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Double;
use pyrolima::{LimaError, Limactl, Status};
use semver::Version;

fn config_file(double: &Double) -> PathBuf {
    let path = double.dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "vmType: qemu\narch: x86_64\ncpus: 4\nmemory: 8GiB\ndisk: 40GiB\n",
    )
    .unwrap();
    path
}

#[tokio::test]
async fn version_is_parsed_and_old_lima_refused() {
    let double = Double::new();
    let limactl = double.limactl();
    assert_eq!(limactl.version().await.unwrap(), Version::new(2, 2, 0));
    double.set_version("0.13.1");
    let err = limactl.checked_version().await.unwrap_err();
    assert!(
        matches!(&err, LimaError::TooOld { found, need } if *found == Version::new(0, 13, 1) && *need == Version::new(0, 14, 0))
    );
    let msg = err.to_string();
    assert!(
        msg.contains("Lima 0.13.1 is too old") && msg.contains("0.14.0 or later"),
        "{msg}"
    );
    assert!(err.is_config_error());
    double.set_version("0.14.0");
    assert_eq!(
        limactl.checked_version().await.unwrap(),
        Version::new(0, 14, 0)
    );
}

#[tokio::test]
async fn list_reports_running_stopped_broken_and_absent() {
    let double = Double::new();
    let limactl = double.limactl();
    assert_eq!(
        limactl.list("tvm").await.unwrap(),
        None,
        "no instance: exit 1 + warning → None"
    );

    limactl.start("tvm", &config_file(&double)).await.unwrap();
    let inst = limactl.list("tvm").await.unwrap().unwrap();
    assert_eq!(
        (inst.name.as_str(), &inst.status),
        ("tvm", &Status::Running)
    );
    assert_eq!(inst.vm_type.as_deref(), Some("qemu"));
    assert_eq!(inst.cpus, Some(4));
    assert_eq!(inst.memory, Some(8 << 30));

    limactl.stop("tvm").await.unwrap();
    assert_eq!(
        limactl.list("tvm").await.unwrap().unwrap().status,
        Status::Stopped
    );

    double.set_status("tvm", "Broken");
    let inst = limactl.list("tvm").await.unwrap().unwrap();
    assert_eq!(inst.status, Status::Broken);
    assert_eq!(inst.errors, ["the host agent is not running"]);

    double.add_instance("other", "Running", "vmType: vz\n");
    assert_eq!(
        limactl.list("other").await.unwrap().unwrap().status,
        Status::Running
    );
    assert_eq!(
        limactl.list("tvm").await.unwrap().unwrap().status,
        Status::Broken
    );

    limactl.delete("tvm", true).await.unwrap();
    assert_eq!(limactl.list("tvm").await.unwrap(), None);
    let calls = double.calls();
    let start = &calls.iter().find(|(_, a)| a[0] == "start").unwrap().1;
    assert_eq!(&start[..4], ["start", "--tty=false", "--name", "tvm"]);
    assert_eq!(start[4], "--timeout");
    assert!(calls
        .iter()
        .any(|(_, a)| a == &["delete", "--force", "tvm"]));
}

#[tokio::test]
async fn a_failing_start_is_a_typed_error_with_the_stderr_tail() {
    let double = Double::new();
    double.set_plan(&["fail 3 nested virtualization is not supported on this device"]);
    let err = double
        .limactl()
        .start("tvm", &config_file(&double))
        .await
        .unwrap_err();
    match &err {
        LimaError::Failed { cmd, code, stderr } => {
            assert!(
                cmd.starts_with("limactl start --tty=false --name tvm"),
                "{cmd}"
            );
            assert_eq!(*code, Some(3));
            assert!(
                stderr.contains("nested virtualization is not supported"),
                "{stderr}"
            );
            assert!(stderr.contains("Starting the instance"), "{stderr}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(!err.is_config_error());
}

#[tokio::test]
async fn a_hanging_start_times_out_and_its_whole_process_group_is_killed() {
    let double = Double::new();
    double.set_plan(&["hang"]);
    let limactl = double
        .limactl()
        .with_timeouts(Duration::from_secs(5), Duration::from_millis(1500));
    let t = Instant::now();
    let err = limactl
        .start("tvm", &config_file(&double))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(&err, LimaError::Timeout { cmd, .. } if cmd.contains("start")),
        "{err:?}"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(err.to_string().contains("was killed"));
    #[cfg(target_os = "linux")]
    {
        // The double's `sleep` child must be gone too, not only the double itself.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let left = double.live_processes();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "processes left: {left:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn copy_and_shell_need_a_running_instance() {
    let double = Double::new();
    let limactl = double.limactl();
    let file = config_file(&double);
    let err = limactl.copy("tvm", &file, "/tmp/x").await.unwrap_err();
    assert!(
        matches!(&err, LimaError::Failed { stderr, .. } if stderr.contains("not running")),
        "{err:?}"
    );
    limactl.start("tvm", &file).await.unwrap();
    limactl.copy("tvm", &file, "/tmp/x").await.unwrap();
    limactl
        .copy("tvm", double.dir.path(), "/tmp/dir")
        .await
        .unwrap();
    double.set_kvm(true);
    let out = limactl
        .shell(
            "tvm",
            &["sh".into(), "-c".into(), "test -w /dev/kvm".into()],
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "kvm=yes");
    let calls = double.actions();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("copy -r ") && c.ends_with("tvm:/tmp/dir")),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c == "shell --workdir / tvm -- sh -c test -w /dev/kvm"),
        "{calls:?}"
    );
}

#[test]
fn find_prefers_the_explicit_binary_and_says_what_is_missing() {
    let double = Double::new();
    assert_eq!(
        Limactl::find(Some(double.bin.clone())).unwrap().bin(),
        double.bin.as_path()
    );
    let err = Limactl::find(Some("/nonexistent/limactl".into())).unwrap_err();
    assert!(matches!(err, LimaError::NotInstalled { .. }));
    assert!(err
        .to_string()
        .contains("/nonexistent/limactl does not exist"));
    assert!(err.is_config_error());
}

#[tokio::test]
async fn a_missing_binary_is_a_spawn_error() {
    let err = Limactl::new("/nonexistent/limactl".into())
        .version()
        .await
        .unwrap_err();
    assert!(matches!(err, LimaError::Spawn { .. }), "{err:?}");
}
