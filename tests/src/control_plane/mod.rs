//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! built from source (`scripts/control-plane/`, pinned in its `versions.env`), on 127.0.0.1.
//!
//! [`ControlPlane::start`] gives every instance its own temporary directory (etcd data, keys,
//! tokens, kubeconfigs, one log per process) and free ports, and returns once the cluster is
//! usable: `/readyz` answers `ok`, every CRD of [`crds`] is `Established`, and the
//! controller-manager has created the `default` ServiceAccount of namespace `default` (so its
//! controllers run). It is set up as a kubeadm cluster is, minus the node side:
//! - etcd with `--unsafe-no-fsync` (the data dies with the test);
//! - kube-apiserver with a fresh CA and serving certificate, service-account signing keys,
//!   bearer tokens from a static token file, `--authorization-mode=Node,RBAC`, the default
//!   admission plugins plus `NodeRestriction`, and no `kubernetes` endpoint reconciler (its
//!   address would be loopback, which Endpoints refuse);
//! - kube-controller-manager running [`CONTROLLERS`] with a service account per controller
//!   (`--use-service-account-credentials`), as on a real cluster. No scheduler and no kubelet:
//!   Pods stay `Pending`.
//!
//! A missing binary is a [`PeerError`] saying to run `scripts/install-deps.sh` (tests use
//! [`require_peer!`](crate::require_peer)). Invariant: dropping the handle — also while a test
//! panics — stops the three processes (SIGTERM, then SIGKILL after [`STOP_GRACE`]), in reverse
//! start order, before their directory is deleted. Secrets stay in that directory's files.

pub mod crds;
pub mod pki;
pub mod snapshotter;
pub mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;
use tempfile::TempDir;

use crate::{free_port, wait_for_port, workspace_root, PeerError};
use pki::{write_private, Pki, SERVICE_RANGE};

/// The controllers kube-controller-manager runs (its `--controllers` names).
pub const CONTROLLERS: &[&str] = &[
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "ttl-after-finished-controller",
    // Publishes `kube-root-ca.crt` into every namespace, which a Pod's service-account token
    // volume needs.
    "root-ca-certificate-publisher-controller",
    // Fills aggregated ClusterRoles (admin, edit, view and what aggregates into them), so RBAC
    // answers as on a real cluster.
    "clusterrole-aggregation-controller",
];

/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long start-up may take before it is reported as failed.
const START_TIMEOUT: Duration = Duration::from_secs(90);

const VERSIONS: &str = include_str!("../../../scripts/control-plane/versions.env");

/// A value of `scripts/control-plane/versions.env` (`KUBERNETES_VERSION`, `ETCD_VERSION`).
pub fn pinned(key: &str) -> Option<&'static str> {
    VERSIONS.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// The pinned Kubernetes release (`v1.37.2`).
pub fn kubernetes_version() -> &'static str {
    pinned("KUBERNETES_VERSION").unwrap_or("unknown")
}

/// Where `scripts/control-plane/build.sh` puts the binaries: `$VIRTGUARD_CONTROL_PLANE_BIN`,
/// else `${VIRTGUARD_CONTROL_PLANE_CACHE:-~/.cache/virtguard/control-plane}/<version>/bin`.
pub fn binary_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIRTGUARD_CONTROL_PLANE_BIN") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("VIRTGUARD_CONTROL_PLANE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            Path::new(&home).join(".cache/virtguard/control-plane")
        });
    cache.join(kubernetes_version()).join("bin")
}

fn binary(name: &str) -> Result<PathBuf, PeerError> {
    binary_in(&binary_dir(), name)
}

fn binary_in(dir: &Path, name: &str) -> Result<PathBuf, PeerError> {
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    Err(PeerError::Io {
        what: format!(
            "{name} of the {} control plane is not built (looked for {}): run \
             scripts/install-deps.sh, which builds it from source once \
             (scripts/control-plane/build.sh)",
            kubernetes_version(),
            path.display()
        ),
        source: std::io::ErrorKind::NotFound.into(),
    })
}

/// One control-plane process; stopped on drop.
#[derive(Debug)]
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, dir: &Path, args: &[String]) -> Result<Self, PeerError> {
        let io = |what: String| move |source| PeerError::Io { what, source };
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io(format!("opening {}", log.display())))?;
        let child = Command::new(binary(name)?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("starting {name}")))?;
        Ok(Self { name, child, log })
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Its log's last lines, for an error message.
    fn tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running control plane. See the module documentation.
#[derive(Debug)]
pub struct ControlPlane {
    /// In start order; stopped in reverse.
    processes: Vec<Process>,
    pki: Pki,
    url: String,
    kubeconfig: PathBuf,
    /// Time since the start at which each start-up step finished.
    milestones: Vec<(&'static str, Duration)>,
    dir: TempDir,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager and installs the CRDs.
    pub async fn start() -> Result<Self, PeerError> {
        let started = Instant::now();
        for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            binary(name)?;
        }
        virtguard_sim::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("virtguard-control-plane-")
            .tempdir()
            .map_err(|source| PeerError::Io {
                what: "creating the control plane's directory".into(),
                source,
            })?;
        let pki = Pki::create(dir.path())?;
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.path().join("kubeconfig");
        let mut cp = Self {
            processes: Vec::new(),
            url,
            kubeconfig,
            milestones: Vec::new(),
            pki,
            dir,
        };
        cp.write_kubeconfig_to(&cp.kubeconfig, "virtguard-admin", cp.pki.admin_token())?;

        let etcd_port = cp.start_etcd()?;
        cp.start_apiserver(port, etcd_port)?;
        let client = cp.client().await?;
        cp.wait("/readyz to answer ok", || {
            let client = client.clone();
            async move {
                let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
                    return false;
                };
                client.request_text(req).await.is_ok_and(|t| t == "ok")
            }
        })
        .await?;
        cp.milestones
            .push(("kube-apiserver ready", started.elapsed()));
        cp.start_controller_manager()?;
        let generated =
            crds::generate(&workspace_root().join("reference")).map_err(|e| PeerError::Io {
                what: "generating the CRDs from reference/".into(),
                source: std::io::Error::other(e),
            })?;
        cp.install_crds(generated.crds).await?;
        cp.milestones.push(("CRDs established", started.elapsed()));
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        cp.wait(
            "kube-controller-manager to create ServiceAccount default/default",
            || {
                let accounts = accounts.clone();
                async move { matches!(accounts.get_opt("default").await, Ok(Some(_))) }
            },
        )
        .await?;
        cp.milestones
            .push(("kube-controller-manager running", started.elapsed()));
        Ok(cp)
    }

    fn start_etcd(&mut self) -> Result<u16, PeerError> {
        let (client, peer) = (free_port(), free_port());
        let data = self.dir.path().join("etcd");
        let args = [
            "--name=virtguard".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=virtguard=http://127.0.0.1:{peer}"),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        self.processes
            .push(Process::spawn("etcd", self.dir.path(), &args)?);
        if !wait_for_port(client, START_TIMEOUT) {
            return Err(self.failure("etcd to listen"));
        }
        Ok(client)
    }

    fn start_apiserver(&mut self, port: u16, etcd_port: u16) -> Result<(), PeerError> {
        let p = &self.pki;
        let args = [
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", self.dir.path().join("certs").display()),
            format!("--tls-cert-file={}", p.serving_cert.display()),
            format!("--tls-private-key-file={}", p.serving_key.display()),
            format!("--client-ca-file={}", p.ca_cert.display()),
            format!("--token-auth-file={}", p.token_file.display()),
            "--authorization-mode=Node,RBAC".into(),
            // kubeadm's set: the default plugins plus NodeRestriction.
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            format!("--service-cluster-ip-range={SERVICE_RANGE}"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p.sa_public.display()),
            format!(
                "--service-account-signing-key-file={}",
                p.sa_private.display()
            ),
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ];
        self.processes
            .push(Process::spawn("kube-apiserver", self.dir.path(), &args)?);
        Ok(())
    }

    fn start_controller_manager(&mut self) -> Result<(), PeerError> {
        let kubeconfig = self.dir.path().join("controller-manager.kubeconfig");
        self.write_kubeconfig_to(
            &kubeconfig,
            "system:kube-controller-manager",
            self.pki.controller_manager_token(),
        )?;
        let args = [
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--controllers={}", CONTROLLERS.join(",")),
            "--use-service-account-credentials=true".into(),
            format!(
                "--service-account-private-key-file={}",
                self.pki.sa_private.display()
            ),
            format!("--root-ca-file={}", self.pki.ca_cert.display()),
            "--leader-elect=false".into(),
            "--secure-port=0".into(),
        ];
        self.processes.push(Process::spawn(
            "kube-controller-manager",
            self.dir.path(),
            &args,
        )?);
        Ok(())
    }

    /// Creates these CustomResourceDefinitions and waits until each is `Established` (start
    /// installs [`crds::generate`]'s; tests add others, e.g. [`crds::prometheus_operator`]).
    pub async fn install_crds(&self, crds: Vec<serde_json::Value>) -> Result<(), PeerError> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let mut names = Vec::new();
        for crd in crds {
            let name = crd["metadata"]["name"].as_str().unwrap_or("?").to_string();
            let fail = |message: String| PeerError::Http {
                url: format!(
                    "{}/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                    self.url
                ),
                message: format!("creating CRD {name}: {message}"),
            };
            let typed: CustomResourceDefinition =
                serde_json::from_value(crd).map_err(|e| fail(e.to_string()))?;
            api.create(&PostParams::default(), &typed)
                .await
                .map_err(|e| fail(e.to_string()))?;
            names.push(name);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for name in names {
            let established = await_condition(api.clone(), &name, conditions::is_crd_established());
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, established).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(self.timeout(&format!("CRD {name}: {e}"))),
                Err(_) => return Err(self.timeout(&format!("CRD {name} to be Established"))),
            }
        }
        Ok(())
    }

    /// Polls `ready` until it holds, failing early (with its log) when a process exits.
    async fn wait<F, Fut>(&mut self, what: &str, mut ready: F) -> Result<(), PeerError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if ready().await {
                return Ok(());
            }
            if self.processes.iter_mut().any(|p| p.exited().is_some()) {
                return Err(self.failure(what));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(self.timeout(what))
    }

    /// A process exited (or never got ready): its status and the tail of its log.
    fn failure(&mut self, what: &str) -> PeerError {
        let culprit = self
            .processes
            .iter_mut()
            .find_map(|p| p.exited().map(|s| (p.name, s)));
        let (name, status) = match culprit {
            Some((name, status)) => (name, format!(" ({name} exited: {status})")),
            None => (
                self.processes.last().map_or("etcd", |p| p.name),
                String::new(),
            ),
        };
        let log_tail = self
            .processes
            .iter()
            .find(|p| p.name == name)
            .map(Process::tail)
            .unwrap_or_default();
        PeerError::NotReady {
            name: format!("control plane waiting for {what}{status}"),
            waited: START_TIMEOUT,
            log_tail,
        }
    }

    fn timeout(&self, what: &str) -> PeerError {
        let logs: Vec<String> = self
            .processes
            .iter()
            .map(|p| format!("--- {}\n{}", p.name, p.tail()))
            .collect();
        PeerError::Timeout {
            what: what.to_string(),
            waited: START_TIMEOUT,
            last: logs.join("\n"),
        }
    }

    /// Writes a kubeconfig for this cluster authenticating with `token`; returns its path.
    /// Tests use it for a ServiceAccount's token (from the TokenRequest API).
    pub fn write_kubeconfig(&self, user: &str, token: &str) -> Result<PathBuf, PeerError> {
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.path().join(format!("{safe}.kubeconfig"));
        self.write_kubeconfig_to(&path, user, token)?;
        Ok(path)
    }

    fn write_kubeconfig_to(&self, path: &Path, user: &str, token: &str) -> Result<(), PeerError> {
        let doc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "virtguard-e2e", "cluster": {
                "server": self.url,
                "certificate-authority": self.pki.ca_cert,
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "virtguard-e2e", "user": user}}],
            "current-context": user,
        });
        let text = serde_yaml::to_string(&doc).map_err(|e| PeerError::Io {
            what: format!("rendering {}", path.display()),
            source: std::io::Error::other(e),
        })?;
        write_private(path, &text)
    }

    /// A kube client as the admin (`system:masters`), from the written kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, PeerError> {
        client_from(&self.kubeconfig).await
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin kubeconfig (for kubectl, or the binaries under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Wall time [`ControlPlane::start`] took, CRDs included.
    pub fn started_in(&self) -> Duration {
        self.milestones.last().map_or(Duration::ZERO, |m| m.1)
    }

    /// When each start-up step finished, counted from the start (for figures).
    pub fn milestones(&self) -> &[(&'static str, Duration)] {
        &self.milestones
    }

    /// The directory holding each process's `<name>.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Process ids of etcd, kube-apiserver and kube-controller-manager, in start order.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name, p.child.id()))
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop();
        }
    }
}

/// A kube client from a kubeconfig file, exactly as a user's would be.
pub async fn client_from(kubeconfig: &Path) -> Result<kube::Client, PeerError> {
    let fail = |message: String| PeerError::Http {
        url: kubeconfig.display().to_string(),
        message: format!("building a client from this kubeconfig: {message}"),
    };
    virtguard_sim::install_crypto_provider();
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| fail(e.to_string()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    kube::Client::try_from(cfg).map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_versions_are_read_from_versions_env() {
        assert!(kubernetes_version().starts_with("v1."), "{VERSIONS}");
        assert!(pinned("ETCD_VERSION").is_some_and(|v| v.starts_with("v3.")));
        assert_eq!(pinned("NO_SUCH_KEY"), None);
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let empty = tempfile::tempdir().expect("temp dir");
        let err = binary_in(empty.path(), "kube-apiserver")
            .expect_err("nothing is built there")
            .to_string();
        assert!(err.contains("run scripts/install-deps.sh"), "{err}");
        assert!(err.contains(&empty.path().display().to_string()), "{err}");
    }
}
