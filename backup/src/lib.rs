//! virtguard: backup engine, repository and CLI for KubeVirt VMs.
//!
//! * [`repo`] — the backup repository: on-disk/object format, chunking, stores (local
//!   directory, S3), encryption, verification, retention and garbage collection, locks.
//! * [`cluster`] — what a backup run asks of the Kubernetes API: freeze/thaw, CSI snapshots,
//!   VirtualMachineExport, cleanup by label.
//! * [`files`] — file-level access to the disk images of a backup (partition tables, ext4,
//!   NTFS) through [`repo::VolumeReader`], without restoring the disk.
//! * [`cli`] — the `virtguard` command line (clap); `main.rs` only parses and runs it.
//!
//! Later parts (`cluster`, `engine`) use the repository through [`repo::Repository`],
//! [`repo::BackupSession`] and [`repo::VolumeSource`].

pub mod cli;
pub mod cluster;
pub mod engine;
pub mod error;
pub mod files;
pub mod repo;

pub use error::{Error, Result};
