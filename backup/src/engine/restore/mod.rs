//! Restore of a VM from a backup into the cluster (ARCHITECTURE.md §6).
//!
//! A restore is planned first, as pure data, and then executed:
//!
//! 1. [`load_objects`] reads the VM and PVC objects saved with the backup, and [`plan()`] builds
//!    every object the restore will create (module `plan`: names, disks, storage classes;
//!    module `rewrite`: the network identity policy — a copy gets new MACs and firmware UUID and
//!    loses fixed-IP annotations, in place keeps them).
//! 2. [`check_target`] refuses what would overwrite something and warns about what the target
//!    cluster lacks (module `check`).
//! 3. [`execute`] creates the disks, fills them through one of two data paths — `cdi-upload`
//!    (module `upload`) or `job` (module `job`) — and creates (or, in place, replaces) the VM
//!    **last**, so a failed restore never leaves a half-restored VM that could start. Everything
//!    the run creates is recorded in [`Created`] and deleted again on failure or interruption
//!    unless `--keep-partial` (module `created`). In place, the disks go into new claims and the
//!    VM is switched to them only when all are written (module `in_place`).
//!
//! Objects a restore creates carry the label [`RESTORE_ID`] (never `virtguard.io/backup-id`,
//! so `virtguard cleanup` can never select a restored disk).
//!
//! Each submodule's `//!` states its invariant. They depend on each other one way only:
//! `error` and `model` at the bottom; `objects`, `rewrite`, `plan`; `cluster`, `created`,
//! `progress`, `context`, `wait`; `check`, `upload`, `job`, `in_place`; `execute` on top. This
//! module only re-exports.

mod check;
mod cluster;
mod context;
mod created;
mod error;
mod execute;
mod in_place;
mod job;
mod model;
mod objects;
mod plan;
mod progress;
mod rewrite;
mod upload;
mod wait;

pub use check::check_target;
pub use context::Context;
pub use created::Created;
pub use error::RestoreError;
pub use execute::execute;
pub use model::{
    BackupObjects, Method, Mode, Plan, RestoreRequest, VolumePlan, RESTORED_FROM, RESTORE_ID,
};
pub use objects::{
    datavolume_object, job_object, objects_to_create, pvc_object, secret_object, JOB_DEVICE_PATH,
    JOB_MOUNT_PATH,
};
pub use plan::{load_objects, plan};
pub use progress::{NoProgress, Progress, RestoreReport, VolumeReport};
pub use rewrite::FIXED_IP_ANNOTATION_PREFIXES;
