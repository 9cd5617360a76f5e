//! `virtguard-exporter`: parses flags into a [`Config`], builds the collector, serves HTTP until
//! SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use virtguard_exporter::allowlist::VmiLabelAllowlist;
use virtguard_exporter::cluster::{ClusterCollector, ClusterConfig};
use virtguard_exporter::http::{self, MetricsSource, TlsFiles};
use virtguard_exporter::node::vmi_labels::VmiLabelSource;
use virtguard_exporter::node::{self, NodeCollector, NodeConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// DaemonSet: libvirt stats of the VMs on this node.
    Node,
    /// Deployment: migration, snapshot, guest and backup state from the Kubernetes API.
    Cluster,
}

/// Prometheus exporter for KubeVirt VMs (virtguard).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Config {
    /// Which exporter to run.
    #[arg(
        long,
        value_enum,
        default_value = "node",
        env = "VIRTGUARD_EXPORTER_MODE"
    )]
    mode: Mode,
    /// Address to serve /metrics, /healthz and /readyz on.
    #[arg(
        long,
        default_value = "0.0.0.0:9750",
        env = "VIRTGUARD_EXPORTER_LISTEN"
    )]
    listen: String,
    /// Value of the `node` label (the DaemonSet sets it from the downward API).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node_name: String,
    /// Glob of libvirt sockets to scrape, evaluated on every scrape (repeatable; pass an empty
    /// value to disable discovery).
    #[arg(long = "libvirt-socket-glob", env = "VIRTGUARD_LIBVIRT_SOCKET_GLOB", value_delimiter = ',',
          default_value = node::DEFAULT_SOCKET_GLOB)]
    socket_globs: Vec<String>,
    /// URI for a discovered socket; `{socket}` is replaced by its path.
    #[arg(long, env = "VIRTGUARD_LIBVIRT_URI_TEMPLATE", default_value = node::DEFAULT_URI_TEMPLATE)]
    libvirt_uri_template: String,
    /// Additional libvirt URI to scrape, e.g. qemu:///system (repeatable).
    #[arg(
        long = "libvirt-uri",
        env = "VIRTGUARD_LIBVIRT_URI",
        value_delimiter = ','
    )]
    libvirt_uris: Vec<String>,
    /// Libvirt connections queried at the same time.
    #[arg(long, default_value_t = 8, env = "VIRTGUARD_MAX_CONCURRENT")]
    max_concurrent: usize,
    /// Deadline per libvirt connection and scrape (e.g. 3s, 500ms); a connection that misses
    /// it reports its VMs with virtguard_vmi_scrape_success 0.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, env = "VIRTGUARD_LIBVIRT_TIMEOUT")]
    libvirt_timeout: Duration,
    /// Job operations exported as migration progress (migration-out, save, dump, backup,
    /// snapshot); `none` disables the per-domain job stats call.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "migration-out",
        env = "VIRTGUARD_JOB_OPERATIONS"
    )]
    job_operations: Vec<String>,
    /// PEM certificate for HTTPS (with --tls-key); reloaded when the file changes.
    #[arg(long, requires = "tls_key", env = "VIRTGUARD_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, requires = "tls_cert", env = "VIRTGUARD_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// Cluster mode: watch only this namespace (default: all namespaces).
    #[arg(long, env = "VIRTGUARD_EXPORTER_NAMESPACE")]
    namespace: Option<String>,
    /// VMI labels to copy onto per-VM series as `label_<key>` (comma-separated keys, e.g.
    /// `app,team`); nothing is copied by default. In node mode this makes the exporter watch the
    /// VMIs of its node (label kubevirt.io/nodeName) and so needs a kubeconfig or ServiceAccount.
    #[arg(long, value_delimiter = ',', env = "VIRTGUARD_VMI_LABEL_ALLOWLIST")]
    vmi_label_allowlist: Vec<String>,
    /// Node mode: take the counters of SR-IOV NICs (invisible to libvirt) from the guest agent,
    /// matched to the VMI's interfaces by MAC address and labelled source="guest-agent". Like
    /// --vmi-label-allowlist, this makes node mode watch its node's VMIs (needs a kubeconfig or
    /// ServiceAccount with read access to VMIs).
    #[arg(long, env = "VIRTGUARD_GUEST_AGENT_NICS")]
    guest_agent_nics: bool,
    /// Node mode: ask every running VM's guest agent for its filesystems (guest-get-fsinfo, 1 s
    /// timeout) and export kubevirt_vmi_filesystem_capacity_bytes / _used_bytes. A guest without
    /// an agent only lacks these series. Off by default: one more agent call per VM and scrape.
    #[arg(long, env = "VIRTGUARD_GUEST_AGENT_FILESYSTEMS")]
    guest_agent_filesystems: bool,
    /// Time in-flight requests get to finish after SIGTERM.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
}

fn job_operations(names: &[String]) -> anyhow::Result<Vec<i32>> {
    let mut out = Vec::new();
    for n in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if n == "none" {
            continue;
        }
        match node::JOB_OPERATIONS.iter().find(|(name, _)| *name == n) {
            Some((_, v)) => out.push(*v),
            None => bail!(
                "unknown --job-operations value `{n}`; use one of: none, {}",
                node::JOB_OPERATIONS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    Ok(out)
}

/// A Kubernetes client from the usual places: in-cluster ServiceAccount, else `KUBECONFIG` /
/// `~/.kube/config`.
async fn kube_client() -> anyhow::Result<kube::Client> {
    // A workspace build links two rustls providers; kube's client needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube_cfg = kube::Config::infer().await.context(
        "no Kubernetes configuration: run in a pod with a ServiceAccount, or set KUBECONFIG",
    )?;
    kube::Client::try_from(kube_cfg)
        .context("building the Kubernetes client from the inferred configuration")
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let result = rt.block_on(run());
    // A libvirt call stuck on a hung daemon keeps its blocking thread forever; do not let it
    // hold up the shutdown.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cfg = Config::parse();
    let vmi_labels = VmiLabelAllowlist::parse(&cfg.vmi_label_allowlist)?;
    let source: Arc<dyn MetricsSource> = match cfg.mode {
        Mode::Node => {
            let node_cfg = NodeConfig {
                node_name: cfg.node_name.clone(),
                socket_globs: cfg
                    .socket_globs
                    .iter()
                    .filter(|g| !g.is_empty())
                    .cloned()
                    .collect(),
                uri_template: cfg.libvirt_uri_template.clone(),
                uris: cfg.libvirt_uris.clone(),
                max_concurrent: cfg.max_concurrent,
                timeout: cfg.libvirt_timeout,
                job_operations: job_operations(&cfg.job_operations)?,
                guest_filesystems: cfg.guest_agent_filesystems,
                hook: None,
            };
            let mut collector = NodeCollector::new(node_cfg)?;
            if vmi_labels.is_empty() && !cfg.guest_agent_nics {
                Arc::new(collector)
            } else {
                // Only with allow-listed labels or guest-agent NICs does node mode talk to the
                // API (ARCHITECTURE.md §2): one reflector over this node's VMIs.
                let client = kube_client().await?;
                let src = VmiLabelSource::start(client, vmi_labels, &cfg.node_name);
                if cfg.guest_agent_nics {
                    collector = collector.with_guest_nics(src.nic_source());
                }
                Arc::new(collector.with_vmi_labels(src))
            }
        }
        Mode::Cluster => {
            let client = kube_client().await?;
            let cluster_cfg = ClusterConfig {
                namespace: cfg.namespace.clone().filter(|n| !n.is_empty()),
                vmi_labels,
            };
            tracing::info!(namespace = ?cluster_cfg.namespace, "starting reflectors");
            Arc::new(ClusterCollector::start(client, cluster_cfg))
        }
    };
    let tls = match (cfg.tls_cert, cfg.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let listener = http::bind(&cfg.listen).await?;
    let addr = listener.local_addr().context("reading the bound address")?;
    tracing::info!(%addr, mode = ?cfg.mode, tls = tls.is_some(), "serving /metrics");
    http::serve(listener, source, tls, shutdown_signal(), cfg.shutdown_grace).await?;
    Ok(())
}
