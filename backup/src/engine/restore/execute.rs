//! Running a plan: the disks first (through [`super::upload`] or [`super::job`]), the VM
//! **last**, so a failed restore never leaves a half-restored VM that could start.
//!
//! Invariant: on any failure everything the run created is deleted again ([`super::Created`]) unless
//! `--keep-partial`; in place, nothing is deleted any more once the VM uses the restored disks
//! (see [`super::in_place`]).

use std::time::Instant;

use virtguard_api::VirtualMachine;

use super::cluster::get_opt;
use super::context::{create, Context};
use super::error::Result;
use super::in_place;
use super::job::run_jobs;
use super::model::{Method, Mode, Plan, RestoreRequest};
use super::progress::RestoreReport;
use super::upload::upload_volume;
use super::wait::vmi_running;

/// Runs the plan. On error, everything recorded in `ctx.created` is deleted unless
/// `req.keep_partial` (the caller handles interruption).
pub async fn execute(
    ctx: &Context<'_>,
    plan: &Plan,
    req: &RestoreRequest,
) -> Result<RestoreReport> {
    let res = execute_inner(ctx, plan, req).await;
    if res.is_err() && !req.keep_partial {
        for d in ctx.created.rollback(ctx.client).await {
            ctx.progress.line(&format!("deleted {d}"));
        }
    }
    res
}

async fn execute_inner(
    ctx: &Context<'_>,
    plan: &Plan,
    req: &RestoreRequest,
) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let ns = plan.namespace.as_str();
    let mut live_vm = None;
    let mut replaced = Vec::new();
    if plan.mode == Mode::InPlace {
        live_vm = get_opt::<VirtualMachine>(ctx.client, ns, &plan.name).await?;
        in_place::stop_for_in_place(ctx, plan, req, live_vm.is_some()).await?;
        // The old disks stay as they are until the VM has been switched to the new ones.
        replaced = in_place::replaced_claims(ctx, plan, live_vm.as_ref()).await?;
    }
    let mut volumes = Vec::new();
    match plan.method {
        Method::CdiUpload => {
            for v in &plan.volumes {
                volumes.push(upload_volume(ctx, plan, v, req).await?);
            }
        }
        Method::Job => volumes = run_jobs(ctx, plan, req).await?,
    }
    // The VM last.
    if live_vm.is_some() {
        // Re-read: stopping it changed its resourceVersion.
        live_vm = get_opt::<VirtualMachine>(ctx.client, ns, &plan.name).await?;
    }
    match (plan.mode, live_vm) {
        (Mode::InPlace, Some(live)) => in_place::replace_vm(ctx, plan, &live).await?,
        _ => create(ctx, ns, &plan.vm).await?,
    }
    let mut replaced_deleted = Vec::new();
    if plan.mode == Mode::InPlace {
        // The VM now refers to the restored disks: they must survive whatever happens next.
        ctx.created.commit();
        replaced_deleted = in_place::delete_replaced(ctx, plan, &replaced, req.timeout).await;
    }
    ctx.progress.line(&format!(
        "VirtualMachine {ns}/{} {} (runStrategy {})",
        plan.name,
        if plan.mode == Mode::InPlace {
            "replaced"
        } else {
            "created"
        },
        if req.start { "Always" } else { "Halted" }
    ));
    if req.start && req.wait {
        vmi_running(ctx, ns, &plan.name, req.timeout).await?;
    }
    Ok(RestoreReport {
        vm: format!("{ns}/{}", plan.name),
        volumes,
        replaced: replaced_deleted,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
