//! Running code and mirroring the program: shared by `run`, `exec` and `sandbox exec`.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tvm_api::{ExecuteRequest, ExecutionStatus, LanguageTable, StageResult};

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

/// The language of `file` by its extension: the built-in table's, else the
/// server's (a newer server may know more languages); `None` if neither knows it.
pub fn language_of(server: &str, file: &Path) -> Option<String> {
    let ext = file.extension()?.to_str()?;
    if let Some(l) = LanguageTable::builtin().by_extension(ext) {
        return Some(l.name.clone());
    }
    let langs = client::languages(server).ok()?.ok()?;
    langs
        .into_iter()
        .find(|l| l.extensions.iter().any(|e| e.eq_ignore_ascii_case(ext)))
        .map(|l| l.name)
}

/// Runs `req` at `path` (`/v1/execute` or a sandbox's `…/execute`); with `stream`,
/// at `path` + `/stream`, printing output as it comes. The compiler's output, if
/// any, goes to stderr. The exit code mirrors the program (see [`exit_code_for`]),
/// is 1 after a compile error, or says why the server refused.
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
            // The compile stage's output is not streamed: it comes with the exit.
            Ok(exit) => Ok(finish(&Ending {
                status: exit.status,
                exit_code: exit.exit_code,
                signal: exit.signal.as_deref(),
                exec_ms: exit.timings_ms.exec,
                error: exit.error.as_deref(),
                compile: exit.compile.as_ref(),
            })),
            Err((status, err)) => Ok(refused(status, &err)),
        };
    }
    let resp = match client::execute(server, path, req)? {
        Ok(r) => r,
        Err((status, err)) => return Ok(refused(status, &err)),
    };
    let ending = Ending {
        status: resp.status,
        exit_code: resp.exit_code,
        signal: resp.signal.as_deref(),
        exec_ms: resp.timings_ms.exec,
        error: resp.error.as_deref(),
        compile: resp.compile.as_ref(),
    };
    // Compiler warnings before the program's output, as a local build shows them.
    print_compile(ending.compile);
    if resp.status != ExecutionStatus::CompileError {
        print!("{}", resp.stdout);
        eprint!("{}", resp.stderr);
    }
    let _ = std::io::stdout().flush();
    Ok(finish(&Ending {
        compile: None,
        ..ending
    }))
}

/// How an execution ended, from a response or a stream's exit event.
#[derive(Debug, Clone, Copy)]
struct Ending<'a> {
    status: ExecutionStatus,
    exit_code: Option<i32>,
    signal: Option<&'a str>,
    exec_ms: u64,
    error: Option<&'a str>,
    /// The compile stage, when its output is still to be printed.
    compile: Option<&'a StageResult>,
}

/// Prints what is left to print (the compiler's output) and a note on how the
/// execution ended; the exit code.
fn finish(e: &Ending<'_>) -> ExitCode {
    print_compile(e.compile);
    let (code, note) = exit_code_for(e);
    if let Some(note) = note {
        eprintln!("tvm: {note}");
    }
    ExitCode::from(code)
}

/// The compiler's output (warnings, or the errors of a failed compile), to stderr.
fn print_compile(stage: Option<&StageResult>) {
    let Some(s) = stage else { return };
    let mut err = std::io::stderr().lock();
    for text in [&s.stderr, &s.stdout] {
        let _ = err.write_all(text.as_bytes());
        if !text.is_empty() && !text.ends_with('\n') {
            let _ = err.write_all(b"\n");
        }
    }
    if s.stdout_truncated || s.stderr_truncated {
        let _ = writeln!(err, "tvm: the compiler's output was truncated");
    }
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
/// `timeout(1)`), 137 memory limit (a SIGKILL), 1 output limit, sandbox error or
/// compile error. The note says why, when the program did not just exit.
fn exit_code_for(e: &Ending<'_>) -> (u8, Option<String>) {
    use tvm_api::ExecutionStatus as S;
    match e.status {
        S::Completed => match (e.exit_code, e.signal) {
            (Some(c), _) => ((c & 0xff) as u8, None),
            (None, s) => (
                128 + signal_number(s),
                Some(format!("program killed by {}", s.unwrap_or("a signal"))),
            ),
        },
        S::Timeout => (
            124,
            Some(format!("time limit reached after {} ms", e.exec_ms)),
        ),
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
            Some(format!("sandbox error: {}", e.error.unwrap_or("unknown"))),
        ),
        S::CompileError => (1, Some(compile_note(e.compile))),
    }
}

/// Why the compile failed, from its stage.
fn compile_note(stage: Option<&StageResult>) -> String {
    use tvm_api::ExecutionStatus as S;
    let why = match stage {
        None => "compile error".to_string(),
        Some(s) => match (s.status, s.exit_code, s.signal.as_deref()) {
            (S::Timeout, ..) => format!(
                "the compile reached its time limit after {} ms (--compile-timeout-ms)",
                s.duration_ms
            ),
            (S::MemoryLimit, ..) => {
                "the compiler ran out of memory (--compile-memory-mb)".to_string()
            }
            (S::OutputLimit, ..) => "the compiler printed past the output limit".to_string(),
            (_, Some(c), _) => format!("compile error (the compiler exited with {c})"),
            (_, None, Some(sig)) => format!("compile error (the compiler was killed by {sig})"),
            _ => "compile error".to_string(),
        },
    };
    format!("{why}; the program did not run")
}

fn signal_number(name: Option<&str>) -> u8 {
    match name {
        Some("SIGKILL") => 9,
        Some("SIGTERM") => 15,
        Some("SIGSEGV") => 11,
        Some("SIGABRT") => 6,
        Some("SIGINT") => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(status: ExecutionStatus) -> Ending<'static> {
        Ending {
            status,
            exit_code: None,
            signal: None,
            exec_ms: 5,
            error: None,
            compile: None,
        }
    }

    fn stage(status: ExecutionStatus, exit_code: Option<i32>) -> StageResult {
        StageResult {
            status,
            exit_code,
            signal: None,
            stdout: String::new(),
            stderr: "main.c:1:1: error: x".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 100,
        }
    }

    #[test]
    fn exit_codes_mirror_the_program() {
        let exited = Ending {
            exit_code: Some(261),
            ..ending(ExecutionStatus::Completed)
        };
        assert_eq!(exit_code_for(&exited), (5, None));
        let killed = Ending {
            signal: Some("SIGSEGV"),
            ..ending(ExecutionStatus::Completed)
        };
        assert_eq!(exit_code_for(&killed).0, 139);
        assert_eq!(exit_code_for(&ending(ExecutionStatus::Timeout)).0, 124);
        assert_eq!(exit_code_for(&ending(ExecutionStatus::MemoryLimit)).0, 137);
        assert_eq!(exit_code_for(&ending(ExecutionStatus::SandboxError)).0, 1);
    }

    #[test]
    fn a_compile_error_exits_1_and_says_why() {
        let failed = stage(ExecutionStatus::Completed, Some(1));
        let e = Ending {
            compile: Some(&failed),
            ..ending(ExecutionStatus::CompileError)
        };
        let (code, note) = exit_code_for(&e);
        assert_eq!(code, 1);
        assert_eq!(
            note.as_deref(),
            Some("compile error (the compiler exited with 1); the program did not run")
        );
        let slow = stage(ExecutionStatus::Timeout, None);
        let e = Ending {
            compile: Some(&slow),
            ..e
        };
        let (code, note) = exit_code_for(&e);
        assert_eq!(code, 1);
        assert!(note.unwrap().contains("time limit after 100 ms"));
        let (code, note) = exit_code_for(&ending(ExecutionStatus::CompileError));
        assert_eq!(
            (code, note.unwrap().as_str()),
            (1, "compile error; the program did not run")
        );
    }

    #[test]
    fn extensions_of_every_language_map() {
        let want = [
            ("a.py", "python"),
            ("a.js", "javascript"),
            ("a.sh", "bash"),
            ("a.c", "c"),
            ("a.cpp", "cpp"),
            ("a.cc", "cpp"),
            ("a.rs", "rust"),
            ("a.go", "go"),
            ("Main.java", "java"),
            ("a.ts", "typescript"),
            ("a.rb", "ruby"),
            ("a.php", "php"),
            ("a.pl", "perl"),
            ("a.lua", "lua"),
        ];
        for (file, lang) in want {
            // An unreachable server: the built-in table alone must know these.
            let got = language_of("http://127.0.0.1:9", Path::new(file));
            assert_eq!(got.as_deref(), Some(lang), "{file}");
        }
    }
}
