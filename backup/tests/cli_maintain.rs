//! `virtguard maintain` (the real binary, local repository): prune → gc → verify in one run, a
//! corrupt chunk named with its users and exit 1 until a backup of the same data heals it, bad
//! `--verify-share` refused before anything runs; maintain killed with SIGKILL in its gc while a
//! backup reuses the chunks gc is collecting: no referenced chunk is lost and the next run finishes.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::noise;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn run(repo: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_virtguard"))
        .args(["--repo", repo.to_str().unwrap(), "--quiet"])
        .args(args)
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(repo: &Path, args: &[&str]) -> String {
    let o = run(repo, args);
    assert!(o.status.success(), "{args:?}: {}", out(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn chunk_files(repo: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = walk(&repo.join("chunks"));
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn maintain_prunes_collects_verifies_and_fails_until_corruption_is_healed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let img = dir.path().join("disk.img");
    let data: Vec<u8> = (0..(64 * 1024 * 6) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&img, data).unwrap();
    ok(&repo, &["init", "--chunk-size", "64KiB"]);
    for _ in 0..3 {
        ok(
            &repo,
            &["backup-file", img.to_str().unwrap(), "--vm", "ns/vm"],
        );
    }

    for bad in ["0/7", "1/0", "seven"] {
        let o = run(&repo, &["maintain", "--verify-share", bad]);
        assert_eq!(o.status.code(), Some(2), "{}", out(&o));
        assert!(out(&o).contains("PART/OF"), "{}", out(&o));
    }

    let report: Value = serde_json::from_str(&ok(
        &repo,
        &[
            "maintain",
            "--keep-last",
            "2",
            "--verify-share",
            "1/1",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(report["prune"]["removed"].as_array().unwrap().len(), 1);
    assert_eq!(report["verify"]["backups"], 2);
    assert_eq!(
        report["verify"]["chunksRead"],
        report["verify"]["chunksReferenced"]
    );
    assert_eq!(report["corruptChunks"].as_array().unwrap().len(), 0);

    // Rot one chunk: maintain names it and its users, and fails.
    let victim = chunk_files(&repo)[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&victim, &bytes).unwrap();
    let o = run(&repo, &["maintain", "--verify-share", "1/1"]);
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let text = out(&o);
    assert!(text.contains("prune skipped"), "{text}");
    assert!(text.contains("CORRUPT chunk"), "{text}");
    assert!(text.matches("  used by ns/vm/").count() == 2, "{text}");
    // The two backups that use it are marked in `list` until it is healed.
    let list: Value = serde_json::from_str(&ok(&repo, &["list", "-o", "json"])).unwrap();
    let marked: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["corrupt_chunks"].as_u64().unwrap())
        .collect();
    assert_eq!(marked, [1, 1], "{list}");
    assert!(ok(&repo, &["list"]).contains("CORRUPT (1 chunk(s)"));

    // The next backup of the same data stores the chunk again; the next maintain forgets it.
    ok(
        &repo,
        &["backup-file", img.to_str().unwrap(), "--vm", "ns/vm"],
    );
    let healed = ok(&repo, &["maintain", "--verify-share", "1/3"]);
    assert!(
        healed.contains("1 chunk(s) found corrupt earlier read healthy again"),
        "{healed}"
    );
    assert!(!healed.contains("CORRUPT"), "{healed}");
    assert!(!ok(&repo, &["list"]).contains("CORRUPT"));
    ok(&repo, &["verify", "--read-data"]);
}

/// The binary with a 2 s stale time (so the killed process's lock goes stale quickly).
fn virtguard(repo: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtguard"));
    c.args(["--repo", repo.to_str().unwrap(), "--quiet"])
        .args(args)
        .env_remove("VIRTGUARD_KEY")
        .env("VIRTGUARD_LOCK_STALE_AFTER", "2s")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn done(mut c: Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", out(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn maintain_killed_during_gc_beside_a_backup_loses_no_referenced_chunk() {
    const CHUNK: usize = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let old = dir.path().join("old.img");
    let small = dir.path().join("small.img");
    let shared = dir.path().join("shared.img");
    let old_data = noise(2000 * CHUNK, 1);
    std::fs::write(&old, &old_data).unwrap();
    std::fs::write(&small, noise(4 * CHUNK, 2)).unwrap();
    // Half of its chunks are old.img's (which gc is about to collect), half are new.
    let mut shared_data = old_data[..300 * CHUNK].to_vec();
    shared_data.extend(noise(300 * CHUNK, 3));
    std::fs::write(&shared, &shared_data).unwrap();

    done(virtguard(&repo, &["init", "--chunk-size", "64KiB"]));
    done(virtguard(
        &repo,
        &["backup-file", old.to_str().unwrap(), "--vm", "ns/a"],
    ));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    done(virtguard(
        &repo,
        &["backup-file", small.to_str().unwrap(), "--vm", "ns/a"],
    ));
    done(virtguard(&repo, &["prune", "--keep-last", "1"]));
    let before = chunk_files(&repo).len();
    assert_eq!(before, 2004);

    // The backup holds its shared lock when maintain starts (else gc's delete phase could take
    // the exclusive lock first and the backup would be refused); maintain is killed once its gc
    // deletes.
    let held = |repo: &Path| {
        std::fs::read_dir(repo.join("locks")).is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                !name.starts_with('.') && name.ends_with(".json")
            })
        })
    };
    let mut backup = virtguard(
        &repo,
        &["backup-file", shared.to_str().unwrap(), "--vm", "ns/b"],
    )
    .spawn()
    .unwrap();
    while !held(&repo) {
        assert!(
            backup.try_wait().unwrap().is_none(),
            "the backup ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut maintain = virtguard(
        &repo,
        &["maintain", "--grace", "0s", "--verify-share", "1/7"],
    )
    .spawn()
    .unwrap();
    let killed_mid_delete = loop {
        if maintain.try_wait().unwrap().is_some() {
            break false;
        }
        let now = chunk_files(&repo).len();
        if now < before {
            maintain.kill().unwrap(); // SIGKILL
            break true;
        }
    };
    let status = maintain.wait().unwrap();
    let b = backup.wait_with_output().unwrap();
    assert!(b.status.success(), "the backup beside gc: {}", out(&b));
    eprintln!(
        "maintain {} ({status}); {} chunk files left of {before}",
        if killed_mid_delete {
            "killed while deleting"
        } else {
            "finished before the kill"
        },
        chunk_files(&repo).len()
    );

    // Every backup reads back in full, before and after the next run finishes the collection.
    let check = |label: &str| {
        done(virtguard(&repo, &["verify", "--read-data"]));
        let restored = dir.path().join(format!("b-{label}.img"));
        let list: Value =
            serde_json::from_str(&done(virtguard(&repo, &["list", "-o", "json"]))).unwrap();
        let id = list
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["vm"] == "b")
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        done(virtguard(
            &repo,
            &["restore-file", &id, "disk0", restored.to_str().unwrap()],
        ));
        assert!(
            std::fs::read(&restored).unwrap() == shared_data,
            "{label}: ns/b restores"
        );
    };
    std::thread::sleep(std::time::Duration::from_millis(2500)); // the killed lock turns stale
    check("after the kill");
    done(virtguard(&repo, &["unlock", "--stale"]));
    let report: Value = serde_json::from_str(&done(virtguard(
        &repo,
        &[
            "maintain",
            "--grace",
            "0s",
            "--verify-share",
            "1/1",
            "-o",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(
        report["corruptChunks"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    assert_eq!(
        chunk_files(&repo).len(),
        4 + 600,
        "only the chunks of small.img and shared.img are left"
    );
    check("after the next run");
}
