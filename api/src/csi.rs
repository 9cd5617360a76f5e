//! CSI snapshot objects (snapshot.storage.k8s.io/v1, groupsnapshot.storage.k8s.io/v1beta2),
//! modelled from the CRDs in reference/snapshot-crds/.
//!
//! VolumeSnapshotClass and VolumeGroupSnapshotClass have no spec: their fields (`driver`,
//! `deletionPolicy`, `parameters`) sit at the top level, so they are declared by hand.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::kubevirt::SnapshotError;
use crate::schema::{Field, ResourceInfo, Schema, SchemaSource, Shape};
use crate::{model, resource};

/// Annotation that marks the default VolumeSnapshotClass for its driver.
pub const DEFAULT_SNAPSHOT_CLASS_ANNOTATION: &str =
    "snapshot.storage.kubernetes.io/is-default-class";
/// Annotation that marks the default VolumeGroupSnapshotClass for its driver (a different key
/// from the VolumeSnapshotClass one).
pub const DEFAULT_GROUP_SNAPSHOT_CLASS_ANNOTATION: &str =
    "groupsnapshot.storage.kubernetes.io/is-default-class";

resource! {
    /// snapshot.storage.k8s.io/v1 VolumeSnapshot.
    pub struct VolumeSnapshot {
        group: "snapshot.storage.k8s.io", version: "v1", plural: "volumesnapshots",
        scope: NamespaceResourceScope,
        schema: SnapshotCrd "snapshot.storage.k8s.io_volumesnapshots.yaml",
        spec: VolumeSnapshotSpec, status: VolumeSnapshotStatus,
    }
}

model! {
    /// VolumeSnapshot spec.
    pub struct VolumeSnapshotSpec {
        "source" => source: VolumeSnapshotSource,
        "volumeSnapshotClassName" => volume_snapshot_class_name: String,
    }
}

model! {
    /// Exactly one of the two: a PVC to snapshot, or a pre-existing content.
    pub struct VolumeSnapshotSource {
        "persistentVolumeClaimName" => persistent_volume_claim_name: String,
        "volumeSnapshotContentName" => volume_snapshot_content_name: String,
    }
}

model! {
    /// VolumeSnapshot status. `creationTime` is when the point-in-time image was cut (the
    /// moment a frozen guest may be thawed); `readyToUse` comes later.
    pub struct VolumeSnapshotStatus {
        "boundVolumeSnapshotContentName" => bound_volume_snapshot_content_name: String,
        "creationTime" => creation_time: String,
        "readyToUse" => ready_to_use: bool,
        "restoreSize" => restore_size: Quantity,
        "error" => error: SnapshotError,
        "volumeGroupSnapshotName" => volume_group_snapshot_name: String,
    }
}

resource! {
    /// snapshot.storage.k8s.io/v1 VolumeSnapshotContent (cluster-scoped).
    pub struct VolumeSnapshotContent {
        group: "snapshot.storage.k8s.io", version: "v1", plural: "volumesnapshotcontents",
        scope: ClusterResourceScope,
        schema: SnapshotCrd "snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
        spec: VolumeSnapshotContentSpec, status: VolumeSnapshotContentStatus,
    }
}

model! {
    /// VolumeSnapshotContent spec.
    pub struct VolumeSnapshotContentSpec {
        "deletionPolicy" => deletion_policy: String,
        "driver" => driver: String,
        "source" => source: VolumeSnapshotContentSource,
        "sourceVolumeMode" => source_volume_mode: String,
        "volumeSnapshotClassName" => volume_snapshot_class_name: String,
        "volumeSnapshotRef" => volume_snapshot_ref: ObjectReference,
    }
}

model! {
    /// A dynamic (volumeHandle) or pre-provisioned (snapshotHandle) source.
    pub struct VolumeSnapshotContentSource {
        "volumeHandle" => volume_handle: String,
        "snapshotHandle" => snapshot_handle: String,
    }
}

model! {
    /// VolumeSnapshotContent status (`creationTime` is Unix nanoseconds here, unlike VolumeSnapshot).
    pub struct VolumeSnapshotContentStatus {
        "creationTime" => creation_time: i64,
        "readyToUse" => ready_to_use: bool,
        "restoreSize" => restore_size: i64,
        "snapshotHandle" => snapshot_handle: String,
        "error" => error: SnapshotError,
        "volumeGroupSnapshotHandle" => volume_group_snapshot_handle: String,
    }
}

resource! {
    /// groupsnapshot.storage.k8s.io/v1beta2 VolumeGroupSnapshot: one crash-consistent cut over
    /// several PVCs selected by label.
    pub struct VolumeGroupSnapshot {
        group: "groupsnapshot.storage.k8s.io", version: "v1beta2", plural: "volumegroupsnapshots",
        scope: NamespaceResourceScope,
        schema: SnapshotCrd "groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml",
        spec: VolumeGroupSnapshotSpec, status: VolumeGroupSnapshotStatus,
    }
}

model! {
    /// VolumeGroupSnapshot spec.
    pub struct VolumeGroupSnapshotSpec {
        "source" => source: VolumeGroupSnapshotSource,
        "volumeGroupSnapshotClassName" => volume_group_snapshot_class_name: String,
    }
}

model! {
    /// A label selector over PVCs, or a pre-existing content.
    pub struct VolumeGroupSnapshotSource {
        "selector" => selector: LabelSelector,
        "volumeGroupSnapshotContentName" => volume_group_snapshot_content_name: String,
    }
}

model! {
    /// VolumeGroupSnapshot status.
    pub struct VolumeGroupSnapshotStatus {
        "boundVolumeGroupSnapshotContentName" => bound_volume_group_snapshot_content_name: String,
        "creationTime" => creation_time: String,
        "readyToUse" => ready_to_use: bool,
        "error" => error: SnapshotError,
    }
}

macro_rules! class {
    ($(#[$meta:meta])* $name:ident, $group:literal, $version:literal, $plural:literal, $crd:literal, $default:expr) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
        pub struct $name {
            /// Standard object metadata.
            #[serde(default)]
            pub metadata: ObjectMeta,
            /// CSI driver name, e.g. `rbd.csi.ceph.com` (required).
            #[serde(default)]
            pub driver: String,
            /// `Delete` or `Retain` (required).
            #[serde(rename = "deletionPolicy", default)]
            pub deletion_policy: String,
            /// Driver-specific parameters.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub parameters: Option<BTreeMap<String, String>>,
            /// Fields not modelled.
            #[serde(flatten)]
            pub extra: BTreeMap<String, serde_json::Value>,
        }

        impl $name {
            /// True when annotated as the default class for its driver.
            pub fn is_default(&self) -> bool {
                self.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get($default))
                    .is_some_and(|v| v == "true")
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("apiVersion", <$name as k8s_openapi::Resource>::API_VERSION)?;
                map.serialize_entry("kind", <$name as k8s_openapi::Resource>::KIND)?;
                map.serialize_entry("metadata", &self.metadata)?;
                map.serialize_entry("driver", &self.driver)?;
                map.serialize_entry("deletionPolicy", &self.deletion_policy)?;
                if let Some(p) = &self.parameters {
                    map.serialize_entry("parameters", p)?;
                }
                // `apiVersion`/`kind` read from input land in `extra`; we wrote our own above.
                for (k, v) in &self.extra {
                    if k != "apiVersion" && k != "kind" {
                        map.serialize_entry(k, v)?;
                    }
                }
                map.end()
            }
        }

        impl k8s_openapi::Resource for $name {
            const API_VERSION: &'static str = concat!($group, "/", $version);
            const GROUP: &'static str = $group;
            const KIND: &'static str = stringify!($name);
            const VERSION: &'static str = $version;
            const URL_PATH_SEGMENT: &'static str = $plural;
            type Scope = k8s_openapi::ClusterResourceScope;
        }

        impl k8s_openapi::ListableResource for $name {
            const LIST_KIND: &'static str = concat!(stringify!($name), "List");
        }

        impl k8s_openapi::Metadata for $name {
            type Ty = ObjectMeta;
            fn metadata(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }

        impl ResourceInfo for $name {
            const SCHEMA_DEFINITION: &'static str = $crd;
            const SCHEMA_SOURCE: SchemaSource = SchemaSource::SnapshotCrd;
            fn object_shape() -> Shape {
                Shape::Object(vec![
                    Field { json: "metadata", shape: Shape::External("ObjectMeta") },
                    Field { json: "driver", shape: String::shape() },
                    Field { json: "deletionPolicy", shape: String::shape() },
                    Field { json: "parameters", shape: <BTreeMap<String, String>>::shape() },
                ])
            }
        }
    };
}

class!(
    /// snapshot.storage.k8s.io/v1 VolumeSnapshotClass (cluster-scoped).
    VolumeSnapshotClass, "snapshot.storage.k8s.io", "v1", "volumesnapshotclasses",
    "snapshot.storage.k8s.io_volumesnapshotclasses.yaml", DEFAULT_SNAPSHOT_CLASS_ANNOTATION
);

class!(
    /// groupsnapshot.storage.k8s.io/v1beta2 VolumeGroupSnapshotClass (cluster-scoped).
    VolumeGroupSnapshotClass, "groupsnapshot.storage.k8s.io", "v1beta2",
    "volumegroupsnapshotclasses", "groupsnapshot.storage.k8s.io_volumegroupsnapshotclasses.yaml",
    DEFAULT_GROUP_SNAPSHOT_CLASS_ANNOTATION
);

#[cfg(test)]
mod tests {
    use super::*;

    fn annotated(key: &str) -> ObjectMeta {
        ObjectMeta {
            annotations: Some(BTreeMap::from([(key.to_string(), "true".to_string())])),
            ..Default::default()
        }
    }

    #[test]
    fn each_class_kind_has_its_own_default_annotation() {
        let vsc = |m| VolumeSnapshotClass {
            metadata: m,
            ..Default::default()
        };
        let vgsc = |m| VolumeGroupSnapshotClass {
            metadata: m,
            ..Default::default()
        };
        assert!(vsc(annotated(DEFAULT_SNAPSHOT_CLASS_ANNOTATION)).is_default());
        assert!(!vsc(annotated(DEFAULT_GROUP_SNAPSHOT_CLASS_ANNOTATION)).is_default());
        assert!(vgsc(annotated(DEFAULT_GROUP_SNAPSHOT_CLASS_ANNOTATION)).is_default());
        assert!(!vgsc(annotated(DEFAULT_SNAPSHOT_CLASS_ANNOTATION)).is_default());
    }
}
