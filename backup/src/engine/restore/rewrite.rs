//! How a saved VM object is rewritten into the one a restore creates, on virtguard-api's typed
//! [`VirtualMachine`] (whose conformance test checks every field touched here against
//! KubeVirt's schema).
//!
//! * [`as_new_object`]: `status` and what belongs to the old object's life (`uid`,
//!   `resourceVersion`, `managedFields`, `creationTimestamp`, `generation`, finalizers, owner
//!   references — the owners' uids belong to the old object) are removed, name and namespace
//!   set, the [`RESTORE_ID`] label and [`RESTORED_FROM`] annotation added;
//! * [`point_disks_at`]: volumes and DataVolume templates refer to the claims the restore
//!   writes (with the `job` method a DataVolume volume becomes a plain PVC volume and its
//!   template is dropped);
//! * [`set_run_strategy`]: `runStrategy` `Halted`, or `Always` with `--start`; `spec.running`
//!   removed;
//! * [`new_identity`] (copies only): interface `macAddress`es removed (KubeMacPool or KubeVirt
//!   assigns new ones), `firmware.uuid` replaced by a fresh random UUID, fixed-IP annotations
//!   ([`FIXED_IP_ANNOTATION_PREFIXES`]) dropped from the VM and its template, the template's
//!   `kubevirt.io/domain` label renamed with the VM.
//!
//! Invariant: fields not named here are kept untouched (virtguard-api keeps every field it does
//! not model), so a restored VM keeps everything it had.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use virtguard_api::{PersistentVolumeClaimVolumeSource, VirtualMachine};

use super::model::{Method, VolumePlan, RESTORED_FROM, RESTORE_ID};
use super::objects::datavolume_spec;
use crate::repo::BackupRef;

/// Annotation prefixes (and exact keys) that pin an IP address; dropped when restoring a copy.
pub const FIXED_IP_ANNOTATION_PREFIXES: &[&str] = &[
    "ipam.spidernet.io/",
    "cni.projectcalico.org/ipAddrs",
    "cni.projectcalico.org/ipAddrsNoIpam",
    "ovn.kubernetes.io/ip_address",
    "ovn.kubernetes.io/mac_address",
    "k8s.v1.cni.cncf.io/static-ip",
];

/// The label KubeVirt's templates carry with the VM's name.
const DOMAIN_LABEL: &str = "kubevirt.io/domain";

/// A random RFC 4122 version 4 UUID.
fn new_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub(super) fn is_fixed_ip_annotation(key: &str) -> bool {
    FIXED_IP_ANNOTATION_PREFIXES.iter().any(|p| {
        if p.ends_with('/') {
            key.starts_with(p)
        } else {
            key == *p
        }
    })
}

fn drop_fixed_ip_annotations(meta: Option<&mut ObjectMeta>) {
    if let Some(a) = meta.and_then(|m| m.annotations.as_mut()) {
        a.retain(|k, _| !is_fixed_ip_annotation(k));
    }
}

/// Removes what belongs to the old object's life (uid, resourceVersion, managedFields,
/// creationTimestamp, generation, selfLink, deletion timestamps, finalizers, owner references,
/// generateName): of the old metadata only labels and annotations stay.
fn clean_metadata(meta: &mut ObjectMeta, ns: &str, name: &str) {
    *meta = ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(ns.to_string()),
        labels: meta.labels.take(),
        annotations: meta.annotations.take(),
        ..Default::default()
    };
}

/// The saved VM as a new object `ns/name` of this restore run.
pub(super) fn as_new_object(
    vm: &mut VirtualMachine,
    ns: &str,
    name: &str,
    source: &BackupRef,
    restore_id: &str,
) {
    vm.status = None;
    clean_metadata(&mut vm.metadata, ns, name);
    vm.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(RESTORED_FROM.to_string(), source.to_string());
    vm.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(RESTORE_ID.to_string(), restore_id.to_string());
}

/// Volumes and DataVolume templates point at the new claims.
pub(super) fn point_disks_at(vm: &mut VirtualMachine, volumes: &[VolumePlan], method: Method) {
    let renames: BTreeMap<&str, &str> = volumes
        .iter()
        .map(|v| (v.old_claim.as_str(), v.claim.as_str()))
        .collect();
    let rename = |slot: &mut Option<String>| {
        if let Some(new) = slot.as_deref().and_then(|s| renames.get(s)) {
            *slot = Some(new.to_string());
        }
    };
    let vols = vm.template_spec_mut().and_then(|s| s.volumes.as_mut());
    for v in vols.into_iter().flatten() {
        if let Some(p) = v.persistent_volume_claim.as_mut() {
            rename(&mut p.claim_name);
        }
        if let Some(d) = v.data_volume.as_mut() {
            rename(&mut d.name);
        }
        // With the job method the disk is a plain PVC, not a DataVolume.
        if method == Method::Job {
            if let Some(dv) = v.data_volume.take() {
                v.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                    claim_name: dv.name,
                    hotpluggable: dv.hotpluggable,
                    ..Default::default()
                });
            }
        }
    }
    let templates = vm
        .spec
        .as_mut()
        .and_then(|s| s.data_volume_templates.as_mut());
    if let Some(templates) = templates {
        templates.retain_mut(|t| {
            let tname = t.metadata.as_ref().and_then(|m| m.name.as_deref());
            match volumes.iter().find(|v| Some(v.old_claim.as_str()) == tname) {
                // Job method: the PVC is ours, KubeVirt must not create a DataVolume for it.
                Some(_) if method == Method::Job => false,
                Some(v) => {
                    // The DataVolume exists before the VM; the template matches it exactly.
                    t.metadata = Some(ObjectMeta {
                        name: Some(v.claim.clone()),
                        ..Default::default()
                    });
                    t.spec = Some(datavolume_spec(v));
                    true
                }
                None => true,
            }
        });
    }
}

/// `runStrategy` `Always` when started, else `Halted`; the deprecated `running` goes.
pub(super) fn set_run_strategy(vm: &mut VirtualMachine, start: bool) {
    if let Some(spec) = vm.spec.as_mut() {
        spec.running = None;
        spec.run_strategy = Some(if start { "Always" } else { "Halted" }.to_string());
    }
}

/// A copy's network identity: no MACs, a new firmware UUID, no fixed-IP annotations, the
/// domain label renamed from `old_vm` to `name`.
pub(super) fn new_identity(vm: &mut VirtualMachine, old_vm: &str, name: &str) {
    drop_fixed_ip_annotations(Some(&mut vm.metadata));
    let template = vm.spec.as_mut().and_then(|s| s.template.as_mut());
    let Some(template) = template else {
        return;
    };
    if let Some(domain) = template.spec.as_mut().and_then(|s| s.domain.as_mut()) {
        let ifaces = domain.devices.as_mut().and_then(|d| d.interfaces.as_mut());
        for i in ifaces.into_iter().flatten() {
            i.mac_address = None;
        }
        let uuid = domain.firmware.as_mut().and_then(|f| f.uuid.as_mut());
        if let Some(uuid) = uuid {
            *uuid = new_uuid();
        }
    }
    drop_fixed_ip_annotations(template.metadata.as_mut());
    let label = template
        .metadata
        .as_mut()
        .and_then(|m| m.labels.as_mut())
        .and_then(|l| l.get_mut(DOMAIN_LABEL));
    if let Some(d) = label {
        if d == old_vm {
            *d = name.to_string();
        }
    }
}
