//! Lima mode. Lima cannot run here, so `limactl` is pyrolima's **test double**
//! (`crates/pyrolima/tests/fixtures/limactl-test-double`: Lima's real `list --json`
//! format, scripted start outcomes, no VM). Behind the "forwarded ingress" port is a
//! real pyrovm (`pyroshell --mode embedded`) that accepts the token pyroshell hands
//! pyrolima — so requests that pass the gateway run in real microVMs.

mod common;
#[path = "../../pyrolima/tests/common/mod.rs"]
mod lima_common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, upstream, wait_status, Shell};
use lima_common::{oci_archive, Double};
use serde_json::{json, Value};

const TOKEN: &str = "lima-test-token-0123456789";
const VM: &str = "tvm-pyroshell-test";

/// How often the double was called with `verb` (`start`, `delete`, `copy`, `shell`, ...).
fn count(double: &Double, verb: &str) -> usize {
    double
        .actions()
        .iter()
        .filter(|a| a.split(' ').next() == Some(verb))
        .count()
}

async fn lima_gateway(
    root: &Path,
    double: &Double,
    ingress_port: u16,
    extra_args: &[&str],
) -> Shell {
    let config = format!(
        "[lima]\nname = \"{VM}\"\nlimactl = \"{}\"\ningress_port = {ingress_port}\noci_archive = \"{}\"\n\
         deploy_dir = \"{}\"\nmonitor_interval_ms = 100\n",
        double.bin.display(),
        oci_archive(root, "localhost/tvm/pyrovm:0.1.0", "amd64").display(),
        lima_common::deploy_dir().display(),
    );
    let mut args = vec!["--mode", "lima"];
    args.extend_from_slice(extra_args);
    Shell::start(
        root,
        "lima-gateway",
        free_port(),
        &config,
        &args,
        &[("TVM_UPSTREAM_TOKEN", TOKEN)],
    )
    .await
}

async fn post(base: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/execute"))
        .json(&json!({"language": "bash", "code": "echo through-lima"}))
        .send()
        .await
        .expect("request")
}

/// While not ready: 503 with Retry-After, naming the Lima VM.
async fn assert_gated(base: &str, what: &str) {
    let resp = post(base).await;
    assert_eq!(resp.status(), 503, "{what}");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("secs");
    assert!(retry >= 1, "{what}: Retry-After {retry}");
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["error"]["code"], "upstream_unavailable", "{what}: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Lima VM"),
        "{what}: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_the_vm_recreates_it_when_broken_and_deletes_it_on_exit() {
    let root = tempfile::tempdir().expect("tempdir");
    let ingress = free_port();
    let Some(mut up) = upstream(root.path(), ingress, &[("TVM_TOKENS", TOKEN)]).await else {
        return;
    };
    let double = Double::new();
    // The first start takes 2 s, the recreation 2 s.
    double.set_plan(&["ok-after 2", "ok-after 2"]);
    let mut gw = lima_gateway(root.path(), &double, ingress, &[]).await;
    let g = gw.url.clone();

    // Starting: gated, even though the ingress port already answers.
    assert_gated(&g, "while the VM starts").await;
    wait_status(&format!("{g}/readyz"), 200, Duration::from_secs(30)).await;
    assert_eq!(double.status(VM).as_deref(), Some("Running"));
    let resp = post(&g).await;
    assert_eq!(resp.status(), 200, "{}", gw.log());
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["stdout"], "through-lima\n", "{v}");
    assert_eq!(count(&double, "start"), 1);
    assert!(
        count(&double, "copy") >= 1 && count(&double, "shell") >= 1,
        "image and manifests go in"
    );

    // The VM breaks: 503 + Retry-After at once (pyrovm behind the port is still up),
    // the monitor deletes and starts it again, then requests pass again.
    double.set_status(VM, "Broken");
    let t0 = Instant::now();
    wait_status(&format!("{g}/readyz"), 503, Duration::from_secs(2)).await;
    eprintln!("broken VM noticed after {:?}", t0.elapsed());
    assert_gated(&g, "while the VM is recreated").await;
    wait_status(&format!("{g}/readyz"), 200, Duration::from_secs(30)).await;
    eprintln!("recovered after {:?}", t0.elapsed());
    assert_eq!(count(&double, "start"), 2, "recreated once");
    assert!(
        count(&double, "delete") >= 1,
        "the broken VM was deleted first"
    );
    assert_eq!(post(&g).await.status(), 200);

    // Exit: the VM is deleted.
    assert!(
        gw.terminate(Duration::from_secs(30)).success(),
        "{}",
        gw.log()
    );
    assert_eq!(double.status(VM), None, "the VM outlived pyroshell");
    assert!(up.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_vm_keeps_it_and_a_too_old_lima_is_a_clear_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let ingress = free_port();
    let Some(mut up) = upstream(root.path(), ingress, &[("TVM_TOKENS", TOKEN)]).await else {
        return;
    };
    let double = Double::new();
    let mut gw = lima_gateway(root.path(), &double, ingress, &["--keep-vm"]).await;
    wait_status(&format!("{}/readyz", gw.url), 200, Duration::from_secs(30)).await;
    assert!(
        gw.terminate(Duration::from_secs(30)).success(),
        "{}",
        gw.log()
    );
    assert_eq!(double.status(VM).as_deref(), Some("Running"), "--keep-vm");
    assert_eq!(count(&double, "delete"), 0);

    // Lima 0.13: pyroshell says why and exits 2 without starting anything.
    double.set_version("0.13.0");
    let starts = count(&double, "start");
    let mut gw = lima_gateway(root.path(), &double, ingress, &["--keep-vm"]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = gw.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "pyroshell kept running with Lima 0.13"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(2), "{}", gw.log());
    assert!(
        gw.log().contains("0.14"),
        "the message names the minimum: {}",
        gw.log()
    );
    assert_eq!(count(&double, "start"), starts);
    assert!(up.terminate(Duration::from_secs(30)).success());
}
