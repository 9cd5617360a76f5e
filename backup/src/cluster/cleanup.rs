//! Deleting what backup runs created — found by label, and never anything else.
//!
//! Selection is `app.kubernetes.io/managed-by=virtguard,virtguard.io/backup-id[=<id>]`: an
//! object needs both labels to be touched. Deletion order follows dependencies: changed-block-tracking
//! VirtualMachineBackups (they serve the pull endpoints), exports (they
//! mount the temporary PVCs), then PVCs (restored from the snapshots), then VolumeGroupSnapshots
//! (the snapshot controller deletes their member VolumeSnapshots with them), then snapshots,
//! then token Secrets, then the VM's backup Lease. A 404 counts as done (someone else cleaned up
//! first), and a kind the API server does not serve is skipped.
//!
//! The VM's own PVCs are never deleted (they carry no backup id); from those a group snapshot
//! labelled, only the [`labels::GROUP_SNAPSHOT`] label is removed.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use virtguard_api::labels;
use virtguard_api::{
    VirtualMachineBackup, VirtualMachineExport, VolumeGroupSnapshot, VolumeSnapshot,
};

use super::{ClusterError, Result};

/// What a cleanup deleted: `kind namespace/name` per object, and `label <key> of kind
/// namespace/name` per label removed from an object the run did not own.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Objects (and labels) deleted.
    pub deleted: Vec<String>,
}

/// The label selector for objects of `backup_id` (or of every run when `None`).
pub fn selector(backup_id: Option<&str>) -> String {
    let id = match backup_id {
        Some(id) => format!("{}={id}", labels::BACKUP_ID),
        None => labels::BACKUP_ID.to_string(),
    };
    format!("{}={},{id}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)
}

async fn delete_kind<K>(
    client: &Client,
    namespace: Option<&str>,
    selector: &str,
    report: &mut CleanupReport,
) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).to_string();
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = match api.list(&ListParams::default().labels(selector)).await {
        // The kind is not served (e.g. KubeVirt without the backup.kubevirt.io CRDs): nothing
        // of that kind can have been created.
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        other => other,
    }
    .map_err(ClusterError::api(
        "listing",
        "objects",
        format!("{kind} ({selector})"),
    ))?;
    for obj in list.items {
        let meta = obj.meta();
        let (Some(ns), Some(name)) = (meta.namespace.clone(), meta.name.clone()) else {
            continue;
        };
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {
                report.deleted.push(format!("{kind} {ns}/{name}"));
                wait_gone(&api, &kind, &ns, &name).await;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(ClusterError::Api {
                    action: "deleting",
                    kind: "object",
                    object: format!("{kind} {ns}/{name}"),
                    source: e,
                })
            }
        }
    }
    Ok(())
}

/// How long to wait for a deleted object's finalizers (e.g. the snapshot controller's
/// source-protection) to let it go, so the next kind's deletion and the next run see it gone.
const GONE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

async fn wait_gone<K>(api: &Api<K>, kind: &str, ns: &str, name: &str)
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + GONE_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        match api.get_opt(name).await {
            Ok(None) => return,
            Ok(Some(_)) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(_) => return,
        }
    }
    tracing::warn!(object = %format!("{kind} {ns}/{name}"),
        "still terminating after {GONE_TIMEOUT:?} (a finalizer holds it); it will go once its controller releases it");
}

/// Deletes the objects of run `backup_id` (every run's when `None`) in `namespace` (all when
/// `None`).
pub async fn cleanup(
    client: &Client,
    namespace: Option<&str>,
    backup_id: Option<&str>,
) -> Result<CleanupReport> {
    let sel = selector(backup_id);
    let mut report = CleanupReport::default();
    delete_kind::<VirtualMachineBackup>(client, namespace, &sel, &mut report).await?;
    delete_kind::<VirtualMachineExport>(client, namespace, &sel, &mut report).await?;
    delete_kind::<PersistentVolumeClaim>(client, namespace, &sel, &mut report).await?;
    match delete_kind::<VolumeGroupSnapshot>(client, namespace, &sel, &mut report).await {
        // RBAC from before group snapshots: such a deployment cannot have created any either,
        // so go on with the kinds it can clean up.
        Err(ClusterError::Api {
            source: kube::Error::Api(s),
            ..
        }) if s.code == 403 => tracing::warn!(
            "not allowed to list VolumeGroupSnapshots: apply deploy/backup/rbac.yaml of this version"
        ),
        r => r?,
    }
    for pvc in super::groupsnapshot::unlabel_pvcs(client, namespace, backup_id).await? {
        report.deleted.push(format!(
            "label {} of PersistentVolumeClaim {pvc}",
            labels::GROUP_SNAPSHOT
        ));
    }
    delete_kind::<VolumeSnapshot>(client, namespace, &sel, &mut report).await?;
    delete_kind::<Secret>(client, namespace, &sel, &mut report).await?;
    delete_kind::<Lease>(client, namespace, &sel, &mut report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_requires_both_labels() {
        assert_eq!(
            selector(Some("20261121T233302Z-3f9a")),
            "app.kubernetes.io/managed-by=virtguard,virtguard.io/backup-id=20261121T233302Z-3f9a"
        );
        assert_eq!(
            selector(None),
            "app.kubernetes.io/managed-by=virtguard,virtguard.io/backup-id"
        );
    }
}
