//! Waiting: polling with backoff until a condition holds or the run's `--timeout` passes, for
//! deletions and for the restored VM's VMI to run.
//!
//! Invariant: every wait is bounded by a timeout and ends in [`RestoreError::Timeout`] naming
//! what was awaited; none sleeps a fixed time in place of checking.

use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use kube::Api;
use virtguard_api::VirtualMachineInstance;

use super::cluster::{get_opt, kind_of, Kind};
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

/// Deletes `ns/name` of kind `K` (absent is fine) and waits until it is gone.
pub(super) async fn delete_and_wait<K: Kind>(
    ctx: &Context<'_>,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    let k = kind_of::<K>();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(ClusterError::api("deleting", k, format!("{ns}/{name}"))(e).into()),
    }
    poll(
        format!("{k} {ns}/{name} to be deleted"),
        timeout,
        || async {
            Ok(get_opt::<K>(ctx.client, ns, name)
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await
}

/// Waits until the VMI `ns/name` is Running.
pub(super) async fn vmi_running(
    ctx: &Context<'_>,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    poll(
        format!("VMI {ns}/{name} to be Running"),
        timeout,
        || async {
            let vmi = get_opt::<VirtualMachineInstance>(ctx.client, ns, name).await?;
            Ok(vmi.is_some_and(|v| v.is_running()).then_some(()))
        },
    )
    .await
}
