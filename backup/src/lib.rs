//! virtguard: backup engine and CLI for KubeVirt VMs, on the repository library
//! `virtguard-repo`.
//!
//! Layers, each depending only on the ones below it (ARCHITECTURE.md §1):
//!
//! * [`repo`] — the backup repository (the `virtguard-repo` crate, re-exported): on-disk/object
//!   format, chunking, stores (local directory, S3), encryption, verification, retention and
//!   garbage collection, locks. It knows nothing of Kubernetes.
//! * [`cluster`] — what a backup run asks of the Kubernetes API: freeze/thaw, CSI snapshots,
//!   VirtualMachineExport, cleanup by label. It knows nothing of the repository.
//! * [`engine`] — joins the two: the per-VM backup state machine, restore into the cluster,
//!   Job dispatch. It uses the repository through [`repo::Repository`],
//!   [`repo::BackupSession`] and [`repo::VolumeSource`].
//! * [`files`] — file-level access to the disk images of a backup (partition tables, ext4,
//!   NTFS) through [`repo::VolumeReader`], without restoring the disk.
//! * [`cli`] — the `virtguard` command line (clap); `main.rs` only parses and runs it.
//!
//! Each layer owns its error type and wraps the one below ([`repo::Error`] ←
//! [`cluster::ClusterError`], [`engine::EngineError`], [`engine::restore::RestoreError`],
//! [`files::FilesError`]); [`Error`] aggregates them for the CLI and `main` only, and no library
//! module names it.

pub mod cli;
pub mod cluster;
pub mod engine;
pub mod error;
pub mod files;

pub use error::{Error, Result};
/// The repository layer, its own crate (`virtguard-repo`); re-exported under the name the
/// engine, `files` and the CLI use.
pub use virtguard_repo as repo;
