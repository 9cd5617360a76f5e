//! One VolumeGroupSnapshot (groupsnapshot.storage.k8s.io/v1beta2) over a VM's PVCs instead of
//! one VolumeSnapshot each: every disk is cut at the same instant by the storage.
//!
//! Used when every PVC of the VM is on one CSI driver and a VolumeGroupSnapshotClass for that
//! driver exists ([`pick_group_class`]: the one annotated
//! `groupsnapshot.storage.kubernetes.io/is-default-class=true`, else the only one; several and
//! none default → none, and the run takes per-PVC VolumeSnapshots as before). A cluster that
//! does not serve the group snapshot API (404) or does not let us list its classes (403) counts
//! as "no class".
//!
//! The protocol of a run:
//! 1. [`label_pvcs`]: the VM's own PVCs get [`labels::GROUP_SNAPSHOT`]`=<backup id>` — never
//!    [`labels::BACKUP_ID`], which `virtguard cleanup` deletes by;
//! 2. [`create_group`]: the group, labelled like everything a run creates, selects exactly those
//!    PVCs by that label;
//! 3. [`wait_for`] `creationTime` (thaw), then `readyToUse`, failing at once on `status.error`;
//! 4. [`members`]: the snapshot controller creates one member VolumeSnapshot per PVC (owned by
//!    the group, `status.volumeGroupSnapshotName` = the group, `spec.source.
//!    persistentVolumeClaimName` = the PVC); from here on they are read like the run's own
//!    VolumeSnapshots (temporary PVCs with `dataSource` VolumeSnapshot);
//! 5. cleanup (every path, [`super::cleanup`]): delete the group — the controller deletes its
//!    members and content — and [`unlabel_pvcs`] removes the label, only the label.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use virtguard_api::{
    labels, VolumeGroupSnapshot, VolumeGroupSnapshotClass, VolumeGroupSnapshotSource,
    VolumeGroupSnapshotSpec, VolumeSnapshot,
};

use super::snapshot::{await_until, Progress, Until};
use super::{ClusterError, Result};

/// The VolumeGroupSnapshotClass to use for `driver`, or `None` when group snapshots are not to
/// be used (no class, an ambiguous choice, or the API is not served or not readable).
pub async fn group_class_for(client: &Client, driver: &str) -> Result<Option<String>> {
    match Api::<VolumeGroupSnapshotClass>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => {
            let pick = pick_group_class(&list.items, driver);
            if pick.is_none() && list.items.iter().any(|c| c.driver == driver) {
                tracing::warn!(%driver, "several VolumeGroupSnapshotClasses for this driver and none annotated groupsnapshot.storage.kubernetes.io/is-default-class=true: taking one VolumeSnapshot per PVC");
            }
            Ok(pick)
        }
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
            tracing::debug!(
                code = s.code,
                "VolumeGroupSnapshotClasses not available: taking one VolumeSnapshot per PVC"
            );
            Ok(None)
        }
        Err(e) => Err(ClusterError::api(
            "listing",
            "VolumeGroupSnapshotClass",
            "(all)",
        )(e)),
    }
}

/// The class-selection rule (see module docs), separate from I/O so it is unit-tested.
pub fn pick_group_class(classes: &[VolumeGroupSnapshotClass], driver: &str) -> Option<String> {
    let matching: Vec<&VolumeGroupSnapshotClass> =
        classes.iter().filter(|c| c.driver == driver).collect();
    let defaults: Vec<&&VolumeGroupSnapshotClass> =
        matching.iter().filter(|c| c.is_default()).collect();
    let chosen = match (defaults.as_slice(), matching.as_slice()) {
        ([one], _) => *one,
        ([], [one]) => one,
        _ => return None,
    };
    chosen.metadata.name.clone()
}

/// Labels PVCs `pvcs` of `namespace` with [`labels::GROUP_SNAPSHOT`]`=<backup_id>`.
pub async fn label_pvcs(
    client: &Client,
    namespace: &str,
    pvcs: &[String],
    backup_id: &str,
) -> Result<()> {
    let api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
    let patch = json!({"metadata": {"labels": {labels::GROUP_SNAPSHOT: backup_id}}});
    for pvc in pvcs {
        api.patch(pvc, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ClusterError::api(
                "labelling",
                "PersistentVolumeClaim",
                format!("{namespace}/{pvc}"),
            ))?;
    }
    Ok(())
}

/// Removes [`labels::GROUP_SNAPSHOT`] (of run `backup_id`, or of any run) from the PVCs of
/// `namespace` (all when `None`) — the label only, never the PVC. Returns `namespace/name` of
/// each PVC it was removed from. The removal is conditional on the PVC's resourceVersion, so a
/// label a newer run put there meanwhile stays.
pub async fn unlabel_pvcs(
    client: &Client,
    namespace: Option<&str>,
    backup_id: Option<&str>,
) -> Result<Vec<String>> {
    let selector = match backup_id {
        Some(id) => format!("{}={id}", labels::GROUP_SNAPSHOT),
        None => labels::GROUP_SNAPSHOT.to_string(),
    };
    let api: Api<PersistentVolumeClaim> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(ClusterError::api(
            "listing",
            "PersistentVolumeClaim",
            format!("({selector})"),
        ))?;
    let mut done = Vec::new();
    for pvc in list.items {
        let (Some(ns), Some(name)) = (pvc.metadata.namespace.clone(), pvc.metadata.name.clone())
        else {
            continue;
        };
        let object = format!("{ns}/{name}");
        let value = label_of(&pvc);
        let api = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns);
        let mut rv = pvc.metadata.resource_version.clone();
        for _ in 0..5 {
            let patch = json!({"metadata": {"resourceVersion": rv, "labels": {labels::GROUP_SNAPSHOT: null}}});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    done.push(object.clone());
                    break;
                }
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    // Changed meanwhile: remove the label only if it is still the one we saw.
                    match api.get_opt(&name).await {
                        Ok(Some(now)) if label_of(&now) == value => {
                            rv = now.metadata.resource_version.clone();
                        }
                        Ok(_) => break,
                        Err(e) => {
                            return Err(ClusterError::api(
                                "reading",
                                "PersistentVolumeClaim",
                                object,
                            )(e))
                        }
                    }
                }
                Err(e) => {
                    return Err(ClusterError::api(
                        "removing label virtguard.io/group-snapshot from",
                        "PersistentVolumeClaim",
                        object,
                    )(e))
                }
            }
        }
    }
    Ok(done)
}

fn label_of(pvc: &PersistentVolumeClaim) -> Option<String> {
    pvc.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(labels::GROUP_SNAPSHOT).cloned())
}

/// Creates VolumeGroupSnapshot `namespace/name` with `class` over the PVCs labelled for run
/// `backup_id`, itself labelled `labels`.
pub async fn create_group(
    client: &Client,
    namespace: &str,
    name: &str,
    class: &str,
    backup_id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<VolumeGroupSnapshot> {
    let mut group = VolumeGroupSnapshot::new(
        name,
        Some(namespace),
        VolumeGroupSnapshotSpec {
            source: Some(VolumeGroupSnapshotSource {
                selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        labels::GROUP_SNAPSHOT.to_string(),
                        backup_id.to_string(),
                    )])),
                    match_expressions: None,
                }),
                ..Default::default()
            }),
            volume_group_snapshot_class_name: Some(class.to_string()),
            ..Default::default()
        },
    );
    group.metadata.labels = Some(labels.clone());
    Api::<VolumeGroupSnapshot>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &group)
        .await
        .map_err(ClusterError::api(
            "creating",
            "VolumeGroupSnapshot",
            format!("{namespace}/{name}"),
        ))
}

fn group_progress(g: &VolumeGroupSnapshot) -> Progress {
    let st = g.status.as_ref();
    Progress {
        error: st
            .and_then(|st| st.error.as_ref())
            .and_then(|e| e.message.clone()),
        created: st.is_some_and(|st| st.creation_time.is_some()),
        ready: st.is_some_and(|st| st.ready_to_use == Some(true)),
    }
}

/// Waits until group `namespace/name` reaches `until`; fails at once on `status.error`.
pub async fn wait_for(
    client: &Client,
    namespace: &str,
    name: &str,
    until: Until,
    timeout: Duration,
) -> Result<VolumeGroupSnapshot> {
    let object = format!("{namespace}/{name}");
    await_until(
        Api::<VolumeGroupSnapshot>::namespaced(client.clone(), namespace),
        name,
        until,
        timeout,
        group_progress,
        format!("VolumeGroupSnapshot {object}"),
        format!("does the CSI driver support group snapshots? `kubectl describe volumegroupsnapshot {name} -n {namespace}`"),
        move |message| ClusterError::GroupSnapshotFailed {
            object: object.clone(),
            message,
        },
    )
    .await
}

/// The member VolumeSnapshots of group `group` for `pvcs`, in that order, or the PVCs that have
/// none.
pub fn member_names(
    snapshots: &[VolumeSnapshot],
    group: &str,
    pvcs: &[String],
) -> std::result::Result<Vec<String>, Vec<String>> {
    let by_pvc: BTreeMap<&str, &str> = snapshots
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.volume_group_snapshot_name.as_deref())
                == Some(group)
        })
        .filter_map(|s| {
            Some((
                s.spec
                    .as_ref()?
                    .source
                    .as_ref()?
                    .persistent_volume_claim_name
                    .as_deref()?,
                s.metadata.name.as_deref()?,
            ))
        })
        .collect();
    let missing: Vec<String> = pvcs
        .iter()
        .filter(|p| !by_pvc.contains_key(p.as_str()))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    Ok(pvcs
        .iter()
        .filter_map(|p| by_pvc.get(p.as_str()).map(|n| n.to_string()))
        .collect())
}

/// Names of the member VolumeSnapshots of group `namespace/group` for `pvcs` (in that order).
/// The snapshot controller may publish members a little after the group's status, so this
/// looks again for up to `timeout`.
pub async fn members(
    client: &Client,
    namespace: &str,
    group: &str,
    pvcs: &[String],
    timeout: Duration,
) -> Result<Vec<String>> {
    let api = Api::<VolumeSnapshot>::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(ClusterError::api(
                "listing",
                "VolumeSnapshot",
                format!("{namespace}/* (members of VolumeGroupSnapshot {group})"),
            ))?;
        match member_names(&list.items, group, pvcs) {
            Ok(names) => return Ok(names),
            Err(missing) if tokio::time::Instant::now() >= deadline => {
                return Err(ClusterError::GroupSnapshotFailed {
                    object: format!("{namespace}/{group}"),
                    message: format!(
                        "is ready but has no member VolumeSnapshot (status.volumeGroupSnapshotName={group}) for PVC {} after {timeout:?}",
                        missing.join(", ")
                    ),
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtguard_api::{VolumeSnapshotSource, VolumeSnapshotSpec, VolumeSnapshotStatus};

    fn class(name: &str, driver: &str, default: bool) -> VolumeGroupSnapshotClass {
        let mut c = VolumeGroupSnapshotClass {
            driver: driver.into(),
            deletion_policy: "Delete".into(),
            ..Default::default()
        };
        c.metadata.name = Some(name.into());
        if default {
            c.metadata.annotations = Some(BTreeMap::from([(
                virtguard_api::DEFAULT_GROUP_SNAPSHOT_CLASS_ANNOTATION.to_string(),
                "true".to_string(),
            )]));
        }
        c
    }

    #[test]
    fn group_class_selection_rules() {
        let classes = [
            class("a", "rbd", false),
            class("b", "rbd", true),
            class("c", "ebs", false),
            class("d", "nfs", false),
            class("e", "nfs", false),
            class("f", "lvm", true),
            class("g", "lvm", true),
        ];
        assert_eq!(pick_group_class(&classes, "rbd").as_deref(), Some("b"));
        assert_eq!(pick_group_class(&classes, "ebs").as_deref(), Some("c"));
        assert_eq!(
            pick_group_class(&classes, "nfs"),
            None,
            "several, none default"
        );
        assert_eq!(pick_group_class(&classes, "lvm"), None, "several defaults");
        assert_eq!(pick_group_class(&classes, "zfs"), None);
        // The VolumeSnapshotClass annotation does not make a group class the default.
        let mut wrong = class("h", "nfs", false);
        wrong.metadata.annotations = Some(BTreeMap::from([(
            virtguard_api::DEFAULT_SNAPSHOT_CLASS_ANNOTATION.to_string(),
            "true".to_string(),
        )]));
        assert_eq!(
            pick_group_class(&[wrong, class("i", "nfs", false)], "nfs"),
            None
        );
    }

    fn snap(name: &str, pvc: &str, group: Option<&str>) -> VolumeSnapshot {
        let mut s = VolumeSnapshot::new(
            name,
            Some("prod"),
            VolumeSnapshotSpec {
                source: Some(VolumeSnapshotSource {
                    persistent_volume_claim_name: Some(pvc.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        s.status = Some(VolumeSnapshotStatus {
            volume_group_snapshot_name: group.map(str::to_string),
            ..Default::default()
        });
        s
    }

    #[test]
    fn members_are_mapped_to_pvcs_by_group_and_source() {
        let pvcs = vec!["db-root".to_string(), "db-data".to_string()];
        let snaps = [
            snap("snapshot-1", "db-data", Some("g")),
            snap("snapshot-2", "db-root", Some("g")),
            snap("other-group", "db-root", Some("h")),
            snap("single", "db-data", None),
        ];
        assert_eq!(
            member_names(&snaps, "g", &pvcs).unwrap(),
            ["snapshot-2", "snapshot-1"]
        );
        assert_eq!(
            member_names(&snaps[1..], "g", &pvcs).unwrap_err(),
            ["db-data"]
        );
    }
}
