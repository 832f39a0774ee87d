//! `pyrolima`: print the Lima config, bring TVM up in a Lima VM, take it down, show its
//! status. Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use pyrolima::{
    monitor, nested_blocker, render_with, Arch, Artifacts, Health, HostOs, LimaError, Limactl,
    Manager, MonitorOptions, RenderOptions, Timeouts, VmSpec, VmType, SCHEMA_LIMA,
};

#[derive(Debug, Parser)]
#[command(
    name = "pyrolima",
    version,
    about = "Run TVM (k3s + Istio + pyrovm) in an ephemeral Lima VM"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the Lima YAML pyrolima would start (works without Lima installed).
    Config {
        #[command(flatten)]
        vm: VmArgs,
        /// Lima version to write the config for (default: the installed one, else 2.2.0).
        #[arg(long)]
        lima_version: Option<semver::Version>,
        /// Write the config for another host: macos, linux or windows (default: this one).
        #[arg(long)]
        host: Option<HostOs>,
    },
    /// Start the VM, deploy TVM, wait for the ingress; then watch it and recreate it
    /// when it breaks, until Ctrl-C (which deletes the VM).
    Up {
        #[command(flatten)]
        vm: VmArgs,
        /// Return once TVM is ready and leave the VM running (remove it with `down`).
        #[arg(long)]
        detach: bool,
        /// Use the bearer token in this file instead of a random one.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Delete the VM.
    Down {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Show the VM's status.
    Status {
        #[command(flatten)]
        vm: VmArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct VmArgs {
    /// Lima instance name.
    #[arg(long, default_value = "tvm")]
    name: String,
    /// vCPUs (the istio overlay needs 6).
    #[arg(long, default_value_t = 4)]
    cpus: u32,
    /// Memory in GiB.
    #[arg(long, default_value_t = 8)]
    memory: u32,
    /// Disk in GiB.
    #[arg(long, default_value_t = 40)]
    disk: u32,
    /// qemu, vz or wsl2 (default: vz on macOS, wsl2 on Windows, qemu on Linux).
    #[arg(long)]
    vm_type: Option<VmType>,
    /// x86_64 or aarch64 (default: the host's).
    #[arg(long)]
    arch: Option<Arch>,
    /// Host port (127.0.0.1) for the ingress.
    #[arg(long, default_value_t = pyrolima::DEFAULT_INGRESS_PORT)]
    ingress_port: u16,
    /// Do not ask for nested virtualization.
    #[arg(long)]
    no_nested: bool,
    /// Also forward the Kubernetes API (6443) to this host port.
    #[arg(long)]
    expose_api: Option<u16>,
    /// limactl binary (default: $LIMACTL, else PATH).
    #[arg(long)]
    limactl: Option<PathBuf>,
    /// The pyrovm OCI archive (`make image`).
    #[arg(long, default_value = "target/oci/pyrovm.oci.tar")]
    oci_archive: PathBuf,
    /// The Kubernetes manifests.
    #[arg(long, default_value = "deploy/k8s")]
    deploy_dir: PathBuf,
    /// k3s release.
    #[arg(long, default_value = pyrolima::DEFAULT_K3S_VERSION)]
    k3s_version: String,
    /// Istio release.
    #[arg(long, default_value = pyrolima::DEFAULT_ISTIO_VERSION)]
    istio_version: String,
}

impl VmArgs {
    fn spec(&self) -> VmSpec {
        self.spec_for(HostOs::current())
    }

    fn spec_for(&self, host: HostOs) -> VmSpec {
        VmSpec {
            name: self.name.clone(),
            host,
            vm_type: self.vm_type.unwrap_or_else(|| VmType::default_for(host)),
            arch: self.arch.unwrap_or_else(Arch::current),
            cpus: self.cpus,
            memory_gib: self.memory,
            disk_gib: self.disk,
            ingress_port: self.ingress_port,
            k3s_version: self.k3s_version.clone(),
            istio_version: self.istio_version.clone(),
            nested: !self.no_nested,
        }
    }

    fn render_options(&self) -> RenderOptions {
        RenderOptions {
            api_host_port: self.expose_api,
        }
    }

    fn manager(&self) -> Result<Manager, LimaError> {
        let artifacts = Artifacts {
            oci_archive: self.oci_archive.clone(),
            deploy_dir: self.deploy_dir.clone(),
        };
        let limactl = Limactl::find(self.limactl.clone())?;
        Ok(
            Manager::new(self.spec(), limactl, artifacts, Timeouts::default())
                .with_render_options(self.render_options()),
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pyrolima: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyrolima: {e:#}");
            let config = e.chain().any(|c| {
                c.downcast_ref::<LimaError>()
                    .is_some_and(LimaError::is_config_error)
                    || c.downcast_ref::<ConfigFailure>().is_some()
            });
            ExitCode::from(if config { 2 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Config {
            vm,
            lima_version,
            host,
        } => {
            let mut spec = vm.spec_for(host.unwrap_or_else(HostOs::current));
            let lima = match lima_version {
                Some(v) => v,
                None => match Limactl::find(vm.limactl.clone()) {
                    Ok(l) => l.version().await.unwrap_or(SCHEMA_LIMA),
                    Err(_) => SCHEMA_LIMA,
                },
            };
            if let Some(reason) = nested_blocker(&spec) {
                eprintln!("pyrolima: not asking for nested virtualization: {reason}");
                spec.nested = false;
            }
            let yaml = render_with(&spec, &lima, &vm.render_options()).map_err(LimaError::from)?;
            print!("{yaml}");
            Ok(())
        }
        Cmd::Up {
            vm,
            detach,
            token_file,
        } => {
            let mut manager = vm.manager()?;
            if let Some(path) = token_file {
                let token = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let token = token.trim().to_owned();
                anyhow::ensure!(
                    !token.is_empty() && !token.contains(char::is_whitespace),
                    "{}: expected one token",
                    path.display()
                );
                manager = manager.with_token(token);
            }
            if detach {
                let endpoint = manager.up().await?;
                print_ready(&endpoint, manager.token());
                println!(
                    "leaving the VM running: `pyrolima down --name {}` removes it",
                    vm.name
                );
                return Ok(());
            }
            foreground(Arc::new(manager)).await
        }
        Cmd::Down { vm } => {
            vm.manager()?.down().await?;
            println!("{}: deleted", vm.name);
            Ok(())
        }
        Cmd::Status { vm, json } => {
            let manager = vm.manager()?;
            let instance = manager.status().await?;
            let url = manager.endpoint().url;
            // Without the token a live pyrovm answers 401: that still proves the path works.
            let reachable = reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(2))
                .build()?
                .get(format!("{url}{}", pyrolima::READY_PATH))
                .send()
                .await
                .is_ok();
            if json {
                let out = serde_json::json!({"instance": instance, "ingress_url": url, "ingress_reachable": reachable});
                println!("{out}");
            } else {
                match instance {
                    None => println!("{}: no such Lima instance", vm.name),
                    Some(i) => {
                        let gib = |b: Option<u64>| {
                            b.map_or_else(|| "?".into(), |b| format!("{} GiB", b >> 30))
                        };
                        println!(
                            "{}: {} ({}, {}, {} CPUs, {} memory, {} disk){}",
                            i.name,
                            i.status,
                            i.vm_type.as_deref().unwrap_or("?"),
                            i.arch.as_deref().unwrap_or("?"),
                            i.cpus.map_or_else(|| "?".into(), |c| c.to_string()),
                            gib(i.memory),
                            gib(i.disk),
                            if i.managed_by_pyrolima() {
                                ""
                            } else {
                                " [not made by pyrolima]"
                            }
                        );
                        println!(
                            "ingress: {url} ({})",
                            if reachable {
                                "answering"
                            } else {
                                "not answering"
                            }
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

fn print_ready(endpoint: &pyrolima::Endpoint, token: &str) {
    let kvm = match endpoint.kvm {
        Some(true) => "KVM",
        Some(false) => "no KVM: TCG, slow",
        None => "KVM unknown",
    };
    println!("TVM ready at {} ({kvm})", endpoint.url);
    println!(
        "bearer token: {token}   (e.g. export TVM_TOKEN=... TVM_SERVER={})",
        endpoint.url
    );
}

/// `up` without --detach: monitor until Ctrl-C/SIGTERM, then delete the VM.
async fn foreground(manager: Arc<Manager>) -> anyhow::Result<()> {
    let (mut health, task) = monitor(manager.clone(), MonitorOptions::default());
    let outcome = loop {
        tokio::select! {
            _ = shutdown_signal() => break Ok(()),
            changed = health.changed() => {
                if changed.is_err() {
                    break Err(anyhow::anyhow!("the monitor stopped"));
                }
                let state = health.borrow_and_update().clone();
                match state {
                    Health::Ready(endpoint) => print_ready(&endpoint, manager.token()),
                    Health::Recovering { reason } => eprintln!("pyrolima: recovering: {reason}"),
                    Health::Starting => {}
                    Health::Failed { reason } => break Err(ConfigFailure(reason).into()),
                }
            }
        }
    };
    task.abort();
    let _ = task.await;
    eprintln!("pyrolima: deleting the VM");
    manager.down().await?;
    outcome
}

/// The monitor gave up on a configuration problem (exit code 2).
#[derive(Debug)]
struct ConfigFailure(String);

impl std::fmt::Display for ConfigFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigFailure {}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
