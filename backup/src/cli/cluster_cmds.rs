//! Cluster-facing commands: `virtguard backup` (select VMs, run the engine on each with bounded
//! parallelism, summarise) and `virtguard cleanup` (delete leftovers of killed runs).

use std::sync::Arc;

use clap::Args;
use futures::stream::{self, StreamExt};
use kube::api::ListParams;
use kube::{Api, Client};
use virtguard_api::{labels, VirtualMachine};

use super::util::{client, human};
use super::{shutdown_signal, Config};
use crate::cluster;
use crate::engine::backup::backup_vm;
use crate::engine::config::BackupConfig;
use crate::error::{Error, Result, VmFailure};
use crate::repo::Repository;

/// `virtguard backup`: which VMs, and how.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A VM to back up, as NAMESPACE/NAME (repeatable). Named VMs are backed up even when
    /// labelled virtguard.io/backup=false.
    #[arg(long = "vm", value_name = "NS/NAME")]
    pub vms: Vec<String>,
    /// Back up the VMs of this namespace
    #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Only VMs matching this label selector (e.g. `tier=prod,backup!=false`)
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Back up the VMs of every namespace
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// VMs backed up at the same time
    #[arg(long, default_value_t = 2)]
    pub parallel: usize,
    /// KubeVirt thaws a frozen guest by itself after this (safety net)
    #[arg(long, default_value = "5m")]
    pub unfreeze_timeout: humantime::Duration,
    /// Longest wait for a snapshot's creationTime (the guest is frozen meanwhile)
    #[arg(long, default_value = "1m")]
    pub snapshot_created_timeout: humantime::Duration,
    /// Longest wait for a snapshot to become readyToUse
    #[arg(long, default_value = "30m")]
    pub snapshot_ready_timeout: humantime::Duration,
    /// Longest wait for a VirtualMachineExport to become Ready
    #[arg(long, default_value = "10m")]
    pub export_timeout: humantime::Duration,
    /// VolumeSnapshotClass to use for the PVCs of its CSI driver instead of the driver's
    /// default class (repeatable, one per driver; needed when a driver has several classes and
    /// none is marked default)
    #[arg(long = "snapshot-class", value_name = "NAME")]
    pub snapshot_classes: Vec<String>,
    /// Where the data moves: `inline` backs up in this process; `jobs` creates one Kubernetes
    /// Job per VM (at most --parallel at once) that runs `virtguard backup --vm NS/NAME`, waits
    /// for them and summarises
    #[arg(long, value_enum, default_value_t = Dispatch::Inline)]
    pub dispatch: Dispatch,
    /// With --dispatch jobs: this process's own Job, whose pod template (image, service account,
    /// Secret env, volumes) the per-VM Jobs copy and which owns them. In a CronJob set it from
    /// the downward API label batch.kubernetes.io/job-name
    #[arg(long, env = "VIRTGUARD_OWNER_JOB")]
    pub owner_job: Option<String>,
    /// With --dispatch jobs: namespace of the per-VM Jobs [default: $POD_NAMESPACE, else the
    /// kubeconfig's namespace]
    #[arg(long, env = "POD_NAMESPACE")]
    pub job_namespace: Option<String>,
    /// With --dispatch jobs and no owner Job: the image of the per-VM Jobs
    #[arg(long)]
    pub job_image: Option<String>,
    /// With --dispatch jobs and no owner Job: their service account
    #[arg(long)]
    pub job_service_account: Option<String>,
    /// With --dispatch jobs and no owner Job: a Secret whose keys become their environment
    /// (repository credentials, VIRTGUARD_KEY)
    #[arg(long)]
    pub job_env_secret: Option<String>,
    /// With --dispatch jobs: a per-VM Job running longer than this fails
    #[arg(long, default_value = "12h")]
    pub job_deadline: humantime::Duration,
}

/// Where `virtguard backup` moves the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dispatch {
    /// In this process
    Inline,
    /// One Kubernetes Job per VM
    Jobs,
}

/// `virtguard cleanup`: what to delete.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Only objects of this backup run (default: of every run)
    #[arg(long)]
    pub backup_id: Option<String>,
    /// Only in this namespace (default: all namespaces)
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
}

/// The VMs a backup run covers, as (namespace, name), sorted.
async fn select(client: &Client, a: &BackupArgs) -> Result<Vec<(String, String)>> {
    select_vms(
        client,
        &a.vms,
        a.namespace.as_deref(),
        a.selector.as_deref(),
        a.all_namespaces,
    )
    .await
}

/// The VMs named by `--vm NS/NAME` (repeatable) plus those of `--namespace` / `--all-namespaces`
/// matching `--selector`, without the ones labelled `virtguard.io/backup=false` (unless named),
/// as (namespace, name), sorted.
pub(super) async fn select_vms(
    client: &Client,
    vms: &[String],
    namespace: Option<&str>,
    selector: Option<&str>,
    all_namespaces: bool,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in vms {
        match v.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                out.push((ns.to_string(), name.to_string()))
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "--vm `{v}`: expected NAMESPACE/NAME"
                )))
            }
        }
    }
    if namespace.is_some() || all_namespaces || selector.is_some() {
        if namespace.is_none() && !all_namespaces {
            return Err(Error::Invalid(
                "--selector needs --namespace or --all-namespaces".into(),
            ));
        }
        let api: Api<VirtualMachine> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let mut lp = ListParams::default();
        if let Some(sel) = selector {
            lp = lp.labels(sel);
        }
        let vms = api.list(&lp).await.map_err(cluster::ClusterError::api(
            "listing",
            "VirtualMachine",
            "(selection)",
        ))?;
        for vm in vms.items {
            let opted_out = vm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::BACKUP_OPT_OUT))
                .is_some_and(|v| v == "false");
            let (Some(ns), Some(name)) = (vm.metadata.namespace, vm.metadata.name) else {
                continue;
            };
            if opted_out {
                eprintln!(
                    "skipping {ns}/{name}: labelled {}=false",
                    labels::BACKUP_OPT_OUT
                );
                continue;
            }
            out.push((ns, name));
        }
    }
    if vms.is_empty() && namespace.is_none() && !all_namespaces {
        return Err(Error::Invalid(
            "nothing selected: give --vm NS/NAME, --namespace NS or --all-namespaces".into(),
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Runs `virtguard backup`.
pub async fn backup(config: &Config, repo: Arc<Repository>, a: BackupArgs) -> Result<()> {
    let client = client().await?;
    let vms = select(&client, &a).await?;
    if vms.is_empty() {
        println!("no VMs selected");
        return Ok(());
    }
    if a.dispatch == Dispatch::Jobs {
        return dispatch_jobs(config, &client, vms, &a).await;
    }
    let cfg = BackupConfig {
        unfreeze_timeout: a.unfreeze_timeout.into(),
        snapshot_created_timeout: a.snapshot_created_timeout.into(),
        snapshot_ready_timeout: a.snapshot_ready_timeout.into(),
        export_timeout: a.export_timeout.into(),
        concurrency: config.concurrency,
        snapshot_classes: a.snapshot_classes.clone(),
        read_limit: config.limits.read.clone(),
        ..Default::default()
    };
    let total = vms.len();
    let work = stream::iter(vms)
        .map(|(ns, name)| {
            let client = client.clone();
            let repo = repo.clone();
            let cfg = cfg.clone();
            async move {
                let r = backup_vm(&client, repo, &ns, &name, &cfg).await;
                (format!("{ns}/{name}"), r)
            }
        })
        .buffer_unordered(a.parallel.max(1))
        .collect::<Vec<_>>();
    let results = tokio::select! {
        results = work => results,
        signal = shutdown_signal() => {
            // The backup futures are dropped here; frozen guests are thawed and the runs'
            // objects deleted before the process exits.
            eprintln!("{signal}: stopping; thawing frozen guests and deleting this run's objects");
            for vmi in cluster::freeze::thaw_all().await {
                eprintln!("thawed {vmi}");
            }
            let deleted = crate::engine::backup::cleanup_in_flight(&client).await;
            eprintln!("deleted {deleted} temporary object(s)");
            return Err(Error::Interrupted { signal });
        }
    };
    let mut failures = Vec::new();
    println!(
        "{:<40} {:<8} {:<37} {:>9} {:>9} {:>12}",
        "VM", "RESULT", "CONSISTENCY", "FREEZE", "DURATION", "STORED"
    );
    for (vm, r) in results {
        match r {
            Ok(rep) => println!(
                "{:<40} {:<8} {:<37} {:>8.2}s {:>8.1}s {:>12}",
                vm,
                "ok",
                rep.consistency.to_string(),
                rep.freeze.as_secs_f64(),
                rep.duration.as_secs_f64(),
                human(rep.bytes_stored)
            ),
            Err(e) => {
                println!("{vm:<40} {:<8} {}", "FAILED", e.reason());
                failures.push(VmFailure::Engine(e));
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::BackupsFailed { total, failures })
    }
}

/// `virtguard backup --dispatch jobs`: one Job per VM, then the summary.
async fn dispatch_jobs(
    config: &Config,
    client: &Client,
    vms: Vec<(String, String)>,
    a: &BackupArgs,
) -> Result<()> {
    use crate::engine::dispatch::{self, DispatchConfig};
    let namespace = a
        .job_namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| client.default_namespace().to_string());
    // Locations only: credentials reach the children through the Secret in their template.
    let mut child_args = vec![
        format!("--repo={}", config.repo),
        format!("--unfreeze-timeout={}", a.unfreeze_timeout),
        format!("--snapshot-created-timeout={}", a.snapshot_created_timeout),
        format!("--snapshot-ready-timeout={}", a.snapshot_ready_timeout),
        format!("--export-timeout={}", a.export_timeout),
    ];
    for c in &a.snapshot_classes {
        child_args.push(format!("--snapshot-class={c}"));
    }
    if let Some(e) = &config.s3_endpoint {
        child_args.push(format!("--s3-endpoint={e}"));
    }
    if let Some(r) = &config.s3_region {
        child_args.push(format!("--s3-region={r}"));
    }
    if config.s3_path_style {
        child_args.push("--s3-path-style".into());
    }
    if config.s3_sign_payload {
        child_args.push("--s3-sign-payload".into());
    }
    child_args.extend(config.limits.args());
    let cfg = DispatchConfig {
        namespace: namespace.clone(),
        parallel: a.parallel.max(1),
        owner_job: a.owner_job.clone().filter(|n| !n.is_empty()),
        image: a.job_image.clone(),
        service_account: a.job_service_account.clone(),
        env_secret: a.job_env_secret.clone(),
        child_args,
        job_deadline: a.job_deadline.into(),
    };
    if cfg.owner_job.is_none() && cfg.image.is_none() {
        return Err(dispatch::DispatchError::NoTemplate.into());
    }
    let run = crate::repo::format::BackupId::new_now()
        .as_str()
        .to_string();
    let total = vms.len();
    eprintln!("dispatching {total} VM(s) as Jobs in namespace {namespace} (run {run}, at most {} at once)", cfg.parallel);
    let results = tokio::select! {
        r = dispatch::dispatch(client, vms, &cfg, &run) => r?,
        signal = shutdown_signal() => {
            eprintln!("{signal}: stopping; deleting the unfinished per-VM Jobs (their pods thaw and clean up)");
            match dispatch::cancel(client, &namespace, &run).await {
                Ok(deleted) => for d in deleted { eprintln!("deleted Job {namespace}/{d}") },
                Err(e) => eprintln!("{e}; delete Jobs labelled {}={run} by hand", dispatch::DISPATCH_RUN),
            }
            return Err(Error::Interrupted { signal });
        }
    };
    let mut failures = Vec::new();
    println!(
        "{:<40} {:<8} {:<37} {:>9} {:>9} {:>12}  JOB",
        "VM", "RESULT", "CONSISTENCY", "FREEZE", "DURATION", "STORED"
    );
    for o in &results {
        let st = o.status.as_ref();
        let consistency = st
            .and_then(|s| s.consistency)
            .map(|c| c.to_string())
            .unwrap_or_default();
        match &o.result {
            Ok(()) => println!(
                "{:<40} {:<8} {:<37} {:>8.2}s {:>8.1}s {:>12}  {}",
                o.vm,
                "ok",
                consistency,
                st.map_or(0.0, |s| s.freeze_seconds),
                st.map_or(0.0, |s| s.duration_seconds),
                human(st.map_or(0, |s| s.bytes_stored)),
                o.job
            ),
            Err(e) => {
                let reason = st
                    .and_then(|s| s.reason.clone())
                    .unwrap_or_else(|| "job".into());
                println!(
                    "{:<40} {:<8} {:<37} {:>9} {:>9} {:>12}  {}",
                    o.vm, "FAILED", reason, "", "", "", o.job
                );
                failures.push(VmFailure::Job {
                    vm: o.vm.clone(),
                    namespace: namespace.clone(),
                    job: o.job.clone(),
                    message: e.clone(),
                });
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::BackupsFailed { total, failures })
    }
}

/// Runs `virtguard cleanup`.
pub async fn cleanup(a: CleanupArgs) -> Result<()> {
    let client = client().await?;
    let report =
        cluster::cleanup::cleanup(&client, a.namespace.as_deref(), a.backup_id.as_deref()).await?;
    if report.deleted.is_empty() {
        println!("nothing to clean up");
    }
    for d in &report.deleted {
        println!("deleted {d}");
    }
    Ok(())
}
