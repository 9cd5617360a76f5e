//! End-to-end tests of the real `virtguard` binary on a local repository: the repository-only
//! commands (`download` as raw and qcow2 included), encryption errors, corruption fixtures, and
//! kill -9 of a running backup.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use common::text;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_virtguard");

struct Env {
    dir: tempfile::TempDir,
    key: Option<&'static str>,
}

impl Env {
    fn new(key: Option<&'static str>) -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            key,
        }
    }
    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("VIRTGUARD_REPO", self.repo())
            .env_remove("VIRTGUARD_KEY")
            .env_remove("VIRTGUARD_KEY_FILE")
            .env("VIRTGUARD_CONCURRENCY", "4")
            .env("VIRTGUARD_RETRY_BASE", "10ms")
            .stdin(Stdio::null());
        if let Some(k) = self.key {
            c.env("VIRTGUARD_KEY", k);
        }
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "virtguard {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(!o.status.success(), "virtguard {args:?} should fail");
        String::from_utf8_lossy(&o.stderr).to_string()
    }
    fn init(&self) {
        self.ok(&[
            "init",
            "--chunk-size",
            "64KiB",
            "--kdf-memory-kib",
            "256",
            "--kdf-iterations",
            "1",
        ]);
    }
}

/// 1/3 zero, 1/3 text, 1/3 random chunks of 64 KiB.
fn write_image(path: &Path, chunks: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let cs = 64 * 1024;
    let mut data = Vec::with_capacity(chunks * cs);
    for i in 0..chunks {
        match i % 3 {
            0 => data.extend(std::iter::repeat_n(0u8, cs)),
            1 => data.extend(
                format!("text chunk {i} seed {seed}\n")
                    .bytes()
                    .cycle()
                    .take(cs),
            ),
            _ => data.extend((0..cs).map(|_| rng.gen::<u8>())),
        }
    }
    std::fs::write(path, &data).unwrap();
    data
}

fn backup_json(env: &Env, img: &Path) -> serde_json::Value {
    let out = env.ok(&[
        "backup-file",
        img.to_str().unwrap(),
        "--vm",
        "prod/web",
        "--volume",
        "root",
        "-o",
        "json",
        "-q",
    ]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn commands_roundtrip() {
    let env = Env::new(None);
    assert!(env.fails(&["list"]).contains("virtguard init"));
    env.init();
    assert!(env.fails(&["init"]).contains("already exists"));
    let img = env.path("web.img");
    let data = write_image(&img, 24, 1);
    let b1 = backup_json(&env, &img);
    assert_eq!(b1["volumes"][0]["zero_chunks"], 8);
    assert_eq!(b1["volumes"][0]["new_chunks"], 16);
    let b2 = backup_json(&env, &img);
    assert_eq!(
        b2["volumes"][0]["new_chunks"], 0,
        "unchanged image stores nothing new"
    );
    assert_eq!(b2["parent"], b1["id"]);
    let id1 = b1["id"].as_str().unwrap();

    let list: serde_json::Value = serde_json::from_str(&env.ok(&["list", "-o", "json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let filtered: serde_json::Value =
        serde_json::from_str(&env.ok(&["list", "--vm", "prod/other", "-o", "json"])).unwrap();
    assert_eq!(filtered.as_array().unwrap().len(), 0);
    let table = env.ok(&["list", "--namespace", "prod"]);
    assert!(table.contains(id1) && table.contains("web"), "{table}");
    let show = env.ok(&["show", id1]);
    assert!(show.contains("volume root"), "{show}");
    let shown: serde_json::Value =
        serde_json::from_str(&env.ok(&["show", id1, "-o", "json"])).unwrap();
    assert_eq!(shown["volumes"][0]["size"], data.len() as u64);

    let out = env.path("restored.img");
    let msg = env.ok(&["restore-file", id1, "root", out.to_str().unwrap(), "-q"]);
    assert!(msg.contains("digest verified"), "{msg}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert!(env
        .fails(&["restore-file", id1, "root", out.to_str().unwrap()])
        .contains("--force"));
    assert!(env
        .fails(&["restore-file", id1, "nope", env.path("x").to_str().unwrap()])
        .contains("no volume `nope`"));
    assert!(env
        .fails(&["show", "20200101T000000Z-0000"])
        .contains("not found"));
    assert!(env
        .ok(&["verify", "--read-data", "-q"])
        .contains("no problems"));

    // Retention and gc through the CLI.
    let dry = env.ok(&["prune", "--keep-last", "1", "--dry-run"]);
    assert!(dry.contains("would remove 1 backups"), "{dry}");
    env.ok(&["prune", "--keep-last", "1"]);
    let gc = env.ok(&["gc", "--grace", "0s"]);
    assert!(
        gc.contains("deleted 0 of 16 chunks"),
        "chunks are shared with the kept backup: {gc}"
    );
    assert!(env.fails(&["prune"]).contains("--keep"));
}

#[test]
fn encrypted_repository_key_errors() {
    let env = Env::new(Some("my passphrase"));
    env.init();
    let cfg = std::fs::read_to_string(env.repo().join("config.json")).unwrap();
    assert!(cfg.contains("argon2id") && !cfg.contains("my passphrase"));
    let img = env.path("a.img");
    let data = write_image(&img, 6, 2);
    let b = backup_json(&env, &img);
    let id = b["id"].as_str().unwrap();

    let no_key = Env {
        dir: tempfile::tempdir().unwrap(),
        key: None,
    };
    let mut c = no_key.cmd(&["list"]);
    c.env("VIRTGUARD_REPO", env.repo());
    let o = c.output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("encrypted") && err.contains("VIRTGUARD_KEY"),
        "{err}"
    );

    let mut c = no_key.cmd(&["list"]);
    c.env("VIRTGUARD_REPO", env.repo())
        .env("VIRTGUARD_KEY", "wrong");
    let o = c.output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not unlock"), "{err}");
    assert!(!err.contains("wrong"), "the key is never echoed: {err}");

    // Key file works too.
    let key_file = env.path("key");
    std::fs::write(&key_file, "my passphrase\n").unwrap();
    let mut c = no_key.cmd(&[
        "restore-file",
        id,
        "root",
        env.path("out.img").to_str().unwrap(),
        "--key-file",
        key_file.to_str().unwrap(),
        "-q",
    ]);
    c.env("VIRTGUARD_REPO", env.repo());
    assert!(c.output().unwrap().status.success());
    assert_eq!(std::fs::read(env.path("out.img")).unwrap(), data);
}

#[test]
fn corruption_fixtures_fail_loudly() {
    let env = Env::new(None);
    env.init();
    let img = env.path("a.img");
    write_image(&img, 9, 3);
    let b = backup_json(&env, &img);
    let id = b["id"].as_str().unwrap().to_string();
    let prefix = env.repo().join("backups/prod/web").join(&id);

    // Flip a byte of a stored chunk.
    let chunks: Vec<PathBuf> = walk(&env.repo().join("chunks"));
    let victim = &chunks[0];
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    let mut blob = std::fs::read(victim).unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x10;
    std::fs::write(victim, &blob).unwrap();
    let err = env.fails(&["verify", "--read-data", "-q"]);
    assert!(err.contains(&name) && err.contains("corrupt"), "{err}");
    let out = env.path("out.img");
    let err = env.fails(&["restore-file", &id, "root", out.to_str().unwrap(), "-q"]);
    assert!(err.contains(&name), "{err}");
    assert!(!out.exists(), "nothing is restored wrongly");

    // Missing chunk: even the structure check fails.
    std::fs::remove_file(victim).unwrap();
    let err = env.fails(&["verify"]);
    assert!(err.contains(&name) && err.contains("missing"), "{err}");

    // Truncated index, malformed manifest.
    let idx = prefix.join("root.idx");
    let bytes = std::fs::read(&idx).unwrap();
    std::fs::write(&idx, &bytes[..bytes.len() / 2]).unwrap();
    let err = env.fails(&["verify"]);
    assert!(err.contains("root.idx"), "{err}");
    std::fs::write(prefix.join("manifest.json"), b"{ not json").unwrap();
    let err = env.fails(&["verify"]);
    assert!(
        err.contains("manifest.json") && err.contains("malformed"),
        "{err}"
    );
    let err = env.fails(&["restore-file", &id, "root", out.to_str().unwrap()]);
    assert!(err.contains("manifest.json"), "{err}");
}

fn count_files(dir: &Path) -> usize {
    if dir.exists() {
        walk(dir).len()
    } else {
        0
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn kill_9_during_backup_leaves_a_usable_repository() {
    let env = Env::new(None);
    env.init();
    let img = env.path("big.img");
    // 48 MiB: 768 chunks, long enough to be killed in the middle.
    let mut data = write_image(&img, 768, 4);
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let mut killed_mid_way = 0;
    for round in 0..5 {
        let mut child = env
            .cmd(&[
                "backup-file",
                img.to_str().unwrap(),
                "--vm",
                "prod/web",
                "--volume",
                "root",
                "-q",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..600)));
        let finished = child.try_wait().unwrap().is_some();
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        if !finished {
            killed_mid_way += 1;
        }
        // The repository is readable and consistent: every manifest's chunks exist.
        let v = env.ok(&["verify", "-q"]);
        assert!(v.contains("no problems"), "round {round}: {v}");
        // Chunks of the killed run are reused: the next backup uploads exactly the chunks
        // that are not in the store yet (none twice).
        let before = count_files(&env.repo().join("chunks"));
        let b = backup_json(&env, &img);
        let after = count_files(&env.repo().join("chunks"));
        let new = b["volumes"][0]["new_chunks"].as_u64().unwrap() as usize;
        assert_eq!(
            new,
            after - before,
            "round {round}: {before} chunks before, {after} after"
        );
        let id = b["id"].as_str().unwrap();
        let out = env.path(&format!("r{round}.img"));
        env.ok(&["restore-file", id, "root", out.to_str().unwrap(), "-q"]);
        assert!(
            std::fs::read(&out).unwrap() == data,
            "round {round}: restored image differs"
        );
        std::fs::remove_file(&out).unwrap();
        // Change the image a little so later rounds write new chunks again.
        let mut changed = data.clone();
        for _ in 0..200 {
            let at = rng.gen_range(0..changed.len());
            changed[at] = changed[at].wrapping_add(1);
        }
        std::fs::write(&img, &changed).unwrap();
        data = changed;
    }
    assert!(
        killed_mid_way > 0,
        "no round killed a running backup; the test proves nothing"
    );
    // Killed processes left shared locks behind; they go stale and unlock removes them.
    std::thread::sleep(Duration::from_millis(1200));
    let out = env.ok(&["unlock", "--stale", "--lock-stale-after", "1s"]);
    assert!(out.contains("stale locks"), "{out}");
    env.ok(&["gc", "--grace", "0s"]);
    assert!(env
        .ok(&["verify", "--read-data", "-q"])
        .contains("no problems"));
}

#[test]
fn download_raw_and_qcow2_equal_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut data = vec![0u8; 5 << 20];
    for (i, b) in data.iter_mut().enumerate().take(2 << 20) {
        *b = (i * 31 % 251) as u8;
    }
    data[(4 << 20) + 7] = 9;
    std::fs::write(&img, &data).unwrap();
    let repo = dir.path().join("repo").display().to_string();
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_virtguard"))
            .args(["--repo", &repo, "--quiet"])
            .args(args)
            .env_remove("VIRTGUARD_KEY")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    run(&["init", "--chunk-size", "1MiB"]);
    run(&[
        "backup-file",
        img.to_str().unwrap(),
        "--vm",
        "lab/vm1",
        "--volume",
        "root",
    ]);
    // list / show: time, VM, volumes and sizes, consistency, duration, tool version.
    let o = run(&["list", "--namespace", "lab", "--vm", "vm1"]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("FINISHED") && out.contains("DURATION") && out.contains("crash-consistent"),
        "{out}"
    );
    let o = run(&["list", "-o", "json"]);
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        list[0]["duration_seconds"].is_number() && list[0]["tool_version"].is_string(),
        "{list}"
    );
    let id = list[0]["id"].as_str().unwrap().to_string();
    let o = run(&["show", &id]);
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    for want in [
        "vm          lab/vm1",
        "duration",
        "volume root",
        "size 5.0 MiB",
        "tool        virtguard",
    ] {
        assert!(out.contains(want), "{want} missing in: {out}");
    }
    let raw = dir.path().join("out.raw");
    run(&[
        "download",
        "lab/vm1@latest",
        "root",
        "-o",
        raw.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&raw).unwrap(), data);
    let qcow = dir.path().join("out.qcow2");
    run(&[
        "download",
        "lab/vm1@latest",
        "root",
        "-o",
        qcow.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    let qemu_img = std::process::Command::new("qemu-img")
        .arg("--version")
        .output();
    if qemu_img.is_err() && std::env::var("VIRTGUARD_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIP: qemu-img not installed");
        return;
    }
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&img)
        .arg(&qcow)
        .output()
        .expect("qemu-img (apt install qemu-utils)");
    assert!(o.status.success(), "{}", text(&o));
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&qcow)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    // An existing file is not overwritten without --force.
    let o = Command::new(env!("CARGO_BIN_EXE_virtguard"))
        .args([
            "--repo",
            &repo,
            "--quiet",
            "download",
            "lab/vm1@latest",
            "root",
            "-o",
            raw.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
