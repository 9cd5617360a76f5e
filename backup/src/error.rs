//! The crate's error type. Every variant names the object it failed on and, where it helps,
//! what to do next. Secrets (keys, credentials) never appear in any variant.

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the repository and the CLI.
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

    /// Some VM backups failed; each is listed with its reason.
    #[error("{failed} of {total} VM backup(s) failed:\n  {details}")]
    BackupsFailed {
        failed: usize,
        total: usize,
        details: String,
    },
}
