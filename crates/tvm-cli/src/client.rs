//! HTTP calls to a TVM server.

use tvm_api::{ErrorBody, ExecuteRequest, ExecuteResponse, LanguageInfo};

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
        let resp = reqwest::Client::new()
            .post(&url)
            .json(req)
            .send()
            .await
            .with_context(|| {
                format!("cannot reach {url} (is the server running? `make run` starts one)")
            })?;
        let status = resp.status();
        let body = resp.bytes().await.context("reading the response")?;
        if status.is_success() {
            Ok(Ok(
                serde_json::from_slice(&body).context("server sent an unexpected response")?
            ))
        } else {
            let err: ErrorBody = serde_json::from_slice(&body).with_context(|| {
                format!(
                    "server answered {status}: {}",
                    String::from_utf8_lossy(&body)
                )
            })?;
            Ok(Err((status, err)))
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
