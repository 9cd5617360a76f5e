//! The exporter's error type. Messages name the object (libvirt URI, file, address) and say
//! what to do; none of them carries a secret (TLS keys are only ever named by path).

use std::path::PathBuf;
use std::time::Duration;

/// Result with the exporter's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can fail in the exporter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening a libvirt connection failed (temporary: retried on the next scrape).
    #[error("cannot connect to libvirt at {uri}: {source}; check that the socket exists and is writable by the exporter (retried on the next scrape)")]
    Connect {
        /// The connection URI.
        uri: String,
        /// libvirt's error.
        source: virt::error::Error,
    },
    /// `virConnectGetAllDomainStats` failed (temporary: the connection is reopened next scrape).
    #[error("GetAllDomainStats on {uri} failed: {source} (the connection is reopened on the next scrape)")]
    Stats {
        /// The connection URI.
        uri: String,
        /// libvirt's error.
        source: virt::error::Error,
    },
    /// The daemon did not answer in time (temporary).
    #[error("libvirt at {uri} did not answer within {timeout:?}; its VMs are reported with virtguard_vmi_scrape_success 0 (raise --libvirt-timeout if the node is just slow)")]
    Timeout {
        /// The connection URI.
        uri: String,
        /// The per-connection timeout.
        timeout: Duration,
    },
    /// A call from an earlier scrape is still blocked on this connection (temporary).
    #[error("libvirt at {uri} is still blocked in a call from an earlier scrape; the daemon is hung (check the virt-launcher pod)")]
    Busy {
        /// The connection URI.
        uri: String,
    },
    /// The blocking collector task panicked (a bug).
    #[error("the collector for {uri} panicked; please report this as a bug")]
    Panicked {
        /// The connection URI.
        uri: String,
    },
    /// A discovery glob is malformed (permanent: fix the flag).
    #[error("invalid libvirt socket glob `{pattern}`: {source}; fix --libvirt-socket-glob")]
    Glob {
        /// The pattern.
        pattern: String,
        /// The parse error.
        source: glob::PatternError,
    },
    /// Reading a TLS certificate or key failed.
    #[error("cannot load TLS {what} from {path}: {reason}; check --tls-cert/--tls-key")]
    Tls {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong (never key material).
        reason: String,
    },
    /// Binding or serving HTTP failed.
    #[error("HTTP server on {addr}: {source}; check --listen (is the port in use?)")]
    Http {
        /// The listen address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A command-line flag has an unusable value (permanent: fix the flag).
    #[error("invalid {flag} value `{value}`: {reason}")]
    InvalidFlag {
        /// The flag.
        flag: &'static str,
        /// The offending value.
        value: String,
        /// Why it is refused and what to do.
        reason: String,
    },
}
