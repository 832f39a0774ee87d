//! `tvm`: a thin client and tool binary. Exit codes: `run`/`exec`/`sandbox exec`
//! mirror the program (see `exec::exit_code_for`; 1 after a compile error, whose
//! messages go to stderr); otherwise 0 ok, 1 runtime failure, 2 usage error or a
//! request the server refused.

mod client;
mod doctor;
mod exec;
mod languages;
mod mcp;
mod sandbox;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Parser, Subcommand};
use tvm_api::{ExecuteRequest, RequestLimits};

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
    /// List the server's languages: name, version, whether it compiles, aliases
    /// and the file extensions `tvm run` maps to it.
    Languages {
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Sandboxes: one microVM kept for several execs and file copies
    ///
    /// For example:
    ///
    ///     SB=$(tvm sandbox create --ttl 30m)
    ///     tvm sandbox cp data.csv $SB:
    ///     tvm sandbox exec $SB -l python -c 'print(len(open("data.csv").read()))'
    ///     tvm sandbox cp $SB:out.png .
    ///     tvm sandbox rm $SB
    #[command(verbatim_doc_comment)]
    Sandbox {
        #[command(subcommand)]
        cmd: sandbox::SandboxCmd,
    },
    /// Say which backend and accelerator this host would use, and why.
    Doctor,
    /// MCP server on stdio for AI agents (execute, sandboxes), bridged to the
    /// server's /mcp. Register it in an MCP client as the command `tvm mcp`
    /// (with TVM_SERVER and TVM_TOKEN in its environment).
    Mcp,
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
    /// Wall-clock limit of the compile stage in milliseconds (languages that compile).
    #[arg(long)]
    compile_timeout_ms: Option<u64>,
    /// Memory limit of the compile stage in MiB.
    #[arg(long)]
    compile_memory_mb: Option<u64>,
    /// Let the program reach this destination through the server's egress proxy
    /// (host, *.suffix or IP, optional :port; within the server's [egress] allow).
    /// Repeatable. Without it the program has no network.
    #[arg(long = "allow", value_name = "HOST[:PORT]")]
    allow: Vec<String>,
}

impl LimitArgs {
    /// The request's `network`, when any destination was allowed.
    fn network(&self) -> Option<tvm_api::NetworkRequest> {
        network(&self.allow)
    }
}

/// `--allow` flags as a request's `network`.
pub(crate) fn network(allow: &[String]) -> Option<tvm_api::NetworkRequest> {
    (!allow.is_empty()).then(|| tvm_api::NetworkRequest {
        allow: allow.to_vec(),
        ..Default::default()
    })
}

impl From<LimitArgs> for RequestLimits {
    fn from(l: LimitArgs) -> Self {
        RequestLimits {
            timeout_ms: l.timeout_ms,
            memory_mb: l.memory_mb,
            vcpus: l.vcpus,
            max_output_bytes: l.max_output_bytes,
            max_processes: l.max_processes,
            compile_timeout_ms: l.compile_timeout_ms,
            compile_memory_mb: l.compile_memory_mb,
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
            let Some(language) = language.or_else(|| exec::language_of(&cli.server, &file)) else {
                eprintln!(
                    "tvm: cannot tell the language of {} from its extension; pass -l",
                    file.display()
                );
                return Ok(ExitCode::from(2));
            };
            execute(&cli.server, language, code, limits, args)
        }
        Cmd::Exec {
            language,
            code,
            limits,
            args,
        } => execute(&cli.server, language, code, limits, args),
        Cmd::Languages { json } => languages::run(&cli.server, json),
        Cmd::Sandbox { cmd } => sandbox::run(&cli.server, cmd),
        Cmd::Doctor => Ok(doctor::run()),
        Cmd::Mcp => mcp::run(&cli.server),
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

/// `tvm run` and `tvm exec`: one fresh VM through `/v1/execute`.
fn execute(
    server: &str,
    language: String,
    code: String,
    limits: LimitArgs,
    args: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let stream = !limits.no_stream;
    let req = ExecuteRequest {
        language,
        code,
        stdin: exec::piped_stdin()?,
        args,
        network: limits.network(),
        limits: limits.into(),
        ..Default::default()
    };
    exec::execute(server, "/v1/execute", &req, stream)
}
