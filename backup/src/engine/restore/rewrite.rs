//! How a saved VM object is rewritten into the one a restore creates.
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
//! Invariant: fields not named here are kept untouched, so a restored VM keeps everything it
//! had that virtguard does not model.

use std::collections::BTreeMap;

use serde_json::{json, Value};

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

fn drop_fixed_ip_annotations(meta: Option<&mut Value>) {
    if let Some(Value::Object(a)) = meta.and_then(|m| m.get_mut("annotations")) {
        a.retain(|k, _| !is_fixed_ip_annotation(k));
    }
}

/// Removes what belongs to the old object's life, keeps everything else.
fn clean_metadata(meta: &mut Value, ns: &str, name: &str) {
    if let Value::Object(m) = meta {
        for k in [
            "uid",
            "resourceVersion",
            "managedFields",
            "creationTimestamp",
            "generation",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "finalizers",
            "ownerReferences",
            "generateName",
        ] {
            m.remove(k);
        }
        m.insert("name".into(), json!(name));
        m.insert("namespace".into(), json!(ns));
    }
}

/// The saved VM as a new object `ns/name` of this restore run.
pub(super) fn as_new_object(
    vm: &mut Value,
    ns: &str,
    name: &str,
    source: &BackupRef,
    restore_id: &str,
) {
    if let Value::Object(o) = vm {
        o.remove("status");
    }
    clean_metadata(&mut vm["metadata"], ns, name);
    vm["metadata"]["annotations"][RESTORED_FROM] = json!(source.to_string());
    vm["metadata"]["labels"][RESTORE_ID] = json!(restore_id);
}

/// Volumes and DataVolume templates point at the new claims.
pub(super) fn point_disks_at(vm: &mut Value, volumes: &[VolumePlan], method: Method) {
    let renames: BTreeMap<String, String> = volumes
        .iter()
        .map(|v| (v.old_claim.clone(), v.claim.clone()))
        .collect();
    if let Some(Value::Array(vs)) = vm.pointer_mut("/spec/template/spec/volumes") {
        for v in vs.iter_mut() {
            for ptr in ["/persistentVolumeClaim/claimName", "/dataVolume/name"] {
                if let Some(slot) = v.pointer_mut(ptr) {
                    if let Some(new) = slot.as_str().and_then(|s| renames.get(s)) {
                        *slot = json!(new);
                    }
                }
            }
            // With the job method the disk is a plain PVC, not a DataVolume.
            if method == Method::Job {
                if let Some(dv) = v.get("dataVolume").cloned() {
                    if let Value::Object(o) = v {
                        o.remove("dataVolume");
                        let mut pvc =
                            json!({"claimName": dv.get("name").cloned().unwrap_or(Value::Null)});
                        if let Some(h) = dv.get("hotpluggable") {
                            pvc["hotpluggable"] = h.clone();
                        }
                        o.insert("persistentVolumeClaim".into(), pvc);
                    }
                }
            }
        }
    }
    if let Some(Value::Array(templates)) = vm.pointer_mut("/spec/dataVolumeTemplates") {
        let restored: Vec<&VolumePlan> = volumes.iter().collect();
        templates.retain_mut(|t| {
            let tname = t
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match restored.iter().find(|v| v.old_claim == tname) {
                // Job method: the PVC is ours, KubeVirt must not create a DataVolume for it.
                Some(_) if method == Method::Job => false,
                Some(v) => {
                    // The DataVolume exists before the VM; the template matches it exactly.
                    t["metadata"] = json!({"name": v.claim});
                    t["spec"] = datavolume_spec(v);
                    true
                }
                None => true,
            }
        });
    }
}

/// `runStrategy` `Always` when started, else `Halted`; the deprecated `running` goes.
pub(super) fn set_run_strategy(vm: &mut Value, start: bool) {
    if let Some(Value::Object(spec)) = vm.get_mut("spec") {
        spec.remove("running");
        spec.insert(
            "runStrategy".into(),
            json!(if start { "Always" } else { "Halted" }),
        );
    }
}

/// A copy's network identity: no MACs, a new firmware UUID, no fixed-IP annotations, the
/// domain label renamed from `old_vm` to `name`.
pub(super) fn new_identity(vm: &mut Value, old_vm: &str, name: &str) {
    if let Some(Value::Array(ifaces)) =
        vm.pointer_mut("/spec/template/spec/domain/devices/interfaces")
    {
        for i in ifaces.iter_mut() {
            if let Value::Object(o) = i {
                o.remove("macAddress");
            }
        }
    }
    if let Some(uuid) = vm.pointer_mut("/spec/template/spec/domain/firmware/uuid") {
        *uuid = json!(new_uuid());
    }
    drop_fixed_ip_annotations(vm.get_mut("metadata"));
    drop_fixed_ip_annotations(vm.pointer_mut("/spec/template/metadata"));
    if let Some(d) = vm.pointer_mut("/spec/template/metadata/labels/kubevirt.io~1domain") {
        if d.as_str() == Some(old_vm) {
            *d = json!(name);
        }
    }
}
