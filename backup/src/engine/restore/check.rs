//! Checks of the target cluster before anything is created.
//!
//! Refused (nothing created): an existing VM of the target name unless in place, a PVC or
//! DataVolume of a name the restore creates, a missing target namespace. Warned about (the
//! restore goes on): a Multus network (`spec.template.spec.networks[].multus.networkName`)
//! without its NetworkAttachmentDefinition, a storage class, or a VolumeSnapshotClass /
//! VolumeGroupSnapshotClass the backup used (manifest labels `snapshot-classes`,
//! `group-snapshot-class`), that does not exist in the target.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use virtguard_api::{DataVolume, VirtualMachine, VolumeGroupSnapshotClass, VolumeSnapshotClass};

use super::cluster::{get_opt, kind_of};
use super::error::{RestoreError, Result};
use super::model::{Mode, Plan};
use crate::cluster::ClusterError;

/// Checks the target; returns warnings. Refuses clashes unless in place.
pub async fn check_target(client: &Client, plan: &Plan) -> Result<Vec<String>> {
    let ns = &plan.namespace;
    let nsapi: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if nsapi
        .get_opt(ns)
        .await
        .map_err(ClusterError::api("reading", "Namespace", ns.clone()))?
        .is_none()
    {
        return Err(RestoreError::NoNamespace(ns.clone()));
    }
    if plan.mode == Mode::Copy
        && get_opt::<VirtualMachine>(client, ns, &plan.name)
            .await?
            .is_some()
    {
        return Err(RestoreError::Exists {
            kind: "VirtualMachine",
            object: format!("{ns}/{}", plan.name),
        });
    }
    // Copy or in place, the restore only writes claims of new names (in place: staged names).
    for v in &plan.volumes {
        let kind = if get_opt::<PersistentVolumeClaim>(client, ns, &v.claim)
            .await?
            .is_some()
        {
            kind_of::<PersistentVolumeClaim>()
        } else if get_opt::<DataVolume>(client, ns, &v.claim).await?.is_some() {
            kind_of::<DataVolume>()
        } else {
            continue;
        };
        return Err(match plan.mode {
            Mode::Copy => RestoreError::Exists {
                kind,
                object: format!("{ns}/{}", v.claim),
            },
            Mode::InPlace => RestoreError::Invalid(format!(
                "{kind} {ns}/{} exists already (left by an earlier in-place restore run with --keep-partial?): run the restore again (each run picks a new claim suffix), or delete it if the VM does not use it",
                v.claim
            )),
        });
    }
    let mut warnings = Vec::new();
    // Multus is not modelled (virtguard only needs to know that the object exists).
    let nad = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    );
    for n in &plan.networks {
        let (nns, nname) = n.split_once('/').unwrap_or((ns.as_str(), n.as_str()));
        let nads: Api<DynamicObject> = Api::namespaced_with(client.clone(), nns, &nad);
        let found = nads.get_opt(nname).await.map_err(ClusterError::api(
            "reading",
            "NetworkAttachmentDefinition",
            format!("{nns}/{nname}"),
        ));
        match found {
            Ok(Some(_)) => {}
            Ok(None) => warnings.push(format!(
                "the VM uses Multus network `{n}` but NetworkAttachmentDefinition {nns}/{nname} does not exist: create it before starting the VM"
            )),
            Err(e) => warnings.push(format!("could not check NetworkAttachmentDefinition {nns}/{nname}: {e}")),
        }
    }
    let scapi: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    for sc in &plan.storage_classes {
        match scapi.get_opt(sc).await {
            Ok(Some(_)) => {}
            Ok(None) => warnings.push(format!(
                "storage class `{sc}` does not exist in the target cluster: the disks will stay Pending; map it with --storage-class-map {sc}=OTHER"
            )),
            Err(e) => warnings.push(format!("could not check storage class `{sc}`: {e}")),
        }
    }
    // The snapshot classes the backup used: without them, the next backup of the restored VM
    // cannot snapshot its disks in this cluster.
    // Existence only: the classes are read untyped, so one the models would not parse still
    // counts as there.
    let vsc = ApiResource::erase::<VolumeSnapshotClass>(&());
    let vgsc = ApiResource::erase::<VolumeGroupSnapshotClass>(&());
    let wanted = plan
        .snapshot_classes
        .iter()
        .map(|c| (c, &vsc, "VolumeSnapshotClass"))
        .chain(
            plan.group_snapshot_class
                .iter()
                .map(|c| (c, &vgsc, "VolumeGroupSnapshotClass")),
        );
    for (class, r, kind) in wanted {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), r);
        match api.get_opt(class).await {
            Ok(Some(_)) => {}
            // get_opt also answers None when the kind is not served at all (no CRD).
            Ok(None) if kind == "VolumeGroupSnapshotClass" => warnings.push(format!(
                "the backup cut the disks with {kind} `{class}`, which the target cluster does not have (or it does not serve group snapshots): backups of the restored VM will take one VolumeSnapshot per disk, not one group"
            )),
            Ok(None) => warnings.push(format!(
                "the backup's disks were snapshotted with {kind} `{class}`, which does not exist in the target cluster: backups of the restored VM fail until a {kind} exists for its storage's CSI driver"
            )),
            Err(e) => warnings.push(format!("could not check {kind} `{class}`: {e}")),
        }
    }
    Ok(warnings)
}
