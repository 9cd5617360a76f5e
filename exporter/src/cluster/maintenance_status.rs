//! The repository maintenance records written by `virtguard maintain --status-namespace` and
//! read by cluster mode.
//!
//! ConfigMap `virtguard-maintenance-status` (labelled `virtguard.io/status=true`, so the one
//! status watch sees it) in the namespace the maintain CronJob runs in. Each data key is a
//! repository id; its value is the JSON of [`virtguard_api::status::MaintenanceStatusRecord`],
//! the contract shared with the writer. Each record becomes the `virtguard_repository_*` series
//! with the one label `repository` (the record's location, e.g. `s3://bucket/prefix`): a handful
//! of repositories per cluster, so the cardinality stays small.
//!
//! A malformed entry never fails a scrape: it is skipped (and logged). Two records naming the
//! same location (two namespaces maintaining one repository) never make duplicate series: the
//! newer attempt wins.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use virtguard_api::labels::MAINTENANCE_STATUS_CONFIGMAP;
use virtguard_api::status::{BackupResult, MaintenanceStatusRecord};

use crate::render::{Exposition, Num};

/// The records of every maintenance status ConfigMap, one per repository location (newest
/// attempt wins), sorted by location.
pub fn entries(cms: &[Arc<ConfigMap>]) -> Vec<MaintenanceStatusRecord> {
    let mut best: BTreeMap<String, MaintenanceStatusRecord> = BTreeMap::new();
    for cm in cms {
        if cm.metadata.name.as_deref() != Some(MAINTENANCE_STATUS_CONFIGMAP) {
            continue;
        }
        let ns = cm.metadata.namespace.as_deref().unwrap_or_default();
        for (id, json) in cm.data.iter().flatten() {
            let rec = match serde_json::from_str::<MaintenanceStatusRecord>(json) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(namespace = ns, repository = %id, error = %e, "malformed maintenance status entry skipped");
                    continue;
                }
            };
            let newer = best
                .get(&rec.repository)
                .is_none_or(|old| rec.last_attempt_timestamp > old.last_attempt_timestamp);
            if newer {
                best.insert(rec.repository.clone(), rec);
            }
        }
    }
    best.into_values().collect()
}

/// Renders the `virtguard_repository_*` families.
pub fn render(out: &mut Exposition, records: &[MaintenanceStatusRecord]) {
    type Get = fn(&MaintenanceStatusRecord) -> Option<Num>;
    let families: [(&str, Get); 12] = [
        (
            "virtguard_repository_maintenance_last_attempt_timestamp_seconds",
            |r| Some(Num::Float(r.last_attempt_timestamp as f64)),
        ),
        ("virtguard_repository_maintenance_last_status", |r| {
            Some(Num::Int(u64::from(r.result == BackupResult::Succeeded)))
        }),
        ("virtguard_repository_maintenance_duration_seconds", |r| {
            Some(Num::Float(r.duration_seconds))
        }),
        (
            "virtguard_repository_last_prune_success_timestamp_seconds",
            |r| r.last_prune_success_timestamp.map(|t| Num::Float(t as f64)),
        ),
        (
            "virtguard_repository_last_gc_success_timestamp_seconds",
            |r| r.last_gc_success_timestamp.map(|t| Num::Float(t as f64)),
        ),
        (
            "virtguard_repository_last_verify_success_timestamp_seconds",
            |r| {
                r.last_verify_success_timestamp
                    .map(|t| Num::Float(t as f64))
            },
        ),
        ("virtguard_repository_corrupt_chunks", |r| {
            r.corrupt_chunks.map(Num::Int)
        }),
        ("virtguard_repository_backups", |r| {
            r.counts.map(|c| Num::Int(c.backups))
        }),
        ("virtguard_repository_chunks", |r| {
            r.counts.map(|c| Num::Int(c.chunks))
        }),
        ("virtguard_repository_stored_bytes", |r| {
            r.counts.map(|c| Num::Int(c.stored_bytes))
        }),
        ("virtguard_repository_gc_deleted_bytes", |r| {
            r.counts.map(|c| Num::Int(c.gc_deleted_bytes))
        }),
        ("virtguard_repository_verify_read_bytes", |r| {
            r.counts.map(|c| Num::Int(c.verify_read_bytes))
        }),
    ];
    for (metric, get) in families {
        let mut f = out.family(metric);
        for r in records {
            if let Some(v) = get(r) {
                f.sample(&[&r.repository], &[], v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn cm(ns: &str, name: &str, data: &[(&str, &str)]) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        })
    }

    #[test]
    fn renders_one_series_set_per_repository_and_skips_malformed_entries() {
        let ok_rec = r#"{"repository":"s3://vg/prod","lastAttemptTimestamp":100,"result":"Succeeded","durationSeconds":60.5,"lastPruneSuccessTimestamp":120,"lastGcSuccessTimestamp":140,"lastVerifySuccessTimestamp":160,"corruptChunks":2,"counts":{"backups":12,"chunks":3000,"storedBytes":65536,"gcDeletedBytes":4096,"verifyReadBytes":8192},"future":true}"#;
        let older = r#"{"repository":"s3://vg/prod","lastAttemptTimestamp":50,"result":"Failed","reason":"gc-failed","durationSeconds":1}"#;
        let failed = r#"{"repository":"/srv/vg","lastAttemptTimestamp":200,"result":"Failed","reason":"prune-failed","durationSeconds":3,"lastVerifySuccessTimestamp":90}"#;
        let cms = vec![
            cm(
                "virtguard",
                MAINTENANCE_STATUS_CONFIGMAP,
                &[("a1", ok_rec), ("b2", failed), ("c3", "{no")],
            ),
            cm("other", MAINTENANCE_STATUS_CONFIGMAP, &[("a1", older)]),
            // A backup status ConfigMap is not read here.
            cm("virtguard", "virtguard-status", &[("vm", ok_rec)]),
        ];
        let records = entries(&cms);
        assert_eq!(records.len(), 2, "{records:?}");
        let mut out = Exposition::with_capacity(1024);
        render(&mut out, &records);
        let text = out.into_string();
        for want in [
            r#"virtguard_repository_last_verify_success_timestamp_seconds{repository="s3://vg/prod"} 160"#,
            r#"virtguard_repository_last_verify_success_timestamp_seconds{repository="/srv/vg"} 90"#,
            r#"virtguard_repository_last_prune_success_timestamp_seconds{repository="s3://vg/prod"} 120"#,
            r#"virtguard_repository_maintenance_last_status{repository="s3://vg/prod"} 1"#,
            r#"virtguard_repository_maintenance_last_status{repository="/srv/vg"} 0"#,
            r#"virtguard_repository_corrupt_chunks{repository="s3://vg/prod"} 2"#,
            r#"virtguard_repository_backups{repository="s3://vg/prod"} 12"#,
            r#"virtguard_repository_stored_bytes{repository="s3://vg/prod"} 65536"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // What the failed run does not know is not rendered as zero.
        for absent in [
            r#"virtguard_repository_corrupt_chunks{repository="/srv/vg"}"#,
            r#"virtguard_repository_backups{repository="/srv/vg"}"#,
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        assert_eq!(
            text.matches("virtguard_repository_maintenance_last_status{")
                .count(),
            2
        );
    }
}
