//! Faults through the real `virtguard backup` binary, against the simulated cluster and a real
//! s3s-fs: export connections dropped mid-download (resumed, exact image), S3 unreachable, wrong
//! S3 credentials, S3 failing every write mid-backup, a PVC whose CSI driver has no snapshot
//! class, a snapshot that never becomes ready, an export that never becomes ready. Each gives a
//! clear message and exit 1, leaves the guest thawed (or never freezes it), leaves no object
//! behind and commits no manifest; no secret appears in the output.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::{Command, Output, Stdio};

use common::{FaultPlan, FaultProxy, S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use sha2::{Digest, Sha256};
use virtguard_sim::{FaultRule, FreezeAction, Sim};

const SCENARIO: &str = r#"
namespaces: [prod]
storageClasses:
  - {name: fast, driver: fast.csi.example, default: true, snapshotClass: fast-snap}
  - {name: legacy, driver: legacy.csi.example}
vms:
  - namespace: prod
    name: web
    disks:
      - {name: root, size: 9Mi, content: {random: 31}}
  - namespace: prod
    name: old
    disks:
      - {name: root, size: 2Mi, storageClass: legacy, content: {random: 32}}
"#;

async fn sim() -> Sim {
    common::cluster::start_sim(SCENARIO, &["prod/web"]).await.0
}

/// The binary with the sim's kubeconfig, S3 credentials in the environment, fast retries.
fn cmd(sim: &Sim, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtguard"));
    c.arg("--quiet")
        .args(args)
        .env("KUBECONFIG", sim.kubeconfig_path())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("VIRTGUARD_RETRIES", "2")
        .env("VIRTGUARD_RETRY_BASE", "10ms")
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> Output {
    tokio::task::block_in_place(|| c.output().unwrap())
}

/// [`common::text`], and the S3 secret must not be in it.
fn text(o: &Output) -> String {
    let t = common::text(o);
    assert!(!t.contains(SECRET_KEY), "the S3 secret leaked:\n{t}");
    t
}

fn s3_args(endpoint: &str, prefix: &str) -> Vec<String> {
    vec![
        "--repo".into(),
        format!("s3://{BUCKET}/{prefix}"),
        "--s3-endpoint".into(),
        endpoint.into(),
        "--s3-path-style".into(),
    ]
}

fn local_repo(sim: &Sim) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").to_str().unwrap().to_string();
    let o = run(&mut cmd(sim, &["--repo", &repo, "init"]));
    assert!(o.status.success(), "{}", text(&o));
    (dir, repo)
}

fn froze(sim: &Sim, vmi: &str) -> bool {
    sim.freeze_log()
        .iter()
        .any(|r| r.vmi == vmi && r.status == 200 && r.action == FreezeAction::Freeze)
}

fn last_action(sim: &Sim, vmi: &str) -> Option<FreezeAction> {
    sim.freeze_log()
        .into_iter()
        .filter(|r| r.vmi == vmi && r.status == 200)
        .map(|r| r.action)
        .next_back()
}

/// The failure contract: exit 1, `needle` in stderr, guest thawed, nothing left, no backup.
async fn assert_failed_cleanly(sim: &Sim, o: &Output, needle: &str, list: &mut Command) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(needle),
        "expected {needle:?} in stderr:\n{t}"
    );
    if froze(sim, "prod/web") {
        assert_eq!(
            last_action(sim, "prod/web"),
            Some(FreezeAction::Unfreeze),
            "{t}"
        );
    }
    let client = sim.client().await.unwrap();
    assert_eq!(common::cluster::leftovers(&client).await, 0, "{t}");
    let l = run(list);
    assert!(l.status.success(), "{}", text(&l));
    let backups: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    assert_eq!(
        backups.as_array().unwrap().len(),
        0,
        "no manifest may be committed: {backups}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_export_connections_are_retried_and_the_image_is_exact() {
    let sim = sim().await;
    let (_dir, repo) = local_repo(&sim);
    // The first four downloads from any export in prod break off after 64 KiB.
    sim.inject(FaultRule {
        op: "export-drop-after".into(),
        target: Some("prod/*".into()),
        bytes: Some(64 * 1024),
        times: Some(4),
        ..Default::default()
    });
    let o = run(&mut cmd(
        &sim,
        &["--repo", &repo, "backup", "--vm", "prod/web"],
    ));
    assert!(o.status.success(), "{}", text(&o));

    let l = run(&mut cmd(&sim, &["--repo", &repo, "list", "-o", "json"]));
    let backups: serde_json::Value = serde_json::from_slice(&l.stdout).unwrap();
    let id = backups[0]["id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("root.img");
    let o = run(&mut cmd(
        &sim,
        &[
            "--repo",
            &repo,
            "restore-file",
            &id,
            "root",
            out.to_str().unwrap(),
        ],
    ));
    assert!(o.status.success(), "{}", text(&o));
    let sha = |p: &std::path::Path| hex::encode(Sha256::digest(std::fs::read(p).unwrap()));
    assert_eq!(sha(&out), sha(&sim.pvc_path("prod", "web-root").unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_unreachable_fails_before_the_guest_is_frozen() {
    let sim = sim().await;
    let closed = common::free_port();
    let endpoint = format!("http://127.0.0.1:{closed}");
    let mut args = s3_args(&endpoint, "r");
    args.extend(["backup".into(), "--vm".into(), "prod/web".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&mut cmd(&sim, &args));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("config.json") && err.contains(&endpoint),
        "{t}"
    );
    assert!(
        !froze(&sim, "prod/web"),
        "a guest was frozen for an unusable repository"
    );
    let client = sim.client().await.unwrap();
    assert_eq!(common::cluster::leftovers(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_s3_credentials_fail_before_the_guest_is_frozen() {
    let sim = sim().await;
    let Some(s3) = S3Server::start() else { return };
    let mut init = s3_args(&s3.endpoint(), "creds");
    init.push("init".into());
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    let o = run(&mut cmd(&sim, &init));
    assert!(o.status.success(), "{}", text(&o));

    let mut args = s3_args(&s3.endpoint(), "creds");
    args.extend(["backup".into(), "--vm".into(), "prod/web".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(cmd(&sim, &args).env("AWS_SECRET_ACCESS_KEY", "not-the-secret-9876"));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"), "{t}");
    assert!(!t.contains("not-the-secret-9876"), "{t}");
    assert!(!froze(&sim, "prod/web"));
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_refusing_every_write_mid_backup_thaws_cleans_up_and_commits_nothing() {
    let sim = sim().await;
    let Some(s3) = S3Server::start() else { return };
    let mut init = s3_args(&s3.endpoint(), "puts");
    init.push("init".into());
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    let o = run(&mut cmd(&sim, &init));
    assert!(o.status.success(), "{}", text(&o));
    // Every chunk upload gets 500: the repository opens and is locked, the guest is frozen
    // and snapshotted, then the first chunk upload fails.
    let proxy = FaultProxy::start(s3.port, FaultPlan::ChunkPutsFail).await;
    let via_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let mut args = s3_args(&via_proxy, "puts");
    args.extend(["backup".into(), "--vm".into(), "prod/web".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&mut cmd(&sim, &args));
    assert!(froze(&sim, "prod/web"), "{}", text(&o));
    let mut list = s3_args(&s3.endpoint(), "puts");
    list.extend(["list".into(), "-o".into(), "json".into()]);
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    assert_failed_cleanly(&sim, &o, "500", &mut cmd(&sim, &list)).await;
    assert!(
        proxy
            .faults_injected
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_driver_without_snapshot_class_is_named_and_never_costs_a_freeze() {
    let sim = sim().await;
    common::cluster::wait_running(&sim.client().await.unwrap(), "prod", "old").await;
    let (_dir, repo) = local_repo(&sim);
    let o = run(&mut cmd(
        &sim,
        &["--repo", &repo, "backup", "--vm", "prod/old"],
    ));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("old-root") && err.contains("legacy.csi.example"),
        "{t}"
    );
    assert!(!froze(&sim, "prod/old"), "{t}");
    let client = sim.client().await.unwrap();
    assert_eq!(common::cluster::leftovers(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_class_flag_picks_an_existing_class_and_refuses_an_unknown_one() {
    let sim = sim().await;
    common::cluster::wait_running(&sim.client().await.unwrap(), "prod", "web").await;
    let (dir, repo) = local_repo(&sim);
    let o = run(&mut cmd(
        &sim,
        &[
            "--repo",
            &repo,
            "backup",
            "--vm",
            "prod/web",
            "--snapshot-class",
            "nope",
        ],
    ));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("VolumeSnapshotClass `nope` (from --snapshot-class) does not exist"),
        "{t}"
    );
    assert!(!froze(&sim, "prod/web"), "{t}");
    let o = run(&mut cmd(
        &sim,
        &[
            "--repo",
            &repo,
            "backup",
            "--vm",
            "prod/web",
            "--snapshot-class",
            "fast-snap",
        ],
    ));
    assert!(o.status.success(), "{}", text(&o));
    // The manifest records the class, for restore's check of the target cluster.
    let backups = dir.path().join("repo/backups/prod/web");
    let id = std::fs::read_dir(&backups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(id.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["labels"]["snapshot-classes"], "fast-snap", "{m}");
    let client = sim.client().await.unwrap();
    assert_eq!(common::cluster::leftovers(&client).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_never_ready_times_out_after_the_thaw() {
    let sim = sim().await;
    sim.inject(FaultRule {
        op: "snapshot-never-ready".into(),
        target: Some("prod/web-root".into()),
        ..Default::default()
    });
    let (_dir, repo) = local_repo(&sim);
    let o = run(&mut cmd(
        &sim,
        &[
            "--repo",
            &repo,
            "backup",
            "--vm",
            "prod/web",
            "--snapshot-ready-timeout",
            "2s",
        ],
    ));
    assert!(froze(&sim, "prod/web"));
    assert_failed_cleanly(
        &sim,
        &o,
        "timed out",
        &mut cmd(&sim, &["--repo", &repo, "list", "-o", "json"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_never_ready_times_out_thawed_and_clean() {
    let sim = sim().await;
    sim.inject(FaultRule {
        op: "export-never-ready".into(),
        target: Some("prod/*".into()),
        ..Default::default()
    });
    let (_dir, repo) = local_repo(&sim);
    let o = run(&mut cmd(
        &sim,
        &[
            "--repo",
            &repo,
            "backup",
            "--vm",
            "prod/web",
            "--export-timeout",
            "2s",
        ],
    ));
    assert_failed_cleanly(
        &sim,
        &o,
        "export",
        &mut cmd(&sim, &["--repo", &repo, "list", "-o", "json"]),
    )
    .await;
}
