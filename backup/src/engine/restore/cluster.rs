//! The cluster API the restore engine talks to: typed GETs of the objects it reads (a missing
//! object is `None`), and the API of each kind it creates, for the cleanup.
//!
//! Invariant: every call's error names the object (`Kind ns/name`) it failed on.

use std::fmt::Debug;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use virtguard_api::{DataVolume, VirtualMachine};

use super::error::Result;
use crate::cluster::ClusterError;

/// A namespaced kind, typed (virtguard-api's or k8s-openapi's model).
pub(super) trait Kind:
    kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + k8s_openapi::Resource
    + Clone
    + Debug
    + DeserializeOwned
    + serde::Serialize
{
}

impl<K> Kind for K where
    K: kube::Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + DeserializeOwned
        + serde::Serialize
{
}

/// The kind's name for messages (`VirtualMachine`, `PersistentVolumeClaim`, ...).
pub(super) fn kind_of<K: Kind>() -> &'static str {
    <K as k8s_openapi::Resource>::KIND
}

/// GETs `ns/name`; `None` when there is no such object.
pub(super) async fn get_opt<K: Kind>(client: &Client, ns: &str, name: &str) -> Result<Option<K>> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let o = api.get_opt(name).await.map_err(ClusterError::api(
        "reading",
        kind_of::<K>(),
        format!("{ns}/{name}"),
    ))?;
    Ok(o)
}

/// The API of a kind a restore creates (by the name [`super::Created`] records), and that name.
pub(super) fn api_of(
    client: &Client,
    ns: &str,
    kind: &str,
) -> Option<(Api<DynamicObject>, &'static str)> {
    fn erased<K: Kind>() -> (ApiResource, &'static str) {
        (ApiResource::erase::<K>(&()), kind_of::<K>())
    }
    let (r, k) = match kind {
        "VirtualMachine" => erased::<VirtualMachine>(),
        "DataVolume" => erased::<DataVolume>(),
        "PersistentVolumeClaim" => erased::<PersistentVolumeClaim>(),
        "Job" => erased::<Job>(),
        "Secret" => erased::<Secret>(),
        _ => return None,
    };
    Some((Api::namespaced_with(client.clone(), ns, &r), k))
}
