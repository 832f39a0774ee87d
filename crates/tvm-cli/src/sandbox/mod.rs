//! `tvm sandbox …`: sessions of several steps in one microVM (`/v1/sandboxes`).
//!
//! Exit codes as elsewhere: `exec` mirrors the program; otherwise 0 ok, 2 when the
//! server refused (a 4xx) or the command line is wrong, 1 for any other failure.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args as ClapArgs, Subcommand};
use reqwest::Method;
use tvm_api::{
    CreateSandboxRequest, ExecuteRequest, RequestLimits, SandboxInfo, SandboxLimitsRequest,
    SandboxList,
};

use crate::client::{self, Body};
use crate::exec;
use files::sandbox_path;

mod files;

#[derive(Debug, Subcommand)]
pub enum SandboxCmd {
    /// Create a sandbox (one microVM kept for several steps); prints its id.
    Create(CreateArgs),
    /// Run code in a sandbox: a FILE, or -l LANG -c CODE.
    ///
    /// Files and processes left in the background persist between execs; one exec
    /// runs at a time. Piped stdin goes to the program. The exit code is the
    /// program's (124 time limit, 137 memory limit, 128+N signal N), or 2 when the
    /// server refused (no such sandbox, it has ended, it stayed busy).
    Exec(ExecArgs),
    /// Copy a file into or out of a sandbox: `cp FILE ID:PATH`, `cp ID:PATH FILE`.
    ///
    /// PATH is relative to the sandbox's work dir (/work/PATH works too); `ID:` is
    /// the work dir itself. `-` is stdin or stdout. A destination that is a
    /// directory, or ends in `/`, gets the source's file name. Bytes are copied
    /// exactly; missing parent directories in the sandbox are made.
    Cp {
        /// FILE, `-` (stdin), or ID:PATH.
        #[arg(value_name = "SRC")]
        src: String,
        /// FILE, `-` (stdout), or ID:PATH.
        #[arg(value_name = "DST")]
        dst: String,
    },
    /// List a directory of a sandbox (the work dir by default): type, size, name.
    Ls {
        /// `ID`, or `ID:PATH`.
        #[arg(value_name = "ID[:PATH]")]
        target: String,
        /// Directory relative to the work dir.
        path: Option<String>,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// List your live sandboxes.
    List {
        /// Print only the ids.
        #[arg(short, long, conflicts_with = "json")]
        quiet: bool,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox.
    Info {
        /// The sandbox's id.
        #[arg(value_parser = parse_id)]
        id: String,
        /// Print the server's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// End sandboxes now; prints each id removed.
    ///
    /// Their VMs are destroyed before this returns. One that had already ended by
    /// itself (TTL, idle timeout) is not an error.
    Rm {
        /// The sandboxes' ids.
        #[arg(required_unless_present = "all", value_parser = parse_id)]
        ids: Vec<String>,
        /// End every one of your sandboxes.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Debug, Clone, ClapArgs)]
pub struct CreateArgs {
    /// Memory of the sandbox in MiB, shared by all its execs.
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Virtual CPUs of the sandbox.
    #[arg(long)]
    vcpus: Option<u32>,
    /// Most processes (and threads) at once in the sandbox.
    #[arg(long)]
    max_processes: Option<u32>,
    /// Size of the work dir in MiB (it lives in the sandbox's memory).
    #[arg(long)]
    disk_mb: Option<u64>,
    /// Longest life from creation: seconds, or with a unit (90s, 10m, 2h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    ttl: Option<u64>,
    /// End after this long without a request: seconds, or with a unit.
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    idle_timeout: Option<u64>,
    /// Environment of every exec: K=V, or K for this shell's value. Repeatable.
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Let every exec reach this destination through the server's egress proxy
    /// (host, *.suffix or IP, optional :port). Repeatable. Default: no network.
    #[arg(long = "allow", value_name = "HOST[:PORT]")]
    allow: Vec<String>,
    /// Print the whole sandbox description as JSON instead of the id.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct ExecArgs {
    /// The sandbox's id.
    #[arg(value_parser = parse_id)]
    id: String,
    /// A local file to run; its language comes from its extension unless -l is given.
    #[arg(required_unless_present = "code", conflicts_with = "code")]
    file: Option<PathBuf>,
    /// Language (as `tvm languages` lists it).
    #[arg(short, long)]
    language: Option<String>,
    /// Code to run (needs -l).
    #[arg(short, long, requires = "language")]
    code: Option<String>,
    /// Environment of this exec: K=V, or K for this shell's value. Repeatable.
    #[arg(short, long = "env", value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Wait for the whole result instead of streaming output as it happens.
    #[arg(long)]
    no_stream: bool,
    /// Wall-clock limit in milliseconds.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Cap on stdout plus stderr, in bytes.
    #[arg(long)]
    max_output_bytes: Option<u64>,
    /// Arguments for the program (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(server: &str, cmd: SandboxCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCmd::Create(a) => create(server, a),
        SandboxCmd::Exec(a) => execute(server, a),
        SandboxCmd::Cp { src, dst } => files::copy(server, &src, &dst),
        SandboxCmd::Ls { target, path, json } => files::list_files(server, &target, path, json),
        SandboxCmd::List { quiet, json } => list(server, quiet, json),
        SandboxCmd::Info { id, json } => info(server, &id, json),
        SandboxCmd::Rm { ids, all } => remove(server, ids, all),
    }
}

/// A usage mistake found after parsing: said on stderr, exit code 2.
fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("tvm: {message}");
    ExitCode::from(2)
}

/// Prints the server's JSON answer as it came (after checking that it is JSON).
fn print_json(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let _: serde_json::Value = parse(bytes)?;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    if !bytes.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(ExitCode::SUCCESS)
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(bytes).with_context(|| {
        format!(
            "server sent an unexpected answer: {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

fn create(server: &str, a: CreateArgs) -> anyhow::Result<ExitCode> {
    let req = CreateSandboxRequest {
        limits: SandboxLimitsRequest {
            memory_mb: a.memory_mb,
            vcpus: a.vcpus,
            max_processes: a.max_processes,
            disk_mb: a.disk_mb,
        },
        ttl_s: a.ttl,
        idle_timeout_s: a.idle_timeout,
        env: a.env.into_iter().collect(),
        network: crate::network(&a.allow),
        metadata: Default::default(),
    };
    let body = Body::Json(serde_json::to_value(&req)?);
    let bytes = match client::call(server, Method::POST, "/v1/sandboxes", body)? {
        Ok(b) => b,
        Err((status, err)) => return Ok(exec::refused(status, &err)),
    };
    if a.json {
        return print_json(&bytes);
    }
    let info: SandboxInfo = parse(&bytes)?;
    println!("{}", info.id);
    Ok(ExitCode::SUCCESS)
}

fn execute(server: &str, a: ExecArgs) -> anyhow::Result<ExitCode> {
    let (language, code) = match (a.file, a.code) {
        (_, Some(code)) => (a.language.unwrap_or_default(), code),
        (Some(file), None) => {
            let code = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let language = match a.language.or_else(|| exec::language_of(server, &file)) {
                Some(l) => l,
                None => {
                    return Ok(usage(format_args!(
                        "cannot tell the language of {} from its extension; pass -l",
                        file.display()
                    )))
                }
            };
            (language, code)
        }
        (None, None) => return Ok(usage("give a FILE, or -l LANG -c CODE")),
    };
    let req = ExecuteRequest {
        language,
        code,
        stdin: exec::piped_stdin()?,
        args: a.args,
        env: a.env.into_iter().collect(),
        limits: RequestLimits {
            timeout_ms: a.timeout_ms,
            max_output_bytes: a.max_output_bytes,
            ..Default::default()
        },
        ..Default::default()
    };
    let path = sandbox_path(&a.id, "/execute");
    exec::execute(server, &path, &req, !a.no_stream)
}

fn list(server: &str, quiet: bool, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = match client::call(server, Method::GET, "/v1/sandboxes", Body::Empty)? {
        Ok(b) => b,
        Err((status, err)) => return Ok(exec::refused(status, &err)),
    };
    if json {
        return print_json(&bytes);
    }
    let list: SandboxList = parse(&bytes)?;
    let mut out = std::io::stdout().lock();
    if quiet {
        for s in &list.sandboxes {
            writeln!(out, "{}", s.id)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let w = list
        .sandboxes
        .iter()
        .map(|s| s.id.len())
        .max()
        .unwrap_or(0)
        .max(2);
    writeln!(
        out,
        "{:<w$}  {:<24}  {:<24}  {:>5}  {:>7}  {:>5}  {:>7}",
        "ID", "EXPIRES", "LAST ACTIVE", "EXECS", "MEMORY", "VCPUS", "DISK"
    )?;
    for s in &list.sandboxes {
        writeln!(
            out,
            "{:<w$}  {:<24}  {:<24}  {:>5}  {:>7}  {:>5}  {:>7}",
            s.id,
            s.expires_at,
            s.last_active_at,
            s.execs,
            format!("{}M", s.limits.memory_mb),
            s.limits.vcpus,
            format!("{}M", s.limits.disk_mb),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn info(server: &str, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let bytes = match client::call(server, Method::GET, &sandbox_path(id, ""), Body::Empty)? {
        Ok(b) => b,
        Err((status, err)) => return Ok(exec::refused(status, &err)),
    };
    if json {
        return print_json(&bytes);
    }
    let s: SandboxInfo = parse(&bytes)?;
    let l = s.limits;
    let env = if s.env_keys.is_empty() {
        "-".to_string()
    } else {
        s.env_keys.join(", ")
    };
    print!(
        "id:           {}\n\
         created:      {}\n\
         expires:      {} (ttl {} s)\n\
         last active:  {} (idle timeout {} s)\n\
         limits:       {} MiB memory, {} vCPU, {} processes, {} MiB disk\n\
         env:          {env}\n\
         execs:        {}\n\
         backend:      {}\n",
        s.id,
        s.created_at,
        s.expires_at,
        s.ttl_s,
        s.last_active_at,
        s.idle_timeout_s,
        l.memory_mb,
        l.vcpus,
        l.max_processes,
        l.disk_mb,
        s.execs,
        s.backend,
    );
    Ok(ExitCode::SUCCESS)
}

fn remove(server: &str, mut ids: Vec<String>, all: bool) -> anyhow::Result<ExitCode> {
    if all {
        let bytes = match client::call(server, Method::GET, "/v1/sandboxes", Body::Empty)? {
            Ok(b) => b,
            Err((status, err)) => return Ok(exec::refused(status, &err)),
        };
        let list: SandboxList = parse(&bytes)?;
        ids = list.sandboxes.into_iter().map(|s| s.id).collect();
    }
    let mut code = 0;
    for id in &ids {
        match client::call(server, Method::DELETE, &sandbox_path(id, ""), Body::Empty)? {
            Ok(_) => println!("{id}"),
            Err((_, err)) if err.error.code == "sandbox_ended" => {
                eprintln!("tvm: {id}: {} (nothing to do)", err.error.message);
            }
            Err((status, err)) => {
                eprintln!(
                    "tvm: cannot remove {id} ({status}): {} ({})",
                    err.error.message, err.error.code
                );
                if code == 0 {
                    code = exec::refused_code(status);
                }
            }
        }
    }
    Ok(ExitCode::from(code))
}

/// `K=V`, or `K` alone for the value `lookup` gives (this process's environment).
fn parse_env_with(
    s: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, String), String> {
    let (k, v) = match s.split_once('=') {
        Some((k, v)) => (k, v.to_string()),
        None => match lookup(s) {
            Some(v) => (s, v),
            None => return Err(format!("{s} is not set here; write {s}=VALUE")),
        },
    };
    if k.is_empty() {
        return Err("the variable's name is empty; write K=V".into());
    }
    Ok((k.to_string(), v))
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    parse_env_with(s, |k| std::env::var(k).ok())
}

/// `90`, `90s`, `10m`, `2h` or `1d`, in seconds.
fn parse_seconds(s: &str) -> Result<u64, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{s}: expected seconds, or a number with s, m, h or d"
            ))
        }
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s}: expected seconds, or a number with s, m, h or d"))
}

fn parse_id(s: &str) -> Result<String, String> {
    let id = s.strip_suffix(':').unwrap_or(s);
    if id.is_empty() {
        return Err("the sandbox id is empty".into());
    }
    Ok(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_pairs() {
        let none = |_: &str| None;
        assert_eq!(parse_env_with("A=b", none), Ok(("A".into(), "b".into())));
        assert_eq!(
            parse_env_with("A=b=c", none),
            Ok(("A".into(), "b=c".into()))
        );
        assert_eq!(parse_env_with("A=", none), Ok(("A".into(), String::new())));
        assert!(parse_env_with("=b", none).is_err());
        assert!(parse_env_with("A", none).is_err());
        let home = |k: &str| (k == "HOME").then(|| "/root".to_string());
        assert_eq!(
            parse_env_with("HOME", home),
            Ok(("HOME".into(), "/root".into()))
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_seconds("90"), Ok(90));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert_eq!(parse_seconds("10m"), Ok(600));
        assert_eq!(parse_seconds("2h"), Ok(7200));
        assert_eq!(parse_seconds("1d"), Ok(86_400));
        for bad in ["", "m", "1.5h", "10x", "-1", "99999999999999999999"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
