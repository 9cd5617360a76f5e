//! The inputs of a run besides the plan ([`Context`]), and object creation: every object the
//! run creates goes through [`create`], which records it in [`Created`] for the cleanup.

use std::sync::Arc;

use kube::api::PostParams;
use kube::{Api, Client};

use super::cluster::{kind_of, Kind};
use super::created::Created;
use super::error::Result;
use super::progress::Progress;
use crate::cluster::ClusterError;
use crate::repo::format::Manifest;
use crate::repo::Repository;

/// Inputs of [`execute`](super::execute()) besides the plan.
pub struct Context<'a> {
    pub client: &'a Client,
    pub repo: Arc<Repository>,
    pub manifest: &'a Manifest,
    /// CA certificates (DER) of the kubeconfig, trusted for the upload proxy.
    pub kube_ca: Vec<Vec<u8>>,
    pub created: Created,
    pub progress: &'a dyn Progress,
}

/// Creates `obj` in namespace `ns` and records it for the cleanup.
pub(super) async fn create<K: Kind>(ctx: &Context<'_>, ns: &str, obj: &K) -> Result<()> {
    let name = obj.meta().name.clone().unwrap_or_default();
    let kind = kind_of::<K>();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    api.create(&PostParams::default(), obj)
        .await
        .map_err(ClusterError::api("creating", kind, format!("{ns}/{name}")))?;
    ctx.created.push(kind, ns, &name);
    Ok(())
}
