//! S3 Object Lock against moto's standalone S3 server (PyPI moto[server]), which enforces what
//! these tests rely on: PutObject with a retention needs a bucket with Object Lock, HEAD reports
//! the retention, and DeleteObject of a COMPLIANCE-retained version is refused (AccessDenied)
//! until its date. (moto 5.2 does not enforce GOVERNANCE, nor refuse shortening a COMPLIANCE
//! retention, and GetObjectRetention fails there: virtguard reads retention with HEAD.)
//!
//! `init --object-lock` refuses a bucket without Object Lock; a locked manifest survives `prune`
//! (clear message) until its date and goes after it; `gc` skips locked objects and says when they
//! free; `verify` reports the lock state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::ObjectLockMode;

const BIN: &str = env!("CARGO_BIN_EXE_virtguard");

fn moto_binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("VIRTGUARD_MOTO_SERVER").map(PathBuf::from),
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("moto_server"))
                .find(|p| p.exists())
        }),
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".cache/virtguard/moto/bin/moto_server")),
    ];
    if let Some(p) = candidates.into_iter().flatten().find(|p| p.exists()) {
        return Some(p);
    }
    if std::env::var("VIRTGUARD_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIP: moto_server not found (scripts/install-deps.sh installs it)");
        return None;
    }
    panic!("moto_server not found: run scripts/install-deps.sh (or set VIRTGUARD_ALLOW_SKIP=1)");
}

/// moto_server on 127.0.0.1; killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Option<Moto> {
        let bin = moto_binary()?;
        for _ in 0..5 {
            let port = common::free_port();
            let mut child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Moto { child, port });
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto_server did not start");
    }
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client(endpoint: &str) -> aws_sdk_s3::Client {
    common::set_aws_env();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let conf = aws_sdk_s3::config::Builder::from(&sdk)
        .endpoint_url(endpoint)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

fn cli(endpoint: &str, repo: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args([
            "--quiet",
            "--repo",
            repo,
            "--s3-endpoint",
            endpoint,
            "--s3-path-style",
        ])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("VIRTGUARD_RETRY_BASE", "5ms")
        .env("VIRTGUARD_CONCURRENCY", "4")
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(o: Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "failed: {}\n{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn backups(endpoint: &str, repo: &str) -> Vec<serde_json::Value> {
    let out = ok(cli(endpoint, repo, &["list", "-o", "json"]));
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_lock_protects_manifests_until_their_date() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let ep = moto.endpoint();
    let s3 = client(&ep).await;
    s3.create_bucket().bucket("plain").send().await.unwrap();
    s3.create_bucket()
        .bucket("locked")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();

    // A bucket without Object Lock: a clear error, no repository.
    let o = cli(&ep, "s3://plain/repo", &["init", "--object-lock", "1"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not have Object Lock enabled"), "{err}");
    let o = cli(&ep, "s3://plain/repo", &["list"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no virtguard repository"));
    // A local repository cannot lock.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    let o = cli(
        &ep,
        local.to_str().unwrap(),
        &["init", "--object-lock", "1"],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs an S3 repository"));

    // 20 s retention (COMPLIANCE): long enough for the steps before the wait below.
    let repo = "s3://locked/repo";
    let out = ok(cli(
        &ep,
        repo,
        &["init", "--chunk-size", "64KiB", "--object-lock", "20s"],
    ));
    assert!(out.contains("compliance, 20 s"), "{out}");
    let config = s3
        .get_object()
        .bucket("locked")
        .key("repo/config.json")
        .send()
        .await
        .unwrap();
    let config = config.body.collect().await.unwrap().into_bytes();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["object_lock"]["mode"], "compliance");
    assert_eq!(config["object_lock"]["period_seconds"], 20);

    let img1 = dir.path().join("one.img");
    let img2 = dir.path().join("two.img");
    std::fs::write(&img1, common::noise(5 * 65536, 1)).unwrap();
    std::fs::write(&img2, common::noise(5 * 65536, 2)).unwrap();
    ok(cli(
        &ep,
        repo,
        &["backup-file", img1.to_str().unwrap(), "--vm", "ns/a"],
    ));
    ok(cli(
        &ep,
        repo,
        &["backup-file", img2.to_str().unwrap(), "--vm", "ns/a"],
    ));
    let list = backups(&ep, repo);
    assert_eq!(list.len(), 2);
    let oldest = list
        .iter()
        .min_by_key(|b| b["started"].as_str().unwrap().to_string())
        .unwrap();
    let old_manifest = format!(
        "repo/backups/ns/a/{}/manifest.json",
        oldest["id"].as_str().unwrap()
    );

    // Written retained: the server says so, and refuses to delete the version itself.
    let head = s3
        .head_object()
        .bucket("locked")
        .key(&old_manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    let until = head.object_lock_retain_until_date().unwrap().secs();
    let denied = s3
        .delete_object()
        .bucket("locked")
        .key(&old_manifest)
        .version_id(head.version_id().unwrap())
        .send()
        .await;
    assert!(denied.is_err(), "the server enforces the lock");
    // Lock objects are not retained (they are deleted after every command).
    let locks = s3
        .list_objects_v2()
        .bucket("locked")
        .prefix("repo/locks/")
        .send()
        .await
        .unwrap();
    assert_eq!(locks.key_count(), Some(0));

    // verify reports the lock state.
    let out = ok(cli(&ep, repo, &["verify"]));
    assert!(
        out.contains("object lock: compliance, 20 s; 2 backup manifest(s) locked"),
        "{out}"
    );

    // prune refuses the locked one, with its date.
    let out = ok(cli(&ep, repo, &["prune", "--keep-last", "1"]));
    assert!(out.contains("under S3 Object Lock until"), "{out}");
    assert_eq!(backups(&ep, repo).len(), 2);

    // gc skips a locked unreferenced chunk and says when it frees.
    let stray = format!("repo/chunks/ab/{}", "ab".repeat(32));
    s3.put_object()
        .bucket("locked")
        .key(&stray)
        .body(ByteStream::from_static(b"unreferenced"))
        .object_lock_mode(ObjectLockMode::Compliance)
        .object_lock_retain_until_date(DateTime::from_secs(until))
        .send()
        .await
        .unwrap();
    let out = ok(cli(&ep, repo, &["gc", "--grace", "0s"]));
    assert!(
        out.contains("kept 1 unreferenced objects under S3 Object Lock"),
        "{out}"
    );
    assert!(s3
        .head_object()
        .bucket("locked")
        .key(&stray)
        .send()
        .await
        .is_ok());

    // After the date: prune removes it (every version: nothing left behind), gc frees.
    let deadline = Instant::now() + Duration::from_secs(90);
    while chrono::Utc::now().timestamp() <= until + 1 {
        assert!(Instant::now() < deadline, "retention did not pass");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let out = ok(cli(&ep, repo, &["prune", "--keep-last", "1"]));
    assert!(out.contains("removed 1 backups"), "{out}");
    let left = backups(&ep, repo);
    assert_eq!(left.len(), 1);
    // (Backups of one second are ordered by their id's random suffix: find the one pruned.)
    let gone = list.iter().find(|b| b["id"] != left[0]["id"]).unwrap();
    let old_manifest = format!(
        "repo/backups/ns/a/{}/manifest.json",
        gone["id"].as_str().unwrap()
    );
    let versions = s3
        .list_object_versions()
        .bucket("locked")
        .prefix(&old_manifest)
        .send()
        .await
        .unwrap();
    assert!(
        versions.versions().is_empty() && versions.delete_markers().is_empty(),
        "{versions:?}"
    );
    let out = ok(cli(&ep, repo, &["gc", "--grace", "0s"]));
    assert!(!out.contains("under S3 Object Lock"), "{out}");
    assert!(s3
        .head_object()
        .bucket("locked")
        .key(&stray)
        .send()
        .await
        .is_err());
    ok(cli(&ep, repo, &["verify", "--read-data"]));
}

async fn retain_until(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> i64 {
    let head = s3
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    head.object_lock_retain_until_date().unwrap().secs()
}

async fn label(s3: &aws_sdk_s3::Client, bucket: &str, manifest: &str) -> String {
    let o = s3
        .get_object()
        .bucket(bucket)
        .key(manifest)
        .send()
        .await
        .unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&o.body.collect().await.unwrap().into_bytes()).unwrap();
    m["labels"]["virtguard.io/chunks-retained-until"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Chunks a backup takes from its parent's index (never HEADed) keep their retention while the
/// parent's manifest promises more than half a period; after that the next backup extends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_reused_from_the_parent_get_their_retention_extended() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let ep = moto.endpoint();
    let s3 = client(&ep).await;
    s3.create_bucket()
        .bucket("chain")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let repo = "s3://chain/repo";
    ok(cli(
        &ep,
        repo,
        &["init", "--chunk-size", "64KiB", "--object-lock", "40s"],
    ));
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, common::noise(4 * 65536, 7)).unwrap();
    let backup = || {
        ok(cli(
            &ep,
            repo,
            &[
                "backup-file",
                img.to_str().unwrap(),
                "--vm",
                "ns/vm",
                "-o",
                "json",
            ],
        ))
    };
    let manifest_of = |out: &str| {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        format!(
            "repo/backups/ns/vm/{}/manifest.json",
            v["id"].as_str().unwrap()
        )
    };
    let a = manifest_of(&backup());
    let chunks = s3
        .list_objects_v2()
        .bucket("chain")
        .prefix("repo/chunks/")
        .send()
        .await
        .unwrap();
    let chunk = chunks.contents()[0].key().unwrap().to_string();
    let u0 = retain_until(&s3, "chain", &chunk).await;
    let la = label(&s3, "chain", &a).await;

    // Right away: the parent's promise (30 s ahead) covers its chunks; nothing is extended.
    let b = manifest_of(&backup());
    assert_eq!(label(&s3, "chain", &b).await, la);
    assert_eq!(retain_until(&s3, "chain", &chunk).await, u0);

    // Once the promise is less than half a period ahead, the next backup extends them.
    let la_secs = chrono::DateTime::parse_from_rfc3339(&la)
        .unwrap()
        .timestamp();
    let deadline = Instant::now() + Duration::from_secs(60);
    while chrono::Utc::now().timestamp() <= la_secs - 20 + 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let c = manifest_of(&backup());
    let u1 = retain_until(&s3, "chain", &chunk).await;
    assert!(u1 > u0, "retention extended: {u0} -> {u1}");
    let lc = label(&s3, "chain", &c).await;
    assert!(lc > la, "{la} -> {lc}");
}

/// S3 errors during a locked backup (every third request fails: 500, 503, SlowDown, reset,
/// truncated answer) are retried; the backup restores, and every object it wrote is retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_backup_through_s3_faults_is_complete_and_retained() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let s3 = client(&moto.endpoint()).await;
    s3.create_bucket()
        .bucket("faulty")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let proxy = common::FaultProxy::start(moto.port, common::FaultPlan::EveryNth(3)).await;
    let ep = proxy.endpoint();
    let repo = "s3://faulty/repo";
    ok(cli(
        &ep,
        repo,
        &["init", "--chunk-size", "64KiB", "--object-lock", "1"],
    ));
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data = common::noise(12 * 65536, 11);
    std::fs::write(&img, &data).unwrap();
    let out = ok(cli(
        &ep,
        repo,
        &[
            "backup-file",
            img.to_str().unwrap(),
            "--vm",
            "ns/vm",
            "-o",
            "json",
        ],
    ));
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let target = dir.path().join("restored.img");
    ok(cli(
        &ep,
        repo,
        &["restore-file", &id, "disk0", target.to_str().unwrap()],
    ));
    assert!(std::fs::read(&target).unwrap() == data);
    assert!(
        proxy
            .faults_injected
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );

    let objects = s3
        .list_objects_v2()
        .bucket("faulty")
        .prefix("repo/")
        .send()
        .await
        .unwrap();
    let mut retained = 0;
    for o in objects.contents() {
        let key = o.key().unwrap();
        let head = s3
            .head_object()
            .bucket("faulty")
            .key(key)
            .send()
            .await
            .unwrap();
        if key.starts_with("repo/locks/") || key.starts_with("repo/maintenance/") {
            continue;
        }
        assert_eq!(
            head.object_lock_mode(),
            Some(&ObjectLockMode::Compliance),
            "{key}"
        );
        let until = head.object_lock_retain_until_date().unwrap().secs();
        assert!(
            until > chrono::Utc::now().timestamp() + 86_000,
            "{key}: {until}"
        );
        retained += 1;
    }
    // config.json, 12 chunks, the index and the manifest.
    assert_eq!(retained, 15, "{objects:?}");
}

/// `copy` into an Object Lock repository (offsite, immutable): the copies are written retained
/// and restore from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_into_an_object_lock_repository_are_retained() {
    let Some(moto) = Moto::start() else {
        return;
    };
    let ep = moto.endpoint();
    let s3 = client(&ep).await;
    s3.create_bucket()
        .bucket("offsite")
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let src = src.to_str().unwrap();
    let dst = "s3://offsite/copy";
    ok(cli(&ep, src, &["init", "--chunk-size", "64KiB"]));
    ok(cli(
        &ep,
        dst,
        &[
            "init",
            "--object-lock",
            "1",
            "--copy-chunker-params-from",
            src,
        ],
    ));
    let img = dir.path().join("disk.img");
    let data = common::noise(3 * 65536, 5);
    std::fs::write(&img, &data).unwrap();
    ok(cli(
        &ep,
        src,
        &["backup-file", img.to_str().unwrap(), "--vm", "ns/vm"],
    ));
    let out = ok(cli(&ep, src, &["copy", "--to", dst, "-o", "json"]));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["chunksCopied"], 3, "{r}");
    let id = backups(&ep, dst)[0]["id"].as_str().unwrap().to_string();
    let head = s3
        .head_object()
        .bucket("offsite")
        .key(format!("copy/backups/ns/vm/{id}/manifest.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.object_lock_mode(), Some(&ObjectLockMode::Compliance));
    let out = ok(cli(&ep, dst, &["verify", "--read-data"]));
    assert!(out.contains("1 backup manifest(s) locked"), "{out}");
    let target = dir.path().join("restored.img");
    ok(cli(
        &ep,
        dst,
        &["restore-file", &id, "disk0", target.to_str().unwrap()],
    ));
    assert!(std::fs::read(&target).unwrap() == data);
}
