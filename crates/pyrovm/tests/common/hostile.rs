//! Shared harness of the hostile-program tests (`tests/hostile_*.rs`): a server of
//! snapshot clones, one request with its checks and table row, and the health check.

use std::time::{Duration, Instant};

use super::TestServer;
use pyrovm::pool::PoolClass;
use serde_json::{json, Value};

/// `timeout_ms` of a request that does not set one (the service's default).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// The agent reports a timeout within this much of the limit (kill, reap).
pub const TIMEOUT_SLACK_MS: u64 = 1_500;
/// From "VM ready" to the answer, on top of the job's timeout: kill, the agent's
/// 2 s output drain, VM destruction.
pub const EXEC_SLACK_MS: u64 = 4_000;
/// The whole request on top of the job's timeout: also the VM start (a clone, or a
/// cold boot) under TCG on shared cores.
pub const WALL_SLACK_MS: u64 = 20_000;

/// A server whose VMs are snapshot clones: one class per job memory size (1 vCPU,
/// none kept ready, so no idle VM counts as left behind), each with its template ready.
pub async fn start(memory_classes: &[u64]) -> Option<TestServer> {
    let srv = TestServer::start(|c| {
        c.pool = memory_classes
            .iter()
            .map(|&memory_mb| PoolClass {
                vcpus: 1,
                memory_mb,
                size: 0,
            })
            .collect();
        c.snapshot.warm = vec![vec!["/usr/bin/python3".into(), "-c".into(), "pass".into()]];
    })
    .await?;
    let want = memory_classes.len() as f64;
    srv.wait_metric("tvm_snapshots_ready", want, Duration::from_secs(120))
        .await;
    Some(srv)
}

/// One answered request and how long the client waited for it.
pub struct Ran {
    pub case: &'static str,
    pub lang: &'static str,
    pub v: Value,
    pub wall_ms: u64,
}

impl Ran {
    pub fn status(&self) -> &str {
        self.v["status"].as_str().unwrap_or("")
    }

    pub fn stdout(&self) -> &str {
        self.v["stdout"].as_str().unwrap_or("")
    }

    pub fn stderr(&self) -> &str {
        self.v["stderr"].as_str().unwrap_or("")
    }

    pub fn exit_code(&self) -> Option<i64> {
        self.v["exit_code"].as_i64()
    }

    pub fn signal(&self) -> Option<&str> {
        self.v["signal"].as_str()
    }

    pub fn exec_ms(&self) -> u64 {
        self.v["timings_ms"]["exec"].as_u64().unwrap_or(0)
    }

    /// The answer for an assertion message, with long output cut.
    pub fn context(&self) -> String {
        fn head(s: &str) -> &str {
            let mut end = s.len().min(1500);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
        format!(
            "{} ({}): status {} exit_code {:?} signal {:?} error {} timings {} wall {} ms\n\
             --- stdout ({} B) ---\n{}\n--- stderr ({} B) ---\n{}",
            self.case,
            self.lang,
            self.status(),
            self.exit_code(),
            self.signal(),
            self.v["error"],
            self.v["timings_ms"],
            self.wall_ms,
            self.stdout().len(),
            head(self.stdout()),
            self.stderr().len(),
            head(self.stderr()),
        )
    }

    pub fn expect_status(&self, want: &str) {
        assert_eq!(self.status(), want, "{}", self.context());
    }

    /// Completed, with a non-zero exit code (the refused operation ended the program).
    pub fn expect_refused_exit(&self) {
        self.expect_status("completed");
        assert!(
            self.exit_code().is_some_and(|c| c != 0),
            "expected a non-zero exit: {}",
            self.context()
        );
    }

    pub fn expect_stdout_has(&self, needle: &str) {
        assert!(
            self.stdout().contains(needle),
            "stdout lacks {needle:?}: {}",
            self.context()
        );
    }

    pub fn expect_stderr_has(&self, needle: &str) {
        assert!(
            self.stderr().contains(needle),
            "stderr lacks {needle:?}: {}",
            self.context()
        );
    }

    pub fn expect_stdout_lacks(&self, needle: &str) {
        assert!(
            !self.stdout().contains(needle),
            "stdout has {needle:?}: {}",
            self.context()
        );
    }

    /// The text after `prefix` on the first stdout line that starts with it.
    pub fn line_after(&self, prefix: &str) -> &str {
        self.stdout()
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no stdout line {prefix:?}: {}", self.context()))
    }

    /// The stdout lines that start with `prefix`, joined by ", " (for the table).
    pub fn lines_with(&self, prefix: &str) -> String {
        self.stdout()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn row(&self, note: &str) {
        static HEADER: std::sync::Once = std::sync::Once::new();
        HEADER.call_once(|| {
            eprintln!("| case | lang | status | wall ms | note |\n|---|---|---|---|---|");
        });
        eprintln!(
            "| {} | {} | {} | {} | {} |",
            self.case,
            self.lang,
            self.status(),
            self.wall_ms,
            note
        );
    }
}

/// Sends one program; asserts a 200 that matches the API schema, an answer within the
/// job's deadline plus slack, and that its VM is gone.
pub async fn run(
    srv: &TestServer,
    case: &'static str,
    lang: &'static str,
    code: &str,
    limits: Value,
) -> Ran {
    let timeout_ms = limits["timeout_ms"].as_u64().unwrap_or(DEFAULT_TIMEOUT_MS);
    let started = Instant::now();
    let (status, v) = srv
        .execute(json!({"language": lang, "code": code, "limits": limits}))
        .await;
    let wall_ms = started.elapsed().as_millis() as u64;
    super::check_against_openapi("post", "/v1/execute", status, &v);
    let ran = Ran {
        case,
        lang,
        v,
        wall_ms,
    };
    assert_eq!(status, 200, "{}", ran.context());
    let vm_start = ran.v["timings_ms"]["vm_start"]
        .as_u64()
        .expect("timings_ms.vm_start");
    assert!(
        wall_ms <= timeout_ms + WALL_SLACK_MS,
        "answer after {wall_ms} ms, timeout {timeout_ms} ms: {}",
        ran.context()
    );
    assert!(
        wall_ms.saturating_sub(vm_start) <= timeout_ms + EXEC_SLACK_MS,
        "answer {} ms after the VM was ready, timeout {timeout_ms} ms: {}",
        wall_ms.saturating_sub(vm_start),
        ran.context()
    );
    srv.assert_no_vms().await;
    ran
}

/// The service still answers: health, a trivial job in a fresh VM, nothing left.
pub async fn healthy(srv: &TestServer, after: &Ran) {
    let (code, body) = srv.get("/healthz").await;
    assert_eq!(code, 200, "/healthz after {}: {body}", after.case);
    let (status, v) = srv
        .execute(json!({"language": "bash", "code": "echo ok"}))
        .await;
    assert_eq!(status, 200, "follow-up after {}: {v}", after.case);
    assert_eq!(
        v["status"], "completed",
        "follow-up after {}: {v}",
        after.case
    );
    assert_eq!(v["stdout"], "ok\n", "follow-up after {}: {v}", after.case);
    srv.assert_no_vms().await;
}

/// The number after `prefix` in `text` (e.g. `max 12` → 12).
pub fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

// --- resource hogs -----------------------------------------------------------------
