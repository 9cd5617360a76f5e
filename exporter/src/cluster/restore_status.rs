//! The restore and restore-drill records read by cluster mode.
//!
//! Two ConfigMaps per namespace, both labelled `virtguard.io/status=true` (so the one status
//! watch of [`super`] sees them), each data key a VM name, each value the JSON of a record whose
//! contract lives in the api crate, shared with its writer:
//!
//! * `virtguard-restore-status` ([`RESTORE_STATUS_CONFIGMAP`]): key = the restored VM (the copy
//!   for `--as-copy`), value [`RestoreStatusRecord`], written by `virtguard restore` →
//!   `virtguard_restore_*{namespace,name,method}`;
//! * `virtguard-drill-status` ([`DRILL_STATUS_CONFIGMAP`]): key = the source VM, value
//!   [`DrillStatusRecord`], written by the restore drill → `virtguard_restore_test_*{namespace,
//!   name}`.
//!
//! As for the backup records ([`super::backup_status`]): timestamps are Unix seconds, a value the
//! record does not have gives no sample, failure reasons are fixed codes that never become
//! labels, and a malformed entry is skipped (and logged) without failing the scrape. `method` is
//! a label only when it is one of [`METHODS`]; anything else is reported as `other`, so a
//! writer bug cannot grow the label set.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::de::DeserializeOwned;
use virtguard_api::labels::{DRILL_STATUS_CONFIGMAP, RESTORE_STATUS_CONFIGMAP};
use virtguard_api::status::{BackupResult, DrillStatusRecord, RestoreStatusRecord};

use crate::render::{Exposition, Num};

/// Restore methods rendered as they are; any other value becomes `other`.
pub const METHODS: &[&str] = &["copy", "in-place"];

/// The records of every ConfigMap called `configmap`, as sorted (namespace, vm, record).
fn entries<T: DeserializeOwned>(
    cms: &[Arc<ConfigMap>],
    configmap: &str,
) -> Vec<(String, String, T)> {
    let mut out: BTreeMap<(String, String), T> = BTreeMap::new();
    for cm in cms {
        if cm.metadata.name.as_deref() != Some(configmap) {
            continue;
        }
        let ns = cm.metadata.namespace.clone().unwrap_or_default();
        for (vm, json) in cm.data.iter().flatten() {
            match serde_json::from_str::<T>(json) {
                Ok(r) => {
                    out.insert((ns.clone(), vm.clone()), r);
                }
                Err(e) => {
                    tracing::warn!(namespace = %ns, vm = %vm, configmap, error = %e, "malformed status entry skipped");
                }
            }
        }
    }
    out.into_iter().map(|((ns, vm), r)| (ns, vm, r)).collect()
}

/// The restore records, sorted by (namespace, VM).
pub fn restore_entries(cms: &[Arc<ConfigMap>]) -> Vec<(String, String, RestoreStatusRecord)> {
    entries(cms, RESTORE_STATUS_CONFIGMAP)
}

/// The drill records, sorted by (namespace, source VM).
pub fn drill_entries(cms: &[Arc<ConfigMap>]) -> Vec<(String, String, DrillStatusRecord)> {
    entries(cms, DRILL_STATUS_CONFIGMAP)
}

fn ts(t: i64) -> Num {
    Num::Float(t as f64)
}

fn ok(r: BackupResult) -> Num {
    Num::Int(u64::from(r == BackupResult::Succeeded))
}

/// Renders the `virtguard_restore_*` families.
pub fn render_restores(out: &mut Exposition, entries: &[(String, String, RestoreStatusRecord)]) {
    type Get = fn(&RestoreStatusRecord) -> Option<Num>;
    let families: [(&str, Get); 5] = [
        ("virtguard_restore_last_attempt_timestamp_seconds", |r| {
            Some(ts(r.last_attempt_timestamp))
        }),
        ("virtguard_restore_last_success_timestamp_seconds", |r| {
            r.last_success_timestamp.map(ts)
        }),
        ("virtguard_restore_last_status", |r| Some(ok(r.result))),
        ("virtguard_restore_duration_seconds", |r| {
            Some(Num::Float(r.duration_seconds))
        }),
        ("virtguard_restore_bytes", |r| {
            Some(Num::Int(r.bytes_written))
        }),
    ];
    for (metric, get) in families {
        let mut f = out.family(metric);
        for (ns, vm, r) in entries {
            let method = METHODS
                .iter()
                .find(|m| **m == r.method)
                .copied()
                .unwrap_or("other");
            if let Some(v) = get(r) {
                f.sample(&[ns, vm, method], &[], v);
            }
        }
    }
}

/// Renders the `virtguard_restore_test_*` families.
pub fn render_drills(out: &mut Exposition, entries: &[(String, String, DrillStatusRecord)]) {
    type Get = fn(&DrillStatusRecord) -> Option<Num>;
    let families: [(&str, Get); 5] = [
        (
            "virtguard_restore_test_last_attempt_timestamp_seconds",
            |r| Some(ts(r.last_attempt_timestamp)),
        ),
        (
            "virtguard_restore_test_last_success_timestamp_seconds",
            |r| r.last_success_timestamp.map(ts),
        ),
        ("virtguard_restore_test_last_status", |r| Some(ok(r.result))),
        ("virtguard_restore_test_duration_seconds", |r| {
            Some(Num::Float(r.duration_seconds))
        }),
        ("virtguard_restore_test_time_to_ready_seconds", |r| {
            r.time_to_ready_seconds.map(Num::Float)
        }),
    ];
    for (metric, get) in families {
        let mut f = out.family(metric);
        for (ns, vm, r) in entries {
            if let Some(v) = get(r) {
                f.sample(&[ns, vm], &[], v);
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
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ConfigMap::default()
        })
    }

    #[test]
    fn restores_and_drills_render_from_their_own_configmaps() {
        let cms = vec![
            cm(
                "prod",
                RESTORE_STATUS_CONFIGMAP,
                &[
                    (
                        "db-copy",
                        r#"{"lastAttemptTimestamp":100,"lastSuccessTimestamp":160,"result":"Succeeded","source":"prod/db","method":"copy","durationSeconds":60.5,"bytesWritten":4096}"#,
                    ),
                    (
                        "web",
                        r#"{"lastAttemptTimestamp":200,"result":"Failed","reason":"write-volume","source":"prod/web","method":"weird","durationSeconds":3.0,"bytesWritten":0}"#,
                    ),
                    ("broken", "{"),
                ],
            ),
            cm(
                "prod",
                DRILL_STATUS_CONFIGMAP,
                &[
                    (
                        "db",
                        r#"{"lastAttemptTimestamp":300,"lastSuccessTimestamp":390,"result":"Succeeded","sandboxNamespace":"virtguard-drills","durationSeconds":90.0,"timeToReadySeconds":12.5}"#,
                    ),
                    (
                        "web",
                        r#"{"lastAttemptTimestamp":400,"result":"Failed","reason":"agent-not-connected","sandboxNamespace":"virtguard-drills","durationSeconds":30.0}"#,
                    ),
                ],
            ),
            // A backup status ConfigMap is not read here.
            cm(
                "prod",
                "virtguard-status",
                &[("db", r#"{"lastAttemptTimestamp":1}"#)],
            ),
        ];
        let restores = restore_entries(&cms);
        assert_eq!(restores.len(), 2, "malformed entry skipped");
        let drills = drill_entries(&cms);
        assert_eq!(drills.len(), 2);
        let mut out = Exposition::default();
        render_restores(&mut out, &restores);
        render_drills(&mut out, &drills);
        let text = out.into_string();
        for line in [
            "virtguard_restore_last_attempt_timestamp_seconds{namespace=\"prod\",name=\"db-copy\",method=\"copy\"} 100\n",
            "virtguard_restore_last_success_timestamp_seconds{namespace=\"prod\",name=\"db-copy\",method=\"copy\"} 160\n",
            "virtguard_restore_last_status{namespace=\"prod\",name=\"db-copy\",method=\"copy\"} 1\n",
            "virtguard_restore_last_status{namespace=\"prod\",name=\"web\",method=\"other\"} 0\n",
            "virtguard_restore_duration_seconds{namespace=\"prod\",name=\"db-copy\",method=\"copy\"} 60.5\n",
            "virtguard_restore_bytes{namespace=\"prod\",name=\"db-copy\",method=\"copy\"} 4096\n",
            "virtguard_restore_test_last_success_timestamp_seconds{namespace=\"prod\",name=\"db\"} 390\n",
            "virtguard_restore_test_last_status{namespace=\"prod\",name=\"db\"} 1\n",
            "virtguard_restore_test_last_status{namespace=\"prod\",name=\"web\"} 0\n",
            "virtguard_restore_test_duration_seconds{namespace=\"prod\",name=\"web\"} 30\n",
            "virtguard_restore_test_time_to_ready_seconds{namespace=\"prod\",name=\"db\"} 12.5\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("last_success_timestamp_seconds{namespace=\"prod\",name=\"web\""));
        assert!(!text.contains("time_to_ready_seconds{namespace=\"prod\",name=\"web\""));
        assert!(!text.contains("reason"), "reasons never become labels");
    }
}
