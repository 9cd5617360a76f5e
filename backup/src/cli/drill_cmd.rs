//! `virtguard drill`: restore drills of the selected VMs, one after another, each into the
//! sandbox namespace (the work is [`crate::engine::drill`]); prints one line (or JSON object) per
//! drill and records each result under the source VM's name in the ConfigMap
//! `virtguard-drill-status` of the source VM's namespace.
//!
//! Invariant: a drill that is interrupted (SIGTERM, Ctrl-C) deletes what it created and records
//! the failed drill (`interrupted`) before the process exits; exit status 1 when any drill failed.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kube::Client;
use virtguard_api::labels::DRILL_STATUS_CONFIGMAP;
use virtguard_api::status::{BackupResult, DrillStatusRecord};

use super::cluster_cmds::select_vms;
use super::restore_cmds::MethodArg;
use super::util::{open_repo, resolve_backup};
use super::{shutdown_signal, Config, Output};
use crate::engine::backup::{read_status_entry, write_status_entry};
use crate::engine::drill::{self, DrillHandle, DrillReport, DrillRequest};
use crate::engine::restore::{self, Method, Mode, RestoreError, RestoreRequest};
use crate::error::{Error, Result};
use crate::repo::{BackupRef, Repository};

/// `virtguard drill`: which VMs, where, how long to wait.
#[derive(Debug, Args)]
#[command(
    after_help = "Each drill restores the VM's latest backup (or --backup) as a copy \
named drill-<namespace>-<vm> into the sandbox namespace (new MACs and firmware UUID, no fixed \
IPs; with isolation, the default, a NetworkPolicy denying all traffic of the copy exists before \
it starts and its Multus networks are removed, because they usually bridge onto production \
networks a NetworkPolicy does not cover), starts it, waits for its VMI to run and its guest agent \
to connect (time to ready), reads guestosinfo and filesystemlist through KubeVirt, checks that the \
filesystems the guest had mounted at backup time are mounted again, and deletes everything it \
created, also on failure, timeout and SIGTERM. Results go to the ConfigMap virtguard-drill-status \
in each source VM's namespace (the exporter's virtguard_restore_test_* series). The sandbox \
namespace must exist. Exit status 1 when any drill failed."
)]
pub struct DrillArgs {
    /// A VM to drill, as NAMESPACE/NAME (repeatable); only its backups are needed, not the VM
    #[arg(long = "vm", value_name = "NS/NAME")]
    pub vms: Vec<String>,
    /// Drill the VMs of this namespace
    #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Only VMs matching this label selector
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// Drill the VMs of every namespace
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Drill this backup (id or namespace/vm/id) instead of the VM's latest
    #[arg(long, conflicts_with_all = ["vms", "namespace", "selector", "all_namespaces"])]
    pub backup: Option<String>,
    /// Namespace the copies are restored into (must exist)
    #[arg(long, default_value = "virtguard-drills")]
    pub sandbox: String,
    /// No deny-all NetworkPolicy, and keep the copy's Multus networks
    #[arg(long)]
    pub no_isolation: bool,
    /// Limit from starting the copy to its guest agent answering
    #[arg(long, default_value = "10m")]
    pub boot_timeout: humantime::Duration,
    /// Limit of each wait of the restore (disk ready, upload done, Job)
    #[arg(long, default_value = "30m")]
    pub restore_timeout: humantime::Duration,
    /// Data path of the restore
    #[arg(long, value_enum, default_value_t = MethodArg::CdiUpload)]
    pub method: MethodArg,
    /// Image of the restore Jobs (--method job)
    #[arg(long, default_value = concat!("ghcr.io/virtguard/virtguard:", env!("CARGO_PKG_VERSION")))]
    pub job_image: String,
    /// CDI upload proxy URL [default: cdiconfigs/config status.uploadProxyURL]
    #[arg(long)]
    pub upload_proxy_url: Option<String>,
    /// PEM file of the CA that signed the upload proxy's certificate
    #[arg(long)]
    pub upload_proxy_ca: Option<PathBuf>,
    /// Do not record the results in the virtguard-drill-status ConfigMaps
    #[arg(long)]
    pub no_status: bool,
    /// Output format: one line per drill, or a JSON array of the reports
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The backups to drill: `--backup`, or each selected VM's latest (`Err` = no backup).
async fn targets(
    client: &Client,
    repo: &Repository,
    a: &DrillArgs,
) -> Result<Vec<(String, String, Result<BackupRef, String>)>> {
    if let Some(b) = &a.backup {
        let r = resolve_backup(repo, b).await?;
        return Ok(vec![(r.namespace.clone(), r.vm.clone(), Ok(r))]);
    }
    let vms = select_vms(
        client,
        &a.vms,
        a.namespace.as_deref(),
        a.selector.as_deref(),
        a.all_namespaces,
    )
    .await?;
    let mut out = Vec::new();
    for (ns, vm) in vms {
        let r = resolve_backup(repo, &format!("{ns}/{vm}@latest"))
            .await
            .map_err(|e| format!("no backup to drill: {e}"));
        out.push((ns, vm, r));
    }
    Ok(out)
}

/// Runs `virtguard drill`.
pub async fn drill(config: &Config, a: DrillArgs) -> Result<()> {
    let repo = open_repo(config).await?;
    let mut kube_ca = Vec::new();
    let client = super::restore_cmds::kube(&mut kube_ca).await?;
    let targets = targets(&client, &repo, &a).await?;
    if targets.is_empty() {
        println!("no VMs selected");
        return Ok(());
    }
    let req = DrillRequest {
        sandbox: a.sandbox.clone(),
        isolate: !a.no_isolation,
        boot_timeout: a.boot_timeout.into(),
        kube_ca,
        restore: RestoreRequest {
            target_namespace: None,
            name: None,
            storage_class_map: Default::default(),
            mode: Mode::Copy,
            method: match a.method {
                MethodArg::CdiUpload => Method::CdiUpload,
                MethodArg::Job => Method::Job,
            },
            start: true,
            force: false,
            keep_partial: false,
            timeout: a.restore_timeout.into(),
            wait: false,
            concurrency: config.restore_concurrency,
            job_image: a.job_image.clone(),
            job_env: if a.method == MethodArg::Job {
                super::restore_cmds::job_env(config)?
            } else {
                Vec::new()
            },
            upload_proxy_url: a.upload_proxy_url.clone(),
            upload_proxy_ca: match &a.upload_proxy_ca {
                Some(p) => Some(
                    std::fs::read(p)
                        .map_err(|e| crate::repo::Error::io("reading --upload-proxy-ca", p, e))?,
                ),
                None => None,
            },
        },
    };
    let total = targets.len();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (ns, vm, target) in targets {
        let started = chrono::Utc::now().timestamp();
        let report = match target {
            Err(message) => no_backup_report(&ns, &vm, &a.sandbox, message),
            Ok(r) => {
                let handle = DrillHandle::new(&r, &a.sandbox);
                let progress = Lines(config.progress);
                tokio::select! {
                    rep = drill::run(&client, repo.clone(), &r, &req, &handle, &progress) => rep,
                    signal = shutdown_signal() => {
                        let what = match handle.cleanup(&client, Duration::from_secs(120)).await {
                            Ok(d) => format!("the drill of {ns}/{vm} deleted the {} object(s) it had created", d.len()),
                            Err(e) => format!("the drill of {ns}/{vm} could not clean up: {e}; objects labelled virtguard.io/restore-id={} remain in {}", handle.id(), a.sandbox),
                        };
                        let mut rep = no_backup_report(&ns, &vm, &a.sandbox, format!("interrupted by {signal}"));
                        rep.reason = Some("interrupted");
                        rep.backup = r.to_string();
                        if !a.no_status {
                            record(&client, &rep, started).await;
                        }
                        return Err(RestoreError::Interrupted { signal, what }.into());
                    }
                }
            }
        };
        if !a.no_status {
            record(&client, &report, started).await;
        }
        if a.output == Output::Table {
            print_line(&report);
        }
        if !report.succeeded {
            failures.push(format!(
                "{}: {} ({})",
                report.source,
                report.message.as_deref().unwrap_or(""),
                report.reason.unwrap_or("")
            ));
        }
        reports.push(report);
    }
    if a.output == Output::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::DrillsFailed { total, failures })
    }
}

fn no_backup_report(ns: &str, vm: &str, sandbox: &str, message: String) -> DrillReport {
    DrillReport {
        id: String::new(),
        source: format!("{ns}/{vm}"),
        backup: String::new(),
        sandbox: sandbox.to_string(),
        copy: String::new(),
        succeeded: false,
        reason: Some("no-backup"),
        message: Some(message),
        seconds: 0.0,
        restore_seconds: 0.0,
        time_to_ready_seconds: None,
        guest_os: None,
        expected_mounts: None,
        found_mounts: Vec::new(),
        deleted: Vec::new(),
    }
}

fn print_line(r: &DrillReport) {
    if r.succeeded {
        println!(
            "drill {}: OK — backup {} restored in {:.1}s, booted in {:.1}s ({}), mounts {}{}; {} object(s) deleted",
            r.source,
            r.backup,
            r.restore_seconds,
            r.time_to_ready_seconds.unwrap_or_default(),
            r.guest_os.as_deref().unwrap_or("guest OS not reported"),
            if r.found_mounts.is_empty() { "none".to_string() } else { r.found_mounts.join(", ") },
            match &r.expected_mounts {
                Some(_) => " (as at backup time)",
                None => " (not checked: the backup recorded no guest filesystems)",
            },
            r.deleted.len()
        );
    } else {
        println!(
            "drill {}: FAILED ({}) — {}",
            r.source,
            r.reason.unwrap_or(""),
            r.message.as_deref().unwrap_or("")
        );
    }
}

/// Writes the drill's status record (a failure to write is a warning: the drill's own result
/// stands).
async fn record(client: &Client, r: &DrillReport, started: i64) {
    let Some((ns, vm)) = r.source.split_once('/') else {
        return;
    };
    let previous: Option<DrillStatusRecord> =
        read_status_entry(client, ns, DRILL_STATUS_CONFIGMAP, vm)
            .await
            .and_then(|s| serde_json::from_str(&s).ok());
    let now = chrono::Utc::now().timestamp();
    let rec = DrillStatusRecord {
        last_attempt_timestamp: started,
        last_success_timestamp: if r.succeeded {
            Some(now)
        } else {
            previous.and_then(|p| p.last_success_timestamp)
        },
        result: if r.succeeded {
            BackupResult::Succeeded
        } else {
            BackupResult::Failed
        },
        reason: r.reason.map(str::to_string),
        backup_id: r
            .backup
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        sandbox_namespace: r.sandbox.clone(),
        duration_seconds: r.seconds,
        time_to_ready_seconds: r.time_to_ready_seconds,
    };
    let value = serde_json::to_string(&rec).unwrap_or_default();
    if let Err(e) = write_status_entry(client, ns, DRILL_STATUS_CONFIGMAP, vm, value).await {
        tracing::warn!(vm = %r.source, error = %e, "could not record the drill's status");
        eprintln!(
            "warning: could not record the drill of {} in {ns}/{DRILL_STATUS_CONFIGMAP}: {e}",
            r.source
        );
    }
}

/// Progress of a drill: plain lines on stderr (none with --quiet).
struct Lines(bool);

impl restore::Progress for Lines {
    fn volume(&self, _: &str, _: u64) -> Option<indicatif::ProgressBar> {
        None
    }
    fn line(&self, msg: &str) {
        if self.0 {
            eprintln!("{msg}");
        }
    }
}
