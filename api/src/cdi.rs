//! CDI objects (cdi.kubevirt.io/v1beta1 DataVolume and CDIConfig, upload.cdi.kubevirt.io/v1beta1
//! UploadTokenRequest), modelled from reference/cdi-openapi.json.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::refs::TypedLocalObjectReference;
use crate::{model, resource};

resource! {
    /// cdi.kubevirt.io/v1beta1 DataVolume: a PVC plus how to populate it.
    pub struct DataVolume {
        group: "cdi.kubevirt.io", version: "v1beta1", plural: "datavolumes",
        scope: NamespaceResourceScope, schema: Cdi "v1beta1.DataVolume",
        spec: DataVolumeSpec, status: DataVolumeStatus,
    }
}

model! {
    /// DataVolume spec: a source and either `storage` (preferred) or `pvc`.
    pub struct DataVolumeSpec {
        "source" => source: DataVolumeSourceSpec,
        "sourceRef" => source_ref: serde_json::Value,
        "storage" => storage: StorageSpec,
        "pvc" => pvc: StorageSpec,
        "contentType" => content_type: String,
        "preallocation" => preallocation: bool,
    }
}

model! {
    /// Where a DataVolume's data comes from. Exactly one field is set.
    pub struct DataVolumeSourceSpec {
        /// `{}`: the data is uploaded through the CDI upload proxy.
        "upload" => upload: serde_json::Value,
        "blank" => blank: serde_json::Value,
        "http" => http: serde_json::Value,
        "pvc" => pvc: DataVolumeSourceObject,
        "snapshot" => snapshot: DataVolumeSourceObject,
        "registry" => registry: serde_json::Value,
        "s3" => s3: serde_json::Value,
        "gcs" => gcs: serde_json::Value,
        "imageio" => imageio: serde_json::Value,
        "vddk" => vddk: serde_json::Value,
    }
}

model! {
    /// A PVC or VolumeSnapshot to clone from.
    pub struct DataVolumeSourceObject {
        "namespace" => namespace: String,
        "name" => name: String,
    }
}

model! {
    /// Storage request of a DataVolume (subset of a PVC spec).
    pub struct StorageSpec {
        "accessModes" => access_modes: Vec<String>,
        "volumeMode" => volume_mode: String,
        "storageClassName" => storage_class_name: String,
        "resources" => resources: ResourceRequirements,
        "dataSource" => data_source: TypedLocalObjectReference,
        "selector" => selector: LabelSelector,
        "volumeName" => volume_name: String,
    }
}

impl From<&PersistentVolumeClaimSpec> for StorageSpec {
    /// CDI's `storage` has the PVC spec's fields, named alike: each is carried over (those this
    /// crate does not model, `dataSourceRef` and `volumeAttributesClassName`, in `extra`).
    fn from(s: &PersistentVolumeClaimSpec) -> Self {
        let mut extra = BTreeMap::new();
        let unmodelled = [
            ("dataSourceRef", serde_json::to_value(&s.data_source_ref)),
            (
                "volumeAttributesClassName",
                serde_json::to_value(&s.volume_attributes_class_name),
            ),
        ];
        for (key, value) in unmodelled {
            match value {
                Ok(serde_json::Value::Null) | Err(_) => {}
                Ok(v) => {
                    extra.insert(key.to_string(), v);
                }
            }
        }
        StorageSpec {
            access_modes: s.access_modes.clone(),
            volume_mode: s.volume_mode.clone(),
            storage_class_name: s.storage_class_name.clone(),
            resources: s.resources.as_ref().map(|r| ResourceRequirements {
                requests: r.requests.clone(),
                limits: r.limits.clone(),
                ..Default::default()
            }),
            data_source: s.data_source.as_ref().map(|d| TypedLocalObjectReference {
                api_group: d.api_group.clone(),
                kind: Some(d.kind.clone()),
                name: Some(d.name.clone()),
                ..Default::default()
            }),
            selector: s.selector.clone(),
            volume_name: s.volume_name.clone(),
            extra,
        }
    }
}

model! {
    /// Resource requests and limits (`storage: 10Gi`).
    pub struct ResourceRequirements {
        "requests" => requests: BTreeMap<String, Quantity>,
        "limits" => limits: BTreeMap<String, Quantity>,
    }
}

model! {
    /// DataVolume status.
    pub struct DataVolumeStatus {
        /// Pending, PVCBound, UploadScheduled, UploadReady, ImportInProgress, Succeeded, Failed, ...
        "phase" => phase: String,
        /// Percentage as text, e.g. "45.00%".
        "progress" => progress: String,
        "claimName" => claim_name: String,
        "restartCount" => restart_count: i64,
        "conditions" => conditions: Vec<DataVolumeCondition>,
    }
}

model! {
    /// A DataVolume condition (CDI's shape: `lastHeartbeatTime` instead of `lastProbeTime`).
    pub struct DataVolumeCondition {
        "type" => type_: String,
        "status" => status: String,
        "reason" => reason: String,
        "message" => message: String,
        "lastTransitionTime" => last_transition_time: String,
        "lastHeartbeatTime" => last_heartbeat_time: String,
    }
}

resource! {
    /// upload.cdi.kubevirt.io/v1beta1 UploadTokenRequest: asks CDI for a token to upload into a PVC.
    pub struct UploadTokenRequest {
        group: "upload.cdi.kubevirt.io", version: "v1beta1", plural: "uploadtokenrequests",
        scope: NamespaceResourceScope, schema: Cdi "v1beta1.UploadTokenRequest",
        spec: UploadTokenRequestSpec, status: UploadTokenRequestStatus,
    }
}

model! {
    /// Which PVC the token is for.
    pub struct UploadTokenRequestSpec {
        "pvcName" => pvc_name: String,
    }
}

model! {
    /// The issued token (a secret: never log it).
    pub struct UploadTokenRequestStatus {
        "token" => token: String,
    }
}

resource! {
    /// cdi.kubevirt.io/v1beta1 CDIConfig: CDI's settings (cluster-scoped; CDI keeps one, named
    /// `config`). virtguard reads where the upload proxy is.
    pub struct CDIConfig {
        group: "cdi.kubevirt.io", version: "v1beta1", plural: "cdiconfigs",
        scope: ClusterResourceScope, schema: Cdi "v1beta1.CDIConfig",
        spec: CDIConfigSpec, status: CDIConfigStatus,
    }
}

model! {
    /// CDIConfig spec (nothing of it is read; kept verbatim).
    pub struct CDIConfigSpec {}
}

model! {
    /// CDIConfig status.
    pub struct CDIConfigStatus {
        /// The upload proxy's address as CDI computed it: a host name or a URL.
        "uploadProxyURL" => upload_proxy_url: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field of a PVC spec lands in the DataVolume's `storage` under the same name.
    #[test]
    fn storage_spec_from_a_pvc_spec_keeps_every_field() {
        let pvc = serde_json::json!({
            "accessModes": ["ReadWriteMany"],
            "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"},
            "dataSourceRef": {"apiGroup": "cdi.kubevirt.io", "kind": "VolumeImportSource", "name": "i"},
            "resources": {"requests": {"storage": "6Mi"}, "limits": {"storage": "8Mi"}},
            "selector": {"matchLabels": {"tier": "db"}},
            "storageClassName": "fast",
            "volumeAttributesClassName": "gold",
            "volumeMode": "Block",
            "volumeName": "pv-1",
        });
        let spec: PersistentVolumeClaimSpec = serde_json::from_value(pvc.clone()).unwrap();
        let storage = StorageSpec::from(&spec);
        assert_eq!(serde_json::to_value(&storage).unwrap(), pvc);
        assert_eq!(storage.storage_class_name.as_deref(), Some("fast"));
        let empty = StorageSpec::from(&PersistentVolumeClaimSpec::default());
        assert_eq!(serde_json::to_value(&empty).unwrap(), serde_json::json!({}));
    }
}
