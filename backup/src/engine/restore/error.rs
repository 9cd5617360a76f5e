//! Errors of a restore. Each names the object it failed on and what to do next;
//! [`RestoreError::is_usage`] tells the refusals caused by how the command was asked (exit
//! status 2) from failures of the cluster or the repository.

use std::time::Duration;

use crate::cluster::ClusterError;

/// Errors of a restore. Each names the object and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target name is taken.
    #[error("{kind} {object} already exists: pass --in-place to replace the VM's disks and spec (the VM must be stopped), or --name NEW (and/or --target-namespace) to restore a copy beside it")]
    Exists { kind: &'static str, object: String },
    /// The target namespace does not exist.
    #[error("target namespace `{0}` does not exist: create it (kubectl create namespace {0}) or pass another --target-namespace")]
    NoNamespace(String),
    /// In place on a running VM without --force.
    #[error("VM {ns}/{name} is running: stop it first (virtctl stop {name} -n {ns}), or pass --force to let virtguard stop it")]
    Running { ns: String, name: String },
    /// The backup has no VM object (e.g. made with `backup-file` without resources).
    #[error("backup {backup} holds no VirtualMachine object (virtualmachine.json): restore its disks with `virtguard download` or `virtguard restore-file` instead")]
    NoVmObject { backup: String },
    /// The saved objects or the flags do not allow a restore.
    #[error("{0}")]
    Invalid(String),
    /// A data upload failed.
    #[error("uploading volume `{volume}` into PVC {pvc} failed: {message}")]
    Upload {
        volume: String,
        pvc: String,
        message: String,
    },
    /// A restore Job failed.
    #[error("restore Job {ns}/{job} for volume `{volume}` failed: {message}; see `kubectl logs -n {ns} job/{job}`")]
    Job {
        ns: String,
        job: String,
        volume: String,
        message: String,
    },
    /// A wait ran out of time.
    #[error("timed out after {waited:?} waiting for {what}; raise --timeout if the cluster is just slow")]
    Timeout { what: String, waited: Duration },
    /// A cluster call failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Stopped by a signal; what the run had created was deleted unless --keep-partial.
    #[error("interrupted by {signal}: {what}")]
    Interrupted { signal: &'static str, what: String },
    /// The repository failed (corrupt chunk, wrong key, ...).
    #[error("reading the backup: {0}")]
    Repo(Box<crate::repo::Error>),
}

impl RestoreError {
    /// A refusal caused by how the command was asked (name clash, missing namespace, running VM
    /// without --force, contradictory options): exit status 2, like other usage errors.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RestoreError::Exists { .. }
                | RestoreError::NoNamespace(_)
                | RestoreError::Running { .. }
                | RestoreError::Invalid(_)
        )
    }
}

impl From<crate::repo::Error> for RestoreError {
    fn from(e: crate::repo::Error) -> Self {
        RestoreError::Repo(Box::new(e))
    }
}

pub(super) type Result<T, E = RestoreError> = std::result::Result<T, E>;
