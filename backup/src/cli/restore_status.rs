//! The record `virtguard restore` leaves for the cluster-mode exporter: one
//! [`RestoreStatusRecord`] under the restored VM's name in the ConfigMap
//! [`RESTORE_STATUS_CONFIGMAP`] of that VM's namespace (→ `virtguard_restore_*` series and the
//! `VirtguardRestoreFailed` alert).
//!
//! Invariants: a record is written for every restore that got as far as creating objects
//! (success, failure or interruption), never for a dry run or a restore refused before it
//! started; the last success time survives failed attempts (read back from the previous record);
//! the failure reason is a fixed code of [`REASONS`], never an error text; and failing to write
//! the record is logged, never turns a restore's outcome into another one.

use std::time::{SystemTime, UNIX_EPOCH};

use virtguard_api::labels::RESTORE_STATUS_CONFIGMAP;
use virtguard_api::status::{BackupResult, RestoreStatusRecord};

use crate::engine::backup::{read_status_entry, write_status_entry};
use crate::engine::restore::{Method, Mode, RestoreError, RestoreReport};
use crate::error::Error;

/// The failure codes a restore record can carry (what [`reason`] returns).
#[cfg_attr(not(test), allow(dead_code))]
pub const REASONS: &[&str] = &[
    "upload-failed",
    "job-failed",
    "timeout",
    "interrupted",
    "cluster-error",
    "restore-failed",
];

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The fixed code of a restore failure.
pub fn reason(e: &Error) -> &'static str {
    match e {
        Error::Restore(RestoreError::Upload { .. }) => "upload-failed",
        Error::Restore(RestoreError::Job { .. }) => "job-failed",
        Error::Restore(RestoreError::Timeout { .. }) => "timeout",
        Error::Restore(RestoreError::Interrupted { .. }) => "interrupted",
        Error::Restore(RestoreError::Cluster(_)) => "cluster-error",
        _ => "restore-failed",
    }
}

/// What one restore run tells the record.
pub struct Attempt<'a> {
    /// Namespace and name of the VM restored into.
    pub namespace: &'a str,
    /// Name of the restored VM (the record's key).
    pub name: &'a str,
    /// The backup restored (`namespace/vm/id`).
    pub backup_id: String,
    /// The VM the backup was taken of, `namespace/name`.
    pub source: String,
    /// Copy or in place.
    pub mode: Mode,
    /// Data path (not part of the record; kept for the log line).
    pub method: Method,
    /// Unix seconds the restore started.
    pub started: i64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Builds the record of `attempt` with outcome `outcome`, keeping `previous`'s last success.
pub fn record(
    attempt: &Attempt<'_>,
    outcome: std::result::Result<&RestoreReport, &Error>,
    previous: Option<&RestoreStatusRecord>,
    finished: i64,
) -> RestoreStatusRecord {
    let (result, reason, last_success, bytes) = match outcome {
        Ok(report) => (
            BackupResult::Succeeded,
            None,
            Some(finished),
            report.volumes.iter().map(|v| v.size).sum(),
        ),
        Err(e) => (
            BackupResult::Failed,
            Some(reason(e).to_string()),
            previous.and_then(|p| p.last_success_timestamp),
            0,
        ),
    };
    RestoreStatusRecord {
        last_attempt_timestamp: attempt.started,
        last_success_timestamp: last_success,
        result,
        reason,
        backup_id: Some(attempt.backup_id.clone()),
        source: attempt.source.clone(),
        method: match attempt.mode {
            Mode::Copy => "copy",
            Mode::InPlace => "in-place",
        }
        .to_string(),
        duration_seconds: attempt.seconds,
        bytes_written: bytes,
    }
}

/// Writes the record of `attempt`; a failure is logged on stderr, never returned.
pub async fn write(
    client: &kube::Client,
    attempt: &Attempt<'_>,
    outcome: std::result::Result<&RestoreReport, &Error>,
) {
    let previous = read_status_entry(
        client,
        attempt.namespace,
        RESTORE_STATUS_CONFIGMAP,
        attempt.name,
    )
    .await
    .and_then(|s| serde_json::from_str::<RestoreStatusRecord>(&s).ok());
    let rec = record(attempt, outcome, previous.as_ref(), now());
    let json = match serde_json::to_string(&rec) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("warning: could not encode the restore status record: {e}");
            return;
        }
    };
    if let Err(e) = write_status_entry(
        client,
        attempt.namespace,
        RESTORE_STATUS_CONFIGMAP,
        attempt.name,
        json,
    )
    .await
    {
        eprintln!(
            "warning: the restore status for the exporter was not recorded in ConfigMap {}/{RESTORE_STATUS_CONFIGMAP} ({e}); the restore itself is unaffected",
            attempt.namespace
        );
    }
    tracing::debug!(method = ?attempt.method, "restore status recorded");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt() -> Attempt<'static> {
        Attempt {
            namespace: "dr",
            name: "db-copy",
            backup_id: "prod/db/x".into(),
            source: "prod/db".into(),
            mode: Mode::Copy,
            method: Method::CdiUpload,
            started: 100,
            seconds: 2.5,
        }
    }

    #[test]
    fn success_and_failure_records() {
        let mut report = RestoreReport::default();
        report.volumes.push(crate::engine::restore::VolumeReport {
            size: 10,
            ..Default::default()
        });
        report.volumes.push(crate::engine::restore::VolumeReport {
            size: 5,
            ..Default::default()
        });
        let ok = record(&attempt(), Ok(&report), None, 103);
        assert_eq!(ok.result, BackupResult::Succeeded);
        assert_eq!(ok.last_success_timestamp, Some(103));
        assert_eq!(ok.bytes_written, 15);
        assert_eq!(ok.method, "copy");
        let err = Error::Restore(RestoreError::Interrupted {
            signal: "SIGTERM",
            what: "x".into(),
        });
        let failed = record(&attempt(), Err(&err), Some(&ok), 200);
        assert_eq!(failed.result, BackupResult::Failed);
        assert_eq!(failed.reason.as_deref(), Some("interrupted"));
        assert_eq!(failed.last_success_timestamp, Some(103), "kept from before");
        assert!(REASONS.contains(&reason(&Error::Invalid("x".into()))));
    }
}
