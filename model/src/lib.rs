//! virtguard-model: the vocabulary every layer shares, with no I/O and no Kubernetes dependency.
//!
//! The repository layer (`virtguard::repo`, which must never depend on a Kubernetes crate) and
//! the Kubernetes-facing crates (`virtguard-api`, the engine, the exporter) both describe
//! backups with these types, so a value written by one is read back unchanged by the others.
//! Only `serde` is allowed as a dependency: adding I/O, Kubernetes or repository code here breaks
//! that layering.
//!
//! - [`consistency`]: how consistent a backup's disk images are ([`Consistency`]), the four kinds
//!   ([`ConsistencyKind`]) and why an attempted freeze did not happen ([`FreezeFailure`]).

pub mod consistency;

pub use consistency::{Consistency, ConsistencyKind, FreezeFailure};
