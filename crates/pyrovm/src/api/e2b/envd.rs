//! E2B's in-sandbox daemon, envd (`/e2b/envd/...`), served by pyrovm for every
//! sandbox: the SDKs send `E2B_SANDBOX_URL=http://HOST/e2b/envd` plus the
//! `E2b-Sandbox-Id` header to name the sandbox and its `X-Access-Token`.
//!
//! The `process.Process` Connect service maps onto the sandbox's spawned processes
//! (`Sandboxes::spawn` and friends); `filesystem.Filesystem` and the `/files` REST
//! endpoints ([`super::files`]) onto its file operations. A thin adapter: parse,
//! call the core, render. Commands run as the sandbox's one unprivileged user, which
//! E2B calls `user`, with `/home/user` (the work dir) as home and default cwd.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::Stream;
use tvm_proto::{Outcome, Stream as OutStream};

use super::access::{check_user, guest_path, respond, sandbox_error, target, unary, Target, HOME};
use super::connect::{self, Code, Codec, ConnectError};
use super::pb::process as pp;
use crate::procs::{ProcInfo, ProcOut, Watch};
use crate::sandbox_procs::SpawnRequest;
use crate::server::AppState;

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/e2b/envd/health", get(health))
        .route("/e2b/envd/process.Process/Start", post(start))
        .route("/e2b/envd/process.Process/Connect", post(connect_rpc))
        .route("/e2b/envd/process.Process/List", post(list))
        .route("/e2b/envd/process.Process/SendInput", post(send_input))
        .route("/e2b/envd/process.Process/StreamInput", post(stream_input))
        .route("/e2b/envd/process.Process/SendSignal", post(send_signal))
        .route("/e2b/envd/process.Process/CloseStdin", post(close_stdin))
        .route("/e2b/envd/process.Process/Update", post(no_pty))
}

async fn health(State(st): State<Arc<AppState>>, headers: HeaderMap) -> StatusCode {
    match target(&st, &headers) {
        Ok(_) => StatusCode::NO_CONTENT,
        // What E2B's proxy answers for a sandbox that is not running.
        Err(_) => StatusCode::BAD_GATEWAY,
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<pp::ProcessEvent, ConnectError>> + Send>>;

async fn start(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let codec = match Codec::for_stream(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    match start_events(&st, &headers, codec, &body).await {
        Ok(events) => connect::stream_response(
            codec,
            futures_util::StreamExt::map(events, |r| {
                r.map(|event| pp::StartResponse { event: Some(event) })
            }),
        ),
        Err(e) => connect::stream_error(codec, &e),
    }
}

async fn start_events(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    codec: Codec,
    body: &[u8],
) -> Result<Events, ConnectError> {
    let req: pp::StartRequest = connect::decode_stream_request(codec, body)?;
    let t = target(st, headers)?;
    check_user(headers, None)?;
    if req.pty.is_some() {
        return Err(no_pty_error());
    }
    let cfg = req
        .process
        .ok_or_else(|| ConnectError::new(Code::InvalidArgument, "process is required"))?;
    let timeout = connect::timeout_from_headers(headers)?;
    let cwd = match cfg.cwd.as_deref() {
        Some(c) if !c.is_empty() => guest_path(c)?,
        _ => HOME.to_string(),
    };
    // E2B's home for its user, unless the call says otherwise.
    let mut envs = BTreeMap::from([("HOME".to_string(), HOME.to_string())]);
    envs.extend(cfg.envs);
    let spawn = SpawnRequest {
        cmd: cfg.cmd,
        args: cfg.args,
        envs,
        cwd: Some(cwd),
        stdin: req.stdin.unwrap_or(false),
        tag: req.tag,
        timeout,
    };
    let (info, watch) = st
        .sandboxes
        .spawn(&t.caller, &t.id, spawn)
        .await
        .map_err(|e| sandbox_error(&e))?;
    Ok(events(info.pid, watch, keepalive(headers), timeout))
}

/// `Keepalive-Ping-Interval` (seconds): how often an idle stream gets a keepalive.
fn keepalive(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.min(3600)))
}

fn event(e: pp::process_event::Event) -> pp::ProcessEvent {
    pp::ProcessEvent { event: Some(e) }
}

/// The events of one process: `start`, its output, then `end` (or an error).
fn events(
    pid: u32,
    watch: Watch,
    keepalive: Option<Duration>,
    timeout: Option<Duration>,
) -> Events {
    use pp::process_event::{DataEvent, Event as E, StartEvent};
    let first = futures_util::stream::iter([Ok(event(E::Start(StartEvent { pid })))]);
    let rest = futures_util::stream::unfold(Some(watch), move |state| async move {
        let mut watch = state?;
        let next = match keepalive {
            Some(every) => match tokio::time::timeout(every, watch.next()).await {
                Ok(n) => n,
                Err(_) => {
                    let ka = event(E::Keepalive(pp::process_event::KeepAlive {}));
                    return Some((Ok(ka), Some(watch)));
                }
            },
            None => watch.next().await,
        };
        match next {
            Some(ProcOut::Output { stream, data }) => {
                use pp::process_event::data_event::Output;
                let output = match stream {
                    OutStream::Stdout => Output::Stdout(data),
                    OutStream::Stderr => Output::Stderr(data),
                };
                let e = event(E::Data(DataEvent {
                    output: Some(output),
                }));
                Some((Ok(e), Some(watch)))
            }
            Some(ProcOut::Exit {
                exit_code,
                signal,
                outcome,
                dropped_bytes,
            }) => {
                let item = match outcome {
                    Outcome::Timeout => Err(ConnectError::new(
                        Code::DeadlineExceeded,
                        format!(
                            "the command ran past its timeout ({} s) and was killed",
                            timeout.map_or(0, |t| t.as_secs())
                        ),
                    )),
                    _ => Ok(event(E::End(end_event(
                        exit_code,
                        signal,
                        outcome,
                        dropped_bytes,
                    )))),
                };
                Some((item, None))
            }
            None => Some((
                Err(ConnectError::new(
                    Code::Unavailable,
                    format!("the sandbox ended while process {pid} was running"),
                )),
                None,
            )),
        }
    });
    Box::pin(futures_util::StreamExt::chain(first, rest))
}

/// envd's `end` event, as Go reports a process state: `exit status N`, or
/// `signal: killed` with exit code -1.
fn end_event(
    exit_code: Option<i32>,
    signal: Option<i32>,
    outcome: Outcome,
    dropped_bytes: u64,
) -> pp::process_event::EndEvent {
    let (code, exited, status) = match (exit_code, signal) {
        (Some(c), _) => (c, true, format!("exit status {c}")),
        (None, Some(s)) => (-1, false, format!("signal: {}", signal_name(s))),
        (None, None) => (-1, false, "unknown".to_string()),
    };
    // As envd fills it from Go's `cmd.Wait()`: the state, unless it exited 0.
    let mut error = match outcome {
        Outcome::MemoryLimit => Some(format!("{status} (the sandbox's memory limit was reached)")),
        Outcome::OutputLimit => Some(format!("{status} (output limit)")),
        _ => (code != 0 || !exited).then(|| status.clone()),
    };
    if dropped_bytes > 0 {
        let note =
            format!("{dropped_bytes} bytes of output were dropped (the client read too slowly)");
        error = Some(match error {
            Some(e) => format!("{e}; {note}"),
            None => note,
        });
    }
    pp::process_event::EndEvent {
        exit_code: code,
        exited,
        status,
        error,
    }
}

fn signal_name(s: i32) -> String {
    match s {
        9 => "killed".into(),
        15 => "terminated".into(),
        2 => "interrupt".into(),
        6 => "aborted".into(),
        11 => "segmentation fault".into(),
        13 => "broken pipe".into(),
        other => format!("signal {other}"),
    }
}

/// The pid a selector names (a tag is looked up among the running processes).
fn selected(
    st: &AppState,
    t: &Target,
    sel: Option<pp::ProcessSelector>,
) -> Result<u32, ConnectError> {
    use pp::process_selector::Selector;
    match sel.and_then(|s| s.selector) {
        Some(Selector::Pid(pid)) => Ok(pid),
        Some(Selector::Tag(tag)) => st
            .sandboxes
            .process_by_tag(&t.caller, &t.id, &tag)
            .map_err(|e| ConnectError::new(Code::NotFound, e.to_string())),
        None => Err(ConnectError::new(
            Code::InvalidArgument,
            "process (a pid or a tag) is required",
        )),
    }
}

async fn connect_rpc(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let codec = match Codec::for_stream(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let watched = (|| {
        let req: pp::ConnectRequest = connect::decode_stream_request(codec, &body)?;
        let t = target(&st, &headers)?;
        let pid = selected(&st, &t, req.process)?;
        let watch = st
            .sandboxes
            .watch_process(&t.caller, &t.id, pid)
            .map_err(|e| sandbox_error(&e))?;
        Ok::<_, ConnectError>((pid, watch))
    })();
    match watched {
        Ok((pid, watch)) => {
            let timeout = connect::timeout_from_headers(&headers).ok().flatten();
            let events = events(pid, watch, keepalive(&headers), timeout);
            connect::stream_response(
                codec,
                futures_util::StreamExt::map(events, |r| {
                    r.map(|event| pp::ConnectResponse { event: Some(event) })
                }),
            )
        }
        Err(e) => connect::stream_error(codec, &e),
    }
}

fn config_of(i: ProcInfo) -> pp::ProcessInfo {
    pp::ProcessInfo {
        config: Some(pp::ProcessConfig {
            cmd: i.cmd,
            args: i.args,
            envs: i.envs.into_iter().collect(),
            cwd: i.cwd,
        }),
        pid: i.pid,
        tag: i.tag,
    }
}

async fn list(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    respond((|| {
        let (codec, _req, t): (_, pp::ListRequest, _) = unary(&st, &headers, &body)?;
        let processes = st
            .sandboxes
            .processes(&t.caller, &t.id)
            .map_err(|e| sandbox_error(&e))?;
        Ok((
            codec,
            pp::ListResponse {
                processes: processes.into_iter().map(config_of).collect(),
            },
        ))
    })())
}

async fn send_input(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let (codec, req, t): (_, pp::SendInputRequest, _) = unary(&st, &headers, &body)?;
        let pid = selected(&st, &t, req.process)?;
        let data = stdin_bytes(req.input)?;
        st.sandboxes
            .send_input(&t.caller, &t.id, pid, data)
            .await
            .map_err(|e| sandbox_error(&e))?;
        Ok((codec, pp::SendInputResponse {}))
    };
    respond(r.await)
}

fn stdin_bytes(input: Option<pp::ProcessInput>) -> Result<Vec<u8>, ConnectError> {
    use pp::process_input::Input;
    match input.and_then(|i| i.input) {
        Some(Input::Stdin(d)) => Ok(d),
        Some(Input::Pty(_)) => Err(no_pty_error()),
        None => Err(ConnectError::new(
            Code::InvalidArgument,
            "input is required",
        )),
    }
}

/// Client-streaming stdin: the first message names the process, every later one
/// carries input, in order, as it arrives.
async fn stream_input(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    use pp::stream_input_request::Event;
    let codec = match Codec::for_stream(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let t = match target(&st, &headers) {
        Ok(t) => t,
        Err(e) => return connect::stream_error(codec, &e),
    };
    let mut msgs = Box::pin(connect::decode_client_stream::<pp::StreamInputRequest>(
        codec,
        body,
        connect::DEFAULT_MAX_MESSAGE_SIZE,
    ));
    let mut pid = None;
    let r: Result<(), ConnectError> = async {
        while let Some(m) = futures_util::StreamExt::next(&mut msgs).await {
            match m?.event {
                Some(Event::Start(s)) => pid = Some(selected(&st, &t, s.process)?),
                Some(Event::Data(d)) => {
                    let p = pid.ok_or_else(|| {
                        ConnectError::new(Code::InvalidArgument, "data before the start event")
                    })?;
                    let data = stdin_bytes(d.input)?;
                    st.sandboxes
                        .send_input(&t.caller, &t.id, p, data)
                        .await
                        .map_err(|e| sandbox_error(&e))?;
                }
                Some(Event::Keepalive(_)) | None => {}
            }
        }
        Ok(())
    }
    .await;
    match r {
        Ok(()) => connect::stream_response(
            codec,
            futures_util::stream::iter([Ok::<_, ConnectError>(pp::StreamInputResponse {})]),
        ),
        Err(e) => connect::stream_error(codec, &e),
    }
}

async fn send_signal(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let (codec, req, t): (_, pp::SendSignalRequest, _) = unary(&st, &headers, &body)?;
        let pid = selected(&st, &t, req.process)?;
        let signal = match pp::Signal::try_from(req.signal) {
            Ok(pp::Signal::Sigkill) => 9,
            Ok(pp::Signal::Sigterm) => 15,
            _ => {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM",
                ))
            }
        };
        st.sandboxes
            .signal(&t.caller, &t.id, pid, signal)
            .await
            .map_err(|e| sandbox_error(&e))?;
        Ok((codec, pp::SendSignalResponse {}))
    };
    respond(r.await)
}

async fn close_stdin(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        let (codec, req, t): (_, pp::CloseStdinRequest, _) = unary(&st, &headers, &body)?;
        let pid = selected(&st, &t, req.process)?;
        st.sandboxes
            .close_stdin(&t.caller, &t.id, pid)
            .await
            .map_err(|e| sandbox_error(&e))?;
        Ok((codec, pp::CloseStdinResponse {}))
    };
    respond(r.await)
}

fn no_pty_error() -> ConnectError {
    ConnectError::new(
        Code::Unimplemented,
        "pseudo-terminals (PTY) are not supported by TVM's envd yet; run commands without pty",
    )
}

async fn no_pty() -> Response {
    no_pty_error().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_read_like_envd() {
        let e = end_event(Some(3), None, Outcome::Completed, 0);
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (3, true, "exit status 3")
        );
        assert_eq!(e.error.as_deref(), Some("exit status 3"));
        assert_eq!(end_event(Some(0), None, Outcome::Completed, 0).error, None);
        let e = end_event(None, Some(9), Outcome::Completed, 0);
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (-1, false, "signal: killed")
        );
        let e = end_event(None, Some(9), Outcome::MemoryLimit, 10);
        let err = e.error.unwrap_or_default();
        assert!(err.contains("memory") && err.contains("10 bytes"), "{err}");
    }
}
