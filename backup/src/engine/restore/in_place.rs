//! The in-place switch: a restore `--in-place` writes every disk into a new, staged claim (the
//! old name with the restore's suffix, `db-root` → `db-root-r3f9a`), stops the VM (only with
//! `--force` when it runs), replaces the VM's spec to use the staged claims, and only then
//! deletes the claims it used before.
//!
//! Invariant: in place never makes things worse. Until the switch the VM's old disks are
//! untouched, so a failed or interrupted in-place restore leaves the VM stopped with the disks it
//! had; after the switch nothing is rolled back. The price is room for a second copy of the
//! disks during the restore.

use std::time::Duration;

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

use super::cluster::{dv_ar, get_opt, pvc_ar, vm_ar, vmi_ar};
use super::context::Context;
use super::error::{RestoreError, Result};
use super::model::{Plan, RestoreRequest};
use super::wait::{delete_and_wait, poll};
use crate::cluster::ClusterError;

/// In place: the claims the restored volumes replace — what the live VM uses for each volume,
/// or (no live VM) the backed-up claim name — when such a PVC or DataVolume exists and is not
/// the new claim itself. They are deleted only after the VM uses the restored disks.
pub(super) async fn replaced_claims(
    ctx: &Context<'_>,
    plan: &Plan,
    live_vm: Option<&Value>,
) -> Result<Vec<String>> {
    let ns = plan.namespace.as_str();
    let live_vols = live_vm
        .and_then(|vm| vm.pointer("/spec/template/spec/volumes"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for v in &plan.volumes {
        let live = live_vols
            .iter()
            .find(|lv| lv.get("name").and_then(Value::as_str) == Some(v.volume.as_str()))
            .and_then(|lv| {
                lv.pointer("/persistentVolumeClaim/claimName")
                    .or_else(|| lv.pointer("/dataVolume/name"))
                    .and_then(Value::as_str)
            });
        let old = match (live_vm, live) {
            (Some(_), Some(c)) => c.to_string(),
            // The live VM no longer has this volume: nothing of it to replace.
            (Some(_), None) => continue,
            (None, _) => v.old_claim.clone(),
        };
        if old == v.claim || out.contains(&old) {
            continue;
        }
        let exists = get_opt(ctx.client, ns, &pvc_ar(), "PersistentVolumeClaim", &old)
            .await?
            .is_some()
            || get_opt(ctx.client, ns, &dv_ar(), "DataVolume", &old)
                .await?
                .is_some();
        if exists {
            out.push(old);
        }
    }
    Ok(out)
}

pub(super) async fn stop_for_in_place(
    ctx: &Context<'_>,
    plan: &Plan,
    req: &RestoreRequest,
    vm_exists: bool,
) -> Result<()> {
    let ns = plan.namespace.as_str();
    let vmi = get_opt(
        ctx.client,
        ns,
        &vmi_ar(),
        "VirtualMachineInstance",
        &plan.name,
    )
    .await?;
    if vmi.is_none() {
        return Ok(());
    }
    if !req.force || !vm_exists {
        return Err(RestoreError::Running {
            ns: ns.to_string(),
            name: plan.name.clone(),
        });
    }
    ctx.progress
        .line(&format!("--force: stopping VM {ns}/{}", plan.name));
    let vmapi: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &vm_ar());
    vmapi
        .patch(
            &plan.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Halted", "running": null}})),
        )
        .await
        .map_err(ClusterError::api(
            "stopping",
            "VirtualMachine",
            format!("{ns}/{}", plan.name),
        ))?;
    let name = plan.name.clone();
    poll(format!("VMI {ns}/{name} to stop"), req.timeout, || {
        let name = name.clone();
        async move {
            Ok(
                get_opt(ctx.client, ns, &vmi_ar(), "VirtualMachineInstance", &name)
                    .await?
                    .is_none()
                    .then_some(()),
            )
        }
    })
    .await
}

/// Replaces the live VM `live` with the plan's VM, keeping the live object's identity and owners.
pub(super) async fn replace_vm(ctx: &Context<'_>, plan: &Plan, live: &Value) -> Result<()> {
    let ns = plan.namespace.as_str();
    let vmapi: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &vm_ar());
    let mut obj = plan.vm.clone();
    // Keep the live object's identity and owners.
    for k in [
        "uid",
        "resourceVersion",
        "ownerReferences",
        "finalizers",
        "creationTimestamp",
    ] {
        if let Some(v) = live.pointer(&format!("/metadata/{k}")) {
            obj["metadata"][k] = v.clone();
        }
    }
    let d: DynamicObject = serde_json::from_value(obj).map_err(|e| {
        RestoreError::Invalid(format!("building VirtualMachine {ns}/{}: {e}", plan.name))
    })?;
    vmapi
        .replace(&plan.name, &PostParams::default(), &d)
        .await
        .map_err(ClusterError::api(
            "replacing",
            "VirtualMachine",
            format!("{ns}/{}", plan.name),
        ))?;
    Ok(())
}

/// After the switch: deletes the replaced claims (DataVolume and PVC); returns `ns/claim` of
/// each one deleted. A claim that cannot be deleted is only warned about: the restore is
/// complete.
pub(super) async fn delete_replaced(
    ctx: &Context<'_>,
    plan: &Plan,
    replaced: &[String],
    timeout: Duration,
) -> Vec<String> {
    let ns = plan.namespace.as_str();
    let mut replaced_deleted = Vec::new();
    for claim in replaced {
        ctx.progress.line(&format!(
            "in place: deleting the replaced disk {ns}/{claim} (the VM now uses the restored one)"
        ));
        let deleted = async {
            delete_and_wait(ctx, ns, "DataVolume", claim, timeout).await?;
            delete_and_wait(ctx, ns, "PersistentVolumeClaim", claim, timeout).await
        }
        .await;
        match deleted {
                Ok(()) => replaced_deleted.push(format!("{ns}/{claim}")),
                Err(e) => ctx.progress.line(&format!(
                    "warning: the restore is complete, but the replaced disk {ns}/{claim} could not be deleted ({e}): delete it with `kubectl delete pvc -n {ns} {claim}` once you no longer need it"
                )),
            }
    }
    replaced_deleted
}
