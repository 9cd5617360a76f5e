//! The backup status ConfigMaps written by the backup engine and read by cluster mode
//! (DESIGN §4 step 7; proposed format, to be confirmed with the backup engine).
//!
//! One ConfigMap `virtguard-status` per namespace, labelled `virtguard.io/status=true`. Each
//! data key is a VM name; its value is one JSON object about that VM's last backup:
//!
//! ```json
//! {"lastAttempt": "2026-11-21T23:33:02Z", "lastSuccess": "2026-11-21T23:33:02Z",
//!  "result": "Succeeded", "consistency": "application", "durationSeconds": 41.5,
//!  "freezeSeconds": 0.8, "bytesRead": 10737418240, "bytesNew": 52428800, "bytesStored": 20971520}
//! ```
//!
//! * `lastAttempt` (required), `lastSuccess` (absent or null before the first success): RFC 3339.
//! * `result`: `Succeeded` or `Failed`; `consistency`: `application` (frozen by the guest agent)
//!   or `crash`. Field names are camelCase; unknown fields are ignored (forward compatible).
//! * Error text is deliberately absent: it would tempt a label; it belongs in events and logs.
//!
//! A malformed entry never fails a scrape: it is skipped (and logged), the other VMs render.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::render::{Exposition, Num};

/// One VM's last backup, as stored in the status ConfigMap.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the last attempt finished.
    pub last_attempt: DateTime<Utc>,
    /// When the last successful backup finished.
    #[serde(default)]
    pub last_success: Option<DateTime<Utc>>,
    /// Outcome of the last attempt.
    pub result: BackupResult,
    /// Consistency of the last attempt.
    #[serde(default)]
    pub consistency: Option<Consistency>,
    /// Duration of the last attempt.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// How long the guest filesystems stayed frozen.
    #[serde(default)]
    pub freeze_seconds: Option<f64>,
    /// Bytes read from the disks.
    #[serde(default)]
    pub bytes_read: Option<u64>,
    /// Bytes new to the repository (before compression).
    #[serde(default)]
    pub bytes_new: Option<u64>,
    /// Bytes stored in the repository (after compression).
    #[serde(default)]
    pub bytes_stored: Option<u64>,
}

/// Outcome of a backup attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum BackupResult {
    /// The backup committed its manifest.
    Succeeded,
    /// It did not.
    Failed,
}

/// Consistency of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Guest filesystems were frozen through the agent.
    Application,
    /// No freeze (no agent, paused VM, or freeze failed).
    Crash,
}

/// Parses one ConfigMap's `data`: VM name → status. Malformed entries are skipped.
pub fn parse_configmap(
    namespace: &str,
    data: &BTreeMap<String, String>,
) -> Vec<(String, BackupStatus)> {
    data.iter()
        .filter_map(|(vm, json)| match serde_json::from_str::<BackupStatus>(json) {
            Ok(s) => Some((vm.clone(), s)),
            Err(e) => {
                tracing::warn!(namespace, vm = %vm, error = %e, "malformed backup status entry skipped");
                None
            }
        })
        .collect()
}

fn ts(t: &DateTime<Utc>) -> Num {
    Num::Float(t.timestamp_millis() as f64 / 1000.0)
}

/// Renders the `virtguard_backup_*` families for `(namespace, vm, status)` entries (sorted by
/// the caller for a stable output).
pub fn render(out: &mut Exposition, entries: &[(String, String, BackupStatus)]) {
    type Get = fn(&BackupStatus) -> Option<Num>;
    let families: [(&str, Get); 6] = [
        ("virtguard_backup_last_success_timestamp_seconds", |s| {
            s.last_success.as_ref().map(ts)
        }),
        ("virtguard_backup_last_attempt_timestamp_seconds", |s| {
            Some(ts(&s.last_attempt))
        }),
        ("virtguard_backup_last_status", |s| {
            Some(Num::Int(u64::from(s.result == BackupResult::Succeeded)))
        }),
        ("virtguard_backup_duration_seconds", |s| {
            s.duration_seconds.map(Num::Float)
        }),
        ("virtguard_backup_freeze_seconds", |s| {
            s.freeze_seconds.map(Num::Float)
        }),
        ("virtguard_backup_consistency", |s| {
            s.consistency
                .map(|c| Num::Int(u64::from(c == Consistency::Application)))
        }),
    ];
    for (metric, get) in families {
        let mut f = out.family(metric);
        for (ns, vm, s) in entries {
            if let Some(v) = get(s) {
                f.sample(&[ns, vm], &[], v);
            }
        }
    }
    let mut f = out.family("virtguard_backup_bytes");
    for (ns, vm, s) in entries {
        for (kind, v) in [
            ("read", s.bytes_read),
            ("new", s.bytes_new),
            ("stored", s.bytes_stored),
        ] {
            if let Some(v) = v {
                f.sample(&[ns, vm, kind], &[], Num::Int(v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_renders_and_skips_malformed_entries() {
        let mut data = BTreeMap::new();
        data.insert(
            "db".to_string(),
            r#"{"lastAttempt":"2026-11-21T23:33:02Z","lastSuccess":"2026-11-21T23:33:02.5Z","result":"Succeeded","consistency":"application","durationSeconds":41.5,"freezeSeconds":0.8,"bytesRead":100,"bytesNew":10,"bytesStored":5,"future":1}"#.to_string(),
        );
        data.insert(
            "web".to_string(),
            r#"{"lastAttempt":"2026-11-22T01:00:00Z","lastSuccess":null,"result":"Failed","consistency":"crash"}"#.to_string(),
        );
        data.insert("broken".to_string(), "{not json".to_string());
        let parsed = parse_configmap("prod", &data);
        assert_eq!(parsed.len(), 2);
        let entries: Vec<_> = parsed
            .into_iter()
            .map(|(vm, s)| ("prod".to_string(), vm, s))
            .collect();
        let mut out = Exposition::default();
        render(&mut out, &entries);
        let text = out.into_string();
        for line in [
            "virtguard_backup_last_success_timestamp_seconds{namespace=\"prod\",name=\"db\"} 1795303982.5\n",
            "virtguard_backup_last_status{namespace=\"prod\",name=\"db\"} 1\n",
            "virtguard_backup_last_status{namespace=\"prod\",name=\"web\"} 0\n",
            "virtguard_backup_consistency{namespace=\"prod\",name=\"web\"} 0\n",
            "virtguard_backup_duration_seconds{namespace=\"prod\",name=\"db\"} 41.5\n",
            "virtguard_backup_bytes{namespace=\"prod\",name=\"db\",kind=\"stored\"} 5\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("last_success_timestamp_seconds{namespace=\"prod\",name=\"web\"}"),
            "never succeeded: no sample"
        );
        assert!(!text.contains("broken"));
    }
}
