//! The backup status ConfigMaps written by the backup engine and read by cluster mode
//! (ARCHITECTURE.md §4 step 7).
//!
//! One ConfigMap `virtguard-status` per namespace, labelled `virtguard.io/status=true`. Each
//! data key is a VM name; its value is the JSON of
//! [`virtguard_api::status::BackupStatusRecord`] — the contract lives in the api crate, shared with
//! the writer (`virtguard backup`), so the two cannot drift:
//!
//! ```json
//! {"lastAttemptTimestamp": 1763768000, "lastSuccessTimestamp": 1763768041, "result": "Succeeded",
//!  "consistency": "application-consistent", "backupId": "20261121T233302Z-3f9a",
//!  "durationSeconds": 41.5, "freezeSeconds": 0.8, "bytesRead": 10737418240,
//!  "bytesNew": 52428800, "bytesStored": 20971520}
//! ```
//!
//! Timestamps are Unix seconds; unknown fields are ignored (forward compatible); failure reasons
//! are short fixed codes and never become labels here. A backup whose freeze failed also has
//! `"freezeFailure"` (a fixed code of [`virtguard_api::status::FreezeFailure`]).
//!
//! Consistency is rendered twice: `virtguard_backup_consistency` keeps its documented meaning
//! (1 application-consistent, 0 anything else), and `virtguard_backup_consistency_info`, whose
//! value is always 1, tells the kinds apart with bounded labels `kind` and `freeze_failure`
//! (`none` when the freeze did not fail or none was attempted).
//!
//! A malformed entry never fails a scrape: it is skipped (and logged), the other VMs render.

use std::collections::BTreeMap;

use virtguard_api::status::{BackupResult, BackupStatusRecord};

/// `freeze_failure` label value of `virtguard_backup_consistency_info` when there is no failure.
pub const NO_FREEZE_FAILURE: &str = "none";

use crate::render::{Exposition, Num};

/// One VM's last backup, as stored in the status ConfigMap.
pub type BackupStatus = BackupStatusRecord;

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

fn ts(t: i64) -> Num {
    Num::Float(t as f64)
}

/// Renders the `virtguard_backup_*` families for `(namespace, vm, status)` entries (sorted by
/// the caller for a stable output).
pub fn render(out: &mut Exposition, entries: &[(String, String, BackupStatus)]) {
    type Get = fn(&BackupStatus) -> Option<Num>;
    let families: [(&str, Get); 6] = [
        ("virtguard_backup_last_success_timestamp_seconds", |s| {
            s.last_success_timestamp.map(ts)
        }),
        ("virtguard_backup_last_attempt_timestamp_seconds", |s| {
            Some(ts(s.last_attempt_timestamp))
        }),
        ("virtguard_backup_last_status", |s| {
            Some(Num::Int(u64::from(s.result == BackupResult::Succeeded)))
        }),
        ("virtguard_backup_duration_seconds", |s| {
            Some(Num::Float(s.duration_seconds))
        }),
        ("virtguard_backup_freeze_seconds", |s| {
            Some(Num::Float(s.freeze_seconds))
        }),
        ("virtguard_backup_consistency", |s| {
            s.consistency
                .map(|c| Num::Int(u64::from(c.is_application_consistent())))
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
    let mut f = out.family("virtguard_backup_consistency_info");
    for (ns, vm, s) in entries {
        if let Some(c) = s.consistency {
            let failure = c.freeze_failure().map_or(NO_FREEZE_FAILURE, |f| f.as_str());
            f.sample(&[ns, vm, c.kind().as_str(), failure], &[], Num::Int(1));
        }
    }
    let mut f = out.family("virtguard_backup_bytes");
    for (ns, vm, s) in entries {
        for (kind, v) in [
            ("read", s.bytes_read),
            ("new", s.bytes_new),
            ("stored", s.bytes_stored),
        ] {
            f.sample(&[ns, vm, kind], &[], Num::Int(v));
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
            r#"{"lastAttemptTimestamp":1795303900,"lastSuccessTimestamp":1795303982,"result":"Succeeded","consistency":"application-consistent","durationSeconds":41.5,"freezeSeconds":0.8,"bytesRead":100,"bytesNew":10,"bytesStored":5,"future":1}"#.to_string(),
        );
        data.insert(
            "web".to_string(),
            r#"{"lastAttemptTimestamp":1795309200,"result":"Failed","reason":"snapshot","consistency":"crash-consistent","durationSeconds":3.0,"freezeSeconds":0.0,"bytesRead":0,"bytesNew":0,"bytesStored":0}"#.to_string(),
        );
        data.insert(
            "stopped".to_string(),
            r#"{"lastAttemptTimestamp":1795309300,"lastSuccessTimestamp":1795309310,"result":"Succeeded","consistency":"offline","durationSeconds":3.0,"freezeSeconds":0.0,"bytesRead":0,"bytesNew":0,"bytesStored":0}"#.to_string(),
        );
        data.insert(
            "frozen-out".to_string(),
            r#"{"lastAttemptTimestamp":1795309300,"lastSuccessTimestamp":1795309310,"result":"Succeeded","consistency":"crash-consistent","freezeFailure":"timed-out","durationSeconds":3.0,"freezeSeconds":0.0,"bytesRead":0,"bytesNew":0,"bytesStored":0}"#.to_string(),
        );
        data.insert("broken".to_string(), "{not json".to_string());
        let parsed = parse_configmap("prod", &data);
        assert_eq!(parsed.len(), 4);
        let entries: Vec<_> = parsed
            .into_iter()
            .map(|(vm, s)| ("prod".to_string(), vm, s))
            .collect();
        let mut out = Exposition::default();
        render(&mut out, &entries);
        let text = out.into_string();
        for line in [
            "virtguard_backup_last_success_timestamp_seconds{namespace=\"prod\",name=\"db\"} 1795303982\n",
            "virtguard_backup_last_status{namespace=\"prod\",name=\"db\"} 1\n",
            "virtguard_backup_last_status{namespace=\"prod\",name=\"web\"} 0\n",
            "virtguard_backup_consistency{namespace=\"prod\",name=\"web\"} 0\n",
            "virtguard_backup_consistency{namespace=\"prod\",name=\"db\"} 1\n",
            // Offline is not application-consistent: the documented 1/0 meaning holds.
            "virtguard_backup_consistency{namespace=\"prod\",name=\"stopped\"} 0\n",
            "virtguard_backup_consistency_info{namespace=\"prod\",name=\"db\",kind=\"application-consistent\",freeze_failure=\"none\"} 1\n",
            "virtguard_backup_consistency_info{namespace=\"prod\",name=\"web\",kind=\"crash-consistent\",freeze_failure=\"none\"} 1\n",
            "virtguard_backup_consistency_info{namespace=\"prod\",name=\"stopped\",kind=\"offline\",freeze_failure=\"none\"} 1\n",
            "virtguard_backup_consistency_info{namespace=\"prod\",name=\"frozen-out\",kind=\"crash-consistent\",freeze_failure=\"timed-out\"} 1\n",
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
