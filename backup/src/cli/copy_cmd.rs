//! `virtguard copy`: committed backups of the repository (`--repo`) into a second one (`--to`),
//! through [`crate::repo::copy`] (verified on the way, manifest last, resumable, idempotent).
//!
//! Invariant: the target's key comes from `--to-key-file` or `VIRTGUARD_TO_KEY`, never a flag
//! value; nothing is deleted in either repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use kube::api::ListParams;
use kube::Api;
use serde_json::json;
use virtguard_api::VirtualMachine;

use super::util::{client, human, open_repo};
use super::{Config, KeyMaterial, Output};
use crate::cluster;
use crate::error::{Error, Result};
use crate::repo::copy::{copy_backups, CopyOptions, IdMode};
use crate::repo::format::check_name;
use crate::repo::{BackupRef, Repository};

/// `virtguard copy`.
#[derive(Debug, Args)]
#[command(
    after_help = "Copies every selected backup the target does not have yet: chunks \
first (each read from the source, decrypted/decompressed and checked against its id), then the \
indexes and resources, the manifest last, so an interrupted copy shows no half-copied backup and \
the next run resumes (chunks already copied are not sent again). A second run transfers nothing. \
A target created with `virtguard init --copy-chunker-params-from SOURCE` keeps chunk ids, so only \
the chunks it lacks are read from the source; any other target gets every chunk of every copied \
backup read and hashed again with its own id key (the transfer from the source is not \
deduplicated; the target still stores each distinct chunk once). Restore from the copy with \
`--repo TARGET`."
)]
pub struct CopyArgs {
    /// Target repository: a local directory or s3://bucket/prefix
    #[arg(long, value_name = "REPO")]
    pub to: String,
    /// File holding the target repository's key; alternatively set VIRTGUARD_TO_KEY
    #[arg(long, env = "VIRTGUARD_TO_KEY_FILE")]
    pub to_key_file: Option<PathBuf>,
    /// S3 endpoint of the target [default: --s3-endpoint]
    #[arg(long, env = "VIRTGUARD_TO_S3_ENDPOINT")]
    pub to_s3_endpoint: Option<String>,
    /// Only this VM, as NAMESPACE/NAME (repeatable) [default: every VM]
    #[arg(long = "vm", value_name = "NS/NAME")]
    pub vms: Vec<String>,
    /// Only the VMs of this namespace
    #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
    pub namespace: Option<String>,
    /// Only the VMs matching this label selector in the cluster (needs --namespace or
    /// --all-namespaces; reads the cluster: KUBECONFIG or the pod's service account)
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// With --selector: the VMs of every namespace
    #[arg(long, short = 'A', requires = "selector")]
    pub all_namespaces: bool,
    /// Output format of the summary
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Opens the repository at `repo` (another one than `--repo`) with the key from `key_file` or
/// the env var `key_env`.
pub async fn open_other(
    config: &Config,
    repo: &str,
    s3_endpoint: Option<&str>,
    key_file: Option<&Path>,
    key_env: &str,
) -> Result<Arc<Repository>> {
    let key = KeyMaterial::from_file_or_env(key_file, key_env)?;
    let store = config.store_at(repo, s3_endpoint).await?;
    let r = Repository::open(store, key.as_ref().map(|k| k.bytes())).await?;
    Ok(Arc::new(r.with_stale_after(config.lock_stale_after)))
}

/// The VMs `-l` selects in the cluster.
async fn selected_vms(a: &CopyArgs) -> Result<Option<BTreeSet<(String, String)>>> {
    let Some(sel) = &a.selector else {
        return Ok(None);
    };
    if a.namespace.is_none() && !a.all_namespaces {
        return Err(Error::Invalid(
            "--selector needs --namespace or --all-namespaces".into(),
        ));
    }
    let client = client().await?;
    let api: Api<VirtualMachine> = match &a.namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let vms =
        api.list(&ListParams::default().labels(sel))
            .await
            .map_err(cluster::ClusterError::api(
                "listing",
                "VirtualMachine",
                "(selection)",
            ))?;
    Ok(Some(
        vms.items
            .into_iter()
            .filter_map(|vm| Some((vm.metadata.namespace?, vm.metadata.name?)))
            .collect(),
    ))
}

/// The source backups `a` selects, oldest first per VM.
async fn selected_backups(repo: &Repository, a: &CopyArgs) -> Result<Vec<BackupRef>> {
    let mut named = BTreeSet::new();
    for v in &a.vms {
        let (ns, name) = v
            .split_once('/')
            .ok_or_else(|| Error::Invalid(format!("--vm `{v}`: expected NAMESPACE/NAME")))?;
        check_name("namespace", ns)?;
        check_name("vm", name)?;
        named.insert((ns.to_string(), name.to_string()));
    }
    let by_label = selected_vms(a).await?;
    let all = repo.list_backups(a.namespace.as_deref(), None).await?;
    Ok(all
        .into_iter()
        .filter(|r| {
            let vm = (r.namespace.clone(), r.vm.clone());
            (named.is_empty() || named.contains(&vm))
                && by_label.as_ref().is_none_or(|s| s.contains(&vm))
        })
        .collect())
}

/// Runs `virtguard copy`.
pub async fn copy(config: &Config, a: CopyArgs) -> Result<()> {
    let t0 = Instant::now();
    let src = open_repo(config).await?;
    let endpoint = a.to_s3_endpoint.clone().or(config.s3_endpoint.clone());
    let dst = open_other(
        config,
        &a.to,
        endpoint.as_deref(),
        a.to_key_file.as_deref(),
        "VIRTGUARD_TO_KEY",
    )
    .await?;
    let refs = selected_backups(&src, &a).await?;
    if refs.is_empty() {
        return Err(Error::Invalid(format!(
            "no backups in {} match the selection; see `virtguard list`",
            src.location()
        )));
    }
    let mode = crate::repo::copy::id_mode(&src, &dst);
    if mode != IdMode::Same && a.output == Output::Table {
        eprintln!(
            "note: {} names chunks differently from {} (not created with `init \
             --copy-chunker-params-from`): every chunk of each copied backup is read from the \
             source and hashed again{}",
            dst.location(),
            src.location(),
            if mode == IdMode::Rechunk {
                ", and each volume is cut again at the target's chunk size"
            } else {
                ""
            }
        );
    }
    let quiet = a.output == Output::Json || !config.progress;
    let opts = CopyOptions {
        concurrency: config.concurrency,
    };
    let report = copy_backups(&src, &dst, &refs, &opts, &|r| {
        if !quiet {
            eprintln!("copying {r}");
        }
    })
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    match a.output {
        Output::Json => {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["source"] = json!(src.location());
            v["target"] = json!(dst.location());
            v["seconds"] = json!(secs);
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Table => println!(
            "copied {} backup(s) to {} ({} already there): {} chunks written ({}), {} already \
             present, {} read and verified, {:.1}s",
            report.copied.len(),
            dst.location(),
            report.present.len(),
            report.chunks_copied,
            human(report.bytes_written),
            report.chunks_present,
            report.chunks_read,
            secs
        ),
    }
    Ok(())
}
