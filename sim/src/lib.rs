//! `virtguard-sim`: a simulated Kubernetes cluster with KubeVirt, CDI and CSI snapshots, for
//! tests and the quickstart. It is a test double, not a cluster: see the crate README section
//! "Simulated cluster" for exactly what is and is not simulated.
//!
//! Parts:
//! - [`api`](crate::api): the REST API server (HTTPS, bearer token, discovery, GET/LIST/WATCH/
//!   POST/PUT/PATCH/DELETE, server-side apply, `/status`), over the [`store`](crate::store) of
//!   JSON objects;
//! - [`schema`](crate::schema): validation against the reference OpenAPI schemas;
//! - [`openapi`](crate::openapi): the `/openapi/v2` and `/openapi/v3` documents built from
//!   those same schemas, and the list types `managedFields` and strategic merge follow;
//! - controllers: [`kubevirt`](crate::kubevirt) (VM → VMI, freeze/unfreeze, VMIM timelines),
//!   [`snapshot`](crate::snapshot) (CSI snapshotter + PVC provisioning),
//!   [`groupsnapshot`](crate::groupsnapshot) (VolumeGroupSnapshots), [`export`](crate::export)
//!   (VirtualMachineExport + export server, whose image bytes [`image_http`](crate::image_http)
//!   serves), [`cdi`](crate::cdi) (DataVolume upload, upload proxy), [`jobs`](crate::jobs) (Jobs
//!   as local processes);
//! - [`scenario`](crate::scenario): the YAML scenario file and fault rules ([`faults`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), virtguard_sim::Error> {
//! let sim = virtguard_sim::Sim::start(virtguard_sim::SimConfig::default()).await?;
//! let client = sim.client().await?;
//! println!("kubeconfig: {}", sim.kubeconfig_path().display());
//! # drop(client); Ok(()) }
//! ```

pub mod api;
pub mod audit;
pub mod cbt;
pub mod cdi;
pub mod controllers;
pub mod disk;
pub mod export;
pub mod faults;
pub mod groupsnapshot;
pub mod guest_agent;
pub mod http;
pub mod image_http;
pub mod jobs;
pub mod kubevirt;
pub mod launcher;
pub mod openapi;
pub mod persist;
pub mod resources;
pub mod scenario;
pub mod schema;
pub mod selector;
pub mod snapshot;
pub mod status;
pub mod store;
pub mod tls;
pub mod util;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use faults::FaultRule;
pub use kubevirt::{FreezeAction, FreezeRecord};
pub use scenario::Scenario;
pub use status::ApiError;

use crate::http::{json_response, Body};
use crate::resources::Registry;
use crate::store::Store;

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("binding 127.0.0.1:{port}: {source} (pick another --port or 0 for a free one)")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("scenario {path}: {message}")]
    Scenario { path: String, message: String },
    #[error("building a kube client from {path}: {message}")]
    Client { path: PathBuf, message: String },
    #[error("{object}: {error}")]
    Api { object: String, error: ApiError },
    #[error("{object} not found or not ready: {why}")]
    NotReady { object: String, why: String },
    #[error(
        "reference schemas in {dir}: {message} (set --reference-dir / VIRTGUARD_SIM_REFERENCE_DIR)"
    )]
    Reference { dir: PathBuf, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Selects rustls' process-wide crypto provider (ring) unless one is installed already. In a
/// build where another crate also enables aws-lc-rs (a workspace build with the AWS SDK), rustls
/// cannot choose by itself and the first TLS client (kube, reqwest) would panic.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Controller timings. Defaults are small so tests run fast.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Timings {
    /// VolumeSnapshot creation → `status.creationTime` (the point-in-time copy is taken then).
    pub snapshot_creation_ms: u64,
    /// `creationTime` → `readyToUse: true`.
    pub snapshot_ready_ms: u64,
    /// VMI creation → phase Running.
    pub vmi_start_ms: u64,
    /// VirtualMachineExport creation → phase Ready.
    pub export_ready_ms: u64,
    /// Default VirtualMachineExport TTL when spec.ttlDuration is absent.
    pub export_ttl_secs: u64,
    /// Step of each VMIM phase when a migration has no scripted timeline.
    pub migration_step_ms: u64,
    /// Controller poll period.
    pub tick_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            snapshot_creation_ms: 200,
            snapshot_ready_ms: 800,
            vmi_start_ms: 200,
            export_ready_ms: 200,
            export_ttl_secs: 7200,
            migration_step_ms: 200,
            tick_ms: 25,
        }
    }
}

/// How to start a simulator.
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub scenario: Scenario,
    /// Where PVC files, snapshot copies and the kubeconfig live. None: a temporary directory
    /// removed when the [`Sim`] is dropped.
    pub state_dir: Option<PathBuf>,
    /// API port on 127.0.0.1 (0 = a free port).
    pub port: u16,
    /// Where to write the kubeconfig (default: `<state_dir>/kubeconfig`).
    pub kubeconfig_out: Option<PathBuf>,
    /// Overrides the scenario's timings.
    pub timings: Option<Timings>,
    /// The `virtguard` binary that Jobs with a virtguard image run (default: `virtguard` on PATH).
    pub virtguard_bin: Option<PathBuf>,
    /// Directory with the reference schemas (default: the copy embedded at build time).
    pub reference_dir: Option<PathBuf>,
    /// Write the [`audit`] trail of every API request to this file (JSON lines).
    pub audit_log: Option<PathBuf>,
}

/// Shared state of a running simulator.
pub struct Inner {
    pub(crate) reg: Arc<Registry>,
    pub(crate) store: Store,
    pub(crate) token: String,
    pub(crate) faults: faults::Faults,
    pub(crate) timings: Timings,
    pub(crate) state_dir: PathBuf,
    pub(crate) stop: CancellationToken,
    pub(crate) schemas: Arc<schema::Schemas>,
    pub(crate) kubevirt: kubevirt::KubeVirtState,
    /// The real launcher (scenario `launcher:`); inert without one.
    pub(crate) launcher: launcher::LauncherState,
    pub(crate) export: export::ExportState,
    pub(crate) cdi: cdi::CdiState,
    pub(crate) jobs: jobs::JobsState,
    pub(crate) api_url: OnceLock<String>,
    /// Save objects to `<state_dir>/objects.json` (only with an explicit state directory).
    pub(crate) persist: bool,
    /// The opt-in [`audit`] trail.
    pub(crate) audit: Option<audit::AuditLog>,
}

impl Inner {
    /// The API server URL (`https://127.0.0.1:PORT`).
    pub fn api_url(&self) -> &str {
        self.api_url.get().map(String::as_str).unwrap_or("")
    }

    /// The OpenAPI documents (built on first use, shared by every sim on the same schemas).
    pub(crate) fn openapi(&self) -> Arc<openapi::OpenApi> {
        openapi::OpenApi::shared(&self.schemas, &self.reg)
    }

    /// Resource id of a registry entry named in code.
    pub(crate) fn rid(&self, group: &str, plural: &str) -> resources::ResId {
        // Only called with literals that are in the static registry (resources::all).
        self.reg
            .by_plural(group, plural)
            .expect("resource named in code is in the static registry")
    }
}

/// A running simulator. Stops (servers, controllers, child processes) when dropped.
pub struct Sim {
    inner: Arc<Inner>,
    kubeconfig: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.inner.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
        // The controller loop may be aborted before its own cleanup ran.
        self.inner.launcher.destroy_all_blocking();
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

impl Sim {
    /// Start the API server, the export server and the controllers, and apply the scenario.
    pub async fn start(config: SimConfig) -> Result<Sim> {
        install_crypto_provider();
        let (tmp, state_dir) = match &config.state_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("virtguard-sim-")
                    .tempdir()
                    .map_err(io_err(
                        "creating temporary state directory",
                        Path::new("/tmp"),
                    ))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        std::fs::create_dir_all(&state_dir)
            .map_err(io_err("creating state directory", &state_dir))?;
        let timings = config
            .timings
            .clone()
            .unwrap_or_else(|| config.scenario.timings.clone());
        let reg = Arc::new(Registry::default());
        let schemas = schema::Schemas::load(config.reference_dir.as_deref())?;
        let api_tls = tls::generate("virtguard-sim apiserver")?;
        let export_tls = tls::generate("virtguard-sim export server")?;
        let listener = TcpListener::bind(("127.0.0.1", config.port))
            .await
            .map_err(|source| Error::Bind {
                port: config.port,
                source,
            })?;
        let export_listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| Error::Bind { port: 0, source })?;
        let port = listener
            .local_addr()
            .map_err(|source| Error::Bind {
                port: config.port,
                source,
            })?
            .port();
        let export_port = export_listener
            .local_addr()
            .map_err(|source| Error::Bind { port: 0, source })?
            .port();
        let token = util::random_token();
        let audit = match &config.audit_log {
            Some(path) => Some(audit::AuditLog::create(path)?),
            None => None,
        };
        let inner = Arc::new(Inner {
            store: Store::new(reg.clone()),
            reg,
            token: token.clone(),
            faults: faults::Faults::new(config.scenario.faults.clone()),
            timings,
            state_dir: state_dir.clone(),
            stop: CancellationToken::new(),
            schemas,
            kubevirt: kubevirt::KubeVirtState::default(),
            launcher: launcher::LauncherState::new(config.scenario.launcher.clone()),
            export: export::ExportState::new(export_tls.ca_pem.clone(), export_port),
            cdi: cdi::CdiState::default(),
            jobs: jobs::JobsState::new(config.virtguard_bin.clone()),
            api_url: OnceLock::new(),
            persist: config.state_dir.is_some(),
            audit,
        });
        let url = format!("https://127.0.0.1:{port}");
        let _ = inner.api_url.set(url.clone());

        let kubeconfig = config
            .kubeconfig_out
            .clone()
            .unwrap_or_else(|| state_dir.join("kubeconfig"));
        write_kubeconfig(&kubeconfig, &url, &api_tls.ca_pem, &token)?;
        let _ = inner.jobs.kubeconfig.set(kubeconfig.clone());

        let mut tasks = Vec::new();
        let h = inner.clone();
        tasks.push(http::serve(
            listener,
            api_tls.config.clone(),
            inner.stop.clone(),
            move |req| api::handle(h.clone(), req),
        ));
        let h = inner.clone();
        tasks.push(http::serve(
            export_listener,
            export_tls.config.clone(),
            inner.stop.clone(),
            move |req| export::serve(h.clone(), req),
        ));
        // A state directory with saved objects is resumed; otherwise the scenario is applied.
        if !persist::load(&inner)? {
            scenario::apply(&inner, &config.scenario)?;
        }
        tasks.extend(controllers::spawn(inner.clone()));
        Ok(Sim {
            inner,
            kubeconfig,
            _tmp: tmp,
            tasks,
        })
    }

    /// Path of the kubeconfig this simulator wrote.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        self.inner.api_url()
    }

    /// The state directory (PVC files live under `volumes/`, snapshot copies under `snapshots/`).
    pub fn state_dir(&self) -> &Path {
        &self.inner.state_dir
    }

    /// A kube client built from the written kubeconfig, exactly as a user's would be.
    pub async fn client(&self) -> Result<kube::Client> {
        install_crypto_provider();
        let err = |m: String| Error::Client {
            path: self.kubeconfig.clone(),
            message: m,
        };
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .map_err(|e| err(e.to_string()))?;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.to_string()))?;
        kube::Client::try_from(cfg).map_err(|e| err(e.to_string()))
    }

    /// Every freeze/unfreeze/safety-thaw so far, in order.
    pub fn freeze_log(&self) -> Vec<FreezeRecord> {
        self.inner.kubevirt.log()
    }

    /// Add a fault rule at run time.
    pub fn inject(&self, rule: FaultRule) {
        self.inner.faults.add(rule);
    }

    /// Remove all fault rules.
    pub fn clear_faults(&self) {
        self.inner.faults.clear();
    }

    /// Drop the watch event log, so watches from older versions get 410 Gone.
    pub fn compact(&self) {
        self.inner.store.compact();
    }

    /// The backing file of a bound PVC.
    pub fn pvc_path(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        snapshot::pvc_file(&self.inner, namespace, name)
    }

    /// The point-in-time copy behind a VolumeSnapshot (exists once `creationTime` is set).
    pub fn snapshot_path(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        snapshot::snapshot_file(&self.inner, namespace, name)
    }

    /// Read one object from the store (bypassing the API; for assertions).
    pub fn object(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = self.inner.reg.by_plural(group, plural)?;
        self.inner.store.get(res, namespace, name)
    }

    /// Exit codes and output of Jobs run as local processes.
    pub fn job_runs(&self) -> Vec<jobs::JobRun> {
        self.inner.jobs.runs()
    }

    /// Shared state, for the modules' own tests.
    pub fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// Write all objects to `<state_dir>/objects.json` now (also done every second while
    /// running with an explicit state directory). A later start with the same state
    /// directory resumes from it instead of applying the scenario.
    pub fn save_state(&self) -> Result<()> {
        persist::save(&self.inner)
    }

    /// Stop everything (also done on drop).
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }

    /// Wait until stopped by [`Sim::shutdown`] (or forever).
    pub async fn stopped(&self) {
        self.inner.stop.cancelled().await
    }
}

fn write_kubeconfig(path: &Path, url: &str, ca_pem: &str, token: &str) -> Result<()> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let kc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "virtguard-sim", "cluster": {"server": url, "certificate-authority-data": b64.encode(ca_pem)}}],
        "users": [{"name": "virtguard-sim", "user": {"token": token}}],
        "contexts": [{"name": "virtguard-sim", "context": {"cluster": "virtguard-sim", "user": "virtguard-sim", "namespace": "default"}}],
        "current-context": "virtguard-sim",
        "preferences": {},
    });
    let text = serde_yaml::to_string(&kc).map_err(|e| Error::Tls(format!("kubeconfig: {e}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("creating kubeconfig directory", dir))?;
    }
    std::fs::write(path, text).map_err(io_err("writing kubeconfig", path))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("restricting kubeconfig permissions", path))?;
    Ok(())
}

/// `/sim/v1/...` debug endpoints (token required): `freeze-log`, `jobs`.
pub(crate) fn debug_endpoint(
    inner: &Arc<Inner>,
    segs: &[&str],
) -> std::result::Result<hyper::Response<Body>, ApiError> {
    match segs {
        ["v1", "freeze-log"] => {
            let log = inner.kubevirt.log();
            Ok(json_response(
                200,
                &serde_json::to_value(log).unwrap_or_default(),
            ))
        }
        ["v1", "jobs"] => Ok(json_response(
            200,
            &serde_json::to_value(inner.jobs.runs()).unwrap_or_default(),
        )),
        _ => Err(ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
    }
}

/// Sleep helper for controllers (ms).
pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
