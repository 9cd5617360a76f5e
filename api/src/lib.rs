//! virtguard-api: typed subsets of the KubeVirt, CDI and CSI snapshot objects virtguard reads and
//! writes, plus the contracts between virtguard's own parts (labels, the backup status record)
//! and Kubernetes quantities as bytes ([`quantity`]).
//!
//! No I/O lives here. Field names and shapes follow the reference schemas in reference/
//! (KubeVirt and CDI OpenAPI, CSI snapshot CRDs); `tests/conformance.rs` walks every modelled field
//! path against those schemas. Every struct keeps unmodelled fields in `extra`, so a VM read from a
//! cluster, saved in a backup and written back on restore loses nothing we did not model.
//!
//! Top-level objects implement `k8s_openapi::Resource` and `Metadata`, so they are
//! `kube::Resource`s and work with `kube::Api<T>` directly.
//!
//! Modelled: [`VirtualMachine`], [`VirtualMachineInstance`], [`VirtualMachineInstanceMigration`],
//! [`VirtualMachineSnapshot`], [`VirtualMachineExport`], [`FreezeUnfreezeTimeout`],
//! [`VirtualMachineBackup`] (KubeVirt); [`DataVolume`], [`UploadTokenRequest`], [`CDIConfig`] (CDI);
//! [`VolumeSnapshot`], [`VolumeSnapshotContent`], [`VolumeSnapshotClass`],
//! [`VolumeGroupSnapshot`], [`VolumeGroupSnapshotClass`] (CSI). Core objects (PVC, PV, Secret,
//! ConfigMap, Job, Lease) come from k8s-openapi.

pub mod cdi;
pub mod csi;
pub mod kubevirt;
pub mod labels;
pub mod quantity;
pub mod refs;
pub mod schema;
pub mod status;

pub use cdi::*;
pub use csi::*;
pub use kubevirt::*;
pub use refs::*;
