//! Simulated controllers, through the real `kube` client and real HTTPS clients, one module per
//! controller: schema validation (`validation`), KubeVirt VMs, VMIs, freeze/unfreeze and
//! migrations (`kubevirt`), the CSI snapshotter (`snapshot`: point in time), VolumeGroupSnapshots
//! (`group_snapshot`: one instant over several PVCs, errors, deletion), VirtualMachineExport
//! (`export`), CDI upload (`cdi`), Jobs as processes (`jobs`), and the `virtguard-sim` binary,
//! its scenarios and state directory (`binary`); every injectable fault is exercised by the
//! module of the controller it affects. Shared helpers are in `common`.
//!
//! One test binary, not one per controller: each extra binary would be linked against the whole
//! kube/hyper/rustls stack again, and its tests could no longer wait on the sim in parallel
//! with the other controllers' tests.
#![allow(clippy::unwrap_used)] // test helpers

mod binary;
mod cdi;
mod common;
mod export;
mod group_snapshot;
mod jobs;
mod kubevirt;
mod snapshot;
mod validation;
