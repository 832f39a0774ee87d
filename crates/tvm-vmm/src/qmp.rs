//! A minimal QMP client: the handful of commands snapshots need (stop, cont,
//! migrate, migrate-incoming, capabilities, query-migrate), every one bounded.
//!
//! QMP is line-delimited JSON; replies carry `return` or `error`, and asynchronous
//! `event` lines may arrive at any time and are skipped. A full QAPI binding (the
//! `qapi` crate generates the whole schema) is far more than these six commands need.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::VmmError;

#[derive(Debug)]
pub(crate) struct Qmp {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
    deadline: Instant,
}

fn err(msg: impl Into<String>) -> VmmError {
    VmmError::Snapshot(format!("QMP: {}", msg.into()))
}

/// What a reply line says: `Ok(Some(value))` for a return, `Err` for an error,
/// `Ok(None)` for an event or anything else to skip. Pure, so it is tested directly.
pub(crate) fn parse_reply(line: &str) -> Result<Option<Value>, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad reply {line:?}: {e}"))?;
    if let Some(r) = v.get("return") {
        return Ok(Some(r.clone()));
    }
    if let Some(e) = v.get("error") {
        let class = e.get("class").and_then(Value::as_str).unwrap_or("Error");
        let desc = e.get("desc").and_then(Value::as_str).unwrap_or("");
        return Err(format!("{class}: {desc}"));
    }
    Ok(None)
}

impl Qmp {
    /// Reads the greeting and negotiates capabilities; every later call must finish
    /// before `deadline`.
    pub(crate) async fn connect(stream: UnixStream, deadline: Instant) -> Result<Self, VmmError> {
        let (r, w) = stream.into_split();
        let mut q = Self {
            lines: BufReader::new(r).lines(),
            writer: w,
            deadline,
        };
        let greeting = q.next_line().await?;
        if !greeting.contains("\"QMP\"") {
            return Err(err(format!("unexpected greeting {greeting:?}")));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn next_line(&mut self) -> Result<String, VmmError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => Err(err("QEMU closed the monitor")),
            Ok(Err(e)) => Err(err(format!("read: {e}"))),
            Err(_) => Err(err(format!("no reply within {left:?}"))),
        }
    }

    /// Runs one command and returns its `return` value.
    pub(crate) async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|e| err(format!("write {command}: {e}")))?;
        loop {
            let reply = self.next_line().await?;
            match parse_reply(&reply).map_err(|e| err(format!("{command}: {e}")))? {
                Some(v) => return Ok(v),
                None => continue,
            }
        }
    }

    /// Sets the migration capabilities snapshots rely on: guest RAM lives in a
    /// shared memory file and is never copied into the migration stream.
    pub(crate) async fn ignore_shared_ram(&mut self) -> Result<(), VmmError> {
        self.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )
        .await
        .map(drop)
    }

    /// Polls `query-migrate` until it reports `completed`; a failure names QEMU's reason.
    pub(crate) async fn wait_migration(&mut self) -> Result<(), VmmError> {
        loop {
            let r = self.execute("query-migrate", None).await?;
            match r.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    let why = r
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("no reason given");
                    return Err(err(format!("migration failed: {why}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_events_and_errors() {
        assert_eq!(parse_reply(r#"{"return": {}}"#), Ok(Some(json!({}))));
        assert_eq!(
            parse_reply(r#"{"return": {"status": "completed"}}"#).unwrap(),
            Some(json!({"status": "completed"}))
        );
        assert_eq!(
            parse_reply(r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#),
            Ok(None)
        );
        let e = parse_reply(r#"{"error": {"class": "GenericError", "desc": "no such file"}}"#)
            .unwrap_err();
        assert_eq!(e, "GenericError: no such file");
        assert!(parse_reply("not json").is_err());
    }

    /// A real Unix-socket peer speaking QMP (a test double of QEMU's monitor, which
    /// the snapshot VM tests exercise for real).
    #[tokio::test]
    async fn skips_events_and_bounds_silence() {
        let (a, b) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let (r, mut w) = b.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let _ = lines.next_line().await; // qmp_capabilities
            w.write_all(b"{\"return\": {}}\n").await.unwrap();
            let _ = lines.next_line().await; // query-migrate
            w.write_all(b"{\"event\": \"MIGRATION\"}\n{\"return\": {\"status\": \"completed\"}}\n")
                .await
                .unwrap();
            let _ = lines.next_line().await; // stop: never answered
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let mut q = Qmp::connect(a, Instant::now() + Duration::from_millis(500))
            .await
            .unwrap();
        q.wait_migration().await.unwrap();
        let started = Instant::now();
        let e = q.execute("stop", None).await.unwrap_err();
        assert!(e.to_string().contains("no reply"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
