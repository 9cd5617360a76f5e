//! The `job` data path: one PVC and one Job per volume running `virtguard restore-volume`, which
//! writes the volume directly and sparsely from the repository into the PVC (Block mode:
//! `volumeDevices` at [`super::JOB_DEVICE_PATH`]; Filesystem mode: `disk.img` under
//! [`super::JOB_MOUNT_PATH`]). The repository location and credentials reach the Jobs through one
//! temporary Secret (`secretKeyRef` env), never through their command lines.
//!
//! Invariant: all Jobs run at once and each is awaited; when all succeeded the Jobs and the
//! Secret are deleted and the PVCs stay (they are the restored disks).

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use kube::Api;

use super::cluster::get_opt;
use super::context::{create, Context};
use super::error::{RestoreError, Result};
use super::model::{Plan, RestoreRequest, VolumePlan};
use super::objects::{job_name, job_object, pvc_object, secret_name, secret_object};
use super::progress::VolumeReport;
use super::wait::poll;

/// Writes every volume of the plan through restore Jobs; one report per volume.
pub(super) async fn run_jobs(
    ctx: &Context<'_>,
    plan: &Plan,
    req: &RestoreRequest,
) -> Result<Vec<VolumeReport>> {
    let ns = plan.namespace.as_str();
    let mut volumes = Vec::new();
    let keys: Vec<String> = req.job_env.iter().map(|(k, _)| k.clone()).collect();
    create(ctx, ns, &secret_object(plan, &req.job_env, false)).await?;
    for v in &plan.volumes {
        create(ctx, ns, &pvc_object(plan, v)).await?;
    }
    // All Jobs run at once; then wait for each.
    for v in &plan.volumes {
        create(ctx, ns, &job_object(plan, v, &req.job_image, &keys)).await?;
        ctx.progress.line(&format!(
            "volume {}: restore Job {ns}/{} started",
            v.volume,
            job_name(plan, v)
        ));
    }
    for v in &plan.volumes {
        let t = Instant::now();
        wait_job(ctx, plan, v, req.timeout).await?;
        ctx.progress.line(&format!(
            "volume {}: written by Job {ns}/{}",
            v.volume,
            job_name(plan, v)
        ));
        volumes.push(VolumeReport {
            volume: v.volume.clone(),
            claim: v.claim.clone(),
            size: v.size,
            attempts: 1,
            seconds: t.elapsed().as_secs_f64(),
            ..Default::default()
        });
    }
    // The Jobs and the Secret are done; the PVCs stay.
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    for v in &plan.volumes {
        let _ = jobs
            .delete(&job_name(plan, v), &DeleteParams::background())
            .await;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let _ = secrets
        .delete(&secret_name(plan), &DeleteParams::background())
        .await;
    Ok(volumes)
}

/// Waits until the volume's Job succeeded; its failure (with the Job's `Failed` condition
/// message) is an error.
async fn wait_job(ctx: &Context<'_>, plan: &Plan, v: &VolumePlan, timeout: Duration) -> Result<()> {
    let ns = plan.namespace.as_str();
    let job = job_name(plan, v);
    let status = poll(format!("restore Job {ns}/{job}"), timeout, || async {
        let Some(o) = get_opt::<Job>(ctx.client, ns, &job).await? else {
            return Ok(Some(Err("the Job disappeared".to_string())));
        };
        let st = o.status.unwrap_or_default();
        if st.succeeded.unwrap_or(0) > 0 {
            return Ok(Some(Ok(())));
        }
        if st.failed.unwrap_or(0) > 0 {
            let msg = st
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Failed")
                .and_then(|c| c.message)
                .unwrap_or_else(|| "failed".to_string());
            return Ok(Some(Err(msg)));
        }
        Ok(None)
    })
    .await?;
    status.map_err(|message| RestoreError::Job {
        ns: ns.to_string(),
        job,
        volume: v.volume.clone(),
        message,
    })
}
