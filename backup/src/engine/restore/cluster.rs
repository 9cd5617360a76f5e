//! The cluster API the restore engine talks to: which API each kind it reads or writes lives
//! in, and a GET that answers `None` for a missing object.
//!
//! Invariant: every call's error names the object (`Kind ns/name`) it failed on.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Api, Client};
use serde_json::Value;

use super::error::Result;
use crate::cluster::ClusterError;

pub(super) fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub(super) fn vm_ar() -> ApiResource {
    ar("kubevirt.io", "v1", "VirtualMachine", "virtualmachines")
}
pub(super) fn vmi_ar() -> ApiResource {
    ar(
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
        "virtualmachineinstances",
    )
}
pub(super) fn dv_ar() -> ApiResource {
    ar("cdi.kubevirt.io", "v1beta1", "DataVolume", "datavolumes")
}
pub(super) fn pvc_ar() -> ApiResource {
    ar("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims")
}

/// What `kind` (for messages) and which API an object lives in.
pub(super) fn api_of(
    client: &Client,
    ns: &str,
    kind: &str,
) -> Option<(Api<DynamicObject>, &'static str)> {
    let (r, k) = match kind {
        "VirtualMachine" => (vm_ar(), "VirtualMachine"),
        "DataVolume" => (dv_ar(), "DataVolume"),
        "PersistentVolumeClaim" => (pvc_ar(), "PersistentVolumeClaim"),
        "Job" => (ar("batch", "v1", "Job", "jobs"), "Job"),
        "Secret" => (ar("", "v1", "Secret", "secrets"), "Secret"),
        _ => return None,
    };
    Some((Api::namespaced_with(client.clone(), ns, &r), k))
}

pub(super) async fn get_opt(
    client: &Client,
    ns: &str,
    r: &ApiResource,
    kind: &'static str,
    name: &str,
) -> Result<Option<Value>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, r);
    let o = api.get_opt(name).await.map_err(ClusterError::api(
        "reading",
        kind,
        format!("{ns}/{name}"),
    ))?;
    Ok(o.and_then(|o| serde_json::to_value(o).ok()))
}
