//! The backup engine: the per-VM state machine of ARCHITECTURE.md §4 over [`crate::cluster`] and
//! [`crate::repo`].
//!
//! [`backup::backup_vm`] runs, for one VM: resolve VM/VMI/volumes → choose snapshot classes
//! (before freezing, so a configuration error never costs a freeze) → freeze (Running +
//! AgentConnected only) → VolumeSnapshots, or one VolumeGroupSnapshot when all PVCs share a
//! driver with a VolumeGroupSnapshotClass → thaw as soon as all have `creationTime` → wait
//! `readyToUse` → temporary PVCs + token + VirtualMachineExports → stream each `disk.img` into the
//! repository → save the VM's objects → commit the manifest → delete everything the run created →
//! write the VM's status record. Cleanup and the thaw run on every exit path.

pub mod backup;
pub mod cbt;
pub mod config;
pub mod dispatch;
pub mod drill;
pub mod restore;

/// Errors of the engine. Each names the VM and the step.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A cluster call failed.
    #[error("VM {vm}: {step}: {source}")]
    Cluster {
        vm: String,
        step: &'static str,
        #[source]
        source: crate::cluster::ClusterError,
    },
    /// The repository failed.
    #[error("VM {vm}: {step}: {source}")]
    Repo {
        vm: String,
        step: &'static str,
        #[source]
        source: crate::repo::Error,
    },
    /// The VM cannot be backed up as it is.
    #[error("VM {vm}: {message}")]
    Vm { vm: String, message: String },
}

impl EngineError {
    /// A short, fixed reason code for the status record and metrics (never free text).
    pub fn reason(&self) -> &'static str {
        use crate::cluster::ClusterError as C;
        match self {
            EngineError::Vm { .. } => "invalid-vm",
            EngineError::Repo { .. } => "repository",
            EngineError::Cluster { source, .. } => match source {
                C::Timeout { .. } => "timeout",
                C::Freeze { .. } => "freeze",
                C::Thaw { .. } => "thaw",
                C::NoSnapshotClass { .. }
                | C::AmbiguousSnapshotClass { .. }
                | C::UnknownSnapshotClass { .. }
                | C::NotCsi { .. } => "snapshot-class",
                C::SnapshotFailed { .. } | C::GroupSnapshotFailed { .. } => "snapshot",
                C::Export { .. } => "export",
                C::Api { .. } => "api",
                C::Busy { .. } => "busy",
            },
        }
    }
}
