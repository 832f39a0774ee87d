//! Running code and mirroring the program: shared by `run`, `exec` and `sandbox exec`.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tvm_api::{ExecuteRequest, LanguageTable};

use crate::client;

/// Piped stdin, whole; `None` when stdin is a terminal.
pub fn piped_stdin() -> anyhow::Result<Option<String>> {
    if std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("cannot read stdin")?;
    Ok(Some(s))
}

/// The language of `file` by its extension, if the table knows it.
pub fn language_of(file: &Path) -> Option<String> {
    let ext = file.extension()?.to_str()?;
    LanguageTable::builtin()
        .by_extension(ext)
        .map(|l| l.name.clone())
}

/// Runs `req` at `path` (`/v1/execute` or a sandbox's `…/execute`); with `stream`,
/// at `path` + `/stream`, printing output as it comes. The exit code mirrors the
/// program (see [`exit_code_for`]), or says why the server refused.
pub fn execute(
    server: &str,
    path: &str,
    req: &ExecuteRequest,
    stream: bool,
) -> anyhow::Result<ExitCode> {
    if stream {
        let path = format!("{path}/stream");
        let exit = client::execute_stream(server, &path, req, &mut |is_err, text| {
            if is_err {
                let _ = std::io::stderr().write_all(text.as_bytes());
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        })?;
        return match exit {
            Ok(exit) => Ok(finish(
                exit.status,
                exit.exit_code,
                exit.signal.as_deref(),
                exit.timings_ms.exec,
                exit.error.as_deref(),
            )),
            Err((status, err)) => Ok(refused(status, &err)),
        };
    }
    let resp = match client::execute(server, path, req)? {
        Ok(r) => r,
        Err((status, err)) => return Ok(refused(status, &err)),
    };
    print!("{}", resp.stdout);
    eprint!("{}", resp.stderr);
    let _ = std::io::stdout().flush();
    Ok(finish(
        resp.status,
        resp.exit_code,
        resp.signal.as_deref(),
        resp.timings_ms.exec,
        resp.error.as_deref(),
    ))
}

fn finish(
    status: tvm_api::ExecutionStatus,
    exit_code: Option<i32>,
    signal: Option<&str>,
    exec_ms: u64,
    error: Option<&str>,
) -> ExitCode {
    let (code, note) = exit_code_for(status, exit_code, signal, exec_ms, error);
    if let Some(note) = note {
        eprintln!("tvm: {note}");
    }
    ExitCode::from(code)
}

/// Says why the server refused; 2 for a client error (usage), 1 otherwise.
pub fn refused(status: reqwest::StatusCode, err: &tvm_api::ErrorBody) -> ExitCode {
    eprintln!(
        "tvm: server refused the request ({status}): {} ({})",
        err.error.message, err.error.code
    );
    ExitCode::from(refused_code(status))
}

/// The exit code of a refusal: 2 for a client error (usage), 1 otherwise.
pub fn refused_code(status: reqwest::StatusCode) -> u8 {
    if status.is_client_error() {
        2
    } else {
        1
    }
}

/// The program's exit code when it exited; 128+N for signal N; 124 timeout (as
/// `timeout(1)`), 137 memory limit (a SIGKILL), 1 output limit or sandbox error.
fn exit_code_for(
    status: tvm_api::ExecutionStatus,
    exit_code: Option<i32>,
    signal: Option<&str>,
    exec_ms: u64,
    error: Option<&str>,
) -> (u8, Option<String>) {
    use tvm_api::ExecutionStatus as S;
    let sig = |name: Option<&str>| -> u8 {
        let n = match name {
            Some("SIGKILL") => 9,
            Some("SIGTERM") => 15,
            Some("SIGSEGV") => 11,
            Some("SIGABRT") => 6,
            Some("SIGINT") => 2,
            _ => 1,
        };
        128 + n
    };
    match status {
        S::Completed => match (exit_code, signal) {
            (Some(c), _) => ((c & 0xff) as u8, None),
            (None, s) => (
                sig(s),
                Some(format!("program killed by {}", s.unwrap_or("a signal"))),
            ),
        },
        S::Timeout => (124, Some(format!("time limit reached after {exec_ms} ms"))),
        S::MemoryLimit => (
            137,
            Some("memory limit reached; the program was killed".into()),
        ),
        S::OutputLimit => (
            1,
            Some("output limit reached; output truncated and the program killed".into()),
        ),
        S::SandboxError => (
            1,
            Some(format!("sandbox error: {}", error.unwrap_or("unknown"))),
        ),
        S::CompileError => (1, Some("compile error; the program did not run".into())),
    }
}
