//! MCP (Model Context Protocol) at `/mcp`, over streamable HTTP, with `rmcp` (the
//! protocol's official Rust SDK). The tools are a thin adapter like the other doors:
//! each parses its arguments into the same typed commands and hands them to the core
//! (the executor, the sandbox registry) as the caller the token middleware recorded.
//! A run comes back as text (status, exit code, stdout, stderr) with `isError` when the
//! program did not complete with exit code 0; a refusal is a tool error naming the
//! API's code. `tvm mcp` (stdio) bridges to this endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::request::Parts;
use base64::Engine as _;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock as Content, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, ServerHandler};
use serde::Deserialize;
use tvm_api::{
    validate, validate_in_sandbox, validate_sandbox, CreateSandboxRequest, ExecuteRequest,
    ExecuteResponse, ExecutionStatus, FileEncoding, InputFile, RequestLimits,
};

use crate::server::AppState;
use tvm_http::middleware::Caller;

/// The `/mcp` service for pyrovm's router.
pub(crate) fn service(state: Arc<AppState>) -> StreamableHttpService<Tools, LocalSessionManager> {
    StreamableHttpService::new(
        move || Ok(Tools::new(state.clone())),
        Default::default(),
        StreamableHttpServerConfig::default(),
    )
}

#[derive(Clone)]
pub(crate) struct Tools {
    state: Arc<AppState>,
    tool_router: ToolRouter<Self>,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct ExecuteArgs {
    /// A language name from list_languages (e.g. python, javascript, c, rust).
    language: String,
    /// The program's source code.
    code: String,
    /// Standard input.
    #[serde(default)]
    stdin: Option<String>,
    /// Files to put in the work dir before the run: relative path -> UTF-8 content.
    #[serde(default)]
    files: BTreeMap<String, String>,
    /// Wall-clock limit in milliseconds (the server's default when absent).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct SandboxCreateArgs {
    /// Longest life in seconds (the server's default when absent).
    #[serde(default)]
    ttl_s: Option<u64>,
    /// End after this many seconds without a call.
    #[serde(default)]
    idle_timeout_s: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct SandboxExecuteArgs {
    /// The sandbox id from sandbox_create.
    id: String,
    language: String,
    code: String,
    #[serde(default)]
    stdin: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct SandboxWriteArgs {
    id: String,
    /// Relative to the sandbox's work dir.
    path: String,
    /// UTF-8 text to write (the file is replaced).
    content: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct SandboxPathArgs {
    id: String,
    /// Relative to the sandbox's work dir ("" is the work dir itself).
    #[serde(default)]
    path: String,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(crate) struct SandboxIdArgs {
    id: String,
}

/// A sandbox refusal under the code the HTTP API gives it.
fn sandbox_refused(e: &crate::sandbox::SandboxError) -> CallToolResult {
    refused(super::sandboxes::status_of(e).1, e)
}

fn refused(code: &str, message: impl std::fmt::Display) -> CallToolResult {
    CallToolResult::error(vec![Content::text(format!("error {code}: {message}"))])
}

/// A run as the model reads it.
fn ran(r: &ExecuteResponse) -> CallToolResult {
    let mut text = format!(
        "status: {}\nexit_code: {}\n",
        crate::metrics::label(&r.status),
        r.exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into())
    );
    if let Some(s) = &r.signal {
        text.push_str(&format!("signal: {s}\n"));
    }
    if let Some(e) = &r.error {
        text.push_str(&format!("error: {e}\n"));
    }
    if let Some(c) = &r.compile {
        if c.exit_code != Some(0) {
            text.push_str(&format!(
                "--- compiler output ---\n{}{}",
                c.stdout, c.stderr
            ));
        }
    }
    text.push_str(&format!("--- stdout ---\n{}", r.stdout));
    if r.stdout_truncated {
        text.push_str("\n[stdout truncated]");
    }
    text.push_str(&format!("\n--- stderr ---\n{}", r.stderr));
    if r.stderr_truncated {
        text.push_str("\n[stderr truncated]");
    }
    let ok = r.status == ExecutionStatus::Completed && r.exit_code == Some(0);
    let content = vec![Content::text(text)];
    if ok {
        CallToolResult::success(content)
    } else {
        CallToolResult::error(content)
    }
}

fn request(
    language: String,
    code: String,
    stdin: Option<String>,
    timeout_ms: Option<u64>,
) -> ExecuteRequest {
    ExecuteRequest {
        language,
        code,
        stdin,
        limits: RequestLimits {
            timeout_ms,
            ..RequestLimits::default()
        },
        ..ExecuteRequest::default()
    }
}

#[tool_router]
impl Tools {
    fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            tool_router: Self::tool_router(),
        }
    }

    fn caller(parts: &Parts) -> Result<Caller, ErrorData> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ErrorData::internal_error("a request without a caller", None))
    }

    #[tool(
        description = "Run a program in a fresh, isolated microVM (no network) and return its status, exit code, stdout and stderr. Call list_languages for the languages."
    )]
    async fn execute(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<ExecuteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let who = Self::caller(&parts)?;
        let mut req = request(a.language, a.code, a.stdin, a.timeout_ms);
        req.files = a
            .files
            .into_iter()
            .map(|(path, content)| InputFile {
                path,
                content,
                encoding: FileEncoding::Utf8,
            })
            .collect();
        let st = &self.state;
        let cmd = match validate(req, st.languages, &st.bounds) {
            Ok(c) => c,
            Err(e) => return Ok(refused(e.code(), e)),
        };
        match st
            .executor
            .execute(&who, cmd, st.executor.wait_for(None))
            .await
        {
            Ok(resp) => {
                crate::core::log_finished(&resp);
                Ok(ran(&resp))
            }
            Err(e) => Ok(refused(e.code(), e)),
        }
    }

    #[tool(description = "List the languages TVM runs, with their versions.")]
    async fn list_languages(&self) -> Result<CallToolResult, ErrorData> {
        let text = self
            .state
            .languages
            .iter()
            .map(|l| format!("{} {}", l.name, l.version))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(CallToolResult::success(vec![Content::text(text)]))
    }

    #[tool(
        description = "Create a sandbox: one microVM kept for a session, whose files and background processes persist between sandbox_execute calls. Returns its id."
    )]
    async fn sandbox_create(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxCreateArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let who = Self::caller(&parts)?;
        let st = &self.state;
        let req = CreateSandboxRequest {
            ttl_s: a.ttl_s,
            idle_timeout_s: a.idle_timeout_s,
            ..CreateSandboxRequest::default()
        };
        let cmd = match validate_sandbox(req, &st.bounds, &st.sandboxes.settings().bounds) {
            Ok(c) => c,
            Err(e) => return Ok(refused(e.code(), e)),
        };
        match st.sandboxes.create(&st.executor, &who, cmd).await {
            Ok(info) => Ok(CallToolResult::success(vec![Content::text(format!(
                "sandbox id: {}\nexpires_at: {}",
                info.id, info.expires_at
            ))])),
            Err(e) => Ok(sandbox_refused(&e)),
        }
    }

    #[tool(
        description = "Run a program inside a sandbox (files written earlier are in its work dir)."
    )]
    async fn sandbox_execute(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxExecuteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let who = Self::caller(&parts)?;
        let st = &self.state;
        let req = request(a.language, a.code, a.stdin, a.timeout_ms);
        let cmd = match validate_in_sandbox(req, st.languages, &st.bounds) {
            Ok(c) => c,
            Err(e) => return Ok(refused(e.code(), e)),
        };
        match st.sandboxes.execute(&st.executor, &who, &a.id, cmd).await {
            Ok(resp) => Ok(ran(&resp)),
            Err(e) => Ok(sandbox_refused(&e)),
        }
    }

    #[tool(description = "Write a UTF-8 text file into a sandbox's work dir (parents are made).")]
    async fn sandbox_write_file(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxWriteArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let who = Self::caller(&parts)?;
        match self
            .state
            .sandboxes
            .write_file(&who, &a.id, a.path, a.content.into_bytes())
            .await
        {
            Ok(w) => Ok(CallToolResult::success(vec![Content::text(format!(
                "wrote {} bytes to {}",
                w.size, w.path
            ))])),
            Err(e) => Ok(sandbox_refused(&e)),
        }
    }

    #[tool(
        description = "Read a file from a sandbox's work dir (text; binary content comes back base64-encoded)."
    )]
    async fn sandbox_read_file(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxPathArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let who = Self::caller(&parts)?;
        match self.state.sandboxes.read_file(&who, &a.id, &a.path).await {
            Ok(bytes) => {
                let text = match String::from_utf8(bytes) {
                    Ok(s) => s,
                    Err(e) => format!(
                        "[base64] {}",
                        base64::engine::general_purpose::STANDARD.encode(e.into_bytes())
                    ),
                };
                Ok(CallToolResult::success(vec![Content::text(text)]))
            }
            Err(e) => Ok(sandbox_refused(&e)),
        }
    }

    #[tool(description = "List a directory of a sandbox's work dir.")]
    async fn sandbox_list_files(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxPathArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let who = Self::caller(&parts)?;
        match self.state.sandboxes.list_dir(&who, &a.id, &a.path).await {
            Ok(listing) => {
                let text = listing
                    .entries
                    .iter()
                    .map(|e| format!("{}\t{}\t{}", crate::metrics::label(&e.kind), e.size, e.name))
                    .collect::<Vec<_>>()
                    .join("\n");
                Ok(CallToolResult::success(vec![Content::text(text)]))
            }
            Err(e) => Ok(sandbox_refused(&e)),
        }
    }

    #[tool(description = "Delete a sandbox: its microVM and files are gone.")]
    async fn sandbox_delete(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxIdArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let who = Self::caller(&parts)?;
        match self.state.sandboxes.delete(&who, &a.id).await {
            Ok(()) => Ok(CallToolResult::success(vec![Content::text(format!(
                "sandbox {} deleted",
                a.id
            ))])),
            Err(e) => Ok(sandbox_refused(&e)),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
            "TVM runs untrusted code in a fresh microVM per call (execute) or in a sandbox kept for a session (sandbox_*). Guests have no network.",
        )
    }
}
