//! Compile once, run many test cases, in real microVMs: a verdict per case, each
//! case under its own limits and in its own copy of the compiled work dir.

mod common;

use common::TestServer;
use serde_json::json;

/// Reads one word: a number is doubled; `spin` loops forever; `hog` allocates
/// 200 MB; `write` leaves files in the work dir and /tmp; `check` says whether
/// any such file is there.
const JUDGED: &str = r#"#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(void) {
  char w[64] = "";
  if (scanf("%63s", w) != 1) return 2;
  if (!strcmp(w, "spin")) for (;;) {}
  if (!strcmp(w, "hog")) {
    for (int i = 0; i < 200; i++) { char *p = malloc(1 << 20); memset(p, 1, 1 << 20); }
    puts("survived");
    return 0;
  }
  if (!strcmp(w, "write")) {
    fclose(fopen("mark", "w"));
    fclose(fopen("/tmp/mark", "w"));
    unlink("main");
    puts("wrote");
    return 0;
  }
  if (!strcmp(w, "check")) {
    puts(access("mark", F_OK) || access("/tmp/mark", F_OK) ? "clean" : "dirty");
    return access("main", F_OK) ? 4 : 0;
  }
  printf("%d\n", atoi(w) * 2);
  return 0;
}
"#;

#[tokio::test]
async fn one_compile_three_cases_three_verdicts() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let before = srv.metric("tvm_compiles_total").await;
    let (status, v) = srv
        .execute(json!({
            "language": "c",
            "code": JUDGED,
            "limits": {"timeout_ms": 20000, "compile_timeout_ms": 120000},
            "tests": [
                {"stdin": "2", "expected_stdout": "4\n"},
                // Trailing whitespace does not count, the digits do.
                {"stdin": "5", "expected_stdout": "11  \n\n"},
                {"stdin": "spin", "limits": {"timeout_ms": 1000}},
                {"stdin": "hog", "limits": {"memory_mb": 64}},
                {"stdin": "21", "expected_stdout": "42"},
            ],
        }))
        .await;
    assert_eq!(status, 200, "{v}");
    common::check_against_openapi("post", "/v1/execute", 200, &v);
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["compile"]["status"], "completed", "{v}");
    let cases = v["tests"].as_array().expect("tests");
    let verdicts: Vec<&str> = cases
        .iter()
        .map(|c| c["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        [
            "accepted",
            "wrong_answer",
            "time_limit",
            "memory_limit",
            "accepted"
        ],
        "{v}"
    );
    assert_eq!(cases[1]["stdout"], "10\n");
    // The spinning case was stopped at its own 1 s, not the request's 20 s.
    let spun = cases[2]["duration_ms"].as_u64().unwrap();
    assert!((1000..5000).contains(&spun), "{spun} ms: {v}");
    assert_eq!(cases[2]["status"], "timeout");
    // ... and a crash or timeout did not stop the cases after it.
    assert_eq!(cases[4]["stdout"], "42\n");
    assert_eq!(v["verdict"], "wrong_answer", "the first case that failed");
    // The compiler ran once for all five cases.
    let after = srv.metric("tvm_compiles_total").await;
    assert_eq!(after - before, 1.0, "compiles: {before} -> {after}");
    assert!(srv.metric("tvm_test_cases_total").await >= 5.0);
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn no_case_sees_what_another_wrote() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    let (status, v) = srv
        .execute(json!({
            "language": "c",
            "code": JUDGED,
            "limits": {"compile_timeout_ms": 120000},
            "tests": [
                {"stdin": "write", "expected_stdout": "wrote"},
                // The binary the first case deleted is back, its files are gone.
                {"stdin": "check", "expected_stdout": "clean"},
            ],
        }))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["verdict"], "accepted", "{v}");
    srv.assert_no_vms().await;

    // Interpreted languages get the same fresh work dir for every case.
    let (status, v) = srv
        .execute(json!({
            "language": "python",
            "code": "import os\nif input() == 'w':\n    open('f', 'w').write('x')\nprint(sorted(os.listdir('.')))",
            "files": [{"path": "data.txt", "content": "d"}],
            "tests": [{"stdin": "w"}, {"stdin": "r"}],
        }))
        .await;
    assert_eq!(status, 200, "{v}");
    let cases = v["tests"].as_array().expect("tests");
    assert_eq!(cases[0]["stdout"], "['data.txt', 'f', 'main.py']\n", "{v}");
    assert_eq!(cases[1]["stdout"], "['data.txt', 'main.py']\n", "{v}");
    assert!(v["compile"].is_null());
    srv.assert_no_vms().await;
    srv.stop().await;
}

#[tokio::test]
async fn bad_test_requests_are_refused_before_any_vm() {
    let Some(srv) = TestServer::start(|_| {}).await else {
        return;
    };
    for (body, code) in [
        (
            json!({"language": "c", "code": "", "tests": [{"limits": {"timeout_ms": 1}}]}),
            "limit_out_of_range",
        ),
        (
            json!({"language": "c", "code": "", "stdin": "x", "tests": [{}]}),
            "invalid_argument",
        ),
        (
            json!({"language": "c", "code": "", "tests": [{"expected": "x"}]}),
            "invalid_json",
        ),
        (
            json!({"language": "c", "code": "", "limits": {"compile_timeout_ms": 10}}),
            "limit_out_of_range",
        ),
    ] {
        let (status, v) = srv.execute(body.clone()).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["code"], code, "{body}: {v}");
    }
    assert_eq!(srv.metric("tvm_vm_boots_total").await, 0.0);
    srv.assert_no_vms().await;
    srv.stop().await;
}
