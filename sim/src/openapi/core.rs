//! Definitions of the core kinds, generated from the same k8s-openapi types the sim validates
//! core objects with (their `schemars` support), plus the list semantics those types carry in
//! Go struct tags but k8s-openapi's schemas leave out.
//!
//! Invariant: a definition is named as in kube-apiserver's own document
//! (`io.k8s.api.core.v1.Pod`) and refers to others as `#/definitions/<name>`; the list table
//! below only adds `x-kubernetes-list-*` / `x-kubernetes-patch-*` extensions, with the values
//! of the upstream Go types, and never changes a type.

use k8s_openapi::api::{
    authorization::v1 as authz, batch::v1 as batch, coordination::v1 as coord, core::v1 as core,
    networking::v1 as net, storage::v1 as storage,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::schemars::{self, generate::SchemaSettings};
use serde_json::{json, Map, Value};

use crate::resources::CoreKind;

/// Definition name of the k8s-openapi type a core kind is validated with.
pub(crate) fn def_name(kind: CoreKind) -> String {
    fn n<T: schemars::JsonSchema>() -> String {
        T::schema_name().into_owned()
    }
    match kind {
        CoreKind::Namespace => n::<core::Namespace>(),
        CoreKind::PersistentVolumeClaim => n::<core::PersistentVolumeClaim>(),
        CoreKind::PersistentVolume => n::<core::PersistentVolume>(),
        CoreKind::Secret => n::<core::Secret>(),
        CoreKind::ConfigMap => n::<core::ConfigMap>(),
        CoreKind::Pod => n::<core::Pod>(),
        CoreKind::Service => n::<core::Service>(),
        CoreKind::Event => n::<core::Event>(),
        CoreKind::Job => n::<batch::Job>(),
        CoreKind::CronJob => n::<batch::CronJob>(),
        CoreKind::StorageClass => n::<storage::StorageClass>(),
        CoreKind::Lease => n::<coord::Lease>(),
        CoreKind::NetworkPolicy => n::<net::NetworkPolicy>(),
        CoreKind::SelfSubjectAccessReview => n::<authz::SelfSubjectAccessReview>(),
        CoreKind::SelfSubjectRulesReview => n::<authz::SelfSubjectRulesReview>(),
    }
}

pub(crate) const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";
pub(crate) const LIST_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta";
pub(crate) const STATUS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
pub(crate) const DELETE_OPTIONS: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
pub(crate) const PATCH: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch";

/// Every core definition (the kinds and all they refer to), Swagger 2.0 style.
pub(crate) fn definitions() -> Map<String, Value> {
    let mut gen = SchemaSettings::draft07()
        .with(|s| {
            s.definitions_path = "/definitions".into();
            s.meta_schema = None;
            s.transforms.clear();
        })
        .into_generator();
    gen.subschema_for::<core::Namespace>();
    gen.subschema_for::<core::PersistentVolumeClaim>();
    gen.subschema_for::<core::PersistentVolume>();
    gen.subschema_for::<core::Secret>();
    gen.subschema_for::<core::ConfigMap>();
    gen.subschema_for::<core::Pod>();
    gen.subschema_for::<core::Service>();
    gen.subschema_for::<core::Event>();
    gen.subschema_for::<batch::Job>();
    gen.subschema_for::<batch::CronJob>();
    gen.subschema_for::<storage::StorageClass>();
    gen.subschema_for::<coord::Lease>();
    gen.subschema_for::<net::NetworkPolicy>();
    gen.subschema_for::<authz::SelfSubjectAccessReview>();
    gen.subschema_for::<authz::SelfSubjectRulesReview>();
    gen.subschema_for::<meta::ListMeta>();
    gen.subschema_for::<meta::Status>();
    gen.subschema_for::<meta::DeleteOptions>();
    gen.subschema_for::<meta::Patch>();
    let mut defs = gen.take_definitions(false);
    for (def, prop, list_type, keys, strategy) in LISTS {
        let Some(p) = defs
            .get_mut(*def)
            .and_then(|d| d.pointer_mut(&format!("/properties/{prop}")))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        p.insert("x-kubernetes-list-type".into(), json!(list_type));
        if !keys.is_empty() {
            p.insert("x-kubernetes-list-map-keys".into(), json!(keys));
        }
        if let Some(s) = strategy {
            p.insert("x-kubernetes-patch-strategy".into(), json!(s));
            if let Some(k) = keys.first() {
                p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
            }
        }
    }
    defs
}

type ListRow = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    Option<&'static str>,
);

/// List semantics of the core types (`+listType`, `+listMapKey`, `patchStrategy`,
/// `patchMergeKey` in k8s.io/api), for the lists of the kinds the sim serves.
const LISTS: &[ListRow] = &[
    (OBJECT_META, "finalizers", "set", &[], Some("merge")),
    (
        OBJECT_META,
        "ownerReferences",
        "map",
        &["uid"],
        Some("merge"),
    ),
    (OBJECT_META, "managedFields", "atomic", &[], None),
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        "map",
        &["name"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        "map",
        &["name"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        "map",
        &["name"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        "map",
        &["name"],
        Some("merge,retainKeys"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        "map",
        &["name"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        "map",
        &["ip"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "tolerations",
        "atomic",
        &[],
        None,
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        "map",
        &["name"],
        Some("merge,retainKeys"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        "map",
        &["name"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        "map",
        &["topologyKey", "whenUnsatisfiable"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "env",
        "map",
        &["name"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        "map",
        &["containerPort", "protocol"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        "map",
        &["mountPath"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        "map",
        &["devicePath"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "envFrom",
        "atomic",
        &[],
        None,
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        "map",
        &["name"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        "map",
        &["mountPath"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        "map",
        &["devicePath"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        "map",
        &["port", "protocol"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        "map",
        &["type"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        "map",
        &["type"],
        Some("merge"),
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        "map",
        &["type"],
        Some("merge"),
    ),
    (
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        "atomic",
        &[],
        None,
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimSpec",
        "accessModes",
        "atomic",
        &[],
        None,
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeSpec",
        "accessModes",
        "atomic",
        &[],
        None,
    ),
];
