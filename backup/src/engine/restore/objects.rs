//! The objects a restore creates, built from the [`Plan`] without cluster access: per volume a
//! DataVolume with an upload source (`cdi-upload`), or a PVC and a Job running
//! `virtguard restore-volume` plus one Secret with the repository settings (`job`); and the list
//! `--dry-run` prints.
//!
//! Invariants: every object carries the [`RESTORE_ID`] label and the [`RESTORED_FROM`]
//! annotation (never `virtguard.io/backup-id`, so `virtguard cleanup` can never select a
//! restored disk); repository settings reach a Job only through the Secret (`secretKeyRef`
//! env), never its command line; the dry-run list shows the Secret's keys, never its values.

use serde_json::{json, Value};

use super::model::{Method, Plan, RestoreRequest, VolumePlan, RESTORED_FROM, RESTORE_ID};

/// Where a restore Job sees a Block-mode target PVC.
pub const JOB_DEVICE_PATH: &str = "/dev/virtguard-target";
/// Where a restore Job mounts a Filesystem-mode target PVC (the image is `disk.img` in it).
pub const JOB_MOUNT_PATH: &str = "/virtguard-target";

fn storage_spec(v: &VolumePlan) -> Value {
    let mut s = json!({
        "accessModes": v.access_modes,
        "resources": {"requests": {"storage": v.request}},
    });
    if let Some(sc) = &v.storage_class {
        s["storageClassName"] = json!(sc);
    }
    if let Some(m) = &v.volume_mode {
        s["volumeMode"] = json!(m);
    }
    s
}

pub(super) fn datavolume_spec(v: &VolumePlan) -> Value {
    json!({"source": {"upload": {}}, "storage": storage_spec(v)})
}

fn restore_meta(plan: &Plan, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": plan.namespace,
        "labels": {RESTORE_ID: plan.restore_id},
        "annotations": {RESTORED_FROM: plan.source.to_string()},
    })
}

/// The DataVolume of a volume (cdi-upload).
pub fn datavolume_object(plan: &Plan, v: &VolumePlan) -> Value {
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": restore_meta(plan, &v.claim),
        "spec": datavolume_spec(v),
    })
}

/// The PVC of a volume (job method).
pub fn pvc_object(plan: &Plan, v: &VolumePlan) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": restore_meta(plan, &v.claim),
        "spec": storage_spec(v),
    })
}

pub(super) fn job_name(plan: &Plan, v: &VolumePlan) -> String {
    crate::cluster::object_name(&plan.restore_id, &format!("restore-{}", v.volume))
}

pub(super) fn secret_name(plan: &Plan) -> String {
    crate::cluster::object_name(&plan.restore_id, "restore-repo")
}

/// The restore Job of a volume (job method). Repository settings come from the Secret.
pub fn job_object(plan: &Plan, v: &VolumePlan, image: &str, env_keys: &[String]) -> Value {
    let block = v.volume_mode.as_deref() == Some("Block");
    let target = if block {
        vec!["--device".to_string(), JOB_DEVICE_PATH.to_string()]
    } else {
        vec!["--file".to_string(), format!("{JOB_MOUNT_PATH}/disk.img")]
    };
    let mut args = vec![
        "restore-volume".to_string(),
        "--backup".to_string(),
        plan.source.to_string(),
        "--volume".to_string(),
        v.volume.clone(),
    ];
    args.extend(target);
    let secret = secret_name(plan);
    let env: Vec<Value> = env_keys
        .iter()
        .map(|k| json!({"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k, "optional": true}}}))
        .collect();
    let mut container = json!({
        "name": "restore",
        "image": image,
        "command": ["virtguard"],
        "args": args,
        "env": env,
    });
    if block {
        container["volumeDevices"] = json!([{"name": "target", "devicePath": JOB_DEVICE_PATH}]);
    } else {
        container["volumeMounts"] = json!([{"name": "target", "mountPath": JOB_MOUNT_PATH}]);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": restore_meta(plan, &job_name(plan, v)),
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {RESTORE_ID: plan.restore_id}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [{"name": "target", "persistentVolumeClaim": {"claimName": v.claim}}],
                }
            }
        }
    })
}

/// The Secret with the repository settings for restore Jobs (values are never printed).
pub fn secret_object(plan: &Plan, env: &[(String, String)], redact: bool) -> Value {
    let data: serde_json::Map<String, Value> = env
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                json!(if redact { "<redacted>" } else { v.as_str() }),
            )
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": restore_meta(plan, &secret_name(plan)),
        "type": "Opaque",
        "stringData": data,
    })
}

/// Every object the restore would create or change, in order (for `--dry-run`).
pub fn objects_to_create(plan: &Plan, req: &RestoreRequest) -> Vec<Value> {
    let mut out = Vec::new();
    match plan.method {
        Method::CdiUpload => {
            for v in &plan.volumes {
                out.push(datavolume_object(plan, v));
                out.push(json!({
                    "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
                    "kind": "UploadTokenRequest",
                    "metadata": {"name": v.claim, "namespace": plan.namespace},
                    "spec": {"pvcName": v.claim},
                }));
            }
        }
        Method::Job => {
            let keys: Vec<String> = req.job_env.iter().map(|(k, _)| k.clone()).collect();
            out.push(secret_object(plan, &req.job_env, true));
            for v in &plan.volumes {
                out.push(pvc_object(plan, v));
                out.push(job_object(plan, v, &req.job_image, &keys));
            }
        }
    }
    out.push(plan.vm.clone());
    out
}
