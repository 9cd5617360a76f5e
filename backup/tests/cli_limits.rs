//! `--limit-upload`, `--limit-download`, `--limit-read` (the real binary, local repository): each
//! holds its transfer to the limit. Only lower bounds on the time are asserted — a loaded machine
//! can make a run slower, never faster than its limit — the achieved rates are measured by
//! scripts/bench-limits.sh. A zero limit is refused.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::noise;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

fn run(repo: &Path, args: &[&str]) -> (Output, f64) {
    let start = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_virtguard"))
        .args(["--repo", repo.to_str().unwrap(), "--quiet"])
        .args(args)
        .env_remove("VIRTGUARD_KEY")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (o, start.elapsed().as_secs_f64())
}

fn ok(repo: &Path, args: &[&str]) -> f64 {
    let (o, secs) = run(repo, args);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    secs
}

#[test]
fn each_limit_holds_its_transfer_to_the_rate() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let random = dir.path().join("random.img");
    let zeros = dir.path().join("zeros.img");
    std::fs::write(&random, noise(3 * MIB, 5)).unwrap();
    std::fs::write(&zeros, vec![0u8; 4 * MIB]).unwrap();
    ok(&repo, &["init", "--chunk-size", "256KiB"]);

    // 3 MiB of incompressible chunks at 1 MiB/s: at least 3 s less the 100 ms burst.
    let r = random.to_str().unwrap();
    let secs = ok(
        &repo,
        &["--limit-upload", "1MiB", "backup-file", r, "--vm", "ns/up"],
    );
    assert!(secs >= 2.8, "upload took {secs:.2} s");

    // Reading them back at 2 MiB/s: at least 1.4 s.
    let list = String::from_utf8(run(&repo, &["list", "-o", "json"]).0.stdout).unwrap();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    let out = dir.path().join("out.img");
    let o = out.to_str().unwrap();
    let secs = ok(
        &repo,
        &["--limit-download", "2MiB", "restore-file", &id, "disk0", o],
    );
    assert!(secs >= 1.4, "download took {secs:.2} s");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&random).unwrap());

    // 4 MiB of zeros upload nothing; reading the source at 2 MiB/s still takes at least 1.9 s.
    let z = zeros.to_str().unwrap();
    let secs = ok(
        &repo,
        &["--limit-read", "2MiB", "backup-file", z, "--vm", "ns/read"],
    );
    assert!(secs >= 1.9, "read took {secs:.2} s");

    // Zero is refused, with what to do instead.
    let (o, _) = run(&repo, &["--limit-upload", "0", "list"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("leave the flag out for no limit"), "{err}");
}
