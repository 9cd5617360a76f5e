//! Cluster-facing commands: `virtguard backup` (select VMs, run the engine on each with bounded
//! parallelism, summarise) and `virtguard cleanup` (delete leftovers of killed runs).

use std::sync::Arc;

use clap::Args;
use futures::stream::{self, StreamExt};
use kube::api::ListParams;
use kube::{Api, Client};
use virtguard_api::{labels, VirtualMachine};

use super::Config;
use crate::cluster;
use crate::engine::backup::{backup_vm, BackupConfig};
use crate::error::{Error, Result};
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

async fn client() -> Result<Client> {
    cluster::install_crypto_provider();
    Client::try_default()
        .await
        .map_err(|e| Error::KubeConfig(e.to_string()))
}

/// The VMs a backup run covers, as (namespace, name), sorted.
async fn select(client: &Client, a: &BackupArgs) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for v in &a.vms {
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
    if a.namespace.is_some() || a.all_namespaces || a.selector.is_some() {
        if a.namespace.is_none() && !a.all_namespaces {
            return Err(Error::Invalid(
                "--selector needs --namespace or --all-namespaces".into(),
            ));
        }
        let api: Api<VirtualMachine> = match &a.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let mut lp = ListParams::default();
        if let Some(sel) = &a.selector {
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
    if a.vms.is_empty() && a.namespace.is_none() && !a.all_namespaces {
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
    let cfg = BackupConfig {
        unfreeze_timeout: a.unfreeze_timeout.into(),
        snapshot_created_timeout: a.snapshot_created_timeout.into(),
        snapshot_ready_timeout: a.snapshot_ready_timeout.into(),
        export_timeout: a.export_timeout.into(),
        concurrency: config.concurrency,
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
    let mut failed = Vec::new();
    println!(
        "{:<40} {:<8} {:<24} {:>9} {:>9} {:>12}",
        "VM", "RESULT", "CONSISTENCY", "FREEZE", "DURATION", "STORED"
    );
    for (vm, r) in &results {
        match r {
            Ok(rep) => println!(
                "{:<40} {:<8} {:<24} {:>8.2}s {:>8.1}s {:>12}",
                vm,
                "ok",
                serde_json::to_value(rep.consistency)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                rep.freeze.as_secs_f64(),
                rep.duration.as_secs_f64(),
                indicatif::HumanBytes(rep.bytes_stored)
            ),
            Err(e) => {
                println!("{vm:<40} {:<8} {}", "FAILED", e.reason());
                failed.push(format!("{e}"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::BackupsFailed {
            failed: failed.len(),
            total,
            details: failed.join("\n  "),
        })
    }
}

/// Resolves on SIGTERM (Kubernetes stopping the Job's pod) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        // Without signal handlers there is nothing to wait for.
        _ => std::future::pending().await,
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
