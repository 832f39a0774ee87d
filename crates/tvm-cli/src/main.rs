//! `tvm`: a thin client and tool binary. Exit codes: `run`/`exec` mirror the
//! program (see `exit_code_for`); otherwise 0 ok, 1 runtime failure, 2 usage error.

mod client;
mod doctor;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser, Subcommand};
use tvm_api::{ExecuteRequest, LanguageTable, RequestLimits};

#[derive(Debug, Parser)]
#[command(name = "tvm", version, about = "Run untrusted code in fresh microVMs")]
struct Cli {
    /// TVM server to talk to.
    #[arg(
        long,
        global = true,
        env = "TVM_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    server: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a file; the language comes from its extension unless -l is given.
    Run {
        file: PathBuf,
        #[arg(short, long)]
        language: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Arguments for the program (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run a snippet of code.
    Exec {
        #[arg(short, long)]
        language: String,
        #[arg(short, long)]
        code: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// List the server's languages.
    Languages,
    /// Say which backend and accelerator this host would use, and why.
    Doctor,
    /// Guest image commands.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCmd {
    /// Build (or find in the cache) the kernel, initramfs and rootfs.
    Build {
        /// The static tvm-agent binary to embed.
        #[arg(
            long,
            env = "TVM_AGENT_BIN",
            default_value = "target/x86_64-unknown-linux-gnu/release/tvm-agent"
        )]
        agent: PathBuf,
        /// Cache directory (default: $TVM_CACHE_DIR, $XDG_CACHE_HOME/tvm or ~/.cache/tvm).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Rebuild every part even if cached.
        #[arg(long)]
        force: bool,
    },
    /// Print the directory of the current image.
    Path,
}

#[derive(Debug, Clone, ClapArgs)]
struct LimitArgs {
    /// Wait for the whole result instead of streaming output as it happens.
    #[arg(long)]
    no_stream: bool,
    /// Wall-clock limit in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory limit in MiB.
    #[arg(long)]
    memory_mb: Option<u64>,
    #[arg(long)]
    vcpus: Option<u32>,
    #[arg(long)]
    max_output_bytes: Option<u64>,
    #[arg(long)]
    max_processes: Option<u32>,
}

impl From<LimitArgs> for RequestLimits {
    fn from(l: LimitArgs) -> Self {
        RequestLimits {
            timeout_ms: l.timeout_ms,
            memory_mb: l.memory_mb,
            vcpus: l.vcpus,
            max_output_bytes: l.max_output_bytes,
            max_processes: l.max_processes,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tvm: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Run {
            file,
            language,
            limits,
            args,
        } => {
            let code = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let language = match language {
                Some(l) => l,
                None => {
                    let ext = file
                        .extension()
                        .and_then(|e| e.to_str())
                        .unwrap_or_default();
                    match LanguageTable::builtin().by_extension(ext) {
                        Some(l) => l.name.clone(),
                        None => {
                            eprintln!(
                                "tvm: cannot tell the language of {} from its extension; pass -l",
                                file.display()
                            );
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
            };
            execute(&cli.server, language, code, limits, args)
        }
        Cmd::Exec {
            language,
            code,
            limits,
            args,
        } => execute(&cli.server, language, code, limits, args),
        Cmd::Languages => {
            let langs = client::languages(&cli.server)?;
            for l in langs {
                println!(
                    "{:<12} {:<8} {:<10} {}",
                    l.name,
                    l.version,
                    l.file_name,
                    l.aliases.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Doctor => Ok(doctor::run()),
        Cmd::Image {
            cmd:
                ImageCmd::Build {
                    agent,
                    cache,
                    force,
                },
        } => {
            let cache = cache.unwrap_or_else(tvm_image::cache_dir);
            let mut opts = tvm_image::BuildOptions::new(cache, agent);
            opts.force = force;
            let report = tvm_image::build(&opts)?;
            println!("image: {}", report.dir.display());
            for (name, p) in [
                ("kernel", &report.kernel),
                ("initramfs", &report.initramfs),
                ("rootfs", &report.rootfs),
            ] {
                println!(
                    "  {name:<10} {:>8.1} MiB  {}  ({:.1}s)",
                    p.bytes as f64 / (1 << 20) as f64,
                    if p.cached { "cached" } else { "built " },
                    p.seconds
                );
            }
            for (lang, v) in &report.versions {
                println!("  {lang:<10} {v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Image {
            cmd: ImageCmd::Path,
        } => {
            println!(
                "{}",
                tvm_image::current_dir(&tvm_image::cache_dir()).display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn execute(
    server: &str,
    language: String,
    code: String,
    limits: LimitArgs,
    args: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let stdin = if std::io::stdin().is_terminal() {
        None
    } else {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read stdin")?;
        Some(s)
    };
    let stream = !limits.no_stream;
    let req = ExecuteRequest {
        language,
        code,
        stdin,
        args,
        limits: limits.into(),
        ..Default::default()
    };
    if stream {
        use std::io::Write;
        let exit = client::execute_stream(server, &req, &mut |is_err, text| {
            if is_err {
                let _ = std::io::stderr().write_all(text.as_bytes());
            } else {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }
        })?;
        return match exit {
            Ok(exit) => {
                let (code, note) = exit_code_for(
                    exit.status,
                    exit.exit_code,
                    exit.signal.as_deref(),
                    exit.timings_ms.exec,
                    exit.error.as_deref(),
                );
                if let Some(note) = note {
                    eprintln!("tvm: {note}");
                }
                Ok(ExitCode::from(code))
            }
            Err((status, err)) => Ok(refused(status, &err)),
        };
    }
    let resp = match client::execute(server, &req)? {
        Ok(r) => r,
        Err((status, err)) => return Ok(refused(status, &err)),
    };
    print!("{}", resp.stdout);
    eprint!("{}", resp.stderr);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let (code, note) = exit_code_for(
        resp.status,
        resp.exit_code,
        resp.signal.as_deref(),
        resp.timings_ms.exec,
        resp.error.as_deref(),
    );
    if let Some(note) = note {
        eprintln!("tvm: {note}");
    }
    Ok(ExitCode::from(code))
}

/// Says why the server refused; 2 for a client error (usage), 1 otherwise.
fn refused(status: reqwest::StatusCode, err: &tvm_api::ErrorBody) -> ExitCode {
    eprintln!(
        "tvm: server refused the request ({status}): {} ({})",
        err.error.message, err.error.code
    );
    ExitCode::from(if status.is_client_error() { 2 } else { 1 })
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
    }
}
