//! The inputs of a run besides the plan ([`Context`]), and object creation: every object the
//! run creates goes through [`create`], which records it in [`Created`] for the cleanup.

use std::sync::Arc;

use kube::api::{DynamicObject, PostParams};
use kube::Client;
use serde_json::Value;

use super::cluster::api_of;
use super::created::Created;
use super::error::{RestoreError, Result};
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

pub(super) async fn create(ctx: &Context<'_>, ns: &str, kind: &str, obj: &Value) -> Result<()> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let (api, k) = api_of(ctx.client, ns, kind)
        .ok_or_else(|| RestoreError::Invalid(format!("unknown kind {kind}")))?;
    let d: DynamicObject = serde_json::from_value(obj.clone())
        .map_err(|e| RestoreError::Invalid(format!("building {k} {ns}/{name}: {e}")))?;
    api.create(&PostParams::default(), &d)
        .await
        .map_err(ClusterError::api("creating", k, format!("{ns}/{name}")))?;
    ctx.created.push(kind, ns, &name);
    Ok(())
}
