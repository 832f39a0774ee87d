//! `tvm mcp`: MCP over stdio, for desktop agents, bridged to the server's `/mcp`
//! (streamable HTTP), so the tools are defined once, in pyrovm.
//!
//! Each JSON-RPC message read from stdin (one per line) is POSTed to `/mcp` with the
//! session id the server gave at `initialize`; the answer (JSON, or an SSE stream of
//! messages) is written to stdout, one message per line. Requests after `initialize`
//! run concurrently, so a long `execute` does not hold up a ping. A request the
//! server refuses (401, 5xx, unreachable) is answered with a JSON-RPC error, so the
//! agent is never left waiting. At end of input the session is deleted.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::{mpsc, Mutex};

use crate::client::{with_auth, SseParser};

const SESSION: &str = "mcp-session-id";

pub fn run(server: &str) -> anyhow::Result<ExitCode> {
    let url = format!("{}/mcp", server.trim_end_matches('/'));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(bridge(url))?;
    Ok(ExitCode::SUCCESS)
}

async fn bridge(url: String) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let session: Arc<Mutex<Option<String>>> = Arc::default();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = out_rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                break;
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await.context("reading stdin")? {
        if line.trim().is_empty() {
            continue;
        }
        let first = session.lock().await.is_none();
        let job = forward(
            client.clone(),
            url.clone(),
            session.clone(),
            line,
            out_tx.clone(),
        );
        if first {
            // `initialize` gives the session every later message needs.
            job.await;
        } else {
            tasks.spawn(job);
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Some(id) = session.lock().await.take() {
        let _ = with_auth(client.delete(&url))
            .header(SESSION, id)
            .send()
            .await;
    }
    drop(out_tx);
    let _ = writer.await;
    Ok(())
}

/// Sends one message and passes on every message of the answer.
async fn forward(
    client: reqwest::Client,
    url: String,
    session: Arc<Mutex<Option<String>>>,
    line: String,
    out: mpsc::UnboundedSender<String>,
) {
    let id = serde_json::from_str::<Value>(&line)
        .ok()
        .and_then(|v| v.get("id").cloned());
    let mut req = with_auth(client.post(&url))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            reqwest::header::ACCEPT,
            "application/json, text/event-stream",
        )
        .body(line);
    if let Some(s) = session.lock().await.clone() {
        req = req.header(SESSION, s);
    }
    let fail = |why: String| {
        if let Some(id) = &id {
            let _ = out.send(
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": why}})
                    .to_string(),
            );
        }
    };
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return fail(format!("TVM server unreachable at {url}: {e}")),
    };
    if let Some(s) = resp.headers().get(SESSION).and_then(|v| v.to_str().ok()) {
        *session.lock().await = Some(s.to_string());
    }
    let status = resp.status();
    if status == reqwest::StatusCode::ACCEPTED || status == reqwest::StatusCode::NO_CONTENT {
        return; // a notification or a response, taken
    }
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        return fail(format!("TVM server answered {status}: {}", body.trim()));
    }
    if !is_sse {
        match resp.text().await {
            Ok(body) if !body.trim().is_empty() => {
                let _ = out.send(body.trim().to_string());
            }
            Ok(_) => {}
            Err(e) => fail(format!("reading the answer: {e}")),
        }
        return;
    }
    let mut parser = SseParser::default();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else {
            return fail("the answer stream broke".into());
        };
        for ev in parser.feed(&chunk) {
            if ev.name == "message" && !ev.data.trim().is_empty() {
                let _ = out.send(ev.data);
            }
        }
    }
}
