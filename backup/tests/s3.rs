//! The S3 store against a real s3s-fs on 127.0.0.1: the store conformance suite, multipart,
//! the CLI over S3, credential hygiene, and retries through a fault-injecting proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use common::{FaultPlan, FaultProxy, S3Server, BUCKET, SECRET_KEY};
use virtguard::repo::s3::{S3Options, S3Store};
use virtguard::repo::store::{conformance, RetryStore, Store};

const BIN: &str = env!("CARGO_BIN_EXE_virtguard");

async fn store(endpoint: &str, prefix: &str) -> S3Store {
    common::set_aws_env();
    let mut o = S3Options::from_url(&format!("s3://{BUCKET}/{prefix}")).unwrap();
    o.endpoint = Some(endpoint.to_string());
    o.path_style = true;
    o.multipart_threshold = 6 * 1024 * 1024;
    o.part_size = 5 * 1024 * 1024;
    S3Store::connect(o).await.unwrap()
}

#[tokio::test]
async fn s3_store_conformance_and_multipart() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let s = store(&server.endpoint(), "some/prefix").await;
    assert!(!format!("{s:?}").contains(SECRET_KEY));
    conformance::run(&s).await;
    // Multipart: 13 MiB in three parts.
    let big: Vec<u8> = (0..13 * 1024 * 1024)
        .map(|i: u32| (i % 253) as u8)
        .collect();
    s.put("big/object", Bytes::from(big.clone())).await.unwrap();
    assert_eq!(s.get("big/object").await.unwrap(), big);
    assert_eq!(
        s.get_range("big/object", 6 * 1024 * 1024, 10)
            .await
            .unwrap(),
        big[6 * 1024 * 1024..][..10]
    );
    // Keys stay under the prefix.
    let other = store(&server.endpoint(), "").await;
    let keys: Vec<String> = other
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("some/prefix/")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn wrong_credentials_give_a_clear_error_without_secrets() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let s = store(&server.endpoint(), "p").await;
    s.put("x", Bytes::from_static(b"1")).await.unwrap();
    let out = Command::new(BIN)
        .args([
            "list",
            "--repo",
            &format!("s3://{BUCKET}/p"),
            "--s3-endpoint",
            &server.endpoint(),
            "--s3-path-style",
        ])
        .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-value-xyz")
        .env("AWS_REGION", "us-east-1")
        .env("VIRTGUARD_RETRIES", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("config.json") && err.contains("403"), "{err}");
    assert!(!err.contains("wrong-secret-value-xyz"), "{err}");
}

fn cli(endpoint: &str, prefix: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .args([
            "--repo",
            &format!("s3://{BUCKET}/{prefix}"),
            "--s3-endpoint",
            endpoint,
            "--s3-path-style",
            "-q",
        ])
        .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("VIRTGUARD_RETRY_BASE", "5ms")
        .env("VIRTGUARD_CONCURRENCY", "4")
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(o: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "failed: {stderr}\n{stdout}");
    assert!(!stdout.contains(SECRET_KEY) && !stderr.contains(SECRET_KEY));
    stdout
}

fn image(dir: &std::path::Path, seed: u8) -> (std::path::PathBuf, Vec<u8>) {
    let mut data = vec![0u8; 64 * 1024 * 20];
    for (i, b) in data.iter_mut().enumerate() {
        let chunk = i / (64 * 1024);
        if chunk % 3 == 1 {
            *b = b"some text-like content "[i % 23];
        } else if chunk % 3 == 2 {
            *b = ((i as u64).wrapping_mul(2654435761) >> 13) as u8 ^ seed;
        }
    }
    let p = dir.join(format!("img{seed}.raw"));
    std::fs::write(&p, &data).unwrap();
    (p, data)
}

// The proxy runs on this runtime while the test blocks on the CLI: use worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_over_s3_backup_restore_verify() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ep = server.endpoint();
    ok(cli(&ep, "repo1", &["init", "--chunk-size", "64KiB"]));
    let (img, data) = image(dir.path(), 1);
    let out = ok(cli(
        &ep,
        "repo1",
        &[
            "backup-file",
            img.to_str().unwrap(),
            "--vm",
            "ns/vm",
            "-o",
            "json",
        ],
    ));
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = b["id"].as_str().unwrap().to_string();
    let target = dir.path().join("restored.raw");
    ok(cli(
        &ep,
        "repo1",
        &["restore-file", &id, "disk0", target.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert!(ok(cli(&ep, "repo1", &["verify", "--read-data"])).contains("no problems"));
    assert!(ok(cli(&ep, "repo1", &["list"])).contains(&id));
}

// The proxy runs on this runtime while the test blocks on the CLI: use worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults_are_retried() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.port, FaultPlan::EveryNth(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let ep = proxy.endpoint();
    ok(cli(&ep, "faulty", &["init", "--chunk-size", "64KiB"]));
    let (img, data) = image(dir.path(), 2);
    let out = ok(cli(
        &ep,
        "faulty",
        &[
            "backup-file",
            img.to_str().unwrap(),
            "--vm",
            "ns/vm",
            "-o",
            "json",
        ],
    ));
    let b: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = b["id"].as_str().unwrap().to_string();
    let target = dir.path().join("restored.raw");
    ok(cli(
        &ep,
        "faulty",
        &["restore-file", &id, "disk0", target.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(&target).unwrap(), data);
    assert!(ok(cli(&ep, "faulty", &["verify", "--read-data"])).contains("no problems"));
    let injected = proxy.faults_injected.load(Ordering::SeqCst);
    assert!(injected >= 10, "only {injected} faults injected");
    // Direct check through the library: all data behind the proxy equals the server's.
    let direct = RetryStore::new(
        store(&server.endpoint(), "faulty").await,
        1,
        std::time::Duration::ZERO,
        std::time::Duration::ZERO,
    );
    let objects = direct.list("").await.unwrap();
    assert!(objects.iter().any(|o| o.key.ends_with("manifest.json")));
}

// The proxy runs on this runtime while the test blocks on the CLI: use worker threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_s3_failure_fails_clearly_without_manifest() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    ok(cli(
        &server.endpoint(),
        "broken",
        &["init", "--chunk-size", "64KiB"],
    ));
    let proxy = FaultProxy::start(server.port, FaultPlan::AllPutsFail).await;
    let (img, _) = image(dir.path(), 3);
    let o = cli(
        &proxy.endpoint(),
        "broken",
        &[
            "backup-file",
            img.to_str().unwrap(),
            "--vm",
            "ns/vm",
            "--retries",
            "3",
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("500") && (err.contains("chunks/") || err.contains("locks/")),
        "{err}"
    );
    assert!(!err.contains(SECRET_KEY));
    let s = Arc::new(store(&server.endpoint(), "broken").await);
    let objects = s.list("backups/").await.unwrap();
    assert!(
        objects.iter().all(|o| !o.key.ends_with("manifest.json")),
        "no manifest after a failed backup: {objects:?}"
    );
    assert!(
        ok(cli(&server.endpoint(), "broken", &["list"]))
            .lines()
            .count()
            <= 1
    );
}

/// The S3 store counts the requests it sends by kind: LIST pages (1000 keys each), chunk reads
/// apart from other reads, HEAD, PUT, DELETE; wrappers pass the counts through.
#[tokio::test]
async fn s3_requests_are_counted_by_kind() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let s = RetryStore::new(
        store(&server.endpoint(), "counted").await,
        3,
        std::time::Duration::from_millis(10),
        std::time::Duration::from_millis(50),
    );
    assert_eq!(s.requests(), Some(Default::default()));
    for i in 0..1001 {
        s.put(&format!("k/{i:04}"), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    s.put("chunks/ab/abcd", Bytes::from_static(b"c"))
        .await
        .unwrap();
    assert_eq!(s.list("k/").await.unwrap().len(), 1001);
    s.get("k/0001").await.unwrap();
    s.get_range("chunks/ab/abcd", 0, 1).await.unwrap();
    s.get("chunks/ab/abcd").await.unwrap();
    assert!(s.exists("k/0002").await.unwrap());
    s.delete("k/0003").await.unwrap();
    let r = s.requests().unwrap();
    assert_eq!(
        (r.list, r.get_chunk, r.get_other, r.head, r.put, r.delete),
        (2, 2, 1, 1, 1002, 1),
        "{r:?}"
    );
}

/// Append-only operation: backup, restore and verify send no DELETE except of their own lock
/// objects (`locks/`), so a writer's bucket policy can deny DeleteObject on everything else;
/// prune and gc (the maintainer) are the only ones that delete data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_delete_nothing_but_their_locks() {
    let Some(server) = S3Server::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.port, FaultPlan::PassAll).await;
    let dir = tempfile::tempdir().unwrap();
    let ep = proxy.endpoint();
    ok(cli(&ep, "append", &["init", "--chunk-size", "64KiB"]));
    let (img, _) = image(dir.path(), 3);
    let img = img.to_str().unwrap();
    let out = ok(cli(
        &ep,
        "append",
        &["backup-file", img, "--vm", "ns/vm", "-o", "json"],
    ));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (img2, _) = image(dir.path(), 4);
    ok(cli(
        &ep,
        "append",
        &["backup-file", img2.to_str().unwrap(), "--vm", "ns/vm"],
    ));
    let target = dir.path().join("restored.raw");
    ok(cli(
        &ep,
        "append",
        &["restore-file", &id, "disk0", target.to_str().unwrap()],
    ));
    ok(cli(&ep, "append", &["verify", "--read-data"]));
    let deletes = |r: &[String]| -> Vec<String> {
        r.iter()
            .filter(|l| l.starts_with("DELETE "))
            .cloned()
            .collect()
    };
    let writer = proxy.requests.lock().unwrap().clone();
    assert!(writer
        .iter()
        .any(|l| l.starts_with("PUT ") && l.contains("/chunks/")));
    let writer_deletes = deletes(&writer);
    assert!(!writer_deletes.is_empty(), "locks are released");
    assert!(
        writer_deletes.iter().all(|l| l.contains("/locks/")),
        "{writer_deletes:#?}"
    );
    // The maintainer deletes data: the check above would see it.
    ok(cli(&ep, "append", &["prune", "--keep-last", "1"]));
    ok(cli(&ep, "append", &["gc", "--grace", "0s"]));
    let all = proxy.requests.lock().unwrap().clone();
    let maintainer: Vec<String> = deletes(&all[writer.len()..]);
    assert!(
        maintainer.iter().any(|l| l.contains("/chunks/"))
            && maintainer.iter().any(|l| l.contains("/manifest.json")),
        "{maintainer:#?}"
    );
}

/// Prune lists each VM's prefix once (plus the listing of the backups), not once per pruned
/// backup, and deletes every object of the pruned backups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_lists_once_per_vm_not_per_backup() {
    use virtguard::repo::prune::{prune, KeepPolicy};
    use virtguard::repo::repository::InitOptions;
    use virtguard::repo::{BackupOptions, BackupSession, FileSource, Repository};
    let Some(server) = S3Server::start() else {
        return;
    };
    let s3 = Arc::new(store(&server.endpoint(), "pruned").await);
    let dyn_store: Arc<dyn Store> = s3.clone();
    let opts = InitOptions {
        chunk_size: 64 * 1024,
        ..Default::default()
    };
    Repository::init(dyn_store.clone(), opts).await.unwrap();
    let repo = Arc::new(Repository::open(dyn_store, None).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..6u8 {
        let (img, _) = image(dir.path(), seed);
        let mut s = BackupSession::start(repo.clone(), "ns", "vm", BackupOptions::default())
            .await
            .unwrap();
        s.write_volume("disk0", Arc::new(FileSource::open(&img).unwrap()), None)
            .await
            .unwrap();
        s.commit().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    let before = s3.requests().unwrap();
    let policy = KeepPolicy {
        last: 1,
        ..Default::default()
    };
    let r = prune(&repo, &policy, None, None, false).await.unwrap();
    assert_eq!(r.removed.len(), 5);
    let after = s3.requests().unwrap();
    // One LIST of backups/ (which backups exist), one of the VM's prefix, lock LISTs aside.
    let lock_lists = 1;
    assert_eq!(
        after.list - before.list,
        2 + lock_lists,
        "{before:?} -> {after:?}"
    );
    // Manifest and index of each pruned backup, plus the prune's lock.
    assert_eq!(
        after.delete - before.delete,
        5 * 2 + 1,
        "{before:?} -> {after:?}"
    );
    let left: Vec<String> = s3
        .list("backups/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(left.len(), 2, "one backup's manifest and index: {left:?}");
}
