//! HTTP calls to a TVM server.

use tvm_api::{ErrorBody, ExecuteRequest, ExecuteResponse, LanguageInfo, StreamExit};

use anyhow::Context as _;

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `Ok(Ok(resp))` on 200, `Ok(Err(..))` for an API error answer, `Err` if unreachable.
pub fn execute(
    server: &str,
    req: &ExecuteRequest,
) -> anyhow::Result<Result<ExecuteResponse, (reqwest::StatusCode, ErrorBody)>> {
    let url = format!("{}/v1/execute", server.trim_end_matches('/'));
    rt()?.block_on(async {
        let resp = post(&url, req).await?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the response")?;
        if status.is_success() {
            Ok(Ok(
                serde_json::from_slice(&body).context("server sent an unexpected response")?
            ))
        } else {
            Ok(Err((status, api_error(status, &body)?)))
        }
    })
}

pub fn languages(server: &str) -> anyhow::Result<Vec<LanguageInfo>> {
    let url = format!("{}/v1/languages", server.trim_end_matches('/'));
    rt()?.block_on(async {
        let resp = reqwest::get(&url)
            .await
            .with_context(|| format!("cannot reach {url}"))?;
        resp.error_for_status()?
            .json()
            .await
            .context("unexpected /v1/languages answer")
    })
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Incremental SSE parser: feed bytes, take complete events (comments skipped).
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let mut name = None;
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v));
                }
            }
            if name.is_some() || !data.is_empty() {
                out.push(SseEvent {
                    name: name.unwrap_or_else(|| "message".into()),
                    data: data.join("\n"),
                });
            }
        }
        out
    }
}

/// Streams an execution: `on_output(is_stderr, text)` for each chunk; returns the exit event.
pub fn execute_stream(
    server: &str,
    req: &ExecuteRequest,
    on_output: &mut dyn FnMut(bool, &str),
) -> anyhow::Result<Result<StreamExit, (reqwest::StatusCode, ErrorBody)>> {
    use futures_util::StreamExt;
    let url = format!("{}/v1/execute/stream", server.trim_end_matches('/'));
    rt()?.block_on(async {
        let resp = post(&url, req).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.context("reading the response")?;
            return Ok(Err((status, api_error(status, &body)?)));
        }
        let mut parser = SseParser::default();
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the stream broke")?;
            for ev in parser.feed(&chunk) {
                match ev.name.as_str() {
                    "stdout" => on_output(false, &ev.data),
                    "stderr" => on_output(true, &ev.data),
                    "exit" => {
                        return Ok(Ok(
                            serde_json::from_str(&ev.data).context("unexpected exit event")?
                        ));
                    }
                    _ => {}
                }
            }
        }
        anyhow::bail!("the server closed the stream before the exit event")
    })
}

/// POSTs a request as JSON; a connection failure says how to start a server.
async fn post(url: &str, req: &ExecuteRequest) -> anyhow::Result<reqwest::Response> {
    with_auth(reqwest::Client::new().post(url))
        .json(req)
        .send()
        .await
        .with_context(|| {
            format!("cannot reach {url} (is the server running? `make run` starts one)")
        })
}

/// The `{"error": …}` body of a refusal, or the raw answer if it is not one.
fn api_error(status: reqwest::StatusCode, body: &[u8]) -> anyhow::Result<ErrorBody> {
    serde_json::from_slice(body).with_context(|| {
        format!(
            "server answered {status}: {}",
            String::from_utf8_lossy(body)
        )
    })
}

/// Adds `Authorization: Bearer $TVM_TOKEN` when set.
fn with_auth(r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match std::env::var("TVM_TOKEN") {
        Ok(t) if !t.is_empty() => r.bearer_auth(t),
        _ => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: stdout\nda").is_empty());
        let evs = p.feed(b"ta: a\ndata: b\n\n: keep-alive\n\nevent: exit\ndata: {}\n\n");
        assert_eq!(
            evs,
            [
                SseEvent {
                    name: "stdout".into(),
                    data: "a\nb".into()
                },
                SseEvent {
                    name: "exit".into(),
                    data: "{}".into()
                }
            ]
        );
    }
}
