//! The core's answer reshaped as Piston's: each stage's ending in isolate's words,
//! `run = compile` after a failed compile, and runtimes named as Piston names them.

use serde::{Deserialize, Serialize};
use tvm_api::{ExecuteResponse, ExecutionStatus, Language, StageResult};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonRuntime {
    pub language: String,
    /// Semver, as Piston's.
    pub version: String,
    pub aliases: Vec<String>,
    /// The package that provides the language, where Piston names one (`gcc`, `node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// One stage (`compile` or `run`), with the keys of Piston's `safe_call` result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonStage {
    pub stdout: String,
    pub stderr: String,
    /// stdout and stderr interleaved in the order they were read.
    pub output: String,
    /// Null when `signal` is set.
    pub code: Option<i32>,
    pub signal: Option<String>,
    pub message: Option<String>,
    /// `RE`, `SG`, `TO`, `OL`, `EL`, `XX`, or null on success.
    pub status: Option<String>,
    pub cpu_time: Option<u64>,
    pub wall_time: Option<u64>,
    pub memory: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PistonResponse {
    /// Only for a language that compiles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<PistonStage>,
    /// When the compile failed, a copy of `compile` (the program did not run).
    pub run: PistonStage,
    pub language: String,
    pub version: String,
}

/// Where Piston's packages name a language or its runtime differently from our table:
/// (our name, Piston's name, Piston's `runtime`).
const PISTON_NAMES: &[(&str, &str, Option<&str>)] = &[
    ("c", "c", Some("gcc")),
    ("cpp", "c++", Some("gcc")),
    ("javascript", "javascript", Some("node")),
];

/// The language as Piston's runtimes list shows it; `version` is the installed one
/// when the server knows it, else the table's prefix.
pub fn runtime_of(l: &Language, version: &str) -> PistonRuntime {
    let (name, runtime) = PISTON_NAMES
        .iter()
        .find(|(ours, _, _)| *ours == l.name)
        .map_or((l.name.as_str(), None), |(_, name, rt)| (*name, *rt));
    let aliases = std::iter::once(&l.name)
        .filter(|n| n.as_str() != name)
        .chain(l.aliases.iter().filter(|a| a.as_str() != name))
        .cloned()
        .collect();
    PistonRuntime {
        language: name.to_string(),
        version: semver(version),
        aliases,
        runtime: runtime.map(str::to_string),
    }
}

/// A version as the semver Piston always shows (`version.raw`): the table's prefix
/// padded (`3.11` → `3.11.0`), an installed version cut to three parts
/// (`17.0.21.1` → `17.0.21`).
pub fn semver(version: &str) -> String {
    let numeric = version
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or_default();
    let mut parts: Vec<&str> = numeric
        .split('.')
        .filter(|p| !p.is_empty())
        .take(3)
        .collect();
    while parts.len() < 3 {
        parts.push("0");
    }
    parts.join(".")
}

/// How a stage ended, in isolate's words (its meta file, read by Piston's `safe_call`).
struct Ending {
    status: Option<&'static str>,
    message: Option<String>,
    code: Option<i32>,
    signal: Option<String>,
}

fn ending(
    status: ExecutionStatus,
    exit_code: Option<i32>,
    signal: Option<&str>,
    stdout_cut: bool,
    stderr_cut: bool,
    error: Option<&str>,
) -> Ending {
    let killed = |status, message: &str| Ending {
        status: Some(status),
        message: Some(message.to_string()),
        code: None,
        signal: Some("SIGKILL".into()),
    };
    match status {
        ExecutionStatus::Completed => match (exit_code, signal) {
            (Some(0), _) => Ending {
                status: None,
                message: None,
                code: Some(0),
                signal: None,
            },
            (Some(c), _) => Ending {
                status: Some("RE"),
                message: Some(format!("Exited with error status {c}")),
                code: Some(c),
                signal: None,
            },
            (None, sig) => {
                let number = sig
                    .and_then(|s| s.parse::<nix::sys::signal::Signal>().ok())
                    .map_or_else(
                        || sig.unwrap_or("?").to_string(),
                        |s| (s as i32).to_string(),
                    );
                Ending {
                    status: Some("SG"),
                    message: Some(format!("Caught fatal signal {number}")),
                    code: None,
                    signal: sig.map(str::to_string),
                }
            }
        },
        ExecutionStatus::Timeout => killed("TO", "Time limit exceeded (wall clock)"),
        // isolate's cgroup memory limit: the kernel's OOM killer sends SIGKILL.
        ExecutionStatus::MemoryLimit => killed("SG", "Caught fatal signal 9"),
        ExecutionStatus::OutputLimit if stderr_cut && !stdout_cut => {
            killed("EL", "stderr length exceeded")
        }
        ExecutionStatus::OutputLimit => killed("OL", "stdout length exceeded"),
        ExecutionStatus::SandboxError | ExecutionStatus::CompileError => Ending {
            status: Some("XX"),
            message: error.map(str::to_string),
            code: exit_code,
            signal: signal.map(str::to_string),
        },
    }
}

fn stage(e: Ending, stdout: String, stderr: String, output: String, wall_ms: u64) -> PistonStage {
    PistonStage {
        stdout,
        stderr,
        output,
        code: e.code,
        signal: e.signal,
        message: e.message,
        status: e.status.map(str::to_string),
        cpu_time: None,
        wall_time: Some(wall_ms),
        memory: None,
    }
}

/// The compile stage as Piston shows it (its output: stdout, then stderr).
fn compile_stage(c: &StageResult) -> PistonStage {
    let e = ending(
        c.status,
        c.exit_code,
        c.signal.as_deref(),
        c.stdout_truncated,
        c.stderr_truncated,
        None,
    );
    let output = format!("{}{}", c.stdout, c.stderr);
    stage(e, c.stdout.clone(), c.stderr.clone(), output, c.duration_ms)
}

/// What the live channel carried of the program's run.
#[derive(Debug, Default)]
pub struct RunOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Both, in the order they were read.
    pub output: Vec<u8>,
}

/// Pure rendering of the core's answer as Piston's.
pub fn render(
    lang: &Language,
    version: &str,
    resp: &ExecuteResponse,
    out: &RunOutput,
) -> PistonResponse {
    let rt = runtime_of(lang, version);
    let compile = resp.compile.as_ref().map(compile_stage);
    let run = match (&compile, resp.status) {
        // Piston runs nothing after a failed compile and answers `run = compile`.
        (Some(c), ExecutionStatus::CompileError) => c.clone(),
        _ => {
            let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let e = ending(
                resp.status,
                resp.exit_code,
                resp.signal.as_deref(),
                resp.stdout_truncated,
                resp.stderr_truncated,
                resp.error.as_deref(),
            );
            stage(
                e,
                lossy(&out.stdout),
                lossy(&out.stderr),
                lossy(&out.output),
                resp.timings_ms.exec,
            )
        }
    };
    PistonResponse {
        compile,
        run,
        language: rt.language,
        version: rt.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tvm_api::{LanguageTable, Timings};

    #[test]
    fn semver_versions() {
        assert_eq!(semver("3.11"), "3.11.0");
        assert_eq!(semver("18"), "18.0.0");
        assert_eq!(semver("1.63"), "1.63.0");
        assert_eq!(semver("5.2.15"), "5.2.15");
        assert_eq!(semver("17.0.21.1"), "17.0.21");
        assert_eq!(semver("0.17.0"), "0.17.0");
    }

    #[test]
    fn runtimes_are_named_as_pistons() {
        let t = LanguageTable::builtin();
        let rts: Vec<PistonRuntime> = t.iter().map(|l| runtime_of(l, &l.version)).collect();
        assert_eq!(rts.len(), t.iter().count());
        let cpp = rts.iter().find(|r| r.language == "c++").unwrap();
        assert!(cpp.aliases.contains(&"cpp".to_string()), "{cpp:?}");
        assert!(!cpp.aliases.contains(&"c++".to_string()), "{cpp:?}");
        assert_eq!(cpp.runtime.as_deref(), Some("gcc"));
        assert_eq!(cpp.version, "12.0.0");
        let py = rts.iter().find(|r| r.language == "python").unwrap();
        assert_eq!(py.version, "3.11.0");
        assert_eq!(py.runtime, None);
        let json = serde_json::to_value(py).unwrap();
        assert!(json.get("runtime").is_none(), "{json}");
        for r in &rts {
            assert_eq!(r.version.split('.').count(), 3, "{r:?}");
            // Every name and alias shown resolves to the language again.
            for n in std::iter::once(&r.language).chain(&r.aliases) {
                assert!(t.get(n).is_some(), "{n}");
            }
        }
    }

    fn response(status: ExecutionStatus, compile: Option<StageResult>) -> ExecuteResponse {
        ExecuteResponse {
            id: "x".into(),
            status,
            exit_code: None,
            signal: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            timings_ms: Timings::default(),
            backend: "qemu".into(),
            error: None,
            files: None,
            files_truncated: None,
            compile,
            tests: None,
            verdict: None,
            network: None,
        }
    }

    fn compiled(
        status: ExecutionStatus,
        exit_code: Option<i32>,
        signal: Option<&str>,
    ) -> StageResult {
        StageResult {
            status,
            exit_code,
            signal: signal.map(Into::into),
            stdout: String::new(),
            stderr: "main.c:1: error: oops\n".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 1200,
        }
    }

    #[test]
    fn failed_compile_is_also_the_run() {
        let c = LanguageTable::builtin().get("c").unwrap();
        let resp = response(
            ExecutionStatus::CompileError,
            Some(compiled(ExecutionStatus::Completed, Some(1), None)),
        );
        let r = render(c, &c.version, &resp, &RunOutput::default());
        assert_eq!((r.language.as_str(), r.version.as_str()), ("c", "12.0.0"));
        let compile = r.compile.clone().unwrap();
        assert_eq!(compile.status.as_deref(), Some("RE"));
        assert_eq!(
            compile.message.as_deref(),
            Some("Exited with error status 1")
        );
        assert_eq!(compile.code, Some(1));
        assert_eq!(compile.signal, None);
        assert_eq!(compile.stderr, "main.c:1: error: oops\n");
        assert_eq!(compile.output, compile.stderr);
        assert_eq!(compile.wall_time, Some(1200));
        assert_eq!(r.run, compile);

        let resp = response(
            ExecutionStatus::CompileError,
            Some(compiled(ExecutionStatus::Timeout, None, Some("SIGKILL"))),
        );
        let r = render(c, &c.version, &resp, &RunOutput::default());
        let compile = r.compile.clone().unwrap();
        assert_eq!(compile.status.as_deref(), Some("TO"));
        assert_eq!(
            compile.message.as_deref(),
            Some("Time limit exceeded (wall clock)")
        );
        assert_eq!(
            (compile.code, compile.signal.as_deref()),
            (None, Some("SIGKILL"))
        );
        assert_eq!(r.run, compile);
    }

    #[test]
    fn run_endings() {
        let cpp = LanguageTable::builtin().get("cpp").unwrap();
        let mut resp = response(
            ExecutionStatus::Completed,
            Some(compiled(ExecutionStatus::Completed, Some(0), None)),
        );
        resp.signal = Some("SIGSEGV".into());
        let out = RunOutput {
            stdout: b"a".to_vec(),
            stderr: b"b".to_vec(),
            output: b"ba".to_vec(),
        };
        let r = render(cpp, "12.2.0", &resp, &out);
        assert_eq!(r.version, "12.2.0");
        assert_eq!(r.language, "c++");
        let compile = r.compile.unwrap();
        assert_eq!((compile.status, compile.code), (None, Some(0)));
        assert_eq!(r.run.status.as_deref(), Some("SG"));
        assert_eq!(r.run.message.as_deref(), Some("Caught fatal signal 11"));
        assert_eq!(
            (r.run.code, r.run.signal.as_deref()),
            (None, Some("SIGSEGV"))
        );
        assert_eq!(r.run.output, "ba");

        let py = LanguageTable::builtin().get("python").unwrap();
        let mut resp = response(ExecutionStatus::OutputLimit, None);
        resp.stderr_truncated = true;
        let r = render(py, "3.11.2", &resp, &RunOutput::default());
        assert!(r.compile.is_none());
        assert_eq!(r.run.status.as_deref(), Some("EL"));
        assert_eq!(r.run.signal.as_deref(), Some("SIGKILL"));
        let r = render(
            py,
            "3.11.2",
            &response(ExecutionStatus::MemoryLimit, None),
            &RunOutput::default(),
        );
        assert_eq!(r.run.status.as_deref(), Some("SG"));
        assert_eq!(r.run.message.as_deref(), Some("Caught fatal signal 9"));
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("compile").is_none(), "{json}");
    }
}
