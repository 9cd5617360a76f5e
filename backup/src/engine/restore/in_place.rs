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

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use virtguard_api::{DataVolume, VirtualMachine, VirtualMachineInstance};

use super::cluster::get_opt;
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
    live_vm: Option<&VirtualMachine>,
) -> Result<Vec<String>> {
    let ns = plan.namespace.as_str();
    let live_vols = live_vm
        .and_then(|vm| vm.template_spec())
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for v in &plan.volumes {
        let live = live_vols
            .iter()
            .find(|lv| lv.name.as_deref() == Some(v.volume.as_str()))
            .and_then(|lv| lv.claim_name());
        let old = match (live_vm, live) {
            (Some(_), Some(c)) => c.to_string(),
            // The live VM no longer has this volume: nothing of it to replace.
            (Some(_), None) => continue,
            (None, _) => v.old_claim.clone(),
        };
        if old == v.claim || out.contains(&old) {
            continue;
        }
        let exists = get_opt::<PersistentVolumeClaim>(ctx.client, ns, &old)
            .await?
            .is_some()
            || get_opt::<DataVolume>(ctx.client, ns, &old).await?.is_some();
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
    let name = plan.name.as_str();
    let vmi = get_opt::<VirtualMachineInstance>(ctx.client, ns, name).await?;
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
        .line(&format!("--force: stopping VM {ns}/{name}"));
    let vmapi: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), ns);
    // A merge patch: `running: null` deletes the deprecated field, which a typed object cannot
    // express.
    vmapi
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Halted", "running": null}})),
        )
        .await
        .map_err(ClusterError::api(
            "stopping",
            "VirtualMachine",
            format!("{ns}/{name}"),
        ))?;
    poll(format!("VMI {ns}/{name} to stop"), req.timeout, || async {
        let vmi = get_opt::<VirtualMachineInstance>(ctx.client, ns, name).await?;
        Ok(vmi.is_none().then_some(()))
    })
    .await
}

/// Replaces the live VM `live` with the plan's VM, keeping the live object's identity and owners.
pub(super) async fn replace_vm(
    ctx: &Context<'_>,
    plan: &Plan,
    live: &VirtualMachine,
) -> Result<()> {
    let ns = plan.namespace.as_str();
    let mut obj = plan.vm.clone();
    let (m, l) = (&mut obj.metadata, &live.metadata);
    m.uid.clone_from(&l.uid);
    m.resource_version.clone_from(&l.resource_version);
    m.owner_references.clone_from(&l.owner_references);
    m.finalizers.clone_from(&l.finalizers);
    m.creation_timestamp.clone_from(&l.creation_timestamp);
    let vmapi: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), ns);
    vmapi
        .replace(&plan.name, &PostParams::default(), &obj)
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
            delete_and_wait::<DataVolume>(ctx, ns, claim, timeout).await?;
            delete_and_wait::<PersistentVolumeClaim>(ctx, ns, claim, timeout).await
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
