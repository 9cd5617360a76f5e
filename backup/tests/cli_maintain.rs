//! `virtguard maintain` (the real binary, local repository): prune → gc → verify in one run, a
//! corrupt chunk named with its users and exit 1 until a backup of the same data heals it, bad
//! `--verify-share` refused before anything runs.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

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
    ok(&repo, &["verify", "--read-data"]);
}
