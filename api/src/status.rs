//! The backup status record: how the backup engine tells the exporter about each VM.
//!
//! After each VM, `virtguard backup` writes one entry into the ConfigMap
//! [`STATUS_CONFIGMAP`](crate::labels::STATUS_CONFIGMAP) (`virtguard-status`) in the VM's namespace,
//! labelled [`STATUS`](crate::labels::STATUS)`=true`. The data key is the VM's name; the value is
//! the JSON of [`BackupStatusRecord`]. The cluster-mode exporter watches these ConfigMaps and turns
//! each record into the `virtguard_backup_*` series. Timestamps are Unix seconds (what Prometheus
//! wants; no parsing in the exporter). Unknown keys are ignored by readers, so the record can grow:
//! `freezeFailure` was added that way, and a record without it (or with an older virtguard's
//! `consistency`) still parses.

use serde::{Deserialize, Serialize};

/// How consistent a backup's images are: defined once, in `virtguard-model` (shared with the
/// repository manifest), and re-exported here so `virtguard_api::status::Consistency` keeps
/// working.
pub use virtguard_model::{Consistency, ConsistencyKind, FreezeFailure};

/// Outcome of the last attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupResult {
    /// The manifest was committed.
    Succeeded,
    /// The attempt failed; `reason` says at which step.
    Failed,
}

/// One VM's backup status (the value under the VM's name in `virtguard-status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatusRecord {
    /// Unix seconds when the last attempt started.
    pub last_attempt_timestamp: i64,
    /// Unix seconds when the last successful backup finished (kept across failed attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_timestamp: Option<i64>,
    /// Result of the last attempt.
    pub result: BackupResult,
    /// A fixed, short reason code for failures (e.g. `snapshot-timeout`); never free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Consistency of the last successful backup: key `consistency` (the kind) and, when its
    /// freeze failed, `freezeFailure` (the reason). Absent before the first success.
    #[serde(
        flatten,
        with = "virtguard_model::consistency::camel_case_optional_fields"
    )]
    pub consistency: Option<Consistency>,
    /// Backup id of the last successful backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Wall time of the last attempt, seconds.
    pub duration_seconds: f64,
    /// Freeze → thaw window of the last attempt, seconds (0 when not frozen).
    pub freeze_seconds: f64,
    /// Bytes read from the volumes.
    pub bytes_read: u64,
    /// Bytes of chunks that were new to the repository (before compression).
    pub bytes_new: u64,
    /// Bytes actually uploaded (after compression).
    pub bytes_stored: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_json_shape_is_stable() {
        let r = BackupStatusRecord {
            last_attempt_timestamp: 1_763_768_000,
            last_success_timestamp: Some(1_763_768_100),
            result: BackupResult::Succeeded,
            reason: None,
            consistency: Some(Consistency::ApplicationConsistent),
            backup_id: Some("20261121T233302Z-3f9a".into()),
            duration_seconds: 100.5,
            freeze_seconds: 0.8,
            bytes_read: 10,
            bytes_new: 5,
            bytes_stored: 2,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"lastAttemptTimestamp":1763768000,"lastSuccessTimestamp":1763768100,"result":"Succeeded","consistency":"application-consistent","backupId":"20261121T233302Z-3f9a","durationSeconds":100.5,"freezeSeconds":0.8,"bytesRead":10,"bytesNew":5,"bytesStored":2}"#
        );
        assert_eq!(
            serde_json::from_str::<BackupStatusRecord>(&json).unwrap(),
            r
        );
    }

    #[test]
    fn a_failed_freeze_is_recorded_with_its_reason_and_old_records_still_parse() {
        let r = BackupStatusRecord {
            last_attempt_timestamp: 1,
            last_success_timestamp: Some(2),
            result: BackupResult::Succeeded,
            reason: None,
            consistency: Some(Consistency::FreezeFailed(FreezeFailure::TimedOut)),
            backup_id: None,
            duration_seconds: 1.0,
            freeze_seconds: 0.0,
            bytes_read: 0,
            bytes_new: 0,
            bytes_stored: 0,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(r#""consistency":"crash-consistent","freezeFailure":"timed-out""#),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<BackupStatusRecord>(&json).unwrap(),
            r
        );
        // Written by a virtguard before this change (a stopped VM, no freezeFailure key).
        let old: BackupStatusRecord = serde_json::from_str(
            r#"{"lastAttemptTimestamp":1763768000,"lastSuccessTimestamp":1763768100,"result":"Succeeded","consistency":"offline","backupId":"20261121T233302Z-3f9a","durationSeconds":1.5,"freezeSeconds":0.0,"bytesRead":10,"bytesNew":5,"bytesStored":2}"#,
        )
        .unwrap();
        assert_eq!(old.consistency, Some(Consistency::Offline));
        // A failed first attempt has no consistency at all.
        let failed: BackupStatusRecord = serde_json::from_str(
            r#"{"lastAttemptTimestamp":1,"result":"Failed","reason":"snapshot","durationSeconds":3.0,"freezeSeconds":0.0,"bytesRead":0,"bytesNew":0,"bytesStored":0}"#,
        )
        .unwrap();
        assert_eq!(failed.consistency, None);
    }
}

/// One repository's maintenance status: what `virtguard maintain --status-namespace NS` writes
/// under the repository's id in the ConfigMap
/// [`MAINTENANCE_STATUS_CONFIGMAP`](crate::labels::MAINTENANCE_STATUS_CONFIGMAP) of `NS`, and
/// the cluster-mode exporter turns into the `virtguard_repository_*` series (label `repository`
/// = [`Self::repository`]). The step times and the corrupt chunks come from the repository's own
/// maintenance state (so they are right even after a failed run); the counts are those of the
/// last run that completed (carried over by a failed one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceStatusRecord {
    /// Where the repository is (`s3://bucket/prefix` or a path; never credentials).
    pub repository: String,
    /// Unix seconds when the last maintain started.
    pub last_attempt_timestamp: i64,
    /// Whether the last attempt ran every step (a run that found corrupt chunks did).
    pub result: BackupResult,
    /// Fixed code of the step that failed: [`MaintenanceStatusRecord::REASONS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Wall time of the last attempt, seconds.
    pub duration_seconds: f64,
    /// Unix seconds of the last completed prune, gc and verify step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune_success_timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gc_success_timestamp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify_success_timestamp: Option<i64>,
    /// Chunks known to be corrupt (remembered until a backup heals them); absent when the
    /// maintenance state could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corrupt_chunks: Option<u64>,
    /// The repository's size as the last complete run saw it; absent before one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<RepositoryCounts>,
}

/// What a complete maintain run counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryCounts {
    /// Committed backups.
    pub backups: u64,
    /// Chunk objects when gc looked.
    pub chunks: u64,
    /// Stored bytes of those chunks.
    pub stored_bytes: u64,
    /// Bytes gc deleted.
    pub gc_deleted_bytes: u64,
    /// Stored bytes of chunk data verify read.
    pub verify_read_bytes: u64,
}

impl MaintenanceStatusRecord {
    /// The failure codes: the step that failed.
    pub const REASONS: &'static [&'static str] = &["prune-failed", "gc-failed", "verify-failed"];
}

/// One source VM's last restore drill: what `virtguard drill` writes under the VM's name in the
/// ConfigMap [`DRILL_STATUS_CONFIGMAP`](crate::labels::DRILL_STATUS_CONFIGMAP) of the VM's own
/// namespace. The cluster-mode exporter turns it into the `virtguard_restore_test_*` series
/// (labels `namespace`, `name` of the source VM).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrillStatusRecord {
    /// Unix seconds when the last drill started.
    pub last_attempt_timestamp: i64,
    /// Unix seconds when the last successful drill finished (kept across failed attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_timestamp: Option<i64>,
    /// Result of the last drill.
    pub result: BackupResult,
    /// Fixed code of what failed: one of [`DrillStatusRecord::REASONS`]; never free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The backup the last drill restored (absent when none could be chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// Namespace the copy was restored into.
    pub sandbox_namespace: String,
    /// Wall time of the last drill (restore, boot, checks and cleanup), seconds.
    pub duration_seconds: f64,
    /// From starting the restored copy to its guest agent answering, seconds (absent when it
    /// never got there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_ready_seconds: Option<f64>,
}

impl DrillStatusRecord {
    /// The failure codes, in the order a drill meets them.
    pub const REASONS: &'static [&'static str] = &[
        "no-backup",
        "sandbox-missing",
        "restore-failed",
        "start-failed",
        "not-running",
        "agent-not-connected",
        "guest-info-failed",
        "filesystem-missing",
        "interrupted",
        "cleanup-failed",
    ];
}

/// One VM's last restore: what `virtguard restore` writes under the restored VM's name in the
/// ConfigMap [`RESTORE_STATUS_CONFIGMAP`](crate::labels::RESTORE_STATUS_CONFIGMAP) of that VM's
/// namespace (the copy's for `--as-copy`, the VM's own for in-place). The cluster-mode exporter
/// turns it into the `virtguard_restore_*` series. Drills do not write it (their copy is gone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatusRecord {
    /// Unix seconds when the last restore started.
    pub last_attempt_timestamp: i64,
    /// Unix seconds when the last successful restore finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_timestamp: Option<i64>,
    /// Result of the last restore.
    pub result: BackupResult,
    /// Fixed failure code (the restore step that failed); never free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The backup restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// The VM the backup was taken of, `namespace/name`.
    pub source: String,
    /// `copy` or `in-place`.
    pub method: String,
    /// Wall time of the last restore, seconds.
    pub duration_seconds: f64,
    /// Bytes written to the target volumes.
    pub bytes_written: u64,
}

#[cfg(test)]
mod drill_restore_tests {
    use super::*;

    #[test]
    fn drill_and_restore_records_have_stable_camel_case_keys() {
        let d = DrillStatusRecord {
            last_attempt_timestamp: 10,
            last_success_timestamp: None,
            result: BackupResult::Failed,
            reason: Some("filesystem-missing".into()),
            backup_id: Some("b1".into()),
            sandbox_namespace: "virtguard-drills".into(),
            duration_seconds: 42.5,
            time_to_ready_seconds: Some(15.0),
        };
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(
            json,
            r#"{"lastAttemptTimestamp":10,"result":"Failed","reason":"filesystem-missing","backupId":"b1","sandboxNamespace":"virtguard-drills","durationSeconds":42.5,"timeToReadySeconds":15.0}"#
        );
        assert_eq!(serde_json::from_str::<DrillStatusRecord>(&json).unwrap(), d);
        assert!(DrillStatusRecord::REASONS.contains(&"filesystem-missing"));

        let r = RestoreStatusRecord {
            last_attempt_timestamp: 1,
            last_success_timestamp: Some(2),
            result: BackupResult::Succeeded,
            reason: None,
            backup_id: Some("b2".into()),
            source: "prod/db".into(),
            method: "copy".into(),
            duration_seconds: 3.0,
            bytes_written: 4,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"lastAttemptTimestamp":1,"lastSuccessTimestamp":2,"result":"Succeeded","backupId":"b2","source":"prod/db","method":"copy","durationSeconds":3.0,"bytesWritten":4}"#
        );
        assert_eq!(
            serde_json::from_str::<RestoreStatusRecord>(&json).unwrap(),
            r
        );
    }
}
