//! The HTTP contract: endpoints, every bad input's 4xx (and no VM for it),
//! admission (429) and body limits (413).

mod common;

use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn bad_requests_get_their_4xx_and_start_no_vm() {
    let Some(srv) = TestServer::start(|c| c.max_body_bytes = 1 << 20).await else {
        return;
    };
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (json!({"language": "cobol", "code": "x"}).to_string().into(), 400, "unknown_language"),
        (
            json!({"language": "python", "code": "", "files": [{"path": "a", "content": "!!", "encoding": "base64"}]})
                .to_string()
                .into(),
            400,
            "invalid_base64",
        ),
        (
            json!({"language": "python", "code": "", "files": [{"path": "../etc/x", "content": ""}]}).to_string().into(),
            400,
            "invalid_path",
        ),
        (
            json!({"language": "python", "code": "", "limits": {"timeout_ms": 3_600_000}}).to_string().into(),
            400,
            "limit_out_of_range",
        ),
        (
            json!({"language": "python", "code": "", "limits": {"memory_mb": 1}}).to_string().into(),
            400,
            "limit_out_of_range",
        ),
        (b"{\"language\": \"python\", \"code\": ".to_vec(), 400, "invalid_json"),
        (json!({"language": "python", "code": "", "colour": 1}).to_string().into(), 400, "invalid_json"),
        (json!({"language": "python"}).to_string().into(), 400, "invalid_json"),
        (
            json!({"language": "python", "code": "x".repeat(2 << 20)}).to_string().into(),
            413,
            "body_too_large",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned();
        let (status, v) = srv.post_raw("/v1/execute", body).await;
        assert_eq!(status, want_status, "{shown}: {v}");
        assert_eq!(v["error"]["code"], want_code, "{shown}: {v}");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        srv.metric("tvm_vm_boots_total").await,
        0.0,
        "a bad request started a VM"
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn endpoints_answer() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let (code, body) = srv.get("/healthz").await;
    assert_eq!(code, 200);
    assert_eq!(body, "ok\n");
    let (code, _) = srv.get("/readyz").await;
    assert_eq!(code, 200);
    let (code, body) = srv.get("/v1/languages").await;
    assert_eq!(code, 200);
    let langs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = langs
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    let table: Vec<&str> = tvm_api::LanguageTable::builtin()
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(names, table);
    assert_eq!(langs[0]["file_name"], "main.py");
    assert!(langs[0]["aliases"]
        .as_array()
        .unwrap()
        .contains(&json!("py")));
    let (code, body) = srv.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains("tvm_vm_boots_total"), "{body}");
    let (code, body) = srv.get("/nope").await;
    assert_eq!(code, 404);
    assert!(body.contains("not_found"));
    srv.stop().await;
}

#[tokio::test]
async fn over_capacity_without_a_queue_gets_429_with_retry_after() {
    // `max_queued = 0`: no waiting at all (the queue itself: tests/queue.rs).
    let Some(srv) = TestServer::start(|c| {
        c.max_concurrency = 1;
        c.max_queued = Some(0);
    })
    .await
    else {
        return;
    };
    let slow = json!({"language": "bash", "code": "sleep 3; echo slow"});
    let first = {
        let client = srv.client.clone();
        let url = format!("{}/v1/execute", srv.base);
        let body = slow.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // Wait until the first request holds the only slot.
    for _ in 0..100 {
        if srv.metric("tvm_slots_in_use").await >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let resp = srv
        .client
        .post(format!("{}/v1/execute", srv.base))
        .json(&json!({"language": "bash", "code": "echo hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    // No slot was released yet, so no drain rate: the fallback of 5 s.
    assert_eq!(resp.headers().get("retry-after").unwrap(), "5");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "at_capacity");
    assert_eq!(first.await.unwrap(), 200);
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn start_reaps_a_crashed_instance() {
    let Some(image) = common::image_dir() else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let stale = root.path().join("01dead");
    std::fs::create_dir_all(stale.join("vms/vm1")).unwrap();
    std::fs::write(stale.join("owner"), "999999999 1\n").unwrap();
    let config = pyrovm::Config {
        image_dir: Some(image),
        runtime_dir: Some(root.path().to_path_buf()),
        ..pyrovm::Config::default()
    };
    let service = pyrovm::Service::new(&config).unwrap();
    assert!(!stale.exists(), "stale instance dir was not reaped");
    let mine = service.runtime_dir().to_path_buf();
    drop(service);
    assert!(!mine.exists());
}

#[tokio::test]
async fn a_guest_that_never_becomes_ready_is_a_sandbox_error_naming_the_backend() {
    let Some(image) = common::image_dir() else {
        return;
    };
    // A real kernel and rootfs, but an initramfs without the agent: the kernel finds
    // no init, panics, and QEMU exits (panic=-1, -no-reboot). Boot is retried once.
    let broken = tempfile::tempdir().unwrap();
    let img = tvm_image::image_in(&image);
    std::os::unix::fs::symlink(&img.kernel, broken.path().join("vmlinux")).unwrap();
    std::os::unix::fs::symlink(&img.rootfs, broken.path().join("rootfs.erofs")).unwrap();
    std::fs::write(broken.path().join("initramfs.cpio"), b"").unwrap();
    let dir = broken.path().to_path_buf();
    let Some(srv) = TestServer::start(move |c| {
        c.image_dir = Some(dir);
        c.boot_timeout_ms = 8_000;
    })
    .await
    else {
        return;
    };
    let started = std::time::Instant::now();
    let (status, v) = srv
        .execute(json!({"language": "bash", "code": "echo never"}))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "sandbox_error", "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("qemu-"),
        "backend not named: {v}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        srv.metric("tvm_executions_total{status=\"sandbox_error\"}")
            .await,
        1.0
    );
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[test]
#[should_panic(expected = "does not match the OpenAPI schema")]
fn the_openapi_check_rejects_a_wrong_shape() {
    common::check_schema(
        &json!({"$ref": "#/components/schemas/ExecuteResponse"}),
        &json!({"id": 1, "status": "exploded"}),
        "deliberately wrong",
    );
}

#[tokio::test]
async fn openapi_json_is_served() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let (code, body) = srv.get("/openapi.json").await;
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(&doc, common::openapi());
    srv.stop().await;
}
