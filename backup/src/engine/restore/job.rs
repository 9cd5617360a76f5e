//! The `job` data path: one PVC and one Job per volume running `virtguard restore-volume`, which
//! writes the volume directly and sparsely from the repository into the PVC (Block mode:
//! `volumeDevices` at [`super::JOB_DEVICE_PATH`]; Filesystem mode: `disk.img` under
//! [`super::JOB_MOUNT_PATH`]). The repository location and credentials reach the Jobs through one
//! temporary Secret (`secretKeyRef` env), never through their command lines.
//!
//! Invariant: all Jobs run at once and each is awaited; when all succeeded the Jobs and the
//! Secret are deleted and the PVCs stay (they are the restored disks).

use std::time::{Duration, Instant};

use kube::api::DeleteParams;
use serde_json::Value;

use super::cluster::{api_of, ar, get_opt};
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
    create(ctx, ns, "Secret", &secret_object(plan, &req.job_env, false)).await?;
    for v in &plan.volumes {
        create(ctx, ns, "PersistentVolumeClaim", &pvc_object(plan, v)).await?;
    }
    // All Jobs run at once; then wait for each.
    for v in &plan.volumes {
        create(ctx, ns, "Job", &job_object(plan, v, &req.job_image, &keys)).await?;
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
    let job_api = api_of(ctx.client, ns, "Job").map(|(a, _)| a);
    if let Some(api) = job_api {
        for v in &plan.volumes {
            let _ = api
                .delete(&job_name(plan, v), &DeleteParams::background())
                .await;
        }
    }
    if let Some((api, _)) = api_of(ctx.client, ns, "Secret") {
        let _ = api
            .delete(&secret_name(plan), &DeleteParams::background())
            .await;
    }
    Ok(volumes)
}

async fn wait_job(ctx: &Context<'_>, plan: &Plan, v: &VolumePlan, timeout: Duration) -> Result<()> {
    let ns = plan.namespace.as_str();
    let job = job_name(plan, v);
    let r = ar("batch", "v1", "Job", "jobs");
    let status = poll(format!("restore Job {ns}/{job}"), timeout, || {
        let r = r.clone();
        let job = job.clone();
        async move {
            let o = get_opt(ctx.client, ns, &r, "Job", &job).await?;
            let Some(o) = o else {
                return Ok(Some(Err("the Job disappeared".to_string())));
            };
            if o.pointer("/status/succeeded")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0
            {
                return Ok(Some(Ok(())));
            }
            if o.pointer("/status/failed")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0
            {
                let msg = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| {
                        c.iter()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some("Failed"))
                    })
                    .and_then(|c| c.get("message").and_then(Value::as_str))
                    .unwrap_or("failed")
                    .to_string();
                return Ok(Some(Err(msg)));
            }
            Ok(None)
        }
    })
    .await?;
    status.map_err(|message| RestoreError::Job {
        ns: ns.to_string(),
        job,
        volume: v.volume.clone(),
        message,
    })
}
