//! `pyrovm`: flags → config → service. Exit codes: 0 ok, 1 runtime failure, 2 usage/config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use pyrovm::{BackendChoice, Config, Service};

/// TVM node service: runs each execution request in a fresh microVM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "TVM_LISTEN")]
    listen: Option<SocketAddr>,
    /// TOML config file (see docs/ARCHITECTURE.md, "Configuration").
    #[arg(long)]
    config: Option<PathBuf>,
    /// Which VMM to use.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Directory with vmlinux, initramfs.cpio and rootfs.erofs.
    #[arg(long, env = "TVM_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
    /// File with bearer tokens, one per line; `TVM_TOKENS` adds more (comma-separated).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Accept unauthenticated requests on a non-loopback address.
    #[arg(long)]
    insecure_no_auth: bool,
    /// In a cluster: this pyrovm's address as its peers reach it (`[cluster] advertise_addr`).
    #[arg(long, env = "TVM_ADVERTISE_ADDR")]
    advertise_addr: Option<SocketAddr>,
    /// In a cluster: the file with the route key all pyrovms share (`[cluster] route_key_file`).
    #[arg(long, env = "TVM_ROUTE_KEY_FILE")]
    route_key_file: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tvm_http::init_logging(args.log_format == "json");
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pyrovm: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pyrovm: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyrovm: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(b) = args.backend {
        config.backend = b;
    }
    if let Some(d) = &args.image_dir {
        config.image_dir = Some(d.clone());
    }
    if let Some(f) = &args.token_file {
        config.token_file = Some(f.clone());
    }
    config.insecure_no_auth |= args.insecure_no_auth;
    if let Some(a) = args.advertise_addr {
        config.cluster.advertise_addr = Some(a);
    }
    if let Some(f) = &args.route_key_file {
        config.cluster.route_key_file = Some(f.clone());
    }
    config.tokens = pyrovm::middleware::load_tokens(config.token_file.as_deref())?;
    config.check()?;
    Ok(config)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let service = Service::new(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        backend = service.backend_name(),
        auth = if config.tokens.is_empty() { "off" } else { "bearer tokens" },
        "pyrovm serving"
    );
    service.serve(listener, tvm_http::shutdown_signal()).await?;
    tracing::info!("pyrovm stopped; runtime dir removed");
    Ok(())
}
