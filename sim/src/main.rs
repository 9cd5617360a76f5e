//! `virtguard-sim`: run a simulated cluster until Ctrl-C.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use virtguard_sim::{Scenario, Sim, SimConfig};

const ABOUT: &str = "A simulated Kubernetes cluster with KubeVirt, CDI and CSI snapshots, for virtguard's tests and quickstart.";

const LONG_ABOUT: &str = "\
A simulated Kubernetes cluster with KubeVirt, CDI and CSI snapshots, for virtguard's tests and
quickstart. It is a test double, not a cluster.

Simulated: an HTTPS API server on 127.0.0.1 (generated CA, bearer token, kubeconfig written
out) with the REST semantics clients rely on (GET/LIST/WATCH/POST/PUT/PATCH/DELETE,
resourceVersion conflicts, label/field selectors, pagination, finalizers, owner-reference
garbage collection, /status subresources, Status errors, discovery) and validation against
the KubeVirt/CDI/CSI snapshot reference schemas; controllers for VMs/VMIs (freeze/unfreeze
with KubeVirt's status codes and the unfreezeTimeout safety thaw), VMIM phase timelines, PVC
provisioning into sparse local files, the CSI snapshotter (point-in-time copies) and group
snapshotter (VolumeGroupSnapshots: all member PVCs at one instant), the
VirtualMachineExport server (token, Range, gzip, manifests), CDI DataVolume upload and the
upload proxy, and Jobs with a virtguard image run as local processes.

Not simulated: no scheduler, no kubelet, no Pods for VMs or Jobs, no container images, no
networking between VMs, no RBAC or admission beyond the single bearer token, no CronJob
scheduling, no server-side-apply field ownership, no CRD registration (the resource list is
fixed), no conversion between API versions beyond renaming apiVersion, no pre-provisioned
VolumeGroupSnapshots. Real guest freezes only with --scenario vms[].guestAgentSocket.";

/// Command line.
#[derive(Debug, Parser)]
#[command(name = "virtguard-sim", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// Scenario file (YAML): namespaces, storage classes, VMs and disks, faults, timings.
    #[arg(long, env = "VIRTGUARD_SIM_SCENARIO")]
    scenario: Option<PathBuf>,
    /// State directory for PVC files, snapshot copies, the kubeconfig and the saved objects
    /// (objects.json; a restart on the same directory resumes from it instead of applying the
    /// scenario). Default: a temporary directory removed at exit.
    #[arg(long, env = "VIRTGUARD_SIM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// API server port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0, env = "VIRTGUARD_SIM_PORT")]
    port: u16,
    /// Where to write the kubeconfig (default: <state-dir>/kubeconfig).
    #[arg(long, env = "VIRTGUARD_SIM_KUBECONFIG_OUT")]
    kubeconfig_out: Option<PathBuf>,
    /// The virtguard binary that Jobs with a virtguard image run (default: `virtguard` on PATH).
    #[arg(long, env = "VIRTGUARD_SIM_VIRTGUARD_BIN")]
    virtguard_bin: Option<PathBuf>,
    /// Directory with kubevirt-openapi.json, cdi-openapi.json and snapshot-crds/ (default: the
    /// copy built into this binary).
    #[arg(long, env = "VIRTGUARD_SIM_REFERENCE_DIR")]
    reference_dir: Option<PathBuf>,
    /// Write an audit trail of every API request (verb, API group, resource, subresource,
    /// namespace, name; one JSON line each) to this file, to check RBAC rules against.
    #[arg(long, env = "VIRTGUARD_SIM_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let scenario = match &cli.scenario {
        Some(p) => {
            Scenario::from_file(p).with_context(|| format!("loading scenario {}", p.display()))?
        }
        None => Scenario::default(),
    };
    let keep_state = cli.state_dir.is_some();
    let sim = Sim::start(SimConfig {
        scenario,
        state_dir: cli.state_dir,
        port: cli.port,
        kubeconfig_out: cli.kubeconfig_out,
        timings: None,
        virtguard_bin: cli.virtguard_bin,
        reference_dir: cli.reference_dir,
        audit_log: cli.audit_log,
    })
    .await
    .context("starting the simulated cluster")?;
    println!("{}", sim.kubeconfig_path().display());
    eprintln!(
        "virtguard-sim: API {} ; state {}{} ; export KUBECONFIG={} ; Ctrl-C to stop",
        sim.url(),
        sim.state_dir().display(),
        if keep_state { "" } else { " (temporary)" },
        sim.kubeconfig_path().display()
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = sim.stopped() => {}
    }
    if keep_state {
        sim.save_state().context("saving the state directory")?;
    }
    sim.shutdown();
    Ok(())
}
