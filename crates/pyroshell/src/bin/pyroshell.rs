//! `pyroshell`: the front door. Flags → config → one of three modes.
//! Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pyroshell::config::{Mode, ShellConfig};
use pyroshell::lima::LimaUpstream;
use pyroshell::proxy::{Clients, Gateway, GatewayOptions};
use pyroshell::upstream::{probe_loop, retry_after_for, UpstreamState, UpstreamUrl};
use tvm_http::listen::{self, ListenOptions};

/// TVM's front door: pyrovm in-process, a proxy to an upstream, or a Lima VM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// embedded: pyrovm in this process (default on Linux); forward: proxy to
    /// --upstream; lima: start a Lima VM with k3s + Istio + pyrovm and proxy to it
    /// (default on macOS and Windows).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Forward mode: the upstream, `http://host:port[/prefix]` (an Istio ingress or a pyrovm).
    #[arg(long, env = "TVM_UPSTREAM")]
    upstream: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TVM_LISTEN")]
    listen: Option<SocketAddr>,
    /// TOML config: pyrovm's keys (embedded mode), plus `[forward]` and `[lima]`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// File with bearer tokens, one per line; `TVM_TOKENS` adds more.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Accept unauthenticated requests on a non-loopback address.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Embedded mode: which VMM (auto, qemu, firecracker).
    #[arg(long)]
    backend: Option<String>,
    /// Embedded mode: directory with vmlinux, initramfs.cpio and rootfs.erofs.
    #[arg(long, env = "TVM_IMAGE_DIR")]
    image_dir: Option<PathBuf>,
    /// Lima mode: keep the VM when pyroshell exits.
    #[arg(long)]
    keep_vm: bool,
    /// Lima mode: the limactl binary (else `$LIMACTL`, else PATH).
    #[arg(long, env = "LIMACTL")]
    limactl: Option<PathBuf>,
    /// Lima mode: host port the VM's ingress is forwarded to.
    #[arg(long)]
    ingress_port: Option<u16>,
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
            eprintln!("pyroshell: {e:#}");
            return ExitCode::from(2);
        }
    };
    let mode = args.mode.unwrap_or_else(Mode::default_for_host);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pyroshell: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match mode {
        Mode::Embedded => rt.block_on(embedded(&args, config)),
        Mode::Forward => rt.block_on(forward(&args, config)),
        Mode::Lima => rt.block_on(lima(&args, config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyroshell: {e:#}");
            let usage = e.downcast_ref::<UsageError>().is_some();
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// A mistake in flags or config found after start-up (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

fn load_config(args: &Args) -> anyhow::Result<ShellConfig> {
    let mut config = match &args.config {
        Some(p) => ShellConfig::load(p)?,
        None => ShellConfig::default(),
    };
    if let Some(l) = args.listen {
        config.gateway.listen = l;
        config
            .node
            .insert("listen".into(), toml::Value::String(l.to_string()));
    }
    if let Some(f) = &args.token_file {
        config.gateway.token_file = Some(f.clone());
    }
    config.gateway.insecure_no_auth |= args.insecure_no_auth;
    config.gateway.tokens =
        tvm_http::middleware::load_tokens(config.gateway.token_file.as_deref())?;
    if let Some(u) = &args.upstream {
        config.forward.upstream = Some(u.clone());
    }
    config.lima.keep_vm |= args.keep_vm;
    if let Some(l) = &args.limactl {
        config.lima.limactl = Some(l.clone());
    }
    if let Some(p) = args.ingress_port {
        config.lima.ingress_port = p;
    }
    config.gateway.check()?;
    Ok(config)
}

fn listen_options(c: &ShellConfig) -> ListenOptions {
    ListenOptions {
        header_timeout: Duration::from_millis(c.gateway.header_timeout_ms),
        drain_timeout: Duration::from_millis(c.gateway.drain_timeout_ms),
        max_connections: c.gateway.max_connections,
    }
}

#[cfg(target_os = "linux")]
async fn embedded(args: &Args, config: ShellConfig) -> anyhow::Result<()> {
    let mut node: pyrovm::Config = toml::Value::Table(config.node.clone())
        .try_into()
        .map_err(|e: toml::de::Error| UsageError(format!("invalid config: {e}")))?;
    if let Some(b) = &args.backend {
        node.backend = toml::Value::String(b.clone()).try_into().map_err(|_| {
            UsageError(format!(
                "--backend {b:?}: expected auto, qemu or firecracker"
            ))
        })?;
    }
    if let Some(d) = &args.image_dir {
        node.image_dir = Some(d.clone());
    }
    node.token_file = config.gateway.token_file.clone();
    node.insecure_no_auth = config.gateway.insecure_no_auth;
    node.tokens = config.gateway.tokens.clone();
    node.check().map_err(|e| UsageError(e.to_string()))?;
    let service = pyrovm::Service::new(&node)?;
    let listener = bind(node.listen).await?;
    tracing::info!(
        mode = "embedded",
        listen = %listener.local_addr()?,
        backend = service.backend_name(),
        auth = if node.tokens.is_empty() { "off" } else { "bearer tokens" },
        "pyroshell serving"
    );
    service.serve(listener, tvm_http::shutdown_signal()).await?;
    tracing::info!("pyroshell stopped; runtime dir removed");
    Ok(())
}

#[cfg(not(target_os = "linux"))]
async fn embedded(_args: &Args, _config: ShellConfig) -> anyhow::Result<()> {
    Err(UsageError(
        "embedded mode runs microVMs in this process and needs Linux; use --mode lima \
         (a Lima VM) or --mode forward --upstream URL"
            .into(),
    )
    .into())
}

fn warn_unused_node_keys(config: &ShellConfig, mode: &str) {
    let unused = config.node_only_keys();
    if !unused.is_empty() {
        tracing::warn!(mode, keys = ?unused, "config keys only embedded mode uses are ignored");
    }
}

/// The token sent upstream: `[forward] upstream_token_file`, else `TVM_UPSTREAM_TOKEN`.
fn upstream_token(config: &ShellConfig) -> anyhow::Result<Option<String>> {
    let token = match &config.forward.upstream_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("TVM_UPSTREAM_TOKEN").ok(),
    };
    Ok(token.filter(|t| !t.is_empty()))
}

fn gateway_options(
    config: &ShellConfig,
    upstream: UpstreamUrl,
    upstream_token: Option<String>,
) -> GatewayOptions {
    let f = &config.forward;
    GatewayOptions {
        upstream,
        connect_timeout: Duration::from_millis(f.connect_timeout_ms),
        response_timeout: Duration::from_millis(f.response_timeout_ms),
        retry: f.retry(),
        upstream_token,
        tokens: config.gateway.tokens.clone(),
        max_body_bytes: config.gateway.max_body_bytes,
        body_timeout: Duration::from_millis(config.gateway.body_timeout_ms),
    }
}

async fn forward(_args: &Args, config: ShellConfig) -> anyhow::Result<()> {
    warn_unused_node_keys(&config, "forward");
    let raw = config.forward.upstream.clone().ok_or_else(|| {
        UsageError("forward mode needs --upstream URL (or [forward] upstream)".into())
    })?;
    let url = UpstreamUrl::parse(&raw).map_err(|e| UsageError(e.to_string()))?;
    let opts = gateway_options(&config, url.clone(), upstream_token(&config)?);
    let interval = Duration::from_millis(config.forward.health_interval_ms);
    let clients = Clients::new(opts.connect_timeout);
    let (tx, rx) = tokio::sync::watch::channel(UpstreamState::starting(retry_after_for(interval)));
    let tx = Arc::new(tx);
    let path = config
        .forward
        .health_path
        .parse()
        .map_err(|_| UsageError("[forward] health_path is not a path".into()))?;
    let auth = opts
        .upstream_token
        .as_deref()
        .map(pyroshell::proxy::bearer)
        .transpose()
        .context("bad upstream token")?;
    let prober = tokio::spawn(probe_loop(
        clients.clone(),
        url.clone(),
        path,
        auth,
        interval,
        tx.clone(),
    ));
    let gateway = Gateway::new(opts, clients, rx, Some(tx)).context("bad upstream token")?;
    let listener = bind(config.gateway.listen).await?;
    tracing::info!(
        mode = "forward",
        listen = %listener.local_addr()?,
        upstream = %url,
        auth = if config.gateway.tokens.is_empty() { "off (upstream decides)" } else { "bearer tokens" },
        "pyroshell serving"
    );
    listen::serve(
        listener,
        gateway.router(),
        listen_options(&config),
        tvm_http::shutdown_signal(),
    )
    .await?;
    prober.abort();
    tracing::info!("pyroshell stopped");
    Ok(())
}

async fn lima(_args: &Args, config: ShellConfig) -> anyhow::Result<()> {
    warn_unused_node_keys(&config, "lima");
    let listener = bind(config.gateway.listen).await?;
    // The token pyrovm in the VM accepts: ours if given, else a fresh random one.
    let lima = LimaUpstream::start(&config.lima, upstream_token(&config)?).map_err(|e| {
        if e.is_config_error() {
            anyhow::Error::from(UsageError(e.to_string()))
        } else {
            anyhow::Error::from(e)
        }
    })?;
    let url =
        UpstreamUrl::parse(&lima.manager.endpoint().url).map_err(|e| UsageError(e.to_string()))?;
    // pyrovm in the VM accepts the token pyrolima holds (ours, or its random one).
    let opts = gateway_options(&config, url.clone(), Some(lima.manager.token().to_string()));
    let clients = Clients::new(opts.connect_timeout);
    let gateway =
        Gateway::new(opts, clients, lima.state.clone(), None).context("bad upstream token")?;
    tracing::info!(
        mode = "lima",
        listen = %listener.local_addr()?,
        vm = %config.lima.name,
        ingress = %url,
        keep_vm = config.lima.keep_vm,
        "pyroshell serving (503 + Retry-After until the Lima VM is ready)"
    );
    let (lima, failed) = lima.take_failed();
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let record = failure.clone();
    let shutdown = async move {
        tokio::select! {
            () = tvm_http::shutdown_signal() => {}
            Ok(reason) = failed => {
                if let Ok(mut f) = record.lock() {
                    *f = Some(reason);
                }
            }
        }
    };
    listen::serve(
        listener,
        gateway.router(),
        listen_options(&config),
        shutdown,
    )
    .await?;
    if !config.lima.keep_vm {
        tracing::info!(vm = %config.lima.name, "deleting the Lima VM");
    }
    let stopped = lima.stop(config.lima.keep_vm).await;
    let failure = failure.lock().ok().and_then(|mut f| f.take());
    if let Some(reason) = failure {
        return Err(UsageError(format!("the Lima VM cannot be started: {reason}")).into());
    }
    stopped?;
    tracing::info!("pyroshell stopped");
    Ok(())
}

async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
