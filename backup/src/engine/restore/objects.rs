//! The objects a restore creates, built from the [`Plan`] without cluster access: per volume a
//! DataVolume with an upload source and an UploadTokenRequest (`cdi-upload`), or a PVC and a Job
//! running `virtguard restore-volume` plus one Secret with the repository settings (`job`); and
//! the list `--dry-run` prints.
//!
//! All are typed: virtguard-api's models for CDI's objects (checked against the reference
//! schemas by its conformance test), k8s-openapi's for the core ones.
//!
//! Invariants: every object carries the [`RESTORE_ID`] label and the [`RESTORED_FROM`]
//! annotation (never `virtguard.io/backup-id`, so `virtguard cleanup` can never select a
//! restored disk); repository settings reach a Job only through the Secret (`secretKeyRef`
//! env), never its command line; the dry-run list shows the Secret's keys, never its values.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Secret, SecretKeySelector, Volume,
    VolumeDevice, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::Value;
use virtguard_api::{
    DataVolume, DataVolumeSourceSpec, DataVolumeSpec, StorageSpec, UploadTokenRequest,
    UploadTokenRequestSpec,
};

use super::model::{Method, Plan, RestoreRequest, VolumePlan, RESTORED_FROM, RESTORE_ID};

/// Where a restore Job sees a Block-mode target PVC.
pub const JOB_DEVICE_PATH: &str = "/dev/virtguard-target";
/// Where a restore Job mounts a Filesystem-mode target PVC (the image is `disk.img` in it).
pub const JOB_MOUNT_PATH: &str = "/virtguard-target";

/// The claim a volume is restored into: the backed-up claim's access modes, storage class
/// (after `--storage-class-map`), volume mode and request. The PVC of the `job` method has it
/// as its spec, the DataVolume of `cdi-upload` as its `storage`.
fn claim_spec(v: &VolumePlan) -> PersistentVolumeClaimSpec {
    PersistentVolumeClaimSpec {
        access_modes: Some(v.access_modes.clone()),
        resources: Some(VolumeResourceRequirements {
            requests: Some(BTreeMap::from([(
                "storage".to_string(),
                Quantity(v.request.clone()),
            )])),
            ..Default::default()
        }),
        storage_class_name: v.storage_class.clone(),
        volume_mode: v.volume_mode.clone(),
        ..Default::default()
    }
}

/// The `spec` of a volume's DataVolume (also of its DataVolume template in the VM): an upload
/// source and the storage the original claim had.
pub(super) fn datavolume_spec(v: &VolumePlan) -> DataVolumeSpec {
    DataVolumeSpec {
        source: Some(DataVolumeSourceSpec {
            upload: Some(Value::Object(Default::default())),
            ..Default::default()
        }),
        storage: Some(StorageSpec::from(&claim_spec(v))),
        ..Default::default()
    }
}

/// Name, namespace, the restore-id label and the restored-from annotation.
fn restore_meta(plan: &Plan, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(plan.namespace.clone()),
        labels: Some(restore_label(plan)),
        annotations: Some(BTreeMap::from([(
            RESTORED_FROM.to_string(),
            plan.source.to_string(),
        )])),
        ..Default::default()
    }
}

fn restore_label(plan: &Plan) -> BTreeMap<String, String> {
    BTreeMap::from([(RESTORE_ID.to_string(), plan.restore_id.clone())])
}

/// The DataVolume of a volume (cdi-upload).
pub fn datavolume_object(plan: &Plan, v: &VolumePlan) -> DataVolume {
    DataVolume {
        metadata: restore_meta(plan, &v.claim),
        spec: Some(datavolume_spec(v)),
        ..Default::default()
    }
}

/// The request for a token to upload into claim `pvc` of namespace `ns` (cdi-upload).
pub(super) fn upload_token_request(ns: &str, pvc: &str) -> UploadTokenRequest {
    UploadTokenRequest::new(
        pvc,
        Some(ns),
        UploadTokenRequestSpec {
            pvc_name: Some(pvc.to_string()),
            ..Default::default()
        },
    )
}

/// The PVC of a volume (job method).
pub fn pvc_object(plan: &Plan, v: &VolumePlan) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: restore_meta(plan, &v.claim),
        spec: Some(claim_spec(v)),
        ..Default::default()
    }
}

pub(super) fn job_name(plan: &Plan, v: &VolumePlan) -> String {
    crate::cluster::object_name(&plan.restore_id, &format!("restore-{}", v.volume))
}

pub(super) fn secret_name(plan: &Plan) -> String {
    crate::cluster::object_name(&plan.restore_id, "restore-repo")
}

/// The restore Job of a volume (job method). Repository settings come from the Secret.
pub fn job_object(plan: &Plan, v: &VolumePlan, image: &str, env_keys: &[String]) -> Job {
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
    let env = env_keys
        .iter()
        .map(|k| EnvVar {
            name: k.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: k.clone(),
                    optional: Some(true),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    let mut container = Container {
        name: "restore".to_string(),
        image: Some(image.to_string()),
        command: Some(vec!["virtguard".to_string()]),
        args: Some(args),
        env: Some(env),
        ..Default::default()
    };
    if block {
        container.volume_devices = Some(vec![VolumeDevice {
            name: "target".to_string(),
            device_path: JOB_DEVICE_PATH.to_string(),
        }]);
    } else {
        container.volume_mounts = Some(vec![VolumeMount {
            name: "target".to_string(),
            mount_path: JOB_MOUNT_PATH.to_string(),
            ..Default::default()
        }]);
    }
    Job {
        metadata: restore_meta(plan, &job_name(plan, v)),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(restore_label(plan)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".to_string()),
                    containers: vec![container],
                    volumes: Some(vec![Volume {
                        name: "target".to_string(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: v.claim.clone(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Secret with the repository settings for restore Jobs (values are never printed).
pub fn secret_object(plan: &Plan, env: &[(String, String)], redact: bool) -> Secret {
    let data = env
        .iter()
        .map(|(k, v)| {
            let v = if redact { "<redacted>" } else { v.as_str() };
            (k.clone(), v.to_string())
        })
        .collect();
    Secret {
        metadata: restore_meta(plan, &secret_name(plan)),
        type_: Some("Opaque".to_string()),
        string_data: Some(data),
        ..Default::default()
    }
}

/// Every object the restore would create or change, in order (for `--dry-run`).
pub fn objects_to_create(plan: &Plan, req: &RestoreRequest) -> Vec<Value> {
    let mut out = Vec::new();
    match plan.method {
        Method::CdiUpload => {
            for v in &plan.volumes {
                out.push(to_json(&datavolume_object(plan, v)));
                out.push(to_json(&upload_token_request(&plan.namespace, &v.claim)));
            }
        }
        Method::Job => {
            let keys: Vec<String> = req.job_env.iter().map(|(k, _)| k.clone()).collect();
            out.push(to_json(&secret_object(plan, &req.job_env, true)));
            for v in &plan.volumes {
                out.push(to_json(&pvc_object(plan, v)));
                out.push(to_json(&job_object(plan, v, &req.job_image, &keys)));
            }
        }
    }
    out.push(to_json(&plan.vm));
    out
}

/// An object as JSON, for printing. These types always serialize (every map has string keys);
/// were one ever not to, it would print as `null` rather than abort the dry run.
fn to_json(o: &impl Serialize) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}
