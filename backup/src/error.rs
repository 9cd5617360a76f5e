//! The `virtguard` binary's top-level error, [`Error`]: what [`crate::cli::run`] returns and
//! `main` turns into a message and an exit status.
//!
//! # Rules
//!
//! * **Each layer returns its own type and wraps only the layer below**, with `From`:
//!   the repository returns [`crate::repo::Error`]; the cluster layer
//!   [`crate::cluster::ClusterError`]; the engine [`crate::engine::EngineError`] (one VM's
//!   backup), [`crate::engine::dispatch::DispatchError`] and
//!   [`crate::engine::restore::RestoreError`]; `files` [`crate::files::FilesError`]. This type
//!   aggregates them for the CLI and `main` only: no library module (`cluster`, `engine`,
//!   `files`) names it, so errors flow one way, from the repository up to `main`.
//! * **Context is attached, not re-wrapped.** A variant of a lower layer already names its
//!   object and what to do; it is carried here as it is (`#[error(transparent)]`), not turned
//!   into text. The per-VM errors of a backup run stay typed in [`Error::BackupsFailed`], so
//!   `main` classifies them.
//! * **Exit status.** 0: everything succeeded; 2: usage, configuration or a refusal caused by how
//!   the command was asked ([`Error::is_usage`]); 1: the work failed (any VM failed, the
//!   repository or the cluster failed, a codec or internal failure).
//! * **Transient errors** are retried where they happen (the repository's `RetryStore`, the
//!   cluster layer's API retries); by the time one reaches this type it is final.
//! * Secrets (keys, credentials) never appear in any variant.

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a `virtguard` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository layer failed (the message names the object and what to do).
    #[error(transparent)]
    Repo(#[from] virtguard_repo::Error),

    /// Invalid user input (flag values, names).
    #[error("{0}")]
    Invalid(String),

    /// A Kubernetes API operation failed (the message names the object and what to do).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),

    /// `--dispatch jobs` could not create or follow its Jobs.
    #[error(transparent)]
    Dispatch(#[from] crate::engine::dispatch::DispatchError),

    /// A restore into the cluster failed (the message names the object and what to do).
    #[error(transparent)]
    Restore(#[from] crate::engine::restore::RestoreError),

    /// File-level access to a backup's disk image failed (`virtguard files`, `mount`).
    #[error(transparent)]
    Files(#[from] crate::files::FilesError),

    /// The cluster could not be reached or configured.
    #[error("connecting to the Kubernetes API: {0} (set KUBECONFIG, or run inside a pod with a service account)")]
    KubeConfig(String),

    /// Stopped by a signal after thawing and cleaning up.
    #[error("interrupted by {signal}: frozen guests were thawed and temporary objects deleted; no backup of an unfinished VM was committed")]
    Interrupted { signal: &'static str },

    /// Some restore drills failed; each is listed with its reason.
    #[error("{} of {total} restore drill(s) failed:\n  {}", .failures.len(), .failures.join("\n  "))]
    DrillsFailed { total: usize, failures: Vec<String> },

    /// Some VM backups failed; each is listed with its reason.
    #[error("{} of {total} VM backup(s) failed:\n  {}", .failures.len(), join_lines(.failures))]
    BackupsFailed {
        total: usize,
        failures: Vec<VmFailure>,
    },
}

/// Why one VM's backup failed, as the layer that ran it reported it.
#[derive(Debug, thiserror::Error)]
pub enum VmFailure {
    /// The backup ran in this process: the engine's error (it names the VM and the step).
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The backup ran in a Job of `--dispatch jobs` and the Job failed.
    #[error("{vm}: {message} (logs: kubectl logs -n {namespace} job/{job})")]
    Job {
        vm: String,
        namespace: String,
        job: String,
        message: String,
    },
}

fn join_lines(failures: &[VmFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl Error {
    /// A refusal caused by how the command was asked (a flag, a name, the configuration):
    /// `main` exits with status 2 for it, like clap's own usage errors.
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Invalid(_) | Error::KubeConfig(_) => true,
            Error::Repo(e) => matches!(e, crate::repo::Error::Invalid(_)),
            Error::Restore(e) => e.is_usage(),
            Error::Dispatch(e) => e.is_usage(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::dispatch::DispatchError;
    use crate::engine::EngineError;

    #[test]
    fn usage_errors_are_told_from_failures_of_the_work() {
        assert!(Error::Invalid("--vm".into()).is_usage());
        assert!(Error::from(crate::repo::Error::Invalid("bad name".into())).is_usage());
        assert!(Error::from(DispatchError::NoTemplate).is_usage());
        // Encoding and internal failures are not the user's input.
        assert!(!Error::from(crate::repo::Error::Codec("zstd: out of memory".into())).is_usage());
        assert!(!Error::from(crate::repo::Error::Internal("worker gone".into())).is_usage());
        assert!(!Error::from(crate::repo::Error::corrupt("chunks/00/x", "bad")).is_usage());
        let failed = Error::BackupsFailed {
            total: 1,
            failures: vec![VmFailure::Engine(EngineError::Vm {
                vm: "ns/a".into(),
                message: "no disks".into(),
            })],
        };
        assert!(!failed.is_usage());
    }

    #[test]
    fn backups_failed_lists_each_vm_typed_and_says_the_same_as_before() {
        let e = Error::BackupsFailed {
            total: 3,
            failures: vec![
                VmFailure::Engine(EngineError::Vm {
                    vm: "ns/a".into(),
                    message: "no disks".into(),
                }),
                VmFailure::Job {
                    vm: "ns/b".into(),
                    namespace: "backup".into(),
                    job: "vg-b".into(),
                    message: "Job failed".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "2 of 3 VM backup(s) failed:\n  VM ns/a: no disks\n  \
             ns/b: Job failed (logs: kubectl logs -n backup job/vg-b)"
        );
        let Error::BackupsFailed { failures, .. } = &e else {
            unreachable!()
        };
        assert!(matches!(
            &failures[0],
            VmFailure::Engine(e) if e.reason() == "invalid-vm"
        ));
    }
}
