//! The backup engine end to end against the simulated cluster and a local repository:
//! application-consistent, crash-consistent and offline VMs; a failing snapshot that must leave
//! the guest thawed, nothing behind and no manifest.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kube::Api;
use sha2::{Digest, Sha256};
use virtguard::cluster;
use virtguard::engine::backup::backup_vm;
use virtguard::engine::config::BackupConfig;
use virtguard::repo::repository::InitOptions;
use virtguard::repo::{LocalStore, Repository, RestoreOptions};
use virtguard_api::status::{BackupResult, BackupStatusRecord, Consistency};
use virtguard_sim::{FaultRule, FreezeAction, Sim};

const SCENARIO: &str = r#"
namespaces: [prod]
vms:
  - namespace: prod
    name: db
    disks:
      - {name: root, size: 12Mi, content: {random: 1}}
      - {name: data, size: 8Mi, content: {pattern: "row,"}, used: 2Mi}
      - {name: logs, size: 3Mi, content: {random: 4}}
  - namespace: prod
    name: noagent
    guestAgent: false
    disks:
      - {name: root, size: 4Mi, content: {random: 2}}
  - namespace: prod
    name: stopped
    running: false
    disks:
      - {name: root, size: 4Mi, content: {random: 3}}
"#;

struct Env {
    sim: Sim,
    client: kube::Client,
    repo: Arc<Repository>,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let (sim, client) = common::cluster::start_sim(SCENARIO, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::new(dir.path().join("repo")));
    let repo = Repository::init(
        store,
        InitOptions {
            chunk_size: 1 << 20,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Let the VMIs reach Running.
    for name in ["db", "noagent"] {
        common::cluster::wait_running(&client, "prod", name).await;
    }
    Env {
        sim,
        client,
        repo: Arc::new(repo),
        _dir: dir,
    }
}

/// Backs up VM `prod/<vm>` with the default configuration.
async fn backup(
    e: &Env,
    vm: &str,
) -> Result<virtguard::engine::backup::VmBackupReport, virtguard::engine::EngineError> {
    backup_vm(
        &e.client,
        e.repo.clone(),
        "prod",
        vm,
        &BackupConfig::default(),
    )
    .await
}

fn sha(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

async fn status(client: &kube::Client, vm: &str) -> BackupStatusRecord {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "prod")
        .get("virtguard-status")
        .await
        .unwrap();
    assert_eq!(
        cm.metadata.labels.as_ref().unwrap()["virtguard.io/status"],
        "true"
    );
    serde_json::from_str(&cm.data.unwrap()[vm]).unwrap()
}

#[tokio::test]
async fn backs_up_three_kinds_of_vm_and_restores_identical_images() {
    let e = env().await;
    let cfg = BackupConfig::default();
    let want_root = sha(&e.sim.pvc_path("prod", "db-root").unwrap());
    let want_data = sha(&e.sim.pvc_path("prod", "db-data").unwrap());
    let want_logs = sha(&e.sim.pvc_path("prod", "db-logs").unwrap());

    let r = backup_vm(&e.client, e.repo.clone(), "prod", "db", &cfg)
        .await
        .unwrap();
    assert_eq!(r.consistency, Consistency::ApplicationConsistent);
    assert_eq!(r.volumes.len(), 3);
    assert!(
        r.freeze > Duration::ZERO && r.freeze < Duration::from_secs(5),
        "{:?}",
        r.freeze
    );
    let log: Vec<_> = e
        .sim
        .freeze_log()
        .into_iter()
        .filter(|f| f.vmi == "prod/db")
        .collect();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].action, FreezeAction::Freeze);
    assert_eq!(log[1].action, FreezeAction::Unfreeze);

    // Restore each volume from the repository: byte-identical to the disk at backup time.
    let backup = e.repo.find_backup(&r.backup_id).await.unwrap();
    let manifest = e.repo.load_manifest(&backup).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    for (vol, want) in [
        ("root", &want_root),
        ("data", &want_data),
        ("logs", &want_logs),
    ] {
        let target = out.path().join(vol);
        virtguard::repo::restore::restore_to_file(
            &e.repo,
            &manifest,
            vol,
            &target,
            &RestoreOptions::default(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(&sha(&target), want, "volume {vol}");
    }
    assert!(manifest.resources.is_some(), "the VM's objects are saved");

    let st = status(&e.client, "db").await;
    assert_eq!(st.result, BackupResult::Succeeded);
    assert_eq!(st.backup_id.as_deref(), Some(r.backup_id.as_str()));
    assert_eq!(st.consistency, Some(Consistency::ApplicationConsistent));

    let r2 = backup_vm(&e.client, e.repo.clone(), "prod", "noagent", &cfg)
        .await
        .unwrap();
    assert_eq!(r2.consistency, Consistency::CrashConsistent);
    assert_eq!(r2.freeze, Duration::ZERO);
    assert!(!e.sim.freeze_log().iter().any(|f| f.vmi == "prod/noagent"));

    let r3 = backup_vm(&e.client, e.repo.clone(), "prod", "stopped", &cfg)
        .await
        .unwrap();
    assert_eq!(r3.consistency, Consistency::Offline);

    // A second backup of the same VM stores (almost) nothing new.
    let again = backup_vm(&e.client, e.repo.clone(), "prod", "db", &cfg)
        .await
        .unwrap();
    assert_eq!(
        again.bytes_new, 0,
        "unchanged disks must not be stored twice"
    );

    assert_eq!(
        common::cluster::leftovers(&e.client).await,
        0,
        "every temporary object is deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_after_the_snapshot_instant_are_not_in_the_backup() {
    let e = env().await;
    let disk = e.sim.pvc_path("prod", "noagent-root").unwrap();
    let before = sha(&disk);
    let client = e.client.clone();
    let repo = e.repo.clone();
    let run = tokio::spawn(async move {
        backup_vm(&client, repo, "prod", "noagent", &BackupConfig::default()).await
    });
    // As soon as the snapshot has its creationTime (readyToUse comes 800 ms later and the
    // export after that), overwrite the live disk.
    let snaps = Api::<virtguard_api::VolumeSnapshot>::namespaced(e.client.clone(), "prod");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let cut = snaps
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|s| {
                s.status
                    .as_ref()
                    .and_then(|st| st.creation_time.as_ref())
                    .is_some()
            });
        if cut {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot was cut");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.seek(SeekFrom::Start(4096)).unwrap();
        f.write_all(&[0xEE; 256 * 1024]).unwrap();
        f.sync_all().unwrap();
    }
    assert_ne!(sha(&disk), before);
    let r = run.await.unwrap().unwrap();

    let backup = e.repo.find_backup(&r.backup_id).await.unwrap();
    let manifest = e.repo.load_manifest(&backup).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("root");
    virtguard::repo::restore::restore_to_file(
        &e.repo,
        &manifest,
        "root",
        &target,
        &RestoreOptions::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        sha(&target),
        before,
        "the backup is the disk at the snapshot instant"
    );
}

#[tokio::test]
async fn snapshot_error_thaws_cleans_up_and_writes_no_manifest() {
    let e = env().await;
    e.sim.inject(FaultRule {
        op: "snapshot-error".into(),
        target: Some("prod/db-data".into()),
        message: Some("rbd: quota exceeded".into()),
        ..Default::default()
    });
    let err = backup(&e, "db").await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("prod/db") && msg.contains("quota exceeded"),
        "{msg}"
    );
    let log: Vec<_> = e
        .sim
        .freeze_log()
        .into_iter()
        .filter(|f| f.vmi == "prod/db")
        .collect();
    assert_eq!(
        log.last().map(|f| f.action),
        Some(FreezeAction::Unfreeze),
        "guest must be thawed: {log:?}"
    );
    assert_eq!(common::cluster::leftovers(&e.client).await, 0);
    assert!(e
        .repo
        .list_backups(Some("prod"), Some("db"))
        .await
        .unwrap()
        .is_empty());
    let st = status(&e.client, "db").await;
    assert_eq!(st.result, BackupResult::Failed);
    assert_eq!(st.reason.as_deref(), Some("snapshot"));
}

#[tokio::test]
async fn unknown_vm_is_a_clear_error() {
    let e = env().await;
    let err = backup(&e, "ghost").await.unwrap_err().to_string();
    assert!(
        err.contains("prod/ghost") && err.contains("not found"),
        "{err}"
    );
}

#[tokio::test]
async fn a_vm_is_not_backed_up_twice_at_once() {
    let e = env().await;
    // Another live run holds the VM's lease.
    let other = virtguard::cluster::lease::VmLease::acquire(
        &e.client,
        "prod",
        "noagent",
        "20261122T000000Z-0000",
        &cluster::run_labels("20261122T000000Z-0000"),
    )
    .await
    .unwrap();
    let err = backup(&e, "noagent").await.unwrap_err();
    assert_eq!(err.reason(), "busy");
    assert!(err.to_string().contains("20261122T000000Z-0000"), "{err}");
    other.release().await;
    // Released: the next run goes ahead, and leaves no lease behind.
    backup(&e, "noagent").await.unwrap();
    let leases =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(e.client.clone(), "prod")
            .list(&ListParams::default())
            .await
            .unwrap();
    assert!(leases.items.is_empty(), "{:?}", leases.items);
}
