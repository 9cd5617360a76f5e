//! `virtguard copy` on the real binary: local directory → local directory (a target sharing
//! chunk ids, and an independent one with another chunk size and key), local → S3 (s3s-fs);
//! verified, idempotent (a second run transfers nothing), resumable after kill -9 with no
//! half-copied backup visible, and restore from the copy (`--repo` of the copy).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_virtguard");
const SRC_KEY: &str = "source passphrase";
const DST_KEY: &str = "offsite passphrase";

/// A virtguard command on `repo` opened with `key`; `env` added.
fn cmd(repo: &str, key: &str, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--quiet", "--repo", repo])
        .args(args)
        .env("VIRTGUARD_KEY", key)
        .env("VIRTGUARD_CONCURRENCY", "4")
        .env("VIRTGUARD_RETRY_BASE", "5ms")
        .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("VIRTGUARD_KEY_FILE")
        .env_remove("VIRTGUARD_TO_KEY")
        .env_remove("VIRTGUARD_FROM_KEY")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

fn run(repo: &str, key: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    cmd(repo, key, env, args).output().unwrap()
}

fn ok(repo: &str, key: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let o = run(repo, key, env, args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    for secret in [SRC_KEY, DST_KEY] {
        assert!(!common::text(&o).contains(secret));
    }
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn init(repo: &str, key: &str, env: &[(&str, &str)], extra: &[&str]) {
    let mut args = vec!["init", "--kdf-memory-kib", "256", "--kdf-iterations", "1"];
    args.extend_from_slice(extra);
    ok(repo, key, env, &args);
}

/// `copy … -o json` from `src` to `dst`.
fn copy(src: &str, dst: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Value {
    let mut env = vec![("VIRTGUARD_TO_KEY", DST_KEY)];
    env.extend_from_slice(extra_env);
    let mut a = vec!["copy", "--to", dst, "-o", "json"];
    a.extend_from_slice(args);
    serde_json::from_str(&ok(src, SRC_KEY, &env, &a)).unwrap()
}

fn list(repo: &str, key: &str, env: &[(&str, &str)]) -> Vec<Value> {
    let out = ok(repo, key, env, &["list", "-o", "json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Restores every backup of `repo` and checks that the restored images are exactly `want`
/// (VM, image) — in any order: backups of one second sort by their random suffix.
fn restore_all(repo: &str, env: &[(&str, &str)], dir: &Path, want: &[(&str, &Vec<u8>)]) {
    let backups = list(repo, DST_KEY, env);
    assert_eq!(backups.len(), want.len(), "{backups:?}");
    let mut left: Vec<(&str, &Vec<u8>)> = want.to_vec();
    for (i, b) in backups.iter().enumerate() {
        let vm = b["vm"].as_str().unwrap();
        let out = dir.join(format!("restored-{i}.img"));
        let spec = format!(
            "{}/{}/{}",
            b["namespace"].as_str().unwrap(),
            vm,
            b["id"].as_str().unwrap()
        );
        ok(
            repo,
            DST_KEY,
            env,
            &["restore-file", &spec, "disk0", out.to_str().unwrap()],
        );
        let got = std::fs::read(&out).unwrap();
        let pos = left
            .iter()
            .position(|(v, d)| *v == vm && **d == got)
            .unwrap_or_else(|| panic!("{spec} differs after the copy"));
        left.remove(pos);
        std::fs::remove_file(&out).unwrap();
    }
}

/// Two VMs: `a` backed up twice (the second shares most chunks), `b` once.
fn source(dir: &Path, src: &str) -> Vec<(&'static str, Vec<u8>)> {
    init(src, SRC_KEY, &[], &["--chunk-size", "64KiB"]);
    let mut a1 = common::noise(20 * 65536, 1);
    a1[5 * 65536..7 * 65536].fill(0);
    let mut a2 = a1.clone();
    a2[..1000].copy_from_slice(&common::noise(1000, 9));
    let b = common::noise(6 * 65536 + 123, 2);
    let mut out = Vec::new();
    for (vm, data) in [("a", a1), ("a", a2), ("b", b)] {
        let p = dir.join(format!("{vm}.img"));
        std::fs::write(&p, &data).unwrap();
        ok(
            src,
            SRC_KEY,
            &[],
            &[
                "backup-file",
                p.to_str().unwrap(),
                "--vm",
                &format!("ns/{vm}"),
            ],
        );
        out.push((vm, data));
    }
    out
}

fn dir_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

#[test]
fn copy_to_a_target_sharing_chunk_ids_is_verified_idempotent_and_restorable() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir_str(&dir.path().join("src"));
    let dst = dir_str(&dir.path().join("dst"));
    let images = source(dir.path(), &src);
    init(
        &dst,
        DST_KEY,
        &[("VIRTGUARD_FROM_KEY", SRC_KEY)],
        &["--copy-chunker-params-from", &src],
    );

    // VM a only: 20 + 1 distinct non-zero chunks (2 zero chunks are never stored).
    let r = copy(&src, &dst, &[], &["--vm", "ns/a"]);
    assert_eq!(r["idMode"], "same");
    assert_eq!(r["copied"].as_array().unwrap().len(), 2);
    assert_eq!(r["chunksCopied"], 19, "{r}");
    assert_eq!(r["chunksPresent"], 17, "{r}");
    // Again: nothing transferred.
    let r = copy(&src, &dst, &[], &["--vm", "ns/a"]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 0);
    assert_eq!(r["present"].as_array().unwrap().len(), 2);
    assert_eq!(r["chunksRead"], 0);
    assert_eq!(r["chunksCopied"], 0);
    // Everything: only b's chunks move.
    let r = copy(&src, &dst, &[], &[]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 1);
    assert_eq!(r["chunksCopied"], 7, "{r}");

    ok(&dst, DST_KEY, &[], &["verify", "--read-data"]);
    let want: Vec<_> = images.iter().map(|(v, d)| (*v, d)).collect();
    restore_all(&dst, &[], dir.path(), &want);
    // The copy is encrypted with its own data key: the source key does not open it.
    let o = run(&dst, SRC_KEY, &[], &["list"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not unlock"));
    // Copying a repository into itself is refused.
    let o = run(
        &src,
        SRC_KEY,
        &[("VIRTGUARD_TO_KEY", SRC_KEY)],
        &["copy", "--to", &src],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("same repository"));
    // An unencrypted target cannot share the chunk ids of an encrypted source.
    let plain = dir_str(&dir.path().join("plain"));
    let o = run(
        &plain,
        "",
        &[("VIRTGUARD_FROM_KEY", SRC_KEY)],
        &["init", "--copy-chunker-params-from", &src],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("chunk ids can only be shared"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A wrong target key: a clear error, nothing written.
    let o = run(
        &src,
        SRC_KEY,
        &[("VIRTGUARD_TO_KEY", "wrong")],
        &["copy", "--to", &dst],
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not unlock"));
}

#[test]
fn copy_to_an_independent_target_rehashes_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir_str(&dir.path().join("src"));
    let dst = dir_str(&dir.path().join("dst"));
    let images = source(dir.path(), &src);
    init(&dst, DST_KEY, &[], &["--chunk-size", "256KiB"]);

    let o = run(
        &src,
        SRC_KEY,
        &[("VIRTGUARD_TO_KEY", DST_KEY)],
        &["copy", "--to", &dst],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("hashed again"),
        "the cost is noted: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r = copy(&src, &dst, &[], &[]);
    assert_eq!(r["idMode"], "rechunk");
    assert_eq!(r["chunksRead"], 0, "second run: {r}");
    ok(&dst, DST_KEY, &[], &["verify", "--read-data"]);
    let want: Vec<_> = images.iter().map(|(v, d)| (*v, d)).collect();
    restore_all(&dst, &[], dir.path(), &want);
    // The copies are cut at the target's chunk size: they deduplicate against its own backups.
    for b in list(&dst, DST_KEY, &[]) {
        let spec = format!(
            "ns/{}/{}",
            b["vm"].as_str().unwrap(),
            b["id"].as_str().unwrap()
        );
        let m: Value =
            serde_json::from_str(&ok(&dst, DST_KEY, &[], &["show", &spec, "-o", "json"])).unwrap();
        assert_eq!(m["volumes"][0]["chunk_size"], 262_144, "{m}");
    }
    let b_img = dir.path().join("b.img");
    let out = ok(
        &dst,
        DST_KEY,
        &[],
        &[
            "backup-file",
            b_img.to_str().unwrap(),
            "--vm",
            "ns/b2",
            "--no-parent",
            "-o",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["volumes"][0]["new_chunks"], 0, "{v}");

    // Same chunk size, other id key: ids are recomputed, chunks kept as they are cut.
    let dst2 = dir_str(&dir.path().join("dst2"));
    init(&dst2, DST_KEY, &[], &["--chunk-size", "64KiB"]);
    let r = copy(&src, &dst2, &[], &[]);
    assert_eq!(r["idMode"], "reid");
    assert_eq!(r["chunksCopied"], 26, "{r}");
    ok(&dst2, DST_KEY, &[], &["verify", "--read-data"]);
    restore_all(&dst2, &[], dir.path(), &want);
}

/// Complete objects under `dir` (the local store's `.tmp-` files are writes in progress).
fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.map(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            count_files(&p)
        } else {
            usize::from(
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tmp-"),
            )
        }
    })
    .sum()
}

#[test]
fn a_killed_copy_shows_nothing_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir_str(&dir.path().join("src"));
    let dst_path = dir.path().join("dst");
    let dst = dir_str(&dst_path);
    let images = source(dir.path(), &src);
    init(
        &dst,
        DST_KEY,
        &[("VIRTGUARD_FROM_KEY", SRC_KEY)],
        &["--copy-chunker-params-from", &src],
    );

    // 256 KiB/s: the ~1.7 MiB of VM a's chunks take several seconds; kill once some arrived.
    let mut child = cmd(
        &src,
        SRC_KEY,
        &[("VIRTGUARD_TO_KEY", DST_KEY)],
        &[
            "--limit-upload",
            "256KiB",
            "copy",
            "--to",
            &dst,
            "--vm",
            "ns/a",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_files(&dst_path.join("chunks")) < 3 {
        assert!(Instant::now() < deadline, "no chunk arrived");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let arrived = count_files(&dst_path.join("chunks"));
    assert!(arrived < 19, "the copy finished before the kill");
    assert!(
        list(&dst, DST_KEY, &[]).is_empty(),
        "no half-copied backup is visible"
    );

    // The killed run's shared locks do not stop the next one.
    let r = copy(&src, &dst, &[], &["--vm", "ns/a"]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 2);
    let copied = r["chunksCopied"].as_u64().unwrap();
    assert!(
        copied <= 19 - arrived as u64 + 1,
        "resumed: {r} after {arrived} arrived"
    );
    ok(&dst, DST_KEY, &[], &["verify", "--read-data"]);
    let want: Vec<_> = images
        .iter()
        .filter(|(v, _)| *v == "a")
        .map(|(v, d)| (*v, d))
        .collect();
    restore_all(&dst, &[], dir.path(), &want);
}

#[test]
fn copy_from_a_local_directory_to_s3() {
    let Some(server) = common::S3Server::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir_str(&dir.path().join("src"));
    let dst = format!("s3://{}/offsite", common::BUCKET);
    let endpoint = server.endpoint();
    let s3 = [
        ("VIRTGUARD_S3_ENDPOINT", endpoint.as_str()),
        ("VIRTGUARD_S3_PATH_STYLE", "true"),
    ];
    let images = source(dir.path(), &src);
    let mut env = s3.to_vec();
    env.push(("VIRTGUARD_FROM_KEY", SRC_KEY));
    init(&dst, DST_KEY, &env, &["--copy-chunker-params-from", &src]);
    let r = copy(&src, &dst, &s3, &[]);
    assert_eq!(r["copied"].as_array().unwrap().len(), 3);
    assert_eq!(r["chunksCopied"], 26, "{r}");
    let r = copy(&src, &dst, &s3, &[]);
    assert_eq!(r["chunksRead"], 0);
    assert_eq!(r["present"].as_array().unwrap().len(), 3);
    ok(&dst, DST_KEY, &s3, &["verify", "--read-data"]);
    let want: Vec<_> = images.iter().map(|(v, d)| (*v, d)).collect();
    restore_all(&dst, &s3, dir.path(), &want);
}

/// `-l SELECTOR -n NS` copies the backups of the VMs the cluster (the simulated one) selects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_selects_vms_by_label_in_the_cluster() {
    const SCENARIO: &str = r#"
namespaces: [shop]
vms:
  - namespace: shop
    name: db
    running: false
    labels: {tier: prod}
    disks: [{name: root, size: 1Mi, content: zeros}]
  - namespace: shop
    name: scratch
    running: false
    labels: {tier: dev}
    disks: [{name: root, size: 1Mi, content: zeros}]
"#;
    let (sim, _client) = common::cluster::start_sim(SCENARIO, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    let run = |repo: &Path, args: &[&str]| {
        let o = common::cluster::virtguard(&sim, repo, args);
        assert!(o.status.success(), "{args:?}: {}", common::text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    run(&src, &["init", "--chunk-size", "64KiB"]);
    run(
        &dst,
        &["init", "--copy-chunker-params-from", src.to_str().unwrap()],
    );
    for (vm, seed) in [("db", 1), ("scratch", 2)] {
        let img = dir.path().join(format!("{vm}.img"));
        std::fs::write(&img, common::noise(3 * 65536, seed)).unwrap();
        run(
            &src,
            &[
                "backup-file",
                img.to_str().unwrap(),
                "--vm",
                &format!("shop/{vm}"),
            ],
        );
    }
    let out = run(
        &src,
        &[
            "copy",
            "--to",
            dst.to_str().unwrap(),
            "-l",
            "tier=prod",
            "-n",
            "shop",
            "-o",
            "json",
        ],
    );
    let r: Value = serde_json::from_str(&out).unwrap();
    let copied = r["copied"].as_array().unwrap();
    assert_eq!(copied.len(), 1, "{r}");
    assert!(copied[0].as_str().unwrap().starts_with("shop/db/"), "{r}");
    let list: Value = serde_json::from_str(&run(&dst, &["list", "-o", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["vm"], "db");
}
