//! CDI objects (cdi.kubevirt.io/v1beta1 DataVolume, upload.cdi.kubevirt.io/v1beta1
//! UploadTokenRequest), modelled from reference/cdi-openapi.json.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::kubevirt::TypedLocalObjectReference;
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
