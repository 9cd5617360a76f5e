//! CSI VolumeSnapshots of a VM's PVCs.
//!
//! The snapshot class is chosen by the CSI driver that provisioned the PVC's PersistentVolume
//! (`pv.spec.csi.driver`, or the StorageClass provisioner while the claim is unbound): among the
//! VolumeSnapshotClasses for that driver the one annotated
//! `snapshot.storage.kubernetes.io/is-default-class=true`, else the only one.
//!
//! Two waits matter and are kept apart: `status.creationTime` is when the storage cut the
//! point-in-time image — from then on the guest may be thawed — while `readyToUse` (which can
//! take much longer, e.g. while a cloud uploads the snapshot) only gates reading it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::try_join_all;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use virtguard_api::{
    VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotSource, VolumeSnapshotSpec,
};

use super::{ClusterError, Result};

/// The CSI driver behind PVC `namespace/pvc`.
pub async fn csi_driver_of_pvc(client: &Client, namespace: &str, pvc: &str) -> Result<String> {
    let object = format!("{namespace}/{pvc}");
    let claim = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get(pvc)
        .await
        .map_err(ClusterError::api(
            "reading",
            "PersistentVolumeClaim",
            &object,
        ))?;
    let spec = claim.spec.unwrap_or_default();
    if let Some(volume) = spec.volume_name.filter(|v| !v.is_empty()) {
        let pv = Api::<PersistentVolume>::all(client.clone())
            .get(&volume)
            .await
            .map_err(ClusterError::api("reading", "PersistentVolume", &volume))?;
        return pv
            .spec
            .and_then(|s| s.csi)
            .map(|c| c.driver)
            .ok_or(ClusterError::NotCsi {
                pvc: object,
                why: format!("its PersistentVolume {volume} has no spec.csi"),
            });
    }
    let class = spec.storage_class_name.ok_or(ClusterError::NotCsi {
        pvc: object.clone(),
        why: "unbound and without a storageClassName".into(),
    })?;
    let sc = Api::<StorageClass>::all(client.clone())
        .get(&class)
        .await
        .map_err(ClusterError::api("reading", "StorageClass", &class))?;
    Ok(sc.provisioner)
}

/// The VolumeSnapshotClass to use for `driver` (PVC named for the error message).
pub async fn snapshot_class_for(
    client: &Client,
    driver: &str,
    pvc: &str,
    preferred: &[String],
) -> Result<String> {
    let classes = Api::<VolumeSnapshotClass>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(ClusterError::api("listing", "VolumeSnapshotClass", "(all)"))?;
    pick_class(&classes.items, driver, pvc, preferred)
}

/// The class-selection rule, separate from I/O so it is unit-tested: a `preferred` class
/// (`--snapshot-class`) of the PVC's driver wins; a preferred name that is no class at all is
/// an error; otherwise the driver's default class, or its only class.
pub fn pick_class(
    classes: &[VolumeSnapshotClass],
    driver: &str,
    pvc: &str,
    preferred: &[String],
) -> Result<String> {
    let name = |c: &VolumeSnapshotClass| c.metadata.name.clone().unwrap_or_default();
    for p in preferred {
        if !classes.iter().any(|c| name(c) == *p) {
            return Err(ClusterError::UnknownSnapshotClass { class: p.clone() });
        }
    }
    let matching: Vec<&VolumeSnapshotClass> =
        classes.iter().filter(|c| c.driver == driver).collect();
    if let Some(c) = matching.iter().find(|c| preferred.contains(&name(c))) {
        return Ok(name(c));
    }
    let defaults: Vec<&&VolumeSnapshotClass> = matching.iter().filter(|c| c.is_default()).collect();
    match (defaults.as_slice(), matching.as_slice()) {
        ([one], _) => Ok(name(one)),
        ([], [one]) => Ok(name(one)),
        ([], []) => Err(ClusterError::NoSnapshotClass {
            driver: driver.to_string(),
            pvc: pvc.to_string(),
        }),
        _ => Err(ClusterError::AmbiguousSnapshotClass {
            driver: driver.to_string(),
            classes: matching
                .iter()
                .map(|c| name(c))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Creates VolumeSnapshot `namespace/name` of PVC `pvc` with `class`, labelled `labels`.
pub async fn create_snapshot(
    client: &Client,
    namespace: &str,
    name: &str,
    pvc: &str,
    class: &str,
    labels: &BTreeMap<String, String>,
) -> Result<VolumeSnapshot> {
    let mut snap = VolumeSnapshot::new(
        name,
        Some(namespace),
        VolumeSnapshotSpec {
            source: Some(VolumeSnapshotSource {
                persistent_volume_claim_name: Some(pvc.to_string()),
                ..Default::default()
            }),
            volume_snapshot_class_name: Some(class.to_string()),
            ..Default::default()
        },
    );
    snap.metadata.labels = Some(labels.clone());
    Api::<VolumeSnapshot>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &snap)
        .await
        .map_err(ClusterError::api(
            "creating",
            "VolumeSnapshot",
            format!("{namespace}/{name}"),
        ))
}

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// `status.creationTime` is set: the image is cut; thaw now.
    Created,
    /// `status.readyToUse` is true: the snapshot can be read.
    Ready,
}

impl Until {
    /// The status field waited for.
    pub fn field(self) -> &'static str {
        match self {
            Until::Created => "creationTime",
            Until::Ready => "readyToUse",
        }
    }
}

/// The parts of a snapshot's (or group snapshot's) status a wait looks at.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub error: Option<String>,
    pub created: bool,
    pub ready: bool,
}

impl Progress {
    fn reached(&self, until: Until) -> bool {
        match until {
            Until::Created => self.created,
            Until::Ready => self.ready,
        }
    }
}

/// Watches object `name` until `progress` shows `until` reached, or an error: that error, a
/// failed watch or a deletion become `failed(message)`. The timeout names `what` (`Kind ns/name`)
/// and adds `hint`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn await_until<K>(
    api: Api<K>,
    name: &str,
    until: Until,
    timeout: Duration,
    progress: fn(&K) -> Progress,
    what: String,
    hint: String,
    failed: impl Fn(String) -> ClusterError,
) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let cond = move |o: Option<&K>| {
        o.map(progress)
            .is_some_and(|p| p.error.is_some() || p.reached(until))
    };
    let found = tokio::time::timeout(
        timeout,
        kube::runtime::wait::await_condition(api, name, cond),
    )
    .await
    .map_err(|_| ClusterError::Timeout {
        what: format!("{what} {} ({hint})", until.field()),
        waited: timeout,
    })?
    .map_err(|e| failed(format!("watch failed: {e}")))?
    .ok_or_else(|| failed("deleted while waiting".into()))?;
    match progress(&found).error {
        Some(message) => Err(failed(message)),
        None => Ok(found),
    }
}

fn snapshot_progress(s: &VolumeSnapshot) -> Progress {
    let st = s.status.as_ref();
    Progress {
        error: st
            .and_then(|st| st.error.as_ref())
            .and_then(|e| e.message.clone()),
        created: st.is_some_and(|st| st.creation_time.is_some()),
        ready: st.is_some_and(|st| st.ready_to_use == Some(true)),
    }
}

/// Waits until every snapshot in `names` reaches `until`; fails at once on `status.error`.
pub async fn wait_for(
    client: &Client,
    namespace: &str,
    names: &[String],
    until: Until,
    timeout: Duration,
) -> Result<Vec<VolumeSnapshot>> {
    let api = Api::<VolumeSnapshot>::namespaced(client.clone(), namespace);
    let waits = names.iter().map(|name| {
        let object = format!("{namespace}/{name}");
        await_until(
            api.clone(),
            name,
            until,
            timeout,
            snapshot_progress,
            format!("VolumeSnapshot {object}"),
            format!("is the CSI snapshotter running? `kubectl describe volumesnapshot {name} -n {namespace}`"),
            move |message| ClusterError::SnapshotFailed {
                object: object.clone(),
                message,
            },
        )
    });
    try_join_all(waits).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, driver: &str, default: bool) -> VolumeSnapshotClass {
        let mut c = VolumeSnapshotClass {
            driver: driver.into(),
            deletion_policy: "Delete".into(),
            ..Default::default()
        };
        c.metadata.name = Some(name.into());
        if default {
            c.metadata.annotations = Some(BTreeMap::from([(
                virtguard_api::DEFAULT_SNAPSHOT_CLASS_ANNOTATION.to_string(),
                "true".to_string(),
            )]));
        }
        c
    }

    #[test]
    fn class_selection_rules() {
        let classes = [
            class("a", "rbd", false),
            class("b", "rbd", true),
            class("c", "ebs", false),
            class("d", "nfs", false),
            class("e", "nfs", false),
        ];
        let none: &[String] = &[];
        assert_eq!(pick_class(&classes, "rbd", "ns/p", none).unwrap(), "b");
        assert_eq!(pick_class(&classes, "ebs", "ns/p", none).unwrap(), "c");
        let err = pick_class(&classes, "lvm", "ns/p", none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`lvm`")
                && err.contains("ns/p")
                && err.contains("create a VolumeSnapshotClass"),
            "{err}"
        );
        let err = pick_class(&classes, "nfs", "ns/p", none)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("d, e") && err.contains("--snapshot-class"),
            "{err}"
        );
        // --snapshot-class: wins over the default for its driver, resolves an ambiguity, does
        // not apply to other drivers, and must name an existing class.
        let pick = |driver: &str, pref: &[&str]| {
            let pref: Vec<String> = pref.iter().map(|s| s.to_string()).collect();
            pick_class(&classes, driver, "ns/p", &pref)
        };
        assert_eq!(pick("rbd", &["a"]).unwrap(), "a");
        assert_eq!(pick("nfs", &["e", "a"]).unwrap(), "e");
        assert_eq!(pick("ebs", &["a"]).unwrap(), "c");
        let err = pick("rbd", &["nope"]).unwrap_err().to_string();
        assert!(
            err.contains("`nope`") && err.contains("does not exist"),
            "{err}"
        );
    }
}
