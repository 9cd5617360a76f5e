//! Helpers that several commands share: opening the repository, resolving a backup spec, a
//! Kubernetes client, byte sizes for humans.
//!
//! Invariant: a leaf among the command modules. It imports no sibling command module (only the
//! command line's own [`Config`] from `cli`), so every command may use it and `commands.rs`
//! dispatches downward only.

use std::sync::Arc;

use kube::Client;

use super::Config;
use crate::cluster;
use crate::error::{Error, Result};
use crate::repo::Error as RepoError;
use crate::repo::{BackupRef, Repository};

/// Human-readable binary size.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Opens the configured repository (store, key, stale-lock age).
pub async fn open_repo(config: &Config) -> Result<Arc<Repository>> {
    let store = config.store().await?;
    let repo = Repository::open(store, config.key.as_ref().map(|k| k.bytes())).await?;
    Ok(Arc::new(repo.with_stale_after(config.lock_stale_after)))
}

/// Resolves `id`, `ns/vm/id` or `ns/vm@latest`.
pub async fn resolve_backup(repo: &Repository, spec: &str) -> crate::repo::Result<BackupRef> {
    if let Some((vm, which)) = spec.split_once('@') {
        let (ns, name) = vm
            .split_once('/')
            .ok_or_else(|| RepoError::Invalid(format!("`{spec}`: expected namespace/vm@latest")))?;
        if which != "latest" {
            return repo.find_backup(&format!("{ns}/{name}/{which}")).await;
        }
        return repo
            .latest(ns, name)
            .await?
            .ok_or_else(|| RepoError::BackupNotFound {
                id: spec.to_string(),
                hint: Some(format!(
                    "VM {ns}/{name} has no backups; run `virtguard list` to see the backups"
                )),
            });
    }
    repo.find_backup(spec).await
}

/// A Kubernetes client from the kubeconfig or the in-cluster service account.
pub async fn client() -> Result<Client> {
    cluster::install_crypto_provider();
    Client::try_default()
        .await
        .map_err(|e| Error::KubeConfig(e.to_string()))
}
