//! `virtguard key list|add|remove|passwd` on the real binary and a local repository: several
//! keys open the same backups, the last key and the current key are protected, a wrong key is a
//! clear error, a repository from before `key` (the v1 fixture) gains keys, and no command prints
//! key material.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Writes a key file holding `key` (with a trailing newline, as editors save it).
    fn key_file(&self, name: &str, key: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, format!("{key}\n")).unwrap();
        p
    }
    /// `virtguard` opened with `key` (env VIRTGUARD_KEY), `extra_env` added.
    fn run_env(&self, key: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_virtguard"));
        c.args(["--quiet"])
            .args(args)
            .env("VIRTGUARD_REPO", self.path("repo"))
            .env("VIRTGUARD_KEY", key)
            .env_remove("VIRTGUARD_KEY_FILE")
            .env_remove("VIRTGUARD_NEW_KEY")
            .env_remove("VIRTGUARD_NEW_KEY_FILE")
            .stdin(Stdio::null());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
    fn ok(&self, key: &str, args: &[&str]) -> String {
        self.ok_env(key, &[], args)
    }
    fn ok_env(&self, key: &str, env: &[(&str, &str)], args: &[&str]) -> String {
        let o = self.run_env(key, env, args);
        let all = format!("{}{}", common::text(&o), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{args:?} failed: {all}");
        String::from_utf8_lossy(&o.stdout).to_string()
    }
    fn fails(&self, key: &str, args: &[&str]) -> String {
        let o = self.run_env(key, &[], args);
        assert!(!o.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&o.stderr).to_string()
    }
    fn keys(&self, key: &str) -> Vec<Value> {
        let out = self.ok(key, &["key", "list", "-o", "json"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn ids(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

fn current(keys: &[Value]) -> String {
    let c: Vec<_> = keys.iter().filter(|k| k["current"] == true).collect();
    assert_eq!(c.len(), 1, "exactly one current key in {keys:?}");
    c[0]["id"].as_str().unwrap().to_string()
}

fn assert_no_secret(out: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!out.contains(s), "output shows a key: {out}");
    }
}

#[test]
fn keys_add_list_remove_passwd_and_a_wrong_key() {
    let r = Repo::new();
    let (a, b, c) = ("alpha secret", "bravo secret", "charlie secret");
    r.ok(
        a,
        &[
            "init",
            "--chunk-size",
            "64KiB",
            "--kdf-memory-kib",
            "256",
            "--kdf-iterations",
            "1",
            // Added keys must name the repository's data cipher (not the wrapping one).
            "--cipher",
            "aes256gcm",
        ],
    );
    let img = r.path("disk.img");
    std::fs::write(&img, common::noise(200_000, 3)).unwrap();
    r.ok(a, &["backup-file", img.to_str().unwrap(), "--vm", "ns/vm"]);

    // One key, current, created here.
    let k = r.keys(a);
    assert_eq!(k.len(), 1);
    let key_a = current(&k);
    assert_eq!(k[0]["object"], "config.json");
    assert!(!k[0]["host"].as_str().unwrap().is_empty());
    assert!(k[0]["created"].as_str().unwrap().starts_with("20"));
    // The only key cannot go, not even with --force.
    let e = r.fails(a, &["key", "remove", &key_a, "--force"]);
    assert!(e.contains("only key"), "{e}");

    // Add B from a file, C from the environment.
    let fb = r.key_file("b.key", b);
    let out = r.ok(
        a,
        &[
            "key",
            "add",
            "--new-key-file",
            fb.to_str().unwrap(),
            "--host",
            "offsite-1",
        ],
    );
    assert_no_secret(&out, &[a, b]);
    r.ok_env(a, &[("VIRTGUARD_NEW_KEY", c)], &["key", "add"]);
    let k = r.keys(b);
    assert_eq!(k.len(), 3);
    let key_b = current(&k);
    assert_ne!(key_a, key_b);
    assert_eq!(
        k.iter().find(|x| x["id"] == key_b.as_str()).unwrap()["host"],
        "offsite-1"
    );
    let key_c = ids(&k)
        .into_iter()
        .find(|i| *i != key_a && *i != key_b)
        .unwrap();
    // The table marks the current key.
    let table = r.ok(c, &["key", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with('*') && l.contains(&key_c)),
        "{table}"
    );

    // Each key reads the same backup.
    let list: Value = serde_json::from_str(&r.ok(a, &["list", "-o", "json"])).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_string();
    for key in [a, b, c] {
        let out = r.path(&format!("out-{}.img", &key[..1]));
        r.ok(key, &["restore-file", &id, "disk0", out.to_str().unwrap()]);
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    }

    // A wrong key: a clear error, no key shown.
    let e = r.fails("not a key", &["list"]);
    assert!(e.contains("does not unlock the repository"), "{e}");
    assert_no_secret(&e, &["not a key"]);
    // Without a key and with no terminal, `key add` says what to pass.
    let e = r.fails(a, &["key", "add"]);
    assert!(e.contains("--new-key-file"), "{e}");
    // An unknown id names the ones there are.
    let e = r.fails(a, &["key", "remove", "nope"]);
    assert!(e.contains(&key_a) && e.contains(&key_b), "{e}");

    // Removing the current key needs --force; removing config.json's key promotes another.
    let e = r.fails(a, &["key", "remove", &key_a]);
    assert!(e.contains("--force"), "{e}");
    r.ok(b, &["key", "remove", &key_a]);
    let e = r.fails(a, &["list"]);
    assert!(e.contains("does not unlock"), "{e}");
    let k = r.keys(b);
    assert_eq!(ids(&k).len(), 2);
    assert!(!ids(&k).contains(&key_a));
    assert!(k.iter().any(|x| x["object"] == "config.json"));

    // passwd: C is replaced by D; C stops working, D works, B is untouched.
    let fd = r.key_file("d.key", "delta secret");
    let out = r.ok(
        c,
        &["key", "passwd", "--new-key-file", fd.to_str().unwrap()],
    );
    assert!(out.contains(&format!("replaced key {key_c}")), "{out}");
    assert!(r.fails(c, &["list"]).contains("does not unlock"));
    let k = r.keys("delta secret");
    assert_eq!(k.len(), 2);
    assert!(!ids(&k).contains(&key_c));
    assert!(ids(&k).contains(&key_b));
    r.ok(b, &["verify", "--read-data"]);

    // Everything written to the repository is free of the keys.
    for e in walk(&r.path("repo")) {
        let data = std::fs::read(&e).unwrap();
        let s = String::from_utf8_lossy(&data);
        assert_no_secret(&s, &[a, b, c, "delta secret"]);
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
    out
}

#[test]
fn an_unencrypted_repository_has_no_keys_to_manage() {
    let r = Repo::new();
    r.ok("", &["init", "--chunk-size", "64KiB"]);
    let e = r.fails("", &["key", "list"]);
    assert!(e.contains("not encrypted"), "{e}");
}

#[test]
fn a_repository_from_before_key_management_gains_keys() {
    let r = Repo::new();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../repository/tests/fixtures/v1-encrypted");
    copy_dir(&fixture, &r.path("repo"));
    let old = "fixture passphrase";
    let k = r.keys(old);
    assert_eq!(ids(&k), ["initial"]);
    r.ok_env(old, &[("VIRTGUARD_NEW_KEY", "new one")], &["key", "add"]);
    r.ok("new one", &["key", "remove", "initial"]);
    assert_eq!(r.keys("new one").len(), 1);
    r.ok("new one", &["verify", "--read-data"]);
    assert!(r.fails(old, &["list"]).contains("does not unlock"));
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// `key add` on a terminal (a pty from util-linux `script`): asks twice, answers typed after
/// each prompt; two different entries change nothing.
#[test]
fn key_add_prompts_on_a_terminal() {
    use std::io::{Read, Write};

    let r = Repo::new();
    r.ok(
        "first",
        &["init", "--kdf-memory-kib", "256", "--kdf-iterations", "1"],
    );
    let typed = |answers: [&str; 2]| -> (bool, String) {
        let cmd = format!("{} --quiet key add", env!("CARGO_BIN_EXE_virtguard"));
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("VIRTGUARD_REPO", r.path("repo"))
            .env("VIRTGUARD_KEY", "first")
            .env_remove("VIRTGUARD_NEW_KEY")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("util-linux `script` runs the command on a pty");
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 256];
        for (prompt, answer) in ["new key:", "repeat the new key:"].iter().zip(answers) {
            while !seen.contains(prompt) {
                let n = stdout.read(&mut buf).unwrap();
                assert!(n > 0, "no prompt `{prompt}`; got: {seen}");
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
            stdin.flush().unwrap();
        }
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        seen.push_str(&rest);
        drop(stdin);
        (child.wait().unwrap().success(), seen)
    };
    let (ok, out) = typed(["typed secret", "typed secret"]);
    assert!(ok && out.contains("added key"), "{out}");
    assert_eq!(r.keys("typed secret").len(), 2);
    let (ok, out) = typed(["one", "other"]);
    assert!(!ok && out.contains("differ"), "{out}");
    assert_eq!(r.keys("first").len(), 2);
}
