//! Cluster-facing operations of a backup run: everything virtguard asks of the Kubernetes API.
//!
//! - [`freeze`]: KubeVirt's `freeze`/`unfreeze` subresources, with a [`freeze::FrozenGuest`] that
//!   thaws on every path (explicitly, or from `Drop` as a last resort);
//! - [`snapshot`]: the CSI driver behind a PVC, the VolumeSnapshotClass for it, creating
//!   VolumeSnapshots and waiting for `creationTime` (thaw point) and `readyToUse`;
//! - [`groupsnapshot`]: one VolumeGroupSnapshot over all of a VM's PVCs when their driver has a
//!   VolumeGroupSnapshotClass (the PVCs are labelled for its selector, and only labelled);
//! - [`export`]: temporary PVCs from snapshots, the export token Secret and the
//!   VirtualMachineExport whose `status.links.internal` gives the `disk.img` URLs and CA;
//! - [`cleanup`]: deleting what a run created, found by label — and only that;
//! - [`retention`]: which retention policy applies to a VM (its annotation, its namespace's);
//! - [`guest`]: the guest agent's `guestosinfo` / `filesystemlist` subresources (read-only).
//!
//! Every object created here carries [`labels::MANAGED_BY`]`=virtguard` and
//! [`labels::BACKUP_ID`]`=<id>` ([`run_labels`]), which is what makes `virtguard cleanup` safe: it
//! never selects an object without both. The one thing a run changes on objects it does not own
//! is the [`labels::GROUP_SNAPSHOT`] label on the VM's PVCs, which cleanup removes again.

pub mod cleanup;
pub mod export;
pub mod freeze;
pub mod groupsnapshot;
pub mod guest;
pub mod lease;
pub mod retention;
pub mod snapshot;

use std::collections::BTreeMap;
use std::time::Duration;

use virtguard_api::labels;

/// Errors talking to the cluster. Each names the object and what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// An API call failed.
    #[error("{action} {kind} {object}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// The VM could not be frozen; `failure` is the bounded reason ([`freeze::classify`]). The
    /// backup engine goes on crash-consistent and records the reason.
    #[error("freezing VMI {object} failed ({failure}): {message}")]
    Freeze {
        object: String,
        message: String,
        failure: virtguard_model::FreezeFailure,
    },
    /// The VM could not be thawed: urgent, the guest's filesystems may stay frozen until
    /// KubeVirt's unfreezeTimeout safety net fires.
    #[error("THAW FAILED for VMI {object}: {message}; run `virtctl unfreeze vmi {name} -n {namespace}` now (KubeVirt thaws it by itself when the unfreezeTimeout expires)")]
    Thaw {
        object: String,
        namespace: String,
        name: String,
        message: String,
    },
    /// No VolumeSnapshotClass for the PVC's CSI driver.
    #[error("no VolumeSnapshotClass for CSI driver `{driver}` (PVC {pvc}): create a VolumeSnapshotClass for that driver (--snapshot-class can only pick among existing classes)")]
    NoSnapshotClass { driver: String, pvc: String },
    /// Several classes match and none is marked default.
    #[error("several VolumeSnapshotClasses for CSI driver `{driver}` ({classes}) and none is annotated snapshot.storage.kubernetes.io/is-default-class=true: mark one default, or pass --snapshot-class NAME")]
    AmbiguousSnapshotClass { driver: String, classes: String },
    /// `--snapshot-class` names a class the cluster does not have.
    #[error("VolumeSnapshotClass `{class}` (from --snapshot-class) does not exist: list them with `kubectl get volumesnapshotclass`")]
    UnknownSnapshotClass { class: String },
    /// The PVC is not backed by a CSI volume we can snapshot.
    #[error("PVC {pvc} is not a CSI volume ({why}): only CSI volumes can be snapshotted")]
    NotCsi { pvc: String, why: String },
    /// The snapshotter reported an error.
    #[error("VolumeSnapshot {object} failed: {message}")]
    SnapshotFailed { object: String, message: String },
    /// The group snapshotter reported an error (or the group lacks a member).
    #[error("VolumeGroupSnapshot {object} failed: {message} (to take one VolumeSnapshot per PVC instead, remove the VolumeGroupSnapshotClass of the PVCs' CSI driver)")]
    GroupSnapshotFailed { object: String, message: String },
    /// A wait ran out of time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    /// Another run is backing up this VM right now.
    #[error("VM {vm} is already being backed up (Lease held by run {holder}); wait for it to finish, or if that run died, for its lease to expire ({} s)", lease::LEASE_SECONDS)]
    Busy { vm: String, holder: String },
    /// The export did not give us what we need.
    #[error("VirtualMachineExport {object}: {message}")]
    Export { object: String, message: String },
}

impl ClusterError {
    pub(crate) fn api(
        action: &'static str,
        kind: &'static str,
        object: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> ClusterError {
        let object = object.into();
        move |source| ClusterError::Api {
            action,
            kind,
            object,
            source,
        }
    }

    /// True for HTTP 404 from the API server.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClusterError::Api { source: kube::Error::Api(s), .. } if s.code == 404)
    }
}

/// Result of cluster operations.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// Selects rustls' process-wide crypto provider (ring). Both ring (kube) and aws-lc-rs (the AWS
/// SDK) are linked into virtguard, so rustls cannot choose by itself and would panic on the first
/// TLS connection. Call once before building a kube client; later calls are no-ops.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The labels on every object a backup run creates.
pub fn run_labels(backup_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::BACKUP_ID.to_string(), backup_id.to_string()),
    ])
}

/// A Kubernetes object name for something a run creates: `vg-<id>-<what>`, lower-case,
/// DNS-1123, at most 63 characters (export Services derive their names from it), with a short
/// hash suffix when it had to be truncated so names stay unique.
pub fn object_name(backup_id: &str, what: &str) -> String {
    let raw = format!("vg-{backup_id}-{what}").to_ascii_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    const MAX: usize = 52; // leaves room for KubeVirt's `virt-export-` service prefix
    if name.len() > MAX {
        let hash = blake3::hash(raw.as_bytes()).to_hex();
        name.truncate(MAX - 9);
        name.push('-');
        name.push_str(&hash[..8]);
    }
    name.trim_end_matches('-').to_string()
}

/// A Go duration string KubeVirt parses (`"300s"`).
pub fn go_duration(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_dns_labels() {
        let n = object_name("20261121T233302Z-3f9a", "db_1.root");
        assert_eq!(n, "vg-20261121t233302z-3f9a-db-1-root");
        let long = object_name("20261121T233302Z-3f9a", &"x".repeat(80));
        assert!(long.len() <= 52, "{long}");
        assert_ne!(long, object_name("20261121T233302Z-3f9a", &"x".repeat(81)));
        assert!(long
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(300)), "300s");
        assert_eq!(go_duration(Duration::from_millis(10)), "1s");
    }
}
