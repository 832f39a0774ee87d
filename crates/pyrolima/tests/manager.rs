//! Manager::up/down against the limactl TEST DOUBLE and a TEST DOUBLE of the Istio
//! ingress (tests/common). Lima, k3s and Istio cannot run here; pyrovm is tested
//! elsewhere.
#![cfg(unix)] // the test double is a script run through /bin/sh
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{manager, small_timeouts, spec, Double, IngressDouble, TOKEN};
use pyrolima::{Artifacts, LimaError, Manager, Timeouts};

/// Index of the first action starting with `prefix` (panics with the log otherwise).
fn pos(actions: &[String], prefix: &str) -> usize {
    actions
        .iter()
        .position(|a| a.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {actions:#?}"))
}

#[tokio::test]
async fn up_with_kvm_starts_copies_imports_labels_and_applies_istio() {
    let double = Double::new();
    double.set_kvm(true);
    let ingress = IngressDouble::start(TOKEN).await;
    let m = manager(&double, spec("tvm", ingress.port, 6), small_timeouts());

    let endpoint = m.up().await.unwrap();
    assert_eq!(endpoint.url, format!("http://127.0.0.1:{}", ingress.port));
    assert_eq!(endpoint.kvm, Some(true));
    assert_eq!(m.endpoint(), endpoint);
    assert!(ingress.hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    let a = double.actions();
    let start = pos(&a, "start --tty=false --name tvm");
    let copy_bundle = pos(&a, "copy ");
    assert!(
        a[copy_bundle].ends_with("tvm:/tmp/pyrolima-bundle.tar"),
        "{a:#?}"
    );
    let copy_oci = a
        .iter()
        .position(|x| x.ends_with("tvm:/tmp/pyrolima-pyrovm.oci.tar"))
        .unwrap();
    let unpack = pos(
        &a,
        "shell --workdir / tvm -- sh -c mkdir -p /tmp/pyrolima && tar -xf",
    );
    let kvm = a.iter().position(|x| x.contains("/dev/kvm")).unwrap();
    let import = a
        .iter()
        .position(|x| x.contains("k3s ctr -n k8s.io images import"))
        .unwrap();
    let label = pos(
        &a,
        "shell --workdir / tvm -- sudo k3s kubectl label node --all tvm.dev/kvm=true",
    );
    let apply = a
        .iter()
        .position(|x| x.contains("kubectl apply -k /tmp/pyrolima/overlays/istio"))
        .unwrap();
    assert!(
        start < copy_bundle
            && copy_bundle < copy_oci
            && copy_oci < unpack
            && unpack < kvm
            && kvm < import
            && import < label
            && label < apply,
        "wrong order: {a:#?}"
    );
    assert!(a[import].contains("grep -qxF 'localhost/tvm/pyrovm:0.1.0'"));
    assert!(!a.iter().any(|x| x.contains("overlays/tcg")));
    assert!(
        !a.iter().any(|x| x.contains(TOKEN)),
        "the token must not appear on a command line"
    );

    // What Lima was given: our config, recognisably ours, written to a temporary dir
    // that is gone again.
    let config = double.started_config("tvm");
    assert!(config.contains("managedBy: pyrolima"));
    let started = &double
        .calls()
        .into_iter()
        .find(|(_, c)| c[0] == "start")
        .unwrap()
        .1;
    let config_path = std::path::Path::new(started.last().unwrap());
    assert!(
        !config_path.exists(),
        "temporary config left at {}",
        config_path.display()
    );
}

#[tokio::test]
async fn up_without_kvm_applies_tcg_and_does_not_label() {
    let double = Double::new();
    double.set_kvm(false);
    let ingress = IngressDouble::start(TOKEN).await;
    let m = manager(&double, spec("tvm", ingress.port, 6), small_timeouts());
    assert_eq!(m.up().await.unwrap().kvm, Some(false));
    let a = double.actions();
    assert!(
        a.iter()
            .any(|x| x.contains("kubectl apply -k /tmp/pyrolima/overlays/tcg")),
        "{a:#?}"
    );
    assert!(!a.iter().any(|x| x.contains("label node")), "{a:#?}");
}

#[tokio::test]
async fn kvm_in_a_small_vm_still_gets_tcg_sizing() {
    let double = Double::new();
    double.set_kvm(true);
    let ingress = IngressDouble::start(TOKEN).await;
    let m = manager(&double, spec("tvm", ingress.port, 4), small_timeouts());
    assert_eq!(m.up().await.unwrap().kvm, Some(true));
    let a = double.actions();
    assert!(a.iter().any(|x| x.contains("overlays/tcg")), "{a:#?}");
    assert!(
        a.iter().any(|x| x.contains("label node")),
        "KVM nodes are labelled anyway"
    );
}

#[tokio::test]
async fn up_is_idempotent_and_down_leaves_nothing() {
    let double = Double::new();
    let ingress = IngressDouble::start(TOKEN).await;
    let m = manager(&double, spec("tvm", ingress.port, 4), small_timeouts());
    m.up().await.unwrap();
    m.up().await.unwrap();
    let starts = double
        .actions()
        .iter()
        .filter(|a| a.starts_with("start "))
        .count();
    assert_eq!(starts, 1, "a running, ready VM is reused");

    m.down().await.unwrap();
    assert_eq!(double.status("tvm"), None);
    assert_eq!(m.status().await.unwrap(), None);
    assert_eq!(m.endpoint().kvm, None);
    assert!(double.actions().iter().any(|a| a == "delete --force tvm"));
    m.down().await.unwrap(); // nothing left: still fine
}

#[tokio::test]
async fn an_earlier_pyrolima_instance_is_replaced_but_a_foreign_one_is_left_alone() {
    let double = Double::new();
    let ingress = IngressDouble::start(TOKEN).await;
    double.add_instance(
        "tvm",
        "Broken",
        "# pyrolima-managed-instance: tvm\nvmType: qemu\n",
    );
    let m = manager(&double, spec("tvm", ingress.port, 4), small_timeouts());
    m.up().await.unwrap();
    let a = double.actions();
    assert!(pos(&a, "delete --force tvm") < pos(&a, "start "), "{a:#?}");

    let double = Double::new();
    double.add_instance("tvm", "Running", "vmType: vz\n");
    let m = manager(&double, spec("tvm", ingress.port, 4), small_timeouts());
    let err = m.up().await.unwrap_err();
    assert!(matches!(err, LimaError::Foreign { .. }), "{err:?}");
    assert!(err.is_config_error());
    assert!(matches!(
        m.down().await.unwrap_err(),
        LimaError::Foreign { .. }
    ));
    assert_eq!(double.status("tvm").as_deref(), Some("Running"));
    assert!(!double
        .actions()
        .iter()
        .any(|a| a.starts_with("delete") || a.starts_with("start")));
}

#[tokio::test]
async fn an_ingress_that_never_answers_is_a_bounded_wait() {
    let double = Double::new();
    let ingress = IngressDouble::start(TOKEN).await;
    ingress
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let timeouts = Timeouts {
        ready: Duration::from_millis(800),
        ..small_timeouts()
    };
    let m = manager(&double, spec("tvm", ingress.port, 4), timeouts);
    let t = std::time::Instant::now();
    let err = m.up().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(8));
    match &err {
        LimaError::NotReady { last, .. } => assert!(last.contains("503"), "{last}"),
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert!(!err.is_config_error());
}

#[tokio::test]
async fn the_wrong_token_is_not_ready() {
    let double = Double::new();
    let ingress = IngressDouble::start("another-token").await;
    let timeouts = Timeouts {
        ready: Duration::from_millis(500),
        ..small_timeouts()
    };
    let m = manager(&double, spec("tvm", ingress.port, 4), timeouts);
    let err = m.up().await.unwrap_err();
    assert!(
        matches!(&err, LimaError::NotReady { last, .. } if last.contains("401")),
        "{err:?}"
    );
}

#[tokio::test]
async fn lima_refusing_nested_virtualization_gets_a_second_start_without_it() {
    let double = Double::new();
    double.set_plan(&[
        "fail 1 nested virtualization is not supported on this device",
        "ok",
    ]);
    let ingress = IngressDouble::start(TOKEN).await;
    // A vz spec for an Apple-silicon Mac (not this host, so no host probe interferes).
    let s = pyrolima::VmSpec {
        host: pyrolima::HostOs::Macos,
        vm_type: pyrolima::VmType::Vz,
        arch: pyrolima::Arch::Aarch64,
        nested: true,
        ..spec("tvm", ingress.port, 4)
    };
    let m = manager(&double, s, small_timeouts());
    m.up().await.unwrap();
    let a = double.actions();
    let starts: Vec<usize> = a
        .iter()
        .enumerate()
        .filter(|(_, x)| x.starts_with("start "))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 2, "{a:#?}");
    assert!(a[starts[0]..starts[1]]
        .iter()
        .any(|x| x == "delete --force tvm"));
    let second = double.started_config("tvm");
    assert!(
        second.contains("nested: 'false'") && !second.contains("nestedVirtualization"),
        "{second}"
    );
}

#[tokio::test]
async fn mismatched_or_missing_artifacts_stop_before_any_vm() {
    let double = Double::new();
    let archive = common::oci_archive(double.dir.path(), "localhost/tvm/pyrovm:9.9.9", "amd64");
    let artifacts = Artifacts {
        oci_archive: archive,
        deploy_dir: common::deploy_dir(),
    };
    let m = Manager::new(
        spec("tvm", 1, 4),
        double.limactl(),
        artifacts,
        small_timeouts(),
    );
    let err = m.up().await.unwrap_err();
    assert!(
        err.to_string().contains(
            "holds localhost/tvm/pyrovm:9.9.9 but deploy/k8s runs localhost/tvm/pyrovm:0.1.0"
        ),
        "{err}"
    );
    assert!(err.is_config_error());

    let artifacts = Artifacts {
        oci_archive: double.dir.path().join("missing.tar"),
        deploy_dir: common::deploy_dir(),
    };
    let m = Manager::new(
        spec("tvm", 1, 4),
        double.limactl(),
        artifacts,
        small_timeouts(),
    );
    assert!(m.up().await.unwrap_err().to_string().contains("make image"));
    assert!(!double.actions().iter().any(|a| a.starts_with("start")));
    assert_eq!(m.token().len(), 64, "a random 256-bit token by default");
}
