//! Restore drills: prove that a backup restores into a VM that boots.
//!
//! [`run`] restores one backup **as a copy** into a sandbox namespace (the restore engine's copy
//! mode: new MACs, new firmware UUID, no fixed-IP annotations), starts it, waits for its VMI to
//! run and its guest agent to connect (the time from start to that point is the
//! *time to ready*), asks the agent through KubeVirt's `guestosinfo` and `filesystemlist`
//! subresources, checks that every filesystem the guest had mounted when the backup was taken
//! ([`GUEST_MOUNTS_LABEL`](crate::cluster::guest::GUEST_MOUNTS_LABEL) in the manifest) is
//! mounted again, and deletes everything it created.
//!
//! Isolation (default on): a NetworkPolicy that denies all ingress and egress of the copy's
//! virt-launcher pod exists before the copy starts, and the copy loses its Multus networks (a
//! secondary network is usually a bridge onto a production VLAN, where a NetworkPolicy does not
//! apply and a second machine with the same services would be seen).
//!
//! Invariant: everything a drill creates lives in the sandbox namespace, carries the label
//! [`RESTORE_ID`] with a value starting with [`DRILL_ID_PREFIX`] and the annotation
//! [`RESTORED_FROM`] naming the source backup, and is deleted before [`run`] returns, whatever
//! the outcome. A drill that was interrupted is cleaned up by the caller ([`DrillHandle::cleanup`]);
//! one that was killed is cleaned up by the next drill of the same VM ([`delete_stale`]).
//! A drill never writes to the source VM or its namespace (the status record is the caller's).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;
use virtguard_api::{labels, DataVolume, VirtualMachine, VirtualMachineInstance};

use super::restore::{self, Mode, Plan, Progress, RestoreRequest, RESTORED_FROM, RESTORE_ID};
use crate::cluster::guest;
use crate::repo::locks::LockKind;
use crate::repo::{BackupRef, Repository};

/// Every drill id (the [`RESTORE_ID`] label of what a drill creates) starts with this.
pub const DRILL_ID_PREFIX: &str = "drill-";

/// The label KubeVirt puts on a VMI's virt-launcher pod: the VMI's name.
const LAUNCHER_POD_VM_LABEL: &str = "vm.kubevirt.io/name";

/// What a drill is asked to do.
#[derive(Debug, Clone)]
pub struct DrillRequest {
    /// Namespace the copy is restored into (must exist).
    pub sandbox: String,
    /// NetworkPolicy deny-all + Multus networks removed.
    pub isolate: bool,
    /// From starting the copy to its guest agent answering.
    pub boot_timeout: Duration,
    /// Data path and limits of the restore (namespace, name, mode and start are set by the
    /// drill).
    pub restore: RestoreRequest,
    /// CA certificates (DER) of the kubeconfig, trusted for the CDI upload proxy.
    pub kube_ca: Vec<Vec<u8>>,
}

/// The outcome of one drill.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillReport {
    /// The drill id.
    pub id: String,
    /// The source VM, `namespace/name`.
    pub source: String,
    /// The backup restored, `namespace/vm/id`.
    pub backup: String,
    pub sandbox: String,
    /// The copy, `namespace/name`.
    pub copy: String,
    pub succeeded: bool,
    /// Fixed failure code, one of [`virtguard_api::status::DrillStatusRecord::REASONS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// What failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Wall time of the whole drill.
    pub seconds: f64,
    /// Wall time of the restore step.
    pub restore_seconds: f64,
    /// Start of the copy → guest agent connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_ready_seconds: Option<f64>,
    /// The guest OS as its agent names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_os: Option<String>,
    /// Mount points the guest had when the backup was taken (None: not recorded).
    pub expected_mounts: Option<Vec<String>>,
    /// Mount points the restored copy reported.
    pub found_mounts: Vec<String>,
    /// What was deleted afterwards (`Kind ns/name`).
    pub deleted: Vec<String>,
}

/// A drill step that failed: its fixed code and what happened.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    message: String,
}

fn fail(reason: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
    }
}

/// What a drill run created, so the caller can clean up after an interruption.
#[derive(Debug, Clone)]
pub struct DrillHandle {
    id: String,
    sandbox: String,
    copy: String,
    created: restore::Created,
    policy: Arc<Mutex<Option<String>>>,
}

impl DrillHandle {
    /// A handle for a drill of `source` into `sandbox` (the id is new and unique).
    pub fn new(source: &BackupRef, sandbox: &str) -> DrillHandle {
        let id = format!(
            "{DRILL_ID_PREFIX}{}",
            crate::repo::format::BackupId::new_now()
                .as_str()
                .to_ascii_lowercase()
        );
        DrillHandle {
            copy: copy_name(&source.namespace, &source.vm),
            id,
            sandbox: sandbox.to_string(),
            created: restore::Created::default(),
            policy: Arc::new(Mutex::new(None)),
        }
    }

    /// The drill id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Deletes everything the drill created (VM first, then its disks, then the policy) and
    /// waits, bounded by `timeout`, until the copy's VMI is gone (so nothing of it still runs).
    /// Returns what was deleted, or what could not be.
    pub async fn cleanup(&self, client: &Client, timeout: Duration) -> Result<Vec<String>, String> {
        let mut deleted = self.created.rollback(client).await;
        let policy = self.policy.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = policy {
            let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &self.sandbox);
            match api.delete(&p, &DeleteParams::background()).await {
                Ok(_) => deleted.push(format!("NetworkPolicy {}/{p}", self.sandbox)),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(format!("deleting NetworkPolicy {}/{p}: {e}", self.sandbox)),
            }
        }
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &self.sandbox);
        let deadline = Instant::now() + timeout;
        loop {
            match vmis.get_opt(&self.copy).await {
                Ok(None) => break,
                Ok(Some(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Ok(Some(_)) => {
                    return Err(format!(
                        "the copy's VMI {}/{} still exists after {timeout:?}: delete it by hand",
                        self.sandbox, self.copy
                    ))
                }
                Err(e) => return Err(format!("reading VMI {}/{}: {e}", self.sandbox, self.copy)),
            }
        }
        Ok(deleted)
    }
}

/// Name of the copy of VM `ns/vm`: `drill-<ns>-<vm>`, shortened with a hash to stay a valid
/// label value (63 characters) — the launcher pod carries it as one.
pub fn copy_name(ns: &str, vm: &str) -> String {
    let full = format!("drill-{ns}-{vm}");
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across builds, enough to keep two long names apart.
    let h = full.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let h = format!("{h:08x}");
    let mut head: String = full.chars().take(54).collect();
    while head.ends_with('-') {
        head.pop();
    }
    format!("{head}-{h}")
}

/// Runs one drill of backup `source`. Never returns an error: a failed drill is a report with
/// `succeeded: false` and its reason; everything created is deleted in both cases.
pub async fn run(
    client: &Client,
    repo: Arc<Repository>,
    source: &BackupRef,
    req: &DrillRequest,
    handle: &DrillHandle,
    progress: &dyn Progress,
) -> DrillReport {
    let t0 = Instant::now();
    let mut rep = DrillReport {
        id: handle.id.clone(),
        source: format!("{}/{}", source.namespace, source.vm),
        backup: source.to_string(),
        sandbox: req.sandbox.clone(),
        copy: format!("{}/{}", req.sandbox, handle.copy),
        succeeded: false,
        reason: None,
        message: None,
        seconds: 0.0,
        restore_seconds: 0.0,
        time_to_ready_seconds: None,
        guest_os: None,
        expected_mounts: None,
        found_mounts: Vec::new(),
        deleted: Vec::new(),
    };
    let outcome = steps(client, repo, source, req, handle, progress, &mut rep).await;
    let cleanup = handle.cleanup(client, req.boot_timeout).await;
    match (outcome, cleanup) {
        (Ok(()), Ok(deleted)) => {
            rep.succeeded = true;
            rep.deleted = deleted;
        }
        (Ok(()), Err(e)) => {
            rep.reason = Some("cleanup-failed");
            rep.message = Some(e);
        }
        (Err(f), cleanup) => {
            rep.reason = Some(f.reason);
            rep.message = Some(match &cleanup {
                Ok(_) => f.message,
                Err(e) => format!("{}; cleanup also failed: {e}", f.message),
            });
            rep.deleted = cleanup.unwrap_or_default();
        }
    }
    rep.seconds = t0.elapsed().as_secs_f64();
    rep
}

async fn steps(
    client: &Client,
    repo: Arc<Repository>,
    source: &BackupRef,
    req: &DrillRequest,
    handle: &DrillHandle,
    progress: &dyn Progress,
    rep: &mut DrillReport,
) -> Result<(), Failure> {
    let sandbox = req.sandbox.as_str();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    match ns_api.get_opt(sandbox).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(fail(
                "sandbox-missing",
                format!("the sandbox namespace `{sandbox}` does not exist: create it (`kubectl create namespace {sandbox}`) or pass --sandbox NAME"),
            ))
        }
        Err(e) => {
            return Err(fail(
                "sandbox-missing",
                format!("reading namespace {sandbox}: {e}"),
            ))
        }
    }
    for d in delete_stale(client, sandbox, &source.namespace, &source.vm).await {
        progress.line(&format!("deleted {d} (left by an earlier drill)"));
    }

    // 1. Restore a copy, started.
    let restore_failed = |e: String| fail("restore-failed", e);
    let t_restore = Instant::now();
    let m = repo
        .load_manifest(source)
        .await
        .map_err(|e| restore_failed(format!("reading backup {source}: {e}")))?;
    rep.expected_mounts = m
        .labels
        .get(guest::GUEST_MOUNTS_LABEL)
        .map(|l| guest::parse_mounts(l));
    let objs = restore::load_objects(&repo, &m)
        .await
        .map_err(|e| restore_failed(e.to_string()))?;
    let mut rr = req.restore.clone();
    rr.target_namespace = Some(sandbox.to_string());
    rr.name = Some(handle.copy.clone());
    rr.mode = Mode::Copy;
    rr.start = true;
    rr.wait = false;
    rr.keep_partial = false;
    let mut plan =
        restore::plan(&m, &objs, &rr, &handle.id).map_err(|e| restore_failed(e.to_string()))?;
    mark(&mut plan, source, req.isolate);
    for w in restore::check_target(client, &plan)
        .await
        .map_err(|e| restore_failed(e.to_string()))?
    {
        progress.line(&format!("warning: {w}"));
    }
    if req.isolate {
        isolate(client, &plan, source, handle)
            .await
            .map_err(|e| restore_failed(format!("creating the isolation NetworkPolicy: {e}")))?;
    }
    let lock = repo
        .lock(LockKind::Shared, "drill")
        .await
        .map_err(|e| restore_failed(e.to_string()))?;
    let ctx = restore::Context {
        client,
        repo: repo.clone(),
        manifest: &m,
        kube_ca: req.kube_ca.clone(),
        created: handle.created.clone(),
        progress,
    };
    let restored = restore::execute(&ctx, &plan, &rr).await;
    lock.release().await;
    restored.map_err(|e| restore_failed(e.to_string()))?;
    rep.restore_seconds = t_restore.elapsed().as_secs_f64();
    progress.line(&format!(
        "restored {source} as {} in {:.1}s; waiting for it to boot",
        rep.copy, rep.restore_seconds
    ));

    // 2. Boot: VMI Running, then the guest agent.
    let t_start = Instant::now();
    let deadline = t_start + req.boot_timeout;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), sandbox);
    let mut running = false;
    loop {
        let vmi = vmis.get_opt(&handle.copy).await.ok().flatten();
        if let Some(v) = &vmi {
            if v.phase() == "Failed" {
                let why = v
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .find_map(|c| c.message.clone())
                    .unwrap_or_else(|| "no reason given".into());
                return Err(fail(
                    "start-failed",
                    format!("the copy's VMI {} failed to start: {why}", rep.copy),
                ));
            }
            running = running || v.is_running();
            if running && v.agent_connected() {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(if running {
                fail(
                    "agent-not-connected",
                    format!(
                        "the copy {} runs but its guest agent did not connect within {:?} (the guest may not have booted: check its console)",
                        rep.copy, req.boot_timeout
                    ),
                )
            } else {
                fail(
                    "not-running",
                    format!(
                        "the copy's VMI {} was not Running within {:?} (phase {})",
                        rep.copy,
                        req.boot_timeout,
                        vmi.as_ref()
                            .map(|v| v.phase().to_string())
                            .unwrap_or_else(|| "absent".into())
                    ),
                )
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ready = t_start.elapsed().as_secs_f64();
    rep.time_to_ready_seconds = Some(ready);
    progress.line(&format!(
        "{} booted: guest agent connected {ready:.1}s after start",
        rep.copy
    ));

    // 3. The guest, through its agent.
    let info = guest::os_info(client, sandbox, &handle.copy)
        .await
        .map_err(|e| fail("guest-info-failed", e.to_string()))?;
    rep.guest_os = info.os.as_ref().and_then(|o| {
        o.pretty_name
            .clone()
            .or_else(|| o.name.clone())
            .or_else(|| o.kernel_release.as_ref().map(|k| format!("Linux {k}")))
    });
    let fs = guest::filesystems(client, sandbox, &handle.copy)
        .await
        .map_err(|e| fail("guest-info-failed", e.to_string()))?;
    rep.found_mounts = guest::mount_points(&fs);
    if let Some(expected) = &rep.expected_mounts {
        let missing: Vec<&String> = expected
            .iter()
            .filter(|m| !rep.found_mounts.contains(m))
            .collect();
        if !missing.is_empty() {
            return Err(fail(
                "filesystem-missing",
                format!(
                    "the guest had {} mounted when backed up; the restored copy mounts {} — missing: {}",
                    expected.join(", "),
                    if rep.found_mounts.is_empty() {
                        "nothing".to_string()
                    } else {
                        rep.found_mounts.join(", ")
                    },
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Marks the plan's VM as a drill copy and, isolated, removes its Multus networks.
fn mark(plan: &mut Plan, source: &BackupRef, isolate: bool) {
    let meta = &mut plan.vm.metadata;
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(labels::DRILL_ID.to_string(), plan.restore_id.clone());
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(
        labels::DRILL_SOURCE.to_string(),
        format!("{}/{}", source.namespace, source.vm),
    );
    if !isolate {
        return;
    }
    plan.networks.clear();
    if let Some(spec) = plan.vm.template_spec_mut() {
        let mut removed = Vec::new();
        if let Some(nets) = spec.networks.as_mut() {
            nets.retain(|n| {
                let multus = n.multus.is_some();
                if multus {
                    removed.extend(n.name.clone());
                }
                !multus
            });
        }
        if let Some(ifaces) = spec
            .domain
            .as_mut()
            .and_then(|d| d.devices.as_mut())
            .and_then(|d| d.interfaces.as_mut())
        {
            ifaces.retain(|i| i.name.as_ref().is_none_or(|n| !removed.contains(n)));
        }
    }
}

/// Creates the deny-all NetworkPolicy of the copy's launcher pod (before the copy exists).
async fn isolate(
    client: &Client,
    plan: &Plan,
    source: &BackupRef,
    handle: &DrillHandle,
) -> Result<(), kube::Error> {
    let name = format!("{}-isolation", handle.copy);
    let np = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(plan.namespace.clone()),
            labels: Some(BTreeMap::from([
                (RESTORE_ID.to_string(), handle.id.clone()),
                (
                    labels::MANAGED_BY.to_string(),
                    labels::MANAGED_BY_VALUE.to_string(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                RESTORED_FROM.to_string(),
                source.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    LAUNCHER_POD_VM_LABEL.to_string(),
                    handle.copy.clone(),
                )])),
                ..Default::default()
            }),
            // Both types and no rules: nothing in, nothing out.
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..Default::default()
        }),
    };
    Api::<NetworkPolicy>::namespaced(client.clone(), &plan.namespace)
        .create(&PostParams::default(), &np)
        .await?;
    *handle.policy.lock().unwrap_or_else(|p| p.into_inner()) = Some(name);
    Ok(())
}

/// Deletes, in `sandbox`, what an earlier (killed) drill of VM `ns/vm` left behind: objects whose
/// [`RESTORE_ID`] starts with [`DRILL_ID_PREFIX`] and whose [`RESTORED_FROM`] names a backup of
/// that VM. Returns what was deleted; failures are logged.
pub async fn delete_stale(client: &Client, sandbox: &str, ns: &str, vm: &str) -> Vec<String> {
    let prefix = format!("{ns}/{vm}/");
    let mut deleted = Vec::new();
    deleted.extend(stale_of::<VirtualMachine>(client, sandbox, &prefix).await);
    deleted.extend(stale_of::<DataVolume>(client, sandbox, &prefix).await);
    deleted.extend(stale_of::<PersistentVolumeClaim>(client, sandbox, &prefix).await);
    deleted.extend(stale_of::<NetworkPolicy>(client, sandbox, &prefix).await);
    // The new copy reuses the names: wait (bounded) until the old VM, its VMI and its disks are
    // gone, or its VMI would be taken for the new copy's.
    let deadline = Instant::now() + Duration::from_secs(120);
    for d in &deleted {
        let Some((kind, rest)) = d.split_once(' ') else {
            continue;
        };
        let name = rest.rsplit('/').next().unwrap_or_default();
        while Instant::now() < deadline && still_there(client, sandbox, kind, name).await {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    deleted
}

async fn still_there(client: &Client, ns: &str, kind: &str, name: &str) -> bool {
    async fn one<K>(client: &Client, ns: &str, name: &str) -> bool
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        Api::<K>::namespaced(client.clone(), ns)
            .get_opt(name)
            .await
            .map(|o| o.is_some())
            .unwrap_or(false)
    }
    match kind {
        "VirtualMachine" => {
            one::<VirtualMachine>(client, ns, name).await
                || one::<VirtualMachineInstance>(client, ns, name).await
        }
        "DataVolume" => one::<DataVolume>(client, ns, name).await,
        "PersistentVolumeClaim" => one::<PersistentVolumeClaim>(client, ns, name).await,
        _ => false,
    }
}

async fn stale_of<K>(client: &Client, sandbox: &str, prefix: &str) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), sandbox);
    let list = match api.list(&ListParams::default().labels(RESTORE_ID)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(kind = K::KIND, namespace = sandbox, error = %e, "cannot list earlier drills' objects");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for o in list.items {
        let meta = o.meta();
        let ours = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(RESTORE_ID))
            .is_some_and(|v| v.starts_with(DRILL_ID_PREFIX))
            && meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(RESTORED_FROM))
                .is_some_and(|v| v.starts_with(prefix));
        let Some(name) = meta.name.clone().filter(|_| ours) else {
            continue;
        };
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => out.push(format!("{} {sandbox}/{name}", K::KIND)),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                tracing::warn!(kind = K::KIND, object = %name, error = %e, "cannot delete an earlier drill's object")
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_names_are_valid_label_values() {
        assert_eq!(copy_name("prod", "db"), "drill-prod-db");
        let long = copy_name(
            "a-very-long-namespace-name-for-tests",
            "and-an-even-longer-vm-name-here",
        );
        assert!(long.len() <= 63, "{long}");
        assert!(long.starts_with("drill-a-very-long"));
        assert_ne!(
            long,
            copy_name(
                "a-very-long-namespace-name-for-tests",
                "and-an-even-longer-vm-name-herf"
            )
        );
    }
}
