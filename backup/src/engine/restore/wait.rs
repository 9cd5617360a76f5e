//! Waiting: polling with backoff until a condition holds or the run's `--timeout` passes, for
//! deletions and for the restored VM's VMI to run.
//!
//! Invariant: every wait is bounded by a timeout and ends in [`RestoreError::Timeout`] naming
//! what was awaited; none sleeps a fixed time in place of checking.

use std::time::{Duration, Instant};

use kube::api::{DeleteParams, DynamicObject};
use kube::Api;
use serde_json::Value;

use super::cluster::{api_of, vmi_ar};
use super::context::Context;
use super::error::{RestoreError, Result};
use crate::cluster::ClusterError;

pub(super) async fn poll<T, F, Fut>(what: String, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(RestoreError::Timeout {
                what,
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

pub(super) async fn delete_and_wait(
    ctx: &Context<'_>,
    ns: &str,
    kind: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let (api, k) = api_of(ctx.client, ns, kind)
        .ok_or_else(|| RestoreError::Invalid(format!("unknown kind {kind}")))?;
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(ClusterError::api("deleting", k, format!("{ns}/{name}"))(e).into()),
    }
    poll(format!("{k} {ns}/{name} to be deleted"), timeout, || {
        let api = api.clone();
        async move {
            match api.get_opt(name).await {
                Ok(None) => Ok(Some(())),
                Ok(Some(_)) => Ok(None),
                Err(e) => Err(ClusterError::api("reading", k, format!("{ns}/{name}"))(e).into()),
            }
        }
    })
    .await
}

/// Waits until the VMI `ns/name` is Running.
pub(super) async fn vmi_running(
    ctx: &Context<'_>,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let vmi: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &vmi_ar());
    let name = name.to_string();
    poll(format!("VMI {ns}/{name} to be Running"), timeout, || {
        let vmi = vmi.clone();
        let name = name.clone();
        async move {
            let o = vmi.get_opt(&name).await.map_err(ClusterError::api(
                "reading",
                "VirtualMachineInstance",
                name.clone(),
            ))?;
            let running = o
                .and_then(|o| serde_json::to_value(o).ok())
                .and_then(|v| {
                    v.pointer("/status/phase")
                        .and_then(Value::as_str)
                        .map(|p| p == "Running")
                })
                .unwrap_or(false);
            Ok(running.then_some(()))
        }
    })
    .await
}
