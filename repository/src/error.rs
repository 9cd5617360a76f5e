//! The repository's error type, [`Error`]: everything `virtguard-repo` returns fails with it.
//!
//! # Rules
//!
//! * **One type for the crate.** Every public function of the repository returns
//!   [`Result<T>`](Result) with this [`Error`]; the crate never names an error of a layer above
//!   it (the engine, the CLI) and depends on no Kubernetes crate. Layers above wrap it with
//!   `From` (`virtguard::engine::EngineError::Repo`, `virtguard::engine::restore::RestoreError`,
//!   `virtguard::Error::Repo`), adding the VM and the step they were at; they never re-wrap it
//!   as text.
//! * **Context is attached where the error is made, not by re-wrapping.** Each variant carries
//!   the object it failed on (store and key, path, backup id, volume, lock holder), and, where
//!   the user can act, what to do next. A caller that needs to add context adds it once, in its
//!   own layer's variant.
//! * **Transient or permanent.** [`Error::is_transient`] is `true` only for [`Error::Store`] and
//!   [`Error::Source`] failures marked transient (5xx, throttling, resets, timeouts); those are
//!   retried by [`crate::store::RetryStore`] and the sources' own retries. Everything else is
//!   permanent: retrying the same call gives the same answer.
//! * **Whose fault.** [`Error::Invalid`] is invalid input from the user or the caller (a name, a
//!   flag value, a refusal such as gc stopping on a broken backup): the CLI exits with status 2
//!   for it. A failure to encode data ([`Error::Codec`]) or of an internal task
//!   ([`Error::Internal`]) is never reported as invalid input, nor is data read back that does
//!   not decode ([`Error::Corrupt`]).
//! * **No secrets.** Keys, passwords and credentials never appear in any variant; URLs are
//!   redacted before they are put in one.

use std::path::PathBuf;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object does not exist in the store.
    #[error("object `{key}` not found in {store}")]
    NotFound { store: String, key: String },

    /// A store operation failed. `transient` errors (5xx, throttling, resets, timeouts) are
    /// retried by [`crate::store::RetryStore`]; permanent ones are not.
    #[error("{op} of `{key}` in {store} failed{}: {message}", if *.transient { " (temporary)" } else { "" })]
    Store {
        store: String,
        op: &'static str,
        key: String,
        message: String,
        transient: bool,
    },

    /// Local I/O on a path outside the repository (source image, restore target, key file).
    #[error("{what} `{}`: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Reading the volume source failed (file, block device, HTTP).
    #[error("reading source {source_name} at offset {offset}: {message}")]
    Source {
        source_name: String,
        offset: u64,
        message: String,
        transient: bool,
    },

    /// An object read back from the repository is malformed or does not match its hash.
    #[error("corrupt object `{key}`: {reason}")]
    Corrupt { key: String, reason: String },

    /// The repository is not initialised at the location.
    #[error("no virtguard repository at {location}: run `virtguard init` first (or pass the right --repo)")]
    NoRepository { location: String },

    /// `init` on a location that already holds a repository.
    #[error("a virtguard repository already exists at {location}")]
    AlreadyInitialised { location: String },

    /// The repository uses a newer format than this binary understands.
    #[error("repository at {location} has format version {found}; this virtguard supports {supported}: upgrade virtguard")]
    UnsupportedVersion {
        location: String,
        found: u32,
        supported: u32,
    },

    /// The repository is encrypted and no key was given.
    #[error("repository at {location} is encrypted: pass --key-file or set VIRTGUARD_KEY")]
    KeyRequired { location: String },

    /// The key given does not unlock the repository.
    #[error("the key given does not unlock the repository at {location}: check --key-file / VIRTGUARD_KEY")]
    WrongKey { location: String },

    /// A lock held by someone else prevents the operation.
    #[error("repository is locked: {holder}; wait for it to finish, or if that process is gone run `virtguard unlock --stale` (after the lock turns stale)")]
    Locked { holder: String },

    /// A backup id or backup reference does not exist.
    #[error("backup `{id}` not found{}", .hint.as_ref().map(|h| format!(": {h}")).unwrap_or_default())]
    BackupNotFound { id: String, hint: Option<String> },

    /// A volume is not part of a backup.
    #[error("backup `{id}` has no volume `{volume}` (it has: {available})")]
    VolumeNotFound {
        id: String,
        volume: String,
        available: String,
    },

    /// The restored image does not match the digest recorded at backup time.
    #[error("restored volume `{volume}` of backup `{id}` does not match its recorded digest (expected {expected}, got {actual}); the target `{}` must not be used", target.display())]
    DigestMismatch {
        id: String,
        volume: String,
        target: PathBuf,
        expected: String,
        actual: String,
    },

    /// Verification found problems; each line names an object.
    #[error("verify found {} problem(s):\n  {}", .problems.len(), .problems.join("\n  "))]
    VerifyFailed { problems: Vec<String> },

    /// An object is under S3 Object Lock retention: it cannot be deleted before `until`.
    #[error("`{key}` in {store} is under S3 Object Lock until {until}: it can only be deleted after that date")]
    Retained {
        store: String,
        key: String,
        until: String,
    },

    /// Invalid user input (flag values, names) or a refusal caused by how the repository was
    /// asked.
    #[error("{0}")]
    Invalid(String),

    /// Encoding data the repository writes failed (zstd, tar): not the user's input, not a
    /// corrupt object.
    #[error("{0}")]
    Codec(String),

    /// An internal task (blocking worker, writer, concurrency limiter) failed or went away.
    #[error("{0}")]
    Internal(String),

    /// Encryption or key derivation failure that is not a wrong key.
    #[error("crypto: {0}")]
    Crypto(String),
}

impl Error {
    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { transient, .. } | Error::Source { transient, .. } => *transient,
            _ => false,
        }
    }

    /// Shorthand for an I/O error on a local path.
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a corrupt-object error.
    pub fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
