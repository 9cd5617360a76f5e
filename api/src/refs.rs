//! Object references that the KubeVirt and CDI models share (core/v1 shapes that k8s-openapi's
//! own types do not fit, because ours keep unmodelled fields in `extra`).
//!
//! Invariant: a leaf. It imports only the modelling macros, never `kubevirt` or `cdi`, so both can
//! use it without importing each other.

use crate::model;

model! {
    /// A reference to an object in the same namespace (core `TypedLocalObjectReference`).
    pub struct TypedLocalObjectReference {
        "apiGroup" => api_group: String,
        "kind" => kind: String,
        "name" => name: String,
    }
}
