//! The modelling machinery: the [`model!`] and [`resource!`] macros and the [`Schema`] trait.
//!
//! Every struct in this crate is declared through [`model!`], which
//! - gives each field its exact JSON name from the reference schema, as an `Option` (absent stays
//!   absent on output — we never invent `null`s or defaults),
//! - adds `extra`, a flattened map that captures every field we do not model, so a
//!   read-modify-write round trip (backup a VM, restore it) loses nothing,
//! - records the field's JSON name and shape in [`Schema::shape`], which the conformance test walks
//!   against reference/ to prove every field path we model exists there with a compatible
//!   type.
//!
//! [`resource!`] declares a top-level object (`apiVersion`, `kind`, `metadata`, `spec`, `status`)
//! and implements `k8s_openapi::Resource` + `Metadata`, which makes it a `kube::Resource` usable with
//! `kube::Api<T>`.

use std::collections::BTreeMap;

/// The JSON shape of a modelled type, for the schema conformance test.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// A JSON string.
    String,
    /// A JSON integer.
    Integer,
    /// A JSON number.
    Number,
    /// A JSON boolean.
    Boolean,
    /// Anything (kept verbatim as `serde_json::Value`).
    Any,
    /// A Kubernetes core type we reuse from k8s-openapi (checked only for presence).
    External(&'static str),
    /// A JSON array of the inner shape.
    Array(Box<Shape>),
    /// A JSON object with arbitrary keys and values of the inner shape.
    Map(Box<Shape>),
    /// A JSON object with the listed fields (others are kept in `extra`).
    Object(Vec<Field>),
}

/// One modelled field: its JSON name and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// JSON name, exactly as in the reference schema.
    pub json: &'static str,
    /// The field's shape.
    pub shape: Shape,
}

/// Types that can describe their JSON shape.
pub trait Schema {
    /// The shape of this type.
    fn shape() -> Shape;
}

macro_rules! leaf {
    ($($t:ty => $s:expr),* $(,)?) => { $(impl Schema for $t { fn shape() -> Shape { $s } })* };
}
leaf! {
    String => Shape::String,
    i64 => Shape::Integer,
    i32 => Shape::Integer,
    u64 => Shape::Integer,
    f64 => Shape::Number,
    bool => Shape::Boolean,
    serde_json::Value => Shape::Any,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta => Shape::External("ObjectMeta"),
    k8s_openapi::apimachinery::pkg::api::resource::Quantity => Shape::External("Quantity"),
    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector => Shape::External("LabelSelector"),
    k8s_openapi::api::core::v1::ObjectReference => Shape::External("ObjectReference"),
}

impl<T: Schema> Schema for Vec<T> {
    fn shape() -> Shape {
        Shape::Array(Box::new(T::shape()))
    }
}

impl<T: Schema> Schema for BTreeMap<String, T> {
    fn shape() -> Shape {
        Shape::Map(Box::new(T::shape()))
    }
}

/// Declares a modelled struct: every field optional, named exactly as in JSON, unknown fields kept.
///
/// ```text
/// model! {
///     /// Doc.
///     pub struct Example {
///         /// Field doc.
///         "runStrategy" => run_strategy: String,
///     }
/// }
/// ```
#[macro_export]
macro_rules! model {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[doc = $doc:literal])* $json:literal => $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $json, default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
            /// Fields this crate does not model, kept verbatim so nothing is lost on write-back.
            #[serde(flatten)]
            pub extra: std::collections::BTreeMap<String, serde_json::Value>,
        }

        impl $crate::schema::Schema for $name {
            fn shape() -> $crate::schema::Shape {
                $crate::schema::Shape::Object(vec![
                    $( $crate::schema::Field {
                        json: $json,
                        shape: <$ty as $crate::schema::Schema>::shape(),
                    }, )*
                ])
            }
        }
    };
}

/// Identity of a top-level resource: what the conformance test and generic code need.
pub trait ResourceInfo {
    /// Definition name in the reference schema (e.g. `v1.VirtualMachine`), or, for CRDs from
    /// snapshot-crds/, the CRD file name.
    const SCHEMA_DEFINITION: &'static str;
    /// Which reference document defines it.
    const SCHEMA_SOURCE: SchemaSource;
    /// The shape of the whole object (spec and status; metadata is external).
    fn object_shape() -> Shape;
}

/// The reference document a resource's schema lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaSource {
    /// reference/kubevirt-openapi.json (Swagger 2.0 definitions).
    KubeVirt,
    /// reference/cdi-openapi.json (Swagger 2.0 definitions).
    Cdi,
    /// reference/snapshot-crds/<file> (CRD openAPIV3Schema of the resource's version).
    SnapshotCrd,
}

/// Declares a top-level Kubernetes object with `metadata`, `spec` and `status`.
///
/// `apiVersion` and `kind` are always written from the type's constants (what was read is ignored).
#[macro_export]
macro_rules! resource {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            group: $group:literal, version: $version:literal, plural: $plural:literal,
            scope: $scope:ident, schema: $source:ident $def:literal,
            spec: $spec:ty, status: $status:ty $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
        pub struct $name {
            /// Standard object metadata.
            #[serde(default)]
            pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
            /// Desired state.
            #[serde(default)]
            pub spec: Option<$spec>,
            /// Observed state (written by controllers).
            #[serde(default)]
            pub status: Option<$status>,
            /// Top-level fields this crate does not model.
            #[serde(flatten)]
            pub extra: std::collections::BTreeMap<String, serde_json::Value>,
        }

        impl $name {
            /// A new object with the given name, namespace (None for cluster scope) and spec.
            pub fn new(name: &str, namespace: Option<&str>, spec: $spec) -> Self {
                Self {
                    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                        name: Some(name.to_string()),
                        namespace: namespace.map(str::to_string),
                        ..Default::default()
                    },
                    spec: Some(spec),
                    ..Default::default()
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("apiVersion", <$name as k8s_openapi::Resource>::API_VERSION)?;
                map.serialize_entry("kind", <$name as k8s_openapi::Resource>::KIND)?;
                map.serialize_entry("metadata", &self.metadata)?;
                if let Some(spec) = &self.spec {
                    map.serialize_entry("spec", spec)?;
                }
                if let Some(status) = &self.status {
                    map.serialize_entry("status", status)?;
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
            type Scope = k8s_openapi::$scope;
        }

        impl k8s_openapi::ListableResource for $name {
            const LIST_KIND: &'static str = concat!(stringify!($name), "List");
        }

        impl k8s_openapi::Metadata for $name {
            type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
            fn metadata(&self) -> &Self::Ty {
                &self.metadata
            }
            fn metadata_mut(&mut self) -> &mut Self::Ty {
                &mut self.metadata
            }
        }

        impl $crate::schema::ResourceInfo for $name {
            const SCHEMA_DEFINITION: &'static str = $def;
            const SCHEMA_SOURCE: $crate::schema::SchemaSource = $crate::schema::SchemaSource::$source;
            fn object_shape() -> $crate::schema::Shape {
                $crate::schema::Shape::Object(vec![
                    $crate::schema::Field {
                        json: "metadata",
                        shape: $crate::schema::Shape::External("ObjectMeta"),
                    },
                    $crate::schema::Field {
                        json: "spec",
                        shape: <$spec as $crate::schema::Schema>::shape(),
                    },
                    $crate::schema::Field {
                        json: "status",
                        shape: <$status as $crate::schema::Schema>::shape(),
                    },
                ])
            }
        }
    };
}
