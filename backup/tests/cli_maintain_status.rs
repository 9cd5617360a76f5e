//! `virtguard maintain --status-namespace` against the simulated cluster: each run records its
//! outcome in ConfigMap `virtguard-maintenance-status` (the exporter's `virtguard_repository_*`
//! series): counts after a complete run, corrupt chunks counted (the run completed), a failed
//! step named with the last success carried over, and a cluster that cannot be reached refused
//! before anything runs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::cluster::virtguard;
use common::text;

use std::path::Path;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use virtguard_api::labels::{MAINTENANCE_STATUS_CONFIGMAP, STATUS};
use virtguard_api::status::{BackupResult, MaintenanceStatusRecord};

const SCENARIO: &str = "namespaces: [virtguard]\n";

/// The one record in the maintenance status ConfigMap (keyed by the repository id).
async fn record(client: &kube::Client) -> MaintenanceStatusRecord {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "virtguard")
        .get(MAINTENANCE_STATUS_CONFIGMAP)
        .await
        .unwrap();
    assert_eq!(
        cm.metadata.labels.unwrap().get(STATUS).map(String::as_str),
        Some("true"),
        "the exporter's status watch selects it"
    );
    let data = cm.data.unwrap();
    assert_eq!(data.len(), 1, "{data:?}");
    serde_json::from_str(data.values().next().unwrap()).unwrap()
}

fn chunk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(chunk_files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_records_its_outcome_for_the_exporter() {
    let (sim, client) = common::cluster::start_sim(SCENARIO, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let img = dir.path().join("disk.img");
    let data: Vec<u8> = (0..(64 * 1024 * 4) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&img, data).unwrap();
    let run = |args: &[&str]| virtguard(&sim, &repo, args);
    let o = run(&["init", "--chunk-size", "64KiB"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["backup-file", img.to_str().unwrap(), "--vm", "ns/vm"]);
    assert!(o.status.success(), "{}", text(&o));
    let status = ["--status-namespace", "virtguard", "--verify-share", "1/1"];

    // A complete run: counts of the repository.
    let o = run(&[&["maintain"], &status[..]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let first = record(&client).await;
    assert_eq!(first.result, BackupResult::Succeeded, "{first:?}");
    assert_eq!(first.repository, repo.to_str().unwrap());
    let counts = first.counts.unwrap();
    assert_eq!((counts.backups, counts.chunks), (1, 4), "{first:?}");
    assert!(
        counts.stored_bytes > 0 && counts.verify_read_bytes == counts.stored_bytes,
        "{first:?}"
    );
    assert_eq!(first.corrupt_chunks, Some(0));
    assert_eq!(
        first.last_prune_success_timestamp, None,
        "no policy: prune skipped"
    );
    let verified = first.last_verify_success_timestamp.unwrap();
    assert!(verified >= first.last_attempt_timestamp);
    assert!(first.last_gc_success_timestamp.unwrap() <= verified);

    // A rotten chunk: the run completes (exit 1) and counts it.
    let victim = chunk_files(&repo.join("chunks"))[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let o = run(&[&["maintain"], &status[..]].concat());
    assert!(!o.status.success(), "{}", text(&o));
    let rotten = record(&client).await;
    assert_eq!(rotten.result, BackupResult::Succeeded, "{rotten:?}");
    assert_eq!(rotten.corrupt_chunks, Some(1), "{rotten:?}");

    // gc cannot get its lock (a live exclusive lock of another process): the step is named,
    // the counts are not claimed, the last success stays that of the run before.
    let now = chrono::Utc::now().to_rfc3339();
    std::fs::create_dir_all(repo.join("locks")).unwrap();
    std::fs::write(
        repo.join("locks/20990101T000000Z-deadbeef.json"),
        format!(r#"{{"id":"20990101T000000Z-deadbeef","kind":"exclusive","operation":"prune","host":"elsewhere","pid":1,"created":"{now}","refreshed":"{now}"}}"#),
    )
    .unwrap();
    let o = run(&[&["maintain", "--lock-wait", "0s"], &status[..]].concat());
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("elsewhere"),
        "the holder is named: {}",
        text(&o)
    );
    let failed = record(&client).await;
    assert_eq!(failed.result, BackupResult::Failed, "{failed:?}");
    assert_eq!(failed.reason.as_deref(), Some("gc-failed"));
    assert_eq!(
        failed.last_verify_success_timestamp,
        rotten.last_verify_success_timestamp
    );
    assert_eq!(failed.counts, rotten.counts, "counts carry over");
    assert_eq!(
        failed.corrupt_chunks,
        Some(1),
        "the state still knows the rot"
    );
    assert!(failed.last_attempt_timestamp >= rotten.last_attempt_timestamp);

    // No cluster: refused before any step runs (nothing pruned, no status to lose).
    let before = std::fs::read_dir(repo.join("backups/ns/vm"))
        .unwrap()
        .count();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_virtguard"))
        .args([
            "--repo",
            repo.to_str().unwrap(),
            "--quiet",
            "maintain",
            "--keep-last",
            "1",
        ])
        .args(status)
        .env("KUBECONFIG", dir.path().join("missing-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_dir(repo.join("backups/ns/vm"))
            .unwrap()
            .count(),
        before
    );
}
