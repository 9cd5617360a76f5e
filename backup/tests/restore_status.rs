//! `virtguard restore` leaves its outcome for the exporter: the real binary against the simulated
//! cluster writes a `RestoreStatusRecord` under the restored VM's name in ConfigMap
//! `virtguard-restore-status` of its namespace — on success (bytes, method, last success) and on
//! failure (fixed reason, the earlier success kept). A dry run, or a restore refused before it
//! starts, writes nothing.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::text;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Patch, PatchParams};
use kube::Api;
use virtguard_api::labels::{RESTORE_STATUS_CONFIGMAP, STATUS};
use virtguard_api::status::{BackupResult, RestoreStatusRecord};
use virtguard_sim::{FaultRule, Scenario, Sim, SimConfig};

const SCENARIO: &str = r#"
namespaces: [prod, dr]
storageClasses:
  - {name: fast, driver: sim.csi.virtguard.io, default: true, snapshotClass: fast-snap}
vms:
  - namespace: prod
    name: db
    running: false
    disks:
      - {name: root, size: 3Mi, content: {random: 7}, used: 2Mi}
"#;

fn virtguard(sim: &Sim, repo: &str, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_virtguard"))
            .args(["--repo", repo, "--quiet"])
            .args(args)
            .env("KUBECONFIG", sim.kubeconfig_path())
            .env_remove("VIRTGUARD_KEY")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
}

async fn record(sim: &Sim, vm: &str) -> Option<(RestoreStatusRecord, ConfigMap)> {
    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await.unwrap(), "dr");
    let cm = cms.get_opt(RESTORE_STATUS_CONFIGMAP).await.unwrap()?;
    let json = cm.data.as_ref()?.get(vm)?.clone();
    Some((serde_json::from_str(&json).unwrap(), cm))
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_writes_its_status_record_on_success_and_failure() {
    virtguard::cluster::install_crypto_provider();
    let sim = Sim::start(SimConfig {
        scenario: Scenario::from_yaml(SCENARIO, "test").unwrap(),
        virtguard_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_virtguard"))),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    let o = virtguard(&sim, &repo, &["init", "--chunk-size", "1MiB"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/db"]);
    assert!(o.status.success(), "{}", text(&o));
    let args = [
        "restore",
        "prod/db@latest",
        "--target-namespace",
        "dr",
        "--name",
        "db-copy",
        "--timeout",
        "60s",
    ];

    // A dry run creates nothing, not even the record.
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let o = virtguard(&sim, &repo, &dry);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        record(&sim, "db-copy").await.is_none(),
        "a dry run writes no record"
    );

    // Success: the record names the method, the source and the bytes written.
    let o = virtguard(&sim, &repo, &args);
    assert!(o.status.success(), "{}", text(&o));
    let (ok, cm) = record(&sim, "db-copy")
        .await
        .expect("record after a successful restore");
    assert_eq!(
        cm.metadata.labels.unwrap().get(STATUS).map(String::as_str),
        Some("true"),
        "the exporter's status selector finds it"
    );
    assert_eq!(ok.result, BackupResult::Succeeded);
    assert_eq!(ok.method, "copy");
    assert_eq!(ok.source, "prod/db");
    assert_eq!(ok.bytes_written, 3 * 1024 * 1024);
    assert!(ok.backup_id.as_deref().unwrap().starts_with("prod/db/"));
    let success = ok.last_success_timestamp.expect("success time");
    assert!(success >= ok.last_attempt_timestamp);
    assert!(ok.reason.is_none());

    // A restore refused before it starts (the target exists) leaves the record alone.
    let o = virtguard(&sim, &repo, &args);
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(record(&sim, "db-copy").await.unwrap().0, ok);

    // Failure into another VM name: the upload proxy refuses the volume (400: not retried). An
    // earlier record of that VM (written here as an older run would have) keeps its success time.
    let earlier = RestoreStatusRecord {
        last_attempt_timestamp: 1_000,
        last_success_timestamp: Some(1_060),
        ..ok.clone()
    };
    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await.unwrap(), "dr");
    let patch = serde_json::json!({"data": {"db-copy2": serde_json::to_string(&earlier).unwrap()}});
    cms.patch(
        RESTORE_STATUS_CONFIGMAP,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    sim.inject(FaultRule {
        op: "upload-fail".into(),
        target: Some("dr/db-copy2-root".into()),
        status: Some(400),
        message: Some("injected 400".into()),
        ..Default::default()
    });
    let mut args2 = args.to_vec();
    args2[5] = "db-copy2";
    let o = virtguard(&sim, &repo, &args2);
    assert!(!o.status.success(), "{}", text(&o));
    let (failed, _) = record(&sim, "db-copy2").await.unwrap();
    assert_eq!(
        failed.result,
        BackupResult::Failed,
        "{failed:?}\n{}",
        text(&o)
    );
    assert_eq!(
        failed.reason.as_deref(),
        Some("upload-failed"),
        "{}",
        text(&o)
    );
    assert_eq!(
        failed.last_success_timestamp,
        Some(1_060),
        "the earlier success is kept"
    );
    assert!(failed.last_attempt_timestamp >= ok.last_attempt_timestamp);
    assert_eq!(failed.bytes_written, 0);
}
