//! One backup of a VM at a time, across processes and nodes: a coordination.k8s.io Lease
//! `virtguard-backup-<vm>` in the VM's namespace, held by the run's backup id.
//!
//! Taking it: create the Lease; if it exists and its holder renewed it within
//! `leaseDurationSeconds`, the VM is busy; if it expired (its holder died), replace it using the
//! resourceVersion we read, so two runs racing for an expired lease cannot both win (the loser
//! gets 409 Conflict). The holder renews it every third of the duration and deletes it when done;
//! the Lease carries the run's labels, so `virtguard cleanup` removes it after a killed run.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};

use super::{ClusterError, Result};

/// Seconds a holder may go without renewing before its lease is considered abandoned.
pub const LEASE_SECONDS: i32 = 60;

/// A held lease; renewed in the background until [`VmLease::release`] (or drop).
pub struct VmLease {
    api: Api<Lease>,
    name: String,
    renew: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for VmLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmLease").field("name", &self.name).finish()
    }
}

/// The Lease name for a VM.
pub fn lease_name(vm: &str) -> String {
    format!("virtguard-backup-{vm}")
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn expired(lease: &Lease) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(LEASE_SECONDS));
    let age = k8s_openapi::jiff::Timestamp::now().as_second() - renewed.0.as_second();
    age > secs
}

impl VmLease {
    /// Takes the lease of VM `namespace/vm` for run `holder`, or fails naming the current holder.
    pub async fn acquire(
        client: &Client,
        namespace: &str,
        vm: &str,
        holder: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<VmLease> {
        let api = Api::<Lease>::namespaced(client.clone(), namespace);
        let name = lease_name(vm);
        let object = format!("{namespace}/{name}");
        let mut lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_string()),
                lease_duration_seconds: Some(LEASE_SECONDS),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                ..Default::default()
            }),
        };
        match api.create(&PostParams::default(), &lease).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let current = api
                    .get(&name)
                    .await
                    .map_err(ClusterError::api("reading", "Lease", &object))?;
                let busy_by = current
                    .spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default();
                if !expired(&current) {
                    return Err(ClusterError::Busy {
                        vm: format!("{namespace}/{vm}"),
                        holder: busy_by,
                    });
                }
                tracing::warn!(lease = %object, previous = %busy_by, "taking over an expired backup lease");
                lease.metadata.resource_version = current.metadata.resource_version;
                api.replace(&name, &PostParams::default(), &lease)
                    .await
                    .map_err(|e| match e {
                        kube::Error::Api(s) if s.code == 409 => ClusterError::Busy {
                            vm: format!("{namespace}/{vm}"),
                            holder: "another run that took over the expired lease first".into(),
                        },
                        e => ClusterError::api("taking over", "Lease", &object)(e),
                    })?;
            }
            Err(e) => return Err(ClusterError::api("creating", "Lease", &object)(e)),
        }
        let renew = {
            let api = api.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let period = Duration::from_secs((LEASE_SECONDS / 3).max(1) as u64);
                loop {
                    tokio::time::sleep(period).await;
                    let patch = serde_json::json!({ "spec": { "renewTime": now() } });
                    if let Err(e) = api
                        .patch(
                            &name,
                            &kube::api::PatchParams::default(),
                            &kube::api::Patch::Merge(&patch),
                        )
                        .await
                    {
                        tracing::warn!(error = %e, lease = %name, "renewing the backup lease failed");
                    }
                }
            })
        };
        Ok(VmLease { api, name, renew })
    }

    /// Stops renewing and deletes the lease.
    pub async fn release(self) {
        self.renew.abort();
        if let Err(e) = self.api.delete(&self.name, &DeleteParams::default()).await {
            tracing::warn!(error = %e, lease = %self.name, "deleting the backup lease failed; it expires by itself");
        }
    }
}

impl Drop for VmLease {
    fn drop(&mut self) {
        self.renew.abort();
    }
}
