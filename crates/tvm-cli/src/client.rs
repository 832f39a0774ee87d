//! HTTP calls to a TVM server.

use tvm_api::{ErrorBody, ExecuteRequest, ExecuteResponse, LanguageInfo, StreamExit};

use anyhow::Context as _;

fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// An API error answer: its status and `{"error": …}` body.
pub type Refusal = (reqwest::StatusCode, ErrorBody);

/// `Ok(Ok(..))` on success, `Ok(Err(..))` for an API error answer, `Err` if the
/// server could not be reached or answered something unexpected.
pub type ApiResult<T> = anyhow::Result<Result<T, Refusal>>;

/// The URL of `path` (which starts with `/`) on `server`.
fn url(server: &str, path: &str) -> String {
    format!("{}{path}", server.trim_end_matches('/'))
}

/// Runs code: `path` is `/v1/execute` or a sandbox's `/execute`.
pub fn execute(server: &str, path: &str, req: &ExecuteRequest) -> ApiResult<ExecuteResponse> {
    let url = url(server, path);
    rt()?.block_on(async {
        let resp = send(with_auth(reqwest::Client::new().post(&url)).json(req), &url).await?;
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

/// A request body: JSON, or raw bytes.
#[derive(Debug)]
pub enum Body {
    Empty,
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

/// One request to the API; the answer's bytes on success.
pub fn call(server: &str, method: reqwest::Method, path: &str, body: Body) -> ApiResult<Vec<u8>> {
    let url = url(server, path);
    rt()?.block_on(async {
        let req = with_auth(reqwest::Client::new().request(method, &url));
        let req = match body {
            Body::Empty => req,
            Body::Json(v) => req.json(&v),
            Body::Bytes(b) => req
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(b),
        };
        let resp = send(req, &url).await?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the response")?;
        if status.is_success() {
            Ok(Ok(body.to_vec()))
        } else {
            Ok(Err((status, api_error(status, &body)?)))
        }
    })
}

/// `GET /v1/languages`: the parsed table and the server's own JSON.
pub fn languages_raw(server: &str) -> ApiResult<(Vec<LanguageInfo>, serde_json::Value)> {
    let bytes = match call(server, reqwest::Method::GET, "/v1/languages", Body::Empty)? {
        Ok(b) => b,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let langs = serde_json::from_slice(&bytes).context("unexpected /v1/languages answer")?;
    let raw = serde_json::from_slice(&bytes).context("unexpected /v1/languages answer")?;
    Ok(Ok((langs, raw)))
}

/// `GET /v1/languages`.
pub fn languages(server: &str) -> ApiResult<Vec<LanguageInfo>> {
    Ok(languages_raw(server)?.map(|(langs, _)| langs))
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub name: String,
    pub data: String,
}

/// Incremental SSE parser: feed bytes, take complete events (comments skipped).
/// Bytes are kept until an event is complete, so a character split across
/// chunks stays whole.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&raw);
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
/// `path` is `/v1/execute/stream` or a sandbox's `/execute/stream`.
pub fn execute_stream(
    server: &str,
    path: &str,
    req: &ExecuteRequest,
    on_output: &mut dyn FnMut(bool, &str),
) -> ApiResult<StreamExit> {
    use futures_util::StreamExt;
    let url = url(server, path);
    rt()?.block_on(async {
        let resp = send(with_auth(reqwest::Client::new().post(&url)).json(req), &url).await?;
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

/// Sends a request; a connection failure says how to start a server.
async fn send(req: reqwest::RequestBuilder, url: &str) -> anyhow::Result<reqwest::Response> {
    req.send().await.with_context(|| {
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
pub(crate) fn with_auth(r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
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

    #[test]
    fn keeps_a_character_split_across_chunks() {
        let mut p = SseParser::default();
        let text = "event: stdout\ndata: h\u{e9}llo \u{1f600}\n\n".as_bytes();
        let cut = text.iter().position(|&b| b == 0xc3).unwrap() + 1;
        assert!(p.feed(&text[..cut]).is_empty());
        let evs = p.feed(&text[cut..]);
        assert_eq!(evs[0].data, "h\u{e9}llo \u{1f600}");
    }
}
