//! pyrovm: the TVM node service. It owns admission, one microVM per request,
//! the HTTP API, metrics, and its runtime directory (reaped on the next start if
//! this instance crashes). The binary in `src/bin/pyrovm.rs` only parses flags.

pub mod api;
pub mod backend;
pub mod cluster;
pub mod config;
pub mod converse;
pub mod core;
mod egress;
pub mod executions;
pub mod grpc;
pub mod grpc_executions;
pub mod grpc_sandboxes;
mod hold;
pub mod metrics;
pub mod openapi;
pub mod piston;
pub mod pool;
pub mod procs;
pub mod queue;
pub mod readiness;
pub mod sandbox;
mod sandbox_procs;
pub mod server;
pub mod stages;

// Shared with pyroshell; re-exported under their old paths.
pub use tvm_http::{listen, middleware};

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tvm_api::LanguageTable;
use tvm_vmm::runtime::Runtime;
use tvm_vmm::{GuestImage, Vmm};

pub use config::{BackendChoice, Config};

use crate::core::{CoreSettings, Executor};
use crate::server::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare the runtime dir {path}")]
    Runtime {
        path: PathBuf,
        #[source]
        source: tvm_vmm::VmmError,
    },
    #[error("no guest image at {path}: build it with `tvm image build` (or `make image`)")]
    NoImage { path: PathBuf },
    #[error("{0}")]
    Backend(String),
    #[error("cluster settings")]
    Cluster(#[from] cluster::ClusterError),
    #[error("configuration")]
    Config(#[from] config::ConfigError),
}

/// A configured service, ready to serve.
#[derive(Debug)]
pub struct Service {
    state: Arc<AppState>,
    runtime: Arc<Runtime>,
    max_body_bytes: usize,
    tokens: Arc<middleware::Tokens>,
    pool: Vec<pool::PoolClass>,
    pool_options: pool::PoolOptions,
    listen: listen::ListenOptions,
    body_timeout: Duration,
    forwarder: Option<Arc<cluster::Forwarder>>,
}

impl Service {
    /// Reaps leftovers of crashed instances, picks the backend, checks the image.
    pub fn new(config: &Config) -> Result<Self, StartError> {
        let boot_timeout = Duration::from_millis(config.boot_timeout_ms);
        Self::with_backend(config, |image, runtime| {
            backend::select(config, image, runtime, boot_timeout)
        })
    }

    /// Like [`Service::new`], but the backend is built by `make_backend` (for embedding
    /// pyrovm, and for tests that drive a backend `auto` would not pick on this host).
    pub fn with_backend(
        config: &Config,
        make_backend: impl FnOnce(GuestImage, Arc<Runtime>) -> Result<Arc<dyn Vmm>, StartError>,
    ) -> Result<Self, StartError> {
        config
            .check()
            .map_err(|e| StartError::Backend(e.to_string()))?;
        let root = config
            .runtime_dir
            .clone()
            .unwrap_or_else(Runtime::default_root);
        let (runtime, reaped) = Runtime::create(&root).map_err(|source| StartError::Runtime {
            path: root.clone(),
            source,
        })?;
        if reaped.instances > 0 {
            tracing::warn!(
                instances = reaped.instances,
                processes = reaped.processes,
                "reaped what crashed instances left behind"
            );
        }
        let runtime = Arc::new(runtime);
        let image_dir = config
            .image_dir
            .clone()
            .unwrap_or_else(|| tvm_image::current_dir(&tvm_image::cache_dir()));
        let image = tvm_image::image_in(&image_dir);
        if image.check().is_err() {
            return Err(StartError::NoImage { path: image_dir });
        }
        let vmm = make_backend(image, runtime.clone())?;
        tracing::info!(backend = vmm.name(), runtime = %runtime.dir().display(), image = %image_dir.display(), "pyrovm configured");
        let cluster = match (
            &config.cluster.advertise_addr,
            &config.cluster.route_key_file,
        ) {
            (Some(addr), Some(key)) => Some(cluster::Cluster::from_key_file(*addr, key)?),
            _ => None,
        };
        let metrics = Arc::new(metrics::Metrics::new());
        let sandboxes = sandbox::Sandboxes::new(
            sandbox::SandboxSettings {
                max_total: config.sandbox.max_total,
                max_per_caller: config.sandbox.max_per_token,
                max_file_bytes: config.sandbox.max_file_bytes,
                busy_timeout: Duration::from_millis(config.sandbox.busy_timeout_ms),
                bounds: config.sandbox.bounds(),
                base_workdir_mb: config.workdir_mb,
                cluster: cluster.clone(),
            },
            metrics.clone(),
        );
        let executor = Arc::new(Executor::new(
            vmm,
            CoreSettings {
                max_concurrency: config.max_concurrency,
                max_queued: config.max_queued(),
                queue_timeout: Duration::from_millis(config.queue_timeout_ms),
                max_concurrency_per_caller: config.max_concurrency_per_token,
                guest_overhead_mb: config.guest_overhead_mb,
                workdir_mb: config.workdir_mb,
                host_deadline_slack: Duration::from_millis(config.host_deadline_slack_ms),
                runtime_dir: Some(runtime.dir().to_path_buf()),
                max_files_out: config.limits.max_files_out,
                max_files_out_bytes: config.limits.max_files_out_bytes,
            },
            metrics,
        ));
        let forwarder = cluster.clone().map(|c| {
            Arc::new(cluster::Forwarder::new(
                c,
                config.cluster.peer_host.clone(),
                config.cluster.peers.clone(),
            ))
        });
        let executions = executions::Executions::new(
            executions::ExecutionsSettings {
                result_ttl: Duration::from_millis(config.executions.result_ttl_ms),
                max_stored: config.executions.max_stored,
                max_per_caller: config.executions.max_per_token,
                max_stored_bytes: config.executions.max_stored_bytes,
                max_batch: config.executions.max_batch,
                queue_timeout: Duration::from_millis(config.executions.queue_timeout_ms),
                max_wait: Duration::from_millis(config.executions.max_wait_ms),
                max_files_out_bytes: config.limits.max_files_out_bytes as u64,
                cluster: cluster.clone(),
            },
            executor.clone(),
        );
        let state = Arc::new(AppState {
            executor,
            executions,
            languages: LanguageTable::builtin(),
            versions: tvm_image::installed_versions(&image_dir),
            bounds: tvm_api::LimitBounds {
                egress: config.egress.bounds()?,
                ..config.limits.clone()
            },
            ready: AtomicBool::new(true),
            warm: AtomicBool::new(false),
            sandboxes,
            forwarder: forwarder.clone(),
        });
        Ok(Self {
            state,
            runtime,
            max_body_bytes: config.max_body_bytes,
            tokens: Arc::new(middleware::Tokens::new(config.tokens.clone())),
            pool: config.pool.clone(),
            pool_options: config.pool_options(),
            listen: listen::ListenOptions {
                header_timeout: Duration::from_millis(config.header_timeout_ms),
                drain_timeout: Duration::from_millis(config.drain_timeout_ms),
                max_connections: config.max_connections,
            },
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            forwarder,
        })
    }

    pub fn backend_name(&self) -> &str {
        self.state.executor.backend_name()
    }

    /// This instance's runtime dir (removed when the service ends).
    pub fn runtime_dir(&self) -> &Path {
        self.runtime.dir()
    }

    pub fn router(&self) -> axum::Router {
        server::router(
            self.state.clone(),
            self.max_body_bytes,
            self.body_timeout,
            self.tokens.clone(),
            self.forwarder.clone(),
        )
    }

    /// Serves until `shutdown` resolves, then stops admitting, lets in-flight
    /// executions finish (up to `drain_timeout_ms`, then cuts them: their VMs are
    /// destroyed), and removes the runtime dir.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let state = self.state.clone();
        let pool = state
            .executor
            .start_pool(&self.pool, self.pool_options.clone());
        let sweeper = state.sandboxes.spawn_sweeper();
        let results_sweeper = state.executions.spawn_sweeper();
        let app = self.router();
        let drained = listen::serve(listener, app, self.listen, async move {
            shutdown.await;
            state
                .ready
                .store(false, std::sync::atomic::Ordering::Release);
            state.sandboxes.stop_creating();
            state.executor.close();
            state.executions.close();
            tracing::info!("shutting down: no new executions; finishing in-flight ones");
        })
        .await?;
        if let listen::Drained::Cut(n) = drained {
            tracing::warn!(
                connections = n,
                "in-flight requests cut at the drain deadline"
            );
        }
        // Sandboxes live in memory only: a stopping service ends them all.
        self.state.sandboxes.close_all().await;
        sweeper.abort();
        results_sweeper.abort();
        if let Some(pool) = pool {
            pool.drain().await;
        }
        // VMs of answered executions are destroyed right after their answers:
        // let those finish (each holds its slot until its VM is gone).
        if !self
            .state
            .executor
            .queue()
            .idle(Duration::from_secs(10))
            .await
        {
            tracing::warn!("VMs still being destroyed at exit; the runtime cleanup kills them");
        }
        drop(self.state);
        // Kill any VMM still recorded and remove the dir now, even if a finishing
        // background task still holds a reference to the runtime.
        self.runtime.remove();
        drop(self.runtime);
        Ok(())
    }
}

/// Locks a mutex; a poisoned lock only means a panic elsewhere, and the state behind
/// every such lock here stays usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
