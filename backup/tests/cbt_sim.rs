//! Incremental backups through KubeVirt changed block tracking (pull-mode VirtualMachineBackup)
//! against the simulated cluster and a local repository: a full backup, then an incremental one
//! that reads only the chunks written in between, restores byte-identical, leaves nothing behind;
//! a tracker whose checkpoint is not the parent's forces a full backup; a VM without CBT keeps the
//! snapshot path.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::virtguard;
use kube::api::ListParams;
use kube::Api;
use sha2::{Digest, Sha256};
use virtguard::engine::backup::{backup_vm, VmBackupReport};
use virtguard::engine::cbt::{CHECKPOINT_LABEL, TYPE_LABEL};
use virtguard::engine::config::BackupConfig;
use virtguard::repo::repository::InitOptions;
use virtguard::repo::{LocalStore, Manifest, Repository, RestoreOptions};
use virtguard_api::status::{Consistency, FreezeFailure};
use virtguard_api::{VirtualMachine, VirtualMachineBackup};
use virtguard_sim::{FaultRule, FreezeAction, Sim};

const MIB: u64 = 1 << 20;

const SCENARIO: &str = r#"
namespaces: [prod]
vms:
  - namespace: prod
    name: cbt
    changedBlockTracking: true
    disks:
      - {name: root, size: 16Mi, content: {random: 1}}
      - {name: data, size: 8Mi, content: {pattern: "row,"}, used: 2Mi}
  - namespace: prod
    name: plain
    disks:
      - {name: root, size: 4Mi, content: {random: 2}}
"#;

async fn new_repo(dir: &std::path::Path) -> Arc<Repository> {
    let store = Arc::new(LocalStore::new(dir.to_path_buf()));
    let repo = Repository::init(
        store,
        InitOptions {
            chunk_size: MIB as u32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Arc::new(repo)
}

async fn start() -> (Sim, kube::Client) {
    let (sim, client) = common::cluster::start_sim(SCENARIO, &["prod/cbt", "prod/plain"]).await;
    // CBT is reported Enabled by the sim's controller.
    let vms = Api::<VirtualMachine>::namespaced(client.clone(), "prod");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let vm = vms.get("cbt").await.unwrap();
            let state = vm
                .status
                .and_then(|s| s.extra.get("changedBlockTracking").cloned())
                .and_then(|c| c.get("state").cloned());
            if state == Some(serde_json::json!("Enabled")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    (sim, client)
}

fn sha(path: &std::path::Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn poke(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

async fn backup(client: &kube::Client, repo: &Arc<Repository>, vm: &str) -> VmBackupReport {
    backup_vm(client, repo.clone(), "prod", vm, &BackupConfig::default())
        .await
        .unwrap()
}

async fn manifest(repo: &Arc<Repository>, id: &str) -> Manifest {
    let b = repo.find_backup(id).await.unwrap();
    repo.load_manifest(&b).await.unwrap()
}

/// Restores every volume of `id` and compares with the expected sha256 per volume.
async fn assert_restores(repo: &Arc<Repository>, id: &str, want: &[(&str, String)]) {
    let m = manifest(repo, id).await;
    let out = tempfile::tempdir().unwrap();
    for (vol, sum) in want {
        let target = out.path().join(vol);
        virtguard::repo::restore::restore_to_file(
            repo,
            &m,
            vol,
            &target,
            &RestoreOptions::default(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(&sha(&target), sum, "backup {id}, volume {vol}");
    }
}

fn checkpoints(sim: &Sim) -> Vec<String> {
    let dir = sim.state_dir().join("checkpoints").join("prod");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn assert_clean(sim: &Sim, client: &kube::Client) {
    assert_eq!(
        common::cluster::leftovers(client).await,
        0,
        "run objects left"
    );
    let vmbs = Api::<VirtualMachineBackup>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(
        vmbs.items.is_empty(),
        "VirtualMachineBackups left: {:?}",
        vmbs.items
    );
    // The sim drops checkpoint copies once no backup serves them: only the tracker's remains.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(checkpoints(sim).len(), 1, "{:?}", checkpoints(sim));
}

#[tokio::test(flavor = "multi_thread")]
async fn full_then_incremental_reads_only_changed_chunks() {
    let (sim, client) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(&dir.path().join("a")).await;
    let root = sim.pvc_path("prod", "cbt-root").unwrap();
    let data = sim.pvc_path("prod", "cbt-data").unwrap();
    let disk_bytes = 24 * MIB;

    // 1. No parent: a full pull backup, quiesced through the freeze subresource.
    let want1 = vec![("root", sha(&root)), ("data", sha(&data))];
    let r1 = backup(&client, &repo, "cbt").await;
    let m1 = manifest(&repo, &r1.backup_id).await;
    assert_eq!(m1.labels[TYPE_LABEL], "Full");
    let cp1 = m1.labels[CHECKPOINT_LABEL].clone();
    assert!(!cp1.is_empty());
    let log: Vec<_> = sim
        .freeze_log()
        .into_iter()
        .filter(|f| f.vmi == "prod/cbt")
        .map(|f| f.action)
        .collect();
    assert_eq!(log, vec![FreezeAction::Freeze, FreezeAction::Unfreeze]);
    assert!(
        r1.bytes_read > 2 * MIB,
        "full backup reads the data: {}",
        r1.bytes_read
    );
    assert_restores(&repo, &r1.backup_id, &want1).await;
    assert_clean(&sim, &client).await;

    // 2. Write into three chunks (two of root, one formerly-zero chunk of data).
    poke(&root, MIB + 5, b"changed root 1");
    poke(&root, 9 * MIB + 4096, &[0xAB; 10_000]);
    poke(&data, 6 * MIB + 17, b"new data where there were zeros");
    let want2 = vec![("root", sha(&root)), ("data", sha(&data))];
    let r2 = backup(&client, &repo, "cbt").await;
    let m2 = manifest(&repo, &r2.backup_id).await;
    assert_eq!(m2.labels[TYPE_LABEL], "Incremental");
    assert_ne!(m2.labels[CHECKPOINT_LABEL], cp1);
    assert_eq!(
        m2.parent.as_ref().map(|p| p.to_string()),
        Some(r1.backup_id.clone())
    );
    assert_eq!(
        r2.bytes_read,
        3 * MIB,
        "only the three written chunks are read (of {disk_bytes} bytes)"
    );
    assert!(r2.bytes_new <= 3 * MIB && r2.bytes_new > 0);
    assert_restores(&repo, &r2.backup_id, &want2).await;
    assert_restores(&repo, &r1.backup_id, &want1).await;
    assert_clean(&sim, &client).await;

    // 3. Another repository backs the VM up meanwhile: the tracker moves on, so the next
    // backup into the first repository cannot trust the map and must be full — and exact.
    let other = new_repo(&dir.path().join("b")).await;
    let rb = backup(&client, &other, "cbt").await;
    assert_eq!(
        manifest(&other, &rb.backup_id).await.labels[TYPE_LABEL],
        "Full"
    );
    poke(&root, 14 * MIB, b"after the other repository's backup");
    let want3 = vec![("root", sha(&root)), ("data", sha(&data))];
    let r3 = backup(&client, &repo, "cbt").await;
    let m3 = manifest(&repo, &r3.backup_id).await;
    assert_eq!(
        m3.labels[TYPE_LABEL], "Full",
        "tracker checkpoint is not the parent's"
    );
    assert!(r3.bytes_read > 3 * MIB);
    assert_restores(&repo, &r3.backup_id, &want3).await;

    // 4. ... after which incremental resumes.
    poke(&data, 0, b"x");
    let want4 = vec![("root", sha(&root)), ("data", sha(&data))];
    let r4 = backup(&client, &repo, "cbt").await;
    assert_eq!(
        manifest(&repo, &r4.backup_id).await.labels[TYPE_LABEL],
        "Incremental"
    );
    assert_eq!(r4.bytes_read, MIB);
    assert_restores(&repo, &r4.backup_id, &want4).await;
    assert_clean(&sim, &client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_without_cbt_uses_the_snapshot_path() {
    let (sim, client) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    let want = vec![("root", sha(&sim.pvc_path("prod", "plain-root").unwrap()))];
    let r = backup(&client, &repo, "plain").await;
    let m = manifest(&repo, &r.backup_id).await;
    assert!(!m.labels.contains_key(CHECKPOINT_LABEL), "{:?}", m.labels);
    assert!(r.bytes_read >= 4 * MIB - MIB);
    assert_restores(&repo, &r.backup_id, &want).await;
    // No tracker, no VirtualMachineBackup, no checkpoint for it.
    assert!(sim
        .object(
            "backup.kubevirt.io",
            "virtualmachinebackuptrackers",
            "prod",
            "virtguard-plain"
        )
        .is_none());
    assert!(checkpoints(&sim).is_empty());
    assert_eq!(common::cluster::leftovers(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cbt_failures_thaw_clean_up_and_commit_nothing() {
    let (sim, client) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;

    // KubeVirt fails the backup after quiescing: thawed, error names the backup and the cause.
    sim.inject(FaultRule {
        op: "backup-failed".into(),
        target: Some("prod/*".into()),
        message: Some("qemu: disk I/O error".into()),
        ..Default::default()
    });
    let err = backup_vm(
        &client,
        repo.clone(),
        "prod",
        "cbt",
        &BackupConfig::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("VirtualMachineBackup") && err.contains("qemu: disk I/O error"),
        "{err}"
    );
    let log: Vec<_> = sim
        .freeze_log()
        .into_iter()
        .filter(|f| f.vmi == "prod/cbt")
        .map(|f| f.action)
        .collect();
    assert_eq!(log, vec![FreezeAction::Freeze, FreezeAction::Unfreeze]);
    assert!(
        repo.latest("prod", "cbt").await.unwrap().is_none(),
        "no manifest"
    );
    assert_eq!(common::cluster::leftovers(&client).await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(checkpoints(&sim).is_empty(), "{:?}", checkpoints(&sim));

    // The API refuses the VirtualMachineBackup: the token Secret goes with the cleanup.
    sim.clear_faults();
    sim.inject(FaultRule {
        op: "create virtualmachinebackups".into(),
        times: Some(1),
        ..Default::default()
    });
    let err = backup_vm(
        &client,
        repo.clone(),
        "prod",
        "cbt",
        &BackupConfig::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("creating the VirtualMachineBackup"), "{err}");
    assert!(repo.latest("prod", "cbt").await.unwrap().is_none());
    assert_eq!(common::cluster::leftovers(&client).await, 0);

    // Data downloads dropped mid-stream are re-requested: the backup is exact.
    sim.clear_faults();
    sim.inject(FaultRule {
        op: "export-drop-after".into(),
        target: Some("prod/*".into()),
        times: Some(2),
        bytes: Some(300_000),
        ..Default::default()
    });
    let root = sim.pvc_path("prod", "cbt-root").unwrap();
    let data = sim.pvc_path("prod", "cbt-data").unwrap();
    let want = vec![("root", sha(&root)), ("data", sha(&data))];
    let r = backup(&client, &repo, "cbt").await;
    assert_restores(&repo, &r.backup_id, &want).await;
    assert_clean(&sim, &client).await;
}

async fn status_record(client: &kube::Client) -> virtguard_api::status::BackupStatusRecord {
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), "prod")
        .get("virtguard-status")
        .await
        .unwrap();
    serde_json::from_str(&cm.data.unwrap()["cbt"]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_binary_backs_up_incrementally_and_reports_bytes_read() {
    let (sim, client) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let show = |o: &std::process::Output| {
        format!(
            "{:?}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let o = virtguard(&sim, &repo, &["init", "--chunk-size", "1MiB"]);
    assert!(o.status.success(), "{}", show(&o));
    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/cbt"]);
    assert!(o.status.success(), "{}", show(&o));
    let full = status_record(&client).await;
    assert!(full.bytes_read > 2 * MIB, "{full:?}");

    let root = sim.pvc_path("prod", "cbt-root").unwrap();
    poke(&root, 7 * MIB + 3, b"one changed chunk");
    let want = sha(&root);
    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/cbt"]);
    assert!(o.status.success(), "{}", show(&o));
    let inc = status_record(&client).await;
    assert_eq!(inc.bytes_read, MIB, "{inc:?}");
    let id = inc.backup_id.clone().unwrap();

    let out = dir.path().join("root.img");
    let o = virtguard(
        &sim,
        &repo,
        &[
            "restore-file",
            &format!("prod/cbt/{id}"),
            "root",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(sha(&out), want);
    assert_clean(&sim, &client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_quiesce_is_never_recorded_as_application_consistent() {
    let (sim, client) = start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = new_repo(dir.path()).await;
    sim.inject(FaultRule {
        op: "freeze".into(),
        target: Some("prod/cbt".into()),
        ..Default::default()
    });
    // KubeVirt reads the volumes anyway: the backup is kept, crash-consistent, and says why.
    let r = backup(&client, &repo, "cbt").await;
    let want = Consistency::FreezeFailed(FreezeFailure::QuiesceFailed);
    assert_eq!(r.consistency, want);
    assert_eq!(r.freeze, Duration::ZERO, "nothing was frozen");
    assert_eq!(manifest(&repo, &r.backup_id).await.consistency, want);
    assert_eq!(status_record(&client).await.consistency, Some(want));
    assert_eq!(common::cluster::leftovers(&client).await, 0);
}

/// The sim's pull endpoints directly: token check, point-in-time data (writes after the
/// checkpoint are not served), map, and 404 once the backup is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn sim_pull_endpoints_serve_the_checkpoint_with_the_token_only() {
    use kube::api::{DeleteParams, PostParams};
    let (sim, client) = start().await;
    let root = sim.pvc_path("prod", "cbt-root").unwrap();
    let at_checkpoint = std::fs::read(&root).unwrap();
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), "prod");
    let mut secret = k8s_openapi::api::core::v1::Secret::default();
    secret.metadata.name = Some("tok".into());
    secret.data = Some(
        [(
            "token".to_string(),
            k8s_openapi::ByteString(b"s3cret".to_vec()),
        )]
        .into(),
    );
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let api = Api::<VirtualMachineBackup>::namespaced(client.clone(), "prod");
    let vmb: VirtualMachineBackup = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "b1"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "cbt"},
                 "mode": "Pull", "skipQuiesce": true, "tokenSecretRef": "tok"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &vmb).await.unwrap();
    let st = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let b = api.get("b1").await.unwrap();
            if let Some(st) = b.status.filter(|s| s.included_volumes.is_some()) {
                break st;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(st.type_.as_deref(), Some("Full"));
    // Written after the checkpoint: not in what the endpoint serves.
    poke(&root, 0, b"after the checkpoint");

    let vol = st
        .included_volumes
        .unwrap()
        .into_iter()
        .find(|v| v.volume_name.as_deref() == Some("root"))
        .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(st.endpoint_cert.unwrap().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let data = vol.data_endpoint.unwrap();
    let r = http.get(&data).send().await.unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = http
        .get(&data)
        .header("x-kubevirt-export-token", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "wrong token");
    let r = http
        .get(&data)
        .header("x-kubevirt-export-token", "s3cret")
        .header("range", "bytes=0-1048575")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &at_checkpoint[..MIB as usize]
    );
    let map: Vec<serde_json::Value> = http
        .get(vol.map_endpoint.unwrap())
        .header("x-kubevirt-export-token", "s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Random content: one extent covering the whole 16 MiB disk.
    assert_eq!(map.len(), 1, "{map:?}");
    assert_eq!(map[0]["start"], 0);
    assert_eq!(map[0]["length"], 16 * MIB);

    api.delete("b1", &DeleteParams::default()).await.unwrap();
    let r = http
        .get(&data)
        .header("x-kubevirt-export-token", "s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "deleting the backup ends it");
    // Source VirtualMachine (no tracker): the checkpoint copy goes with the backup.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(checkpoints(&sim).is_empty(), "{:?}", checkpoints(&sim));
}
