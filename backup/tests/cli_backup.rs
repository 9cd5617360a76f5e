//! The real `virtguard` binary against the simulated cluster: `backup --all-namespaces`
//! (selection, opt-out label, summary, exit codes) and `cleanup` after a killed run.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::cluster::virtguard;
use common::text;

use std::process::{Command, Stdio};
use std::time::Duration;

use virtguard_sim::{FaultRule, Sim};

const SCENARIO: &str = r#"
namespaces: [prod, dev]
vms:
  - namespace: prod
    name: web
    disks:
      - {name: root, size: 6Mi, content: {random: 11}}
  - namespace: dev
    name: scratch
    guestAgent: false
    disks:
      - {name: root, size: 3Mi, content: {pattern: "abc"}}
  - namespace: dev
    name: ignored
    labels: {virtguard.io/backup: "false"}
    disks:
      - {name: root, size: 2Mi, content: zeros}
"#;

async fn sim() -> Sim {
    // The CLI backs up whatever state it finds: wait until the VMIs run.
    common::cluster::start_sim(SCENARIO, &["prod/web", "dev/scratch", "dev/ignored"])
        .await
        .0
}

/// A fresh, initialised local repository (the TempDir keeps it alive).
fn init_repo(sim: &Sim) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let o = virtguard(sim, &repo, &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    (dir, repo)
}

/// Makes the snapshot of `prod/web-root` never get `creationTime` (the guest stays frozen).
fn never_cut(sim: &Sim) {
    sim.inject(FaultRule {
        op: "snapshot-no-creation-time".into(),
        target: Some("prod/web-root".into()),
        ..Default::default()
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_all_namespaces_skips_opted_out_and_summarises() {
    let sim = sim().await;
    let (_dir, repo) = init_repo(&sim);

    let o = virtguard(&sim, &repo, &["backup", "--all-namespaces"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("prod/web") && out.contains("application-consistent"),
        "{}",
        text(&o)
    );
    assert!(
        out.contains("dev/scratch") && out.contains("crash-consistent"),
        "{}",
        text(&o)
    );
    assert!(!out.contains("dev/ignored"), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("skipping dev/ignored"));

    let o = virtguard(&sim, &repo, &["list", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_vm_gives_exit_1_and_names_the_vm_and_reason() {
    let sim = sim().await;
    sim.inject(FaultRule {
        op: "snapshot-error".into(),
        target: Some("prod/web-root".into()),
        message: Some("injected: backend offline".into()),
        ..Default::default()
    });
    let (_dir, repo) = init_repo(&sim);
    let o = virtguard(&sim, &repo, &["backup", "--all-namespaces"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("1 of 2") && err.contains("prod/web") && err.contains("backend offline"),
        "{}",
        text(&o)
    );
    // The other VM still made it.
    let o = virtguard(&sim, &repo, &["list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_selection_is_a_usage_error() {
    let sim = sim().await;
    let (_dir, repo) = init_repo(&sim);
    let o = virtguard(&sim, &repo, &["backup", "--vm", "just-a-name"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("expected NAMESPACE/NAME"),
        "{}",
        text(&o)
    );
    let o = virtguard(&sim, &repo, &["backup"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing selected"),
        "{}",
        text(&o)
    );
    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("prod/nope: not found"),
        "{}",
        text(&o)
    );
}

fn last_freeze_action(sim: &Sim, vmi: &str) -> Option<virtguard_sim::FreezeAction> {
    sim.freeze_log()
        .into_iter()
        .filter(|r| r.vmi == vmi && r.status == 200)
        .map(|r| r.action)
        .next_back()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_frozen_thaws_and_cleans_up() {
    let sim = sim().await;
    // The snapshot is never cut, so the run sits with the guest frozen.
    never_cut(&sim);
    let (_dir, repo) = init_repo(&sim);
    let child = Command::new(env!("CARGO_BIN_EXE_virtguard"))
        .args(["--repo", repo.to_str().unwrap(), "--quiet"])
        .args([
            "backup",
            "--vm",
            "prod/web",
            "--snapshot-created-timeout",
            "120s",
        ])
        .env("KUBECONFIG", sim.kubeconfig_path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while last_freeze_action(&sim, "prod/web") != Some(virtguard_sim::FreezeAction::Freeze) {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest was never frozen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = common::sigterm_and_wait(child);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SIGTERM"),
        "{}",
        text(&o)
    );
    assert_eq!(
        last_freeze_action(&sim, "prod/web"),
        Some(virtguard_sim::FreezeAction::Unfreeze),
        "the guest must be thawed before the process exits: {:?}",
        sim.freeze_log()
    );
    assert_eq!(
        common::cluster::leftovers(&sim.client().await.unwrap()).await,
        0,
        "{}",
        text(&o)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_that_is_never_cut_times_out_thawed() {
    let sim = sim().await;
    never_cut(&sim);
    let (_dir, repo) = init_repo(&sim);
    let o = virtguard(
        &sim,
        &repo,
        &[
            "backup",
            "--vm",
            "prod/web",
            "--snapshot-created-timeout",
            "1s",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("timed out"),
        "{}",
        text(&o)
    );
    assert_eq!(
        last_freeze_action(&sim, "prod/web"),
        Some(virtguard_sim::FreezeAction::Unfreeze)
    );
    assert_eq!(
        common::cluster::leftovers(&sim.client().await.unwrap()).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_stream_then_cleanup_and_a_new_backup_reuses_chunks() {
    use kube::api::ListParams;
    use kube::Api;
    let scenario = r#"
namespaces: [prod]
vms:
  - namespace: prod
    name: big
    guestAgent: false
    disks:
      - {name: root, size: 192Mi, content: {random: 5}}
"#;
    let (sim, _) = common::cluster::start_sim(scenario, &["prod/big"]).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    assert!(virtguard(&sim, &repo, &["init", "--chunk-size", "1MiB"])
        .status
        .success());
    let mut child = Command::new(env!("CARGO_BIN_EXE_virtguard"))
        .args(["--repo", repo.to_str().unwrap(), "--quiet"])
        .args(["backup", "--vm", "prod/big"])
        .env("KUBECONFIG", sim.kubeconfig_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until chunks are being uploaded, then kill -9.
    let chunks = repo.join("chunks");
    let count = |p: &std::path::Path| walk(p).len();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&chunks) < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never started uploading"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "backup finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let uploaded = count(&chunks);
    assert!(
        common::cluster::leftovers(&sim.client().await.unwrap()).await > 0,
        "a killed run leaves its objects"
    );
    let client = sim.client().await.unwrap();
    let leases =
        Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "prod");
    assert_eq!(
        leases
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );

    // A new run is refused while the dead run's lease is fresh...
    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/big"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already being backed up"),
        "{}",
        text(&o)
    );

    // ...`virtguard cleanup` removes the leftovers (and only those)...
    let o = virtguard(&sim, &repo, &["cleanup"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("deleted VolumeSnapshot prod/"),
        "{}",
        text(&o)
    );
    assert_eq!(
        common::cluster::leftovers(&sim.client().await.unwrap()).await,
        0
    );
    assert!(leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(
        client_has_pvc(&client, "big-root").await,
        "the VM's own PVC is untouched"
    );

    // ...and the next backup succeeds, reusing what the killed run uploaded.
    let o = virtguard(&sim, &repo, &["backup", "--vm", "prod/big"]);
    assert!(o.status.success(), "{}", text(&o));
    let after = count(&chunks);
    assert!(
        after - uploaded < 192 - 10,
        "chunks uploaded by the killed run must be reused ({uploaded} before, {after} after)"
    );
    let o = virtguard(&sim, &repo, &["verify", "--read-data"]);
    assert!(o.status.success(), "{}", text(&o));
}

async fn client_has_pvc(client: &kube::Client, name: &str) -> bool {
    kube::Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(
        client.clone(),
        "prod",
    )
    .get_opt(name)
    .await
    .unwrap()
    .is_some()
}

/// Files under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
