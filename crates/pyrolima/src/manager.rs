//! The VM's lifecycle: write the config to a temporary directory, `limactl start` it,
//! copy the pyrovm image and the manifests in (no mounts), import, pick the overlay,
//! apply, and wait for the forwarded ingress; `down` deletes the VM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::time::sleep;

use crate::error::LimaError;
use crate::limactl::{Instance, Limactl, Status};
use crate::overlay::{self, choose_overlay};
use crate::render::{nested_support, render_with, Nested, RenderOptions};
use crate::scripts;
use crate::spec::VmSpec;
use crate::tarball::{read_oci_image, OciImage};
use crate::{host, overlay::TCG_WARNING};

/// The path pyrolima probes through the ingress, with the bearer token. Not `/readyz`:
/// the VirtualService (deploy/k8s/istio/mesh/virtualservice.yaml) routes only `/v1/…`,
/// `/api/v2/…` and gRPC, so the probes stay inside the cluster and `/readyz` gets 404 at
/// the gateway. A 200 here means gateway → mesh → pyrovm → token all work.
pub const READY_PATH: &str = "/v1/languages";

/// The build outputs pyrolima puts into the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    /// `target/oci/pyrovm.oci.tar` (`make image`).
    pub oci_archive: PathBuf,
    /// `deploy/k8s`.
    pub deploy_dir: PathBuf,
}

impl Artifacts {
    /// Both exist, and the archive's image is the one the DaemonSet runs. Returns the
    /// image and warnings (e.g. an image for another architecture than the VM's).
    pub fn check(&self, spec: &VmSpec) -> Result<(OciImage, Vec<String>), LimaError> {
        let bad = |path: &PathBuf, detail: String| LimaError::Artifact {
            path: path.clone(),
            detail,
        };
        if !self.oci_archive.is_file() {
            return Err(bad(
                &self.oci_archive,
                "no pyrovm OCI archive: build it with `make image` (or give --oci-archive)".into(),
            ));
        }
        let image = read_oci_image(&self.oci_archive).map_err(|e| bad(&self.oci_archive, e))?;
        let wanted =
            overlay::daemonset_image(&self.deploy_dir).map_err(|e| bad(&self.deploy_dir, e))?;
        if image.reference != wanted {
            return Err(bad(
                &self.oci_archive,
                format!(
                    "holds {} but deploy/k8s runs {wanted}: rebuild the image or fix the manifests",
                    image.reference
                ),
            ));
        }
        let mut warnings = Vec::new();
        if !image.architecture.is_empty() && image.architecture != spec.arch.oci_name() {
            warnings.push(format!(
                "the pyrovm image is linux/{} but the VM is {}: it can only run through binfmt \
                 emulation (Rosetta under vz, qemu-user under qemu), always with the tcg overlay, \
                 and k3s's image store may refuse a foreign-platform image (not verified)",
                image.architecture, spec.arch
            ));
        }
        Ok((image, warnings))
    }
}

/// Deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `limactl start` (image download, k3s and Istio install, probes); also the copy
    /// and import of the ~160 MiB image.
    pub start: Duration,
    /// Every other limactl call.
    pub command: Duration,
    /// From applying the manifests until the ingress answers.
    pub ready: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            start: Duration::from_secs(20 * 60),
            command: Duration::from_secs(60),
            ready: Duration::from_secs(10 * 60),
        }
    }
}

/// Where TVM answers on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Base URL of the forwarded ingress, e.g. `http://127.0.0.1:18080`.
    pub url: String,
    /// Whether KVM is usable in the VM (None until pyrolima has looked).
    pub kvm: Option<bool>,
}

/// One Lima VM running TVM.
#[derive(Debug)]
pub struct Manager {
    spec: VmSpec,
    limactl: Limactl,
    artifacts: Artifacts,
    timeouts: Timeouts,
    options: RenderOptions,
    token: String,
    kvm: Mutex<Option<bool>>,
    op: tokio::sync::Mutex<()>,
    stopped: AtomicBool,
    http: reqwest::Client,
}

impl Manager {
    /// A manager with a fresh random bearer token (see [`Manager::token`]).
    pub fn new(spec: VmSpec, limactl: Limactl, artifacts: Artifacts, timeouts: Timeouts) -> Self {
        let limactl = limactl.with_timeouts(timeouts.command, timeouts.start);
        let token: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Manager {
            spec,
            limactl,
            artifacts,
            timeouts,
            options: RenderOptions::default(),
            token,
            kvm: Mutex::new(None),
            op: tokio::sync::Mutex::new(()),
            stopped: AtomicBool::new(false),
            http,
        }
    }

    /// Uses `token` (one line, no whitespace) instead of a random one.
    pub fn with_token(mut self, token: String) -> Self {
        self.token = token;
        self
    }

    /// Sets [`RenderOptions`] (e.g. forward the Kubernetes API).
    pub fn with_render_options(mut self, options: RenderOptions) -> Self {
        self.options = options;
        self
    }

    /// The spec.
    pub fn spec(&self) -> &VmSpec {
        &self.spec
    }

    /// The bearer token pyrovm in the VM accepts (`Authorization: Bearer <token>`): a
    /// client of the endpoint — or a gateway forwarding to it — must send it.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The endpoint (its `kvm` is known once `up` has looked).
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: format!("http://127.0.0.1:{}", self.spec.ingress_port),
            kvm: *self.kvm.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Brings TVM up: reuses this manager's VM when it is running and answering,
    /// otherwise deletes any earlier instance pyrolima made under this name and starts
    /// a fresh one. A failed attempt leaves the instance for inspection (see docs/lima.md).
    pub async fn up(&self) -> Result<Endpoint, LimaError> {
        self.bring_up(false).await
    }

    /// Like [`Manager::up`], but never reuses the running VM: deletes it and starts afresh.
    pub async fn recreate(&self) -> Result<Endpoint, LimaError> {
        self.bring_up(true).await
    }

    async fn bring_up(&self, fresh: bool) -> Result<Endpoint, LimaError> {
        let _op = self.op.lock().await;
        self.stopped.store(false, Ordering::SeqCst);
        let name = &self.spec.name;
        let lima = self.limactl.checked_version().await?;
        for w in self.spec.validate()? {
            tracing::warn!("{w}");
        }
        let (image, warnings) = self.artifacts.check(&self.spec)?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        if let Some(inst) = self.limactl.list(name).await? {
            if !inst.managed_by_pyrolima() {
                return Err(LimaError::Foreign { name: name.clone() });
            }
            let reusable =
                !fresh && inst.status == Status::Running && self.endpoint().kvm.is_some();
            if reusable && self.probe().await.is_ok() {
                tracing::info!(%name, "already running and ready");
                return Ok(self.endpoint());
            }
            tracing::info!(%name, status = %inst.status, "deleting the earlier instance");
            self.limactl.delete(name, true).await?;
        }
        self.set_kvm(None);

        let mut spec = self.spec.clone();
        if let Some(reason) = host::nested_blocker(&spec) {
            tracing::warn!("not asking for nested virtualization: {reason}");
            spec.nested = false;
        }
        match nested_support(&spec, &lima) {
            Nested::Unavailable(reason) => tracing::warn!("{reason}; expect this: {TCG_WARNING}"),
            Nested::HostControlled(hint) => tracing::info!("{hint}"),
            Nested::Enabled(how) => tracing::info!("asking Lima for nested virtualization ({how})"),
            Nested::NotRequested => {
                tracing::warn!("nested virtualization not requested; expect this: {TCG_WARNING}")
            }
        }
        if let Err(e) = self.start_vm(&spec, &lima).await {
            let nested_refused = matches!(&e, LimaError::Failed { stderr, .. } if stderr.contains("nested virtualization"));
            if !(spec.nested && nested_refused) {
                return Err(e);
            }
            tracing::warn!("Lima refused nested virtualization ({e}); starting without it");
            self.limactl.delete(name, true).await?;
            spec.nested = false;
            self.start_vm(&spec, &lima).await?;
        }
        self.deploy(&image).await?;
        self.wait_ready().await
    }

    /// Deletes the VM (`limactl delete --force`); nothing left is not an error. Tells a
    /// running [`crate::monitor`] to stop instead of recreating it.
    pub async fn down(&self) -> Result<(), LimaError> {
        self.stopped.store(true, Ordering::SeqCst);
        let name = &self.spec.name;
        match self.limactl.list(name).await? {
            None => {}
            Some(inst) if !inst.managed_by_pyrolima() => {
                return Err(LimaError::Foreign { name: name.clone() })
            }
            Some(_) => {
                tracing::info!(%name, "deleting the Lima instance");
                self.limactl.delete(name, true).await?;
            }
        }
        self.set_kvm(None);
        Ok(())
    }

    /// The instance as Lima reports it (None: there is none).
    pub async fn status(&self) -> Result<Option<Instance>, LimaError> {
        self.limactl.list(&self.spec.name).await
    }

    /// One readiness probe of the forwarded ingress: `GET /v1/languages` with the token
    /// answers 200.
    pub async fn probe(&self) -> Result<(), String> {
        let url = format!("{}{READY_PATH}", self.endpoint().url);
        let per_request = self
            .timeouts
            .ready
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let answer = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .timeout(per_request)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        match answer.status() {
            s if s.is_success() => Ok(()),
            s => Err(format!("{url}: HTTP {s}")),
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn set_kvm(&self, kvm: Option<bool>) {
        *self.kvm.lock().unwrap_or_else(|e| e.into_inner()) = kvm;
    }

    async fn start_vm(&self, spec: &VmSpec, lima: &semver::Version) -> Result<(), LimaError> {
        let yaml = render_with(spec, lima, &self.options)?;
        let dir = tempfile::Builder::new()
            .prefix("pyrolima-")
            .tempdir()
            .map_err(|source| io("creating a temporary directory", source))?;
        let path = dir.path().join(format!("{}.yaml", spec.name));
        std::fs::write(&path, yaml).map_err(|source| io("writing the Lima config", source))?;
        tracing::info!(name = %spec.name, vm_type = %spec.vm_type, arch = %spec.arch, "limactl start (this takes minutes)");
        self.limactl.start(&spec.name, &path).await
        // `dir` (and the config in it) is removed here: Lima keeps its own copy.
    }

    async fn deploy(&self, image: &OciImage) -> Result<bool, LimaError> {
        let name = &self.spec.name;
        let stage = tempfile::Builder::new()
            .prefix("pyrolima-bundle-")
            .tempdir()
            .map_err(|source| io("creating a temporary directory", source))?;
        let bundle = overlay::build_bundle(&self.artifacts.deploy_dir, &self.token)
            .map_err(|source| io("bundling deploy/k8s", source))?;
        let bundle_path = stage.path().join("bundle.tar");
        write_private(&bundle_path, &bundle).map_err(|source| io("writing the bundle", source))?;
        let long = self
            .limactl
            .clone()
            .with_timeouts(self.timeouts.start, self.timeouts.start);

        tracing::info!(%name, "copying the manifests and the pyrovm image into the VM");
        self.limactl
            .copy(name, &bundle_path, scripts::GUEST_BUNDLE)
            .await?;
        drop(stage);
        long.copy(name, &self.artifacts.oci_archive, scripts::GUEST_OCI)
            .await?;
        self.limactl.shell(name, &scripts::unpack_bundle()).await?;

        let out = self.limactl.shell(name, &scripts::kvm_check()).await?;
        let kvm = match out.stdout.trim() {
            "kvm=yes" => true,
            "kvm=no" => false,
            other => {
                return Err(LimaError::BadOutput {
                    cmd: "limactl shell … (KVM check)".into(),
                    detail: format!("expected kvm=yes or kvm=no, got {other:?}"),
                })
            }
        };
        self.set_kvm(Some(kvm));
        let choice = choose_overlay(kvm, self.spec.cpus, self.spec.memory_gib);
        match &choice.warning {
            Some(w) => tracing::warn!("{w}"),
            None => tracing::info!("KVM is usable in the VM: the istio overlay"),
        }

        tracing::info!(reference = %image.reference, "importing the pyrovm image into k3s");
        long.shell(name, &scripts::import_image(&image.reference))
            .await?;
        if kvm {
            self.limactl.shell(name, &scripts::label_kvm_node()).await?;
        }
        let dir = format!("{}/overlays/{}", scripts::GUEST_DIR, choice.overlay);
        tracing::info!(overlay = %choice.overlay, "applying deploy/k8s");
        long.shell(name, &scripts::apply_overlay(&dir)).await?;
        Ok(kvm)
    }

    async fn wait_ready(&self) -> Result<Endpoint, LimaError> {
        let start = Instant::now();
        let poll =
            (self.timeouts.ready / 20).clamp(Duration::from_millis(50), Duration::from_secs(2));
        tracing::info!(url = %self.endpoint().url, "waiting for the ingress");
        loop {
            match self.probe().await {
                Ok(()) => {
                    let endpoint = self.endpoint();
                    tracing::info!(url = %endpoint.url, kvm = ?endpoint.kvm, "TVM is ready");
                    return Ok(endpoint);
                }
                Err(last) if start.elapsed() >= self.timeouts.ready => {
                    return Err(LimaError::NotReady {
                        url: self.endpoint().url,
                        after: self.timeouts.ready,
                        last,
                    })
                }
                Err(_) => sleep(poll).await,
            }
        }
    }
}

fn io(context: &str, source: std::io::Error) -> LimaError {
    LimaError::Io {
        context: context.to_owned(),
        source,
    }
}

/// Writes a file only its owner can read (it holds the token).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(data)
}
