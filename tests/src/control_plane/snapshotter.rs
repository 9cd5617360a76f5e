//! The CSI snapshot controller as an ordinary kube-rs controller, for the real API server: the
//! first of virtguard-sim's simulated controllers split from the sim's own API server (issue
//! 20). It does what the sim's `snapshot` module does for dynamic snapshots, through the API
//! only (watches, the status subresources, a finalizer), so it runs against any API server.
//!
//! A VolumeSnapshot with `source.persistentVolumeClaimName`:
//! 1. gets the finalizer [`FINALIZER`] (the snapshot controller's bound protection);
//! 2. its PVC's PersistentVolume names the CSI driver and, as `spec.csi.volumeHandle`, the
//!    volume's image file; the class is the named one or the default class of that driver (none:
//!    `status.error` naming the driver, retried);
//! 3. the image is copied to `<images>/<content>.img` — the point-in-time cut — and only then is
//!    VolumeSnapshotContent `snapcontent-<snapshot uid>` created (bound to the snapshot by
//!    `spec.volumeSnapshotRef` with its uid) with status `snapshotHandle` (the copy),
//!    `creationTime`, `readyToUse` and `restoreSize`, and the VolumeSnapshot's status follows
//!    (`boundVolumeSnapshotContentName`, `creationTime`, `readyToUse`, `restoreSize`).
//!
//! Deleting the VolumeSnapshot deletes its content and copy when the content's
//! `deletionPolicy` is `Delete`, then removes the finalizer. Not handled (the sim's module
//! does them): pre-provisioned snapshots (`source.volumeSnapshotContentName`), the delay
//! between `creationTime` and `readyToUse`, group snapshot members, PVC provisioning.
//!
//! Invariant: `creationTime` is published only after the copy is complete, so a write to the
//! volume after a client sees it is never in the snapshot.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use virtguard_api::{VolumeSnapshot, VolumeSnapshotClass, VolumeSnapshotContent};

/// The finalizer the real snapshot controller puts on a bound VolumeSnapshot.
pub const FINALIZER: &str = "snapshot.storage.kubernetes.io/volumesnapshot-bound-protection";

/// How soon a snapshot that cannot be cut yet (unbound PVC, no class) is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Why one VolumeSnapshot could not be handled (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotterError {
    #[error("{action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("copying volume image {from} to {to}: {source}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VolumeSnapshot {object}: {message}")]
    Invalid { object: String, message: String },
    #[error("finalizer of VolumeSnapshot: {0}")]
    Finalizer(String),
}

fn api_err(action: &'static str, object: String) -> impl FnOnce(kube::Error) -> SnapshotterError {
    move |source| SnapshotterError::Api {
        action,
        object,
        source,
    }
}

/// What the controller needs: a client and where the point-in-time copies go.
struct Ctx {
    client: Client,
    images: PathBuf,
}

/// Runs the controller until the returned task is aborted (or dropped with its runtime).
pub fn spawn(client: Client, images: &Path) -> tokio::task::JoinHandle<()> {
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        images: images.to_path_buf(),
    });
    let snapshots = Api::<VolumeSnapshot>::all(client);
    tokio::spawn(async move {
        Controller::new(snapshots, watcher::Config::default())
            .run(reconcile, error_policy, ctx)
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "snapshot reconcile");
                }
            })
            .await;
    })
}

fn error_policy(_: Arc<VolumeSnapshot>, _: &SnapshotterError, _: Arc<Ctx>) -> Action {
    Action::requeue(RETRY)
}

async fn reconcile(vs: Arc<VolumeSnapshot>, ctx: Arc<Ctx>) -> Result<Action, SnapshotterError> {
    let ns = vs.namespace().unwrap_or_default();
    let api = Api::<VolumeSnapshot>::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, vs, |event| async {
        match event {
            Event::Apply(vs) => cut(&vs, &ctx).await,
            Event::Cleanup(vs) => release(&vs, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => SnapshotterError::Finalizer(other.to_string()),
    })
}

fn content_name(vs: &VolumeSnapshot) -> String {
    format!("snapcontent-{}", vs.uid().unwrap_or_default())
}

/// Binds, copies and publishes (steps 2 and 3 of the module documentation).
async fn cut(vs: &VolumeSnapshot, ctx: &Ctx) -> Result<Action, SnapshotterError> {
    let ns = vs.namespace().unwrap_or_default();
    let object = format!("{ns}/{}", vs.name_any());
    let status = vs.status.clone().unwrap_or_default();
    if status.ready_to_use == Some(true) {
        return Ok(Action::await_change());
    }
    let spec = vs.spec.clone().unwrap_or_default();
    let Some(pvc_name) = spec.source.and_then(|s| s.persistent_volume_claim_name) else {
        return Err(SnapshotterError::Invalid {
            object,
            message: "only dynamic snapshots (source.persistentVolumeClaimName) are handled".into(),
        });
    };
    let pvc = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&pvc_name)
        .await
        .map_err(api_err("reading PVC", format!("{ns}/{pvc_name}")))?;
    let Some(pv_name) = pvc.and_then(|p| p.spec).and_then(|s| s.volume_name) else {
        return Ok(Action::requeue(RETRY)); // not bound yet
    };
    let pv = Api::<PersistentVolume>::all(ctx.client.clone())
        .get(&pv_name)
        .await
        .map_err(api_err("reading PersistentVolume", pv_name.clone()))?;
    let Some(csi) = pv.spec.and_then(|s| s.csi) else {
        return Err(SnapshotterError::Invalid {
            object,
            message: format!("PersistentVolume {pv_name} is not a CSI volume"),
        });
    };
    let Some(class) = class_for(ctx, spec.volume_snapshot_class_name, &csi.driver).await? else {
        let message = format!("no VolumeSnapshotClass for CSI driver {}", csi.driver);
        publish(
            ctx,
            vs,
            json!({"error": {"message": message, "time": now_rfc3339()}}),
        )
        .await?;
        return Ok(Action::requeue(RETRY));
    };
    let content = content_name(vs);
    let from = PathBuf::from(&csi.volume_handle);
    let to = ctx.images.join(format!("{content}.img"));
    let copy_err = |source| SnapshotterError::Copy {
        from: from.clone(),
        to: to.clone(),
        source,
    };
    let size = tokio::fs::copy(&from, &to).await.map_err(copy_err)?;
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let contents = Api::<VolumeSnapshotContent>::all(ctx.client.clone());
    let body: VolumeSnapshotContent = serde_json::from_value(json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": content},
        "spec": {
            "deletionPolicy": class.deletion_policy,
            "driver": csi.driver,
            "source": {"volumeHandle": csi.volume_handle},
            "volumeSnapshotClassName": class.name_any(),
            "volumeSnapshotRef": {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "namespace": ns,
                "name": vs.name_any(),
                "uid": vs.uid(),
            },
        },
    }))
    .map_err(|e| SnapshotterError::Invalid {
        object: object.clone(),
        message: format!("building its VolumeSnapshotContent: {e}"),
    })?;
    match contents.create(&PostParams::default(), &body).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {} // created by an earlier pass
        Err(e) => return Err(api_err("creating VolumeSnapshotContent", content)(e)),
    }
    let size_i64 = i64::try_from(size).unwrap_or(i64::MAX);
    contents
        .patch_status(
            &content,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "snapshotHandle": to.display().to_string(),
                "creationTime": created,
                "readyToUse": true,
                "restoreSize": size_i64,
            }})),
        )
        .await
        .map_err(api_err(
            "updating the status of VolumeSnapshotContent",
            content.clone(),
        ))?;
    publish(
        ctx,
        vs,
        json!({
            "boundVolumeSnapshotContentName": content,
            "creationTime": now_rfc3339(),
            "readyToUse": true,
            "restoreSize": size.to_string(),
            "error": null,
        }),
    )
    .await?;
    Ok(Action::await_change())
}

/// The named class, or the default class of `driver`.
async fn class_for(
    ctx: &Ctx,
    named: Option<String>,
    driver: &str,
) -> Result<Option<VolumeSnapshotClass>, SnapshotterError> {
    let classes = Api::<VolumeSnapshotClass>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(api_err("listing", "VolumeSnapshotClasses".into()))?;
    Ok(classes.items.into_iter().find(|c| match &named {
        Some(name) => c.name_any() == *name,
        None => c.driver == driver && c.is_default(),
    }))
}

async fn publish(
    ctx: &Ctx,
    vs: &VolumeSnapshot,
    status: serde_json::Value,
) -> Result<(), SnapshotterError> {
    let ns = vs.namespace().unwrap_or_default();
    Api::<VolumeSnapshot>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &vs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(drop)
        .map_err(api_err(
            "updating the status of VolumeSnapshot",
            format!("{ns}/{}", vs.name_any()),
        ))
}

/// The VolumeSnapshot is being deleted: its content and copy go too under `Delete`.
async fn release(vs: &VolumeSnapshot, ctx: &Ctx) -> Result<Action, SnapshotterError> {
    let content = content_name(vs);
    let contents = Api::<VolumeSnapshotContent>::all(ctx.client.clone());
    let found = contents
        .get_opt(&content)
        .await
        .map_err(api_err("reading VolumeSnapshotContent", content.clone()))?;
    let delete = found
        .as_ref()
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.deletion_policy.as_deref())
        == Some("Delete");
    if delete {
        match contents.delete(&content, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err("deleting VolumeSnapshotContent", content)(e)),
        }
        let image = ctx.images.join(format!("{content}.img"));
        if let Err(e) = std::fs::remove_file(&image) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(SnapshotterError::Copy {
                    from: image.clone(),
                    to: image,
                    source: e,
                });
            }
        }
    }
    Ok(Action::await_change())
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}
