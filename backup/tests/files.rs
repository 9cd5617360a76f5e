//! End-to-end tests of `virtguard files` on real images: filesystems made by `mkfs.ext4 -d`
//! (populated from a directory, no root and no loop mount) and changed with `debugfs -w`,
//! partitioned with `sfdisk`, backed up with the real `virtguard backup-file`. What
//! `files ls/find/get` report is compared with what `debugfs` sees (`ls -p` of every
//! directory, `rdump`), and every fetched file's SHA-256 with the original's.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

const BIN: &str = env!("CARGO_BIN_EXE_virtguard");

/// A system tool from PATH or the sbin directories; `None` (after a loud SKIP) only when
/// VIRTGUARD_ALLOW_SKIP=1, otherwise a panic saying which package installs it.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| p.exists()) {
        return Some(p);
    }
    if std::env::var("VIRTGUARD_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("SKIP: {name} not found (apt-get install {package})");
        return None;
    }
    panic!("{name} not found: run scripts/install-deps.sh or apt-get install {package} (or set VIRTGUARD_ALLOW_SKIP=1)");
}

fn check(o: Output, what: &str) -> String {
    assert!(o.status.success(), "{what}: {}", common::text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn sh(prog: &Path, args: &[&str]) -> String {
    let o = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    check(o, &format!("{} {args:?}", prog.display()))
}

struct Env {
    dir: tempfile::TempDir,
    key: Option<&'static str>,
    s3: Option<(String, String)>,
}

impl Env {
    fn new(key: Option<&'static str>) -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            key,
            s3: None,
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("VIRTGUARD_REPO", self.path("repo"))
            .env_remove("VIRTGUARD_KEY")
            .env_remove("VIRTGUARD_KEY_FILE")
            .env("VIRTGUARD_CONCURRENCY", "4")
            .stdin(Stdio::null());
        if let Some((repo, endpoint)) = &self.s3 {
            c.env("VIRTGUARD_REPO", repo)
                .env("VIRTGUARD_S3_ENDPOINT", endpoint)
                .env("VIRTGUARD_S3_PATH_STYLE", "true")
                .env("AWS_ACCESS_KEY_ID", common::ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", common::SECRET_KEY)
                .env("AWS_REGION", "us-east-1");
        }
        if let Some(k) = self.key {
            c.env("VIRTGUARD_KEY", k);
        }
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        check(self.run(args), &format!("virtguard {args:?}"))
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
    /// Backs `img` up as `volume` of ns/vm; returns the backup id.
    fn backup(&self, img: &Path, vm: &str, volume: &str) -> String {
        let out = self.ok(&[
            "backup-file",
            img.to_str().unwrap(),
            "--vm",
            vm,
            "--volume",
            volume,
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["id"].as_str().unwrap().to_string()
    }
    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }
}

fn sha256_file(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

/// The source tree: nested and deep directories, long and unicode names, a hard link, symlinks,
/// a file with holes, a 1 GiB file that is mostly holes, random files, odd modes and an old
/// mtime.
fn make_tree(root: &Path) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    std::fs::write(root.join("etc/app/app.conf"), "listen = 8080\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "guest\n").unwrap();
    let mut deep = root.join("deep");
    for i in 0..40 {
        deep = deep.join(format!("level{i:02}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), "the bottom\n").unwrap();
    let long = "L".repeat(250) + ".txt";
    std::fs::write(root.join(&long), "long name\n").unwrap();
    std::fs::create_dir_all(root.join("ünïcødé/日本語")).unwrap();
    std::fs::write(root.join("ünïcødé/日本語/ファイル.txt"), "こんにちは\n").unwrap();
    std::fs::write(root.join("ünïcødé/émoji-🦀.txt"), "crab\n").unwrap();
    let data: Vec<u8> = (0..1_000_000).map(|_| rng.gen()).collect();
    std::fs::write(root.join("random.bin"), &data).unwrap();
    std::fs::hard_link(root.join("random.bin"), root.join("random-hardlink.bin")).unwrap();
    std::os::unix::fs::symlink("etc/app/app.conf", root.join("conf-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    // Holes: data at 0, 1 MiB and the last byte of 3 MiB.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(root.join("holes.dat")).unwrap();
        f.write_all_at(b"start", 0).unwrap();
        f.write_all_at(&[7u8; 5000], 1 << 20).unwrap();
        f.write_all_at(b"end", (3 << 20) - 3).unwrap();
        let big = std::fs::File::create(root.join("big-sparse.img")).unwrap();
        big.set_len(1 << 30).unwrap();
        for k in 0..8u64 {
            let chunk: Vec<u8> = (0..200_000).map(|_| rng.gen()).collect();
            big.write_all_at(&chunk, k * (128 << 20) + 12345).unwrap();
        }
    }
    let mut files = Vec::new();
    for i in 0..30 {
        let n: usize = rng.gen_range(0..20_000);
        let content: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        let p = root.join(format!("var/log/file{i:02}.log"));
        files.push(p.clone());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    std::fs::write(root.join("empty"), "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(root.join("var"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(files[0].as_path(), std::fs::Permissions::from_mode(0o4755)).unwrap();
    // An old mtime (2001) on one file, a recent one on the rest.
    let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(981_173_106);
    std::fs::File::options()
        .write(true)
        .open(root.join("etc/app/app.conf"))
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// `mkfs.ext4 -d` an image of `size` from `src` (at `offset` bytes into `img`, which may
/// already hold a partition table).
fn mkfs(img: &Path, src: &Path, args: &[&str], offset: u64, size_kib: u64) {
    let mkfs = tool("mkfs.ext4", "e2fsprogs").unwrap();
    let mut a: Vec<String> = vec!["-q".into(), "-F".into()];
    a.extend(args.iter().map(|s| s.to_string()));
    if offset > 0 {
        a.push("-E".into());
        a.push(format!("offset={offset}"));
    }
    a.push("-d".into());
    a.push(src.to_str().unwrap().into());
    a.push(img.to_str().unwrap().into());
    a.push(format!("{size_kib}k"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    sh(&mkfs, &a);
}

/// One object as debugfs lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dbg {
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
}

/// Walks the filesystem with `debugfs -R 'ls -p DIR'`: path → object.
fn debugfs_tree(spec: &str) -> BTreeMap<String, Dbg> {
    let debugfs = tool("debugfs", "e2fsprogs").unwrap();
    let mut out = BTreeMap::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(dir) = dirs.pop() {
        let listing = sh(&debugfs, &["-R", &format!("ls -p \"{dir}\""), spec]);
        for line in listing.lines().filter(|l| l.starts_with('/')) {
            // /inode/mode/uid/gid/name/size/
            let f: Vec<&str> = line.split('/').collect();
            let name = f[5..f.len() - 2].join("/");
            if name.is_empty() || f[1] == "0" || name == "." || name == ".." {
                continue;
            }
            let mode = u32::from_str_radix(f[2], 8).unwrap();
            let path = if dir == "/" {
                format!("/{name}")
            } else {
                format!("{dir}/{name}")
            };
            let size = f[f.len() - 2].parse().ok();
            if mode & 0o170000 == 0o040000 {
                dirs.push(path.clone());
            }
            out.insert(
                path,
                Dbg {
                    mode,
                    uid: f[3].parse().unwrap(),
                    gid: f[4].parse().unwrap(),
                    size,
                },
            );
        }
    }
    out
}

fn type_bits(t: &str) -> u32 {
    match t {
        "dir" => 0o040000,
        "symlink" => 0o120000,
        "file" => 0o100000,
        other => panic!("unexpected type {other}"),
    }
}

/// `files ls -R -o json` as path → JSON entry.
fn ls_tree(env: &Env, backup: &str, volume: &str) -> BTreeMap<String, Value> {
    let v = env.json(&["files", "ls", backup, volume, "/", "-R", "-o", "json"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["path"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// Our listing equals debugfs's: same paths, type and mode bits, owners, sizes of non-dirs.
fn assert_same_as_debugfs(ours: &BTreeMap<String, Value>, theirs: &BTreeMap<String, Dbg>) {
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "paths differ from debugfs"
    );
    for (path, d) in theirs {
        let e = &ours[path];
        let mode = type_bits(e["type"].as_str().unwrap()) | e["mode"].as_u64().unwrap() as u32;
        assert_eq!(mode, d.mode, "{path}: mode");
        assert_eq!(e["uid"].as_u64().unwrap() as u32, d.uid, "{path}: uid");
        assert_eq!(e["gid"].as_u64().unwrap() as u32, d.gid, "{path}: gid");
        if let Some(size) = d.size {
            assert_eq!(e["size"].as_u64().unwrap(), size, "{path}: size");
        }
    }
}

/// Every regular file and symlink under `a` equals the one under `b` (content hash, link
/// target), and both trees have the same paths.
fn assert_same_tree(a: &Path, b: &Path) {
    fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if md.is_dir() {
                out.insert(rel, "dir".into());
                collect(root, &p, out);
            } else {
                out.insert(rel, sha256_file(&p));
            }
        }
    }
    let (mut x, mut y) = (BTreeMap::new(), BTreeMap::new());
    collect(a, a, &mut x);
    collect(b, b, &mut y);
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    for (k, v) in &x {
        assert_eq!(v, &y[k], "{k} differs");
    }
}

#[test]
fn ext4_metadata_csum_files_match_debugfs_and_the_originals() {
    let Some(debugfs) = tool("debugfs", "e2fsprogs") else {
        return;
    };
    let env = Env::new(Some("files-test-key"));
    env.init();
    let src = env.path("src");
    make_tree(&src);
    let img = env.path("disk.img");
    std::fs::File::create(&img).unwrap();
    mkfs(
        &img,
        &src,
        &["-t", "ext4", "-O", "metadata_csum,64bit"],
        0,
        96 << 10,
    );
    // Owners set without root, in the image.
    let img_s = img.to_str().unwrap();
    sh(
        &debugfs,
        &["-w", "-R", "set_inode_field /etc/hostname uid 1234", img_s],
    );
    sh(
        &debugfs,
        &["-w", "-R", "set_inode_field /etc/hostname gid 4321", img_s],
    );
    let id = env.backup(&img, "ns/vm", "root");
    let backup = "ns/vm@latest";

    let parts = env.json(&["files", "parts", backup, "root", "-o", "json"]);
    assert_eq!(parts["kind"], "none");
    assert_eq!(parts["partitions"][0]["fs"], "ext4");

    // ls -R equals debugfs's view of every directory.
    let ours = ls_tree(&env, backup, "root");
    let theirs = debugfs_tree(img_s);
    assert_same_as_debugfs(&ours, &theirs);
    assert_eq!(ours["/etc/hostname"]["uid"], 1234);
    assert_eq!(ours["/conf-link"]["target"], "etc/app/app.conf");
    // Modification times are the source's (mkfs -d keeps whole seconds).
    for (path, e) in &ours {
        if path.starts_with("/lost+found") {
            continue;
        }
        let md = std::fs::symlink_metadata(src.join(&path[1..])).unwrap();
        assert_eq!(
            e["mtime"]["secs"].as_i64().unwrap(),
            md.mtime(),
            "{path}: mtime"
        );
    }

    // ls -l of one directory.
    let l = env.ok(&["files", "ls", &id, "root", "/etc", "-l"]);
    assert!(
        l.lines()
            .any(|x| x.starts_with("-rw-------") && x.contains("1234") && x.ends_with(" hostname")),
        "{l}"
    );
    let l = env.ok(&["files", "ls", backup, "root", "/", "-l"]);
    assert!(l.contains("conf-link -> etc/app/app.conf"), "{l}");
    assert!(
        l.lines()
            .any(|x| x.starts_with("drwxrwxrwt") && x.ends_with(" var")),
        "{l}"
    );

    // get / equals debugfs rdump and the source tree; sparse output; --preserve keeps modes and
    // mtimes.
    let out = env.path("out");
    let o = env.run(&[
        "files",
        "get",
        backup,
        "root",
        "/",
        "-o",
        out.to_str().unwrap(),
        "--preserve",
    ]);
    let stderr = check_stderr(o);
    assert!(stderr.contains("chunk(s)"), "{stderr}");
    let rdump = env.path("rdump");
    std::fs::create_dir(&rdump).unwrap();
    sh(
        &debugfs,
        &["-R", &format!("rdump / {}", rdump.display()), img_s],
    );
    assert_same_tree(&out, &rdump);
    std::fs::remove_dir_all(out.join("lost+found")).unwrap();
    assert_same_tree(&out, &src);
    let big = std::fs::metadata(out.join("big-sparse.img")).unwrap();
    assert_eq!(big.len(), 1 << 30);
    assert!(
        big.blocks() * 512 < 8 << 20,
        "1 GiB file not sparse: {} blocks",
        big.blocks()
    );
    let holes = std::fs::metadata(out.join("holes.dat")).unwrap();
    assert!(holes.blocks() * 512 < 1 << 20, "holes.dat not sparse");
    for p in [
        "etc/hostname",
        "var",
        "etc/app/app.conf",
        "var/log/file00.log",
    ] {
        let a = std::fs::metadata(out.join(p)).unwrap();
        let b = std::fs::metadata(src.join(p)).unwrap();
        assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{p}: mode");
        assert_eq!(a.mtime(), b.mtime(), "{p}: mtime");
    }

    // One file to a file name; an existing output is refused without --force.
    let one = env.path("one.bin");
    env.ok(&[
        "files",
        "get",
        backup,
        "root",
        "/random-hardlink.bin",
        "-o",
        one.to_str().unwrap(),
    ]);
    assert_eq!(sha256_file(&one), sha256_file(&src.join("random.bin")));
    let o = env.run(&[
        "files",
        "get",
        backup,
        "root",
        "/random.bin",
        "-o",
        one.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && common::text(&o).contains("--force"));

    // find, checked against the source tree.
    let found = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["files", "find", backup, "root"];
        a.extend_from_slice(args);
        let mut v: Vec<String> = env.ok(&a).lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        found(&["--name", "*.txt", "--path", "/ünïcødé"]),
        vec!["/ünïcødé/émoji-🦀.txt", "/ünïcødé/日本語/ファイル.txt"]
    );
    assert_eq!(found(&["--size", "+100M"]), vec!["/big-sparse.img"]);
    let deep_count = found(&["--path", "/deep", "--type", "d"]).len();
    assert_eq!(deep_count, 41);
    // --newer: everything but the 2001 file and lost+found's... all newer than 2010.
    let old = found(&["--type", "f", "--name", "*.conf"]);
    assert_eq!(old, vec!["/etc/app/app.conf"]);
    assert!(found(&["--type", "f", "--name", "*.conf", "--newer", "2010-01-01"]).is_empty());
    assert_eq!(
        found(&["--type", "f", "--name", "*.conf", "--newer", "2001-01-01"]),
        vec!["/etc/app/app.conf"]
    );

    // Errors: a missing path; an unknown partition.
    let o = env.run(&["files", "ls", backup, "root", "/nope"]);
    assert!(!o.status.success() && common::text(&o).contains("`/nope` does not exist"));
    let o = env.run(&["files", "ls", backup, "root:3", "/"]);
    assert!(!o.status.success() && common::text(&o).contains("no partition 3"));
}

fn check_stderr(o: Output) -> String {
    assert!(o.status.success(), "{}", common::text(&o));
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn partitions_mbr_ext3_and_gpt_pick_the_linux_filesystem_and_name_unsupported_ones() {
    let Some(sfdisk) = tool("sfdisk", "fdisk") else {
        return;
    };
    let env = Env::new(None);
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("home/user")).unwrap();
    std::fs::write(
        src.join("home/user/notes.txt"),
        "ext3 in an MBR partition\n",
    )
    .unwrap();

    // MBR: p1 a small FAT-typed partition (empty), p2 ext3, p5 a logical ext4 partition.
    let mbr = env.path("mbr.img");
    std::fs::File::create(&mbr)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    let table = "label: dos\nstart=2048, size=4096, type=c\nstart=8192, size=32768, type=83\nstart=43008, size=55296, type=5\nstart=45056, size=32768, type=83\n";
    let mut child = Command::new(&sfdisk)
        .args(["-q", mbr.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(table.as_bytes())
        .unwrap();
    check(child.wait_with_output().unwrap(), "sfdisk");
    mkfs(&mbr, &src, &["-t", "ext3"], 8192 * 512, 16 << 10);
    let src5 = env.path("src5");
    std::fs::create_dir_all(&src5).unwrap();
    std::fs::write(src5.join("logical.txt"), "in a logical partition\n").unwrap();
    mkfs(&mbr, &src5, &["-t", "ext4"], 45056 * 512, 16 << 10);
    env.backup(&mbr, "ns/mbr", "disk");

    let parts = env.json(&["files", "parts", "ns/mbr@latest", "disk", "-o", "json"]);
    assert_eq!(parts["kind"], "mbr");
    let expect = sfdisk_json(&sfdisk, &mbr);
    let ps = parts["partitions"].as_array().unwrap();
    for (n, start, size) in &expect {
        let p = ps
            .iter()
            .find(|p| p["number"] == *n)
            .unwrap_or_else(|| panic!("no {n}: {parts}"));
        assert_eq!(
            p["start"].as_u64().unwrap(),
            start * 512,
            "partition {n} start"
        );
        if p["fs"] != "extended" {
            assert_eq!(
                p["size"].as_u64().unwrap(),
                size * 512,
                "partition {n} size"
            );
        }
    }
    assert_eq!(ps.len(), expect.len(), "{parts}");
    let fs: Vec<&str> = ps.iter().map(|p| p["fs"].as_str().unwrap()).collect();
    assert_eq!(fs, vec!["unknown", "ext3", "extended", "ext4"]);
    let text = env.ok(&["files", "parts", "ns/mbr@latest", "disk"]);
    assert!(
        text.contains("MBR") && text.contains("0x83 Linux"),
        "{text}"
    );

    // VOLUME alone: the largest Linux filesystem (both 16 MiB: the first); :p5 the logical one.
    let notes = env.ok(&[
        "files",
        "find",
        "ns/mbr@latest",
        "disk:2",
        "--name",
        "*.txt",
    ]);
    assert_eq!(notes.trim(), "/home/user/notes.txt");
    let logical = env.ok(&["files", "ls", "ns/mbr@latest", "disk:p5"]);
    assert!(logical.lines().any(|l| l == "logical.txt"), "{logical}");
    let o = env.run(&["files", "ls", "ns/mbr@latest", "disk:1"]);
    assert!(!o.status.success(), "{}", common::text(&o));

    // GPT: p1 EFI (empty), p2 ext4, p3 XFS, p4 btrfs, p5 LUKS (made by their own tools).
    let gpt = env.path("gpt.img");
    std::fs::File::create(&gpt)
        .unwrap()
        .set_len(800 << 20)
        .unwrap();
    let sgdisk = tool("sgdisk", "gdisk").unwrap();
    sh(
        &sgdisk,
        &[
            "-n",
            "1:2048:+4M",
            "-t",
            "1:EF00",
            "-n",
            "2:0:+24M",
            "-t",
            "2:8300",
            "-c",
            "2:root",
            "-n",
            "3:0:+320M",
            "-t",
            "3:8300",
            "-n",
            "4:0:+200M",
            "-t",
            "4:8300",
            "-n",
            "5:0:+24M",
            "-t",
            "5:8309",
            gpt.to_str().unwrap(),
        ],
    );
    let layout = sfdisk_json(&sfdisk, &gpt);
    let start = |n: u32| layout.iter().find(|p| p.0 == n).unwrap().1 * 512;
    mkfs(&gpt, &src, &["-t", "ext4"], start(2), 24 << 10);
    let put = |n: u32, file: &Path| {
        let data = std::fs::read(file).unwrap();
        use std::os::unix::fs::FileExt;
        std::fs::File::options()
            .write(true)
            .open(&gpt)
            .unwrap()
            .write_all_at(&data, start(n))
            .unwrap();
    };
    let keyfile = env.path("luks.key");
    std::fs::write(&keyfile, "luks-test-passphrase").unwrap();
    let luks_args = [
        "luksFormat",
        "-q",
        "--type",
        "luks2",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--key-file",
        keyfile.to_str().unwrap(),
    ];
    // Each made by its own tool on a sparse file of the size the tool needs.
    let made = |name: &str, size: u64, prog: &str, package: &str, args: &[&str]| {
        let p = env.path(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        let mut a = args.to_vec();
        a.push(p.to_str().unwrap());
        sh(&tool(prog, package).unwrap(), &a);
        p
    };
    let xfs = made("xfs.img", 320 << 20, "mkfs.xfs", "xfsprogs", &["-q"]);
    let btrfs = made("btrfs.img", 200 << 20, "mkfs.btrfs", "btrfs-progs", &["-q"]);
    let luks = made(
        "luks.img",
        24 << 20,
        "cryptsetup",
        "cryptsetup-bin",
        &luks_args,
    );
    // Only the first MiBs matter for detection; keep the image small where it can be.
    let head = |p: &Path, n: usize| {
        let mut d = std::fs::read(p).unwrap();
        d.truncate(n);
        std::fs::write(p, d).unwrap();
    };
    head(&xfs, 1 << 20);
    head(&btrfs, 1 << 20);
    head(&luks, 1 << 20);
    put(3, &xfs);
    put(4, &btrfs);
    put(5, &luks);
    env.backup(&gpt, "ns/gpt", "disk");

    let parts = env.json(&["files", "parts", "ns/gpt@latest", "disk", "-o", "json"]);
    assert_eq!(parts["kind"], "gpt");
    let got: Vec<(u64, u64, u64, String, String)> = parts["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["number"].as_u64().unwrap(),
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_string(),
                p["fs"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64, String, String)> = layout
        .iter()
        .zip([
            ("EFI System", "unknown"),
            ("Linux filesystem", "ext4"),
            ("Linux filesystem", "xfs"),
            ("Linux filesystem", "btrfs"),
            ("Linux LUKS", "luks"),
        ])
        .map(|((n, s, z), (t, f))| {
            (
                u64::from(*n),
                s * 512,
                z * 512,
                t.to_string(),
                f.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(parts["partitions"][1]["name"], "root");

    let out = env.path("notes.txt");
    env.ok(&[
        "files",
        "get",
        "ns/gpt@latest",
        "disk",
        "/home/user/notes.txt",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "ext3 in an MBR partition\n"
    );
    for (n, name) in [(3, "xfs"), (4, "btrfs"), (5, "LUKS")] {
        let o = env.run(&["files", "ls", "ns/gpt@latest", &format!("disk:{n}")]);
        let t = common::text(&o);
        assert!(!o.status.success(), "{t}");
        assert!(
            t.contains(&format!("partition {n} holds {name}"))
                && t.contains("virtguard download")
                && t.contains("virtguard mount"),
            "{t}"
        );
        assert!(!t.contains("panicked"), "{t}");
    }
    // A whole-disk XFS volume alone: named with the fallback.
    let xfs_disk = env.path("xfs-disk.img");
    std::fs::copy(&xfs, &xfs_disk).unwrap();
    env.backup(&xfs_disk, "ns/xfs", "data");
    let o = env.run(&["files", "ls", "ns/xfs@latest", "data"]);
    let t = common::text(&o);
    assert!(
        !o.status.success() && t.contains("the disk holds xfs") && t.contains("virtguard download"),
        "{t}"
    );
}

/// `sfdisk --json`: (number, start sector, sectors) of each partition.
fn sfdisk_json(sfdisk: &Path, img: &Path) -> Vec<(u32, u64, u64)> {
    let v: Value = serde_json::from_str(&sh(sfdisk, &["--json", img.to_str().unwrap()])).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let node = p["node"].as_str().unwrap();
            let n: u32 = node
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap();
            (n, p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap())
        })
        .collect()
}

/// The id (hex) of chunk `i` of `volume` in an unencrypted repository's index.
fn chunk_hex(backup_dir: &Path, volume: &str, i: u64) -> String {
    let idx = std::fs::read(backup_dir.join(format!("{volume}.idx"))).unwrap();
    let at = 32 + 32 * i as usize;
    hex::encode(&idx[at..at + 32])
}

/// The only backup directory of ns/vm in a local repository.
fn backup_dir(repo: &Path, ns: &str, vm: &str) -> PathBuf {
    let d = repo.join("backups").join(ns).join(vm);
    let mut ids: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    ids.sort();
    ids.pop().unwrap()
}

#[test]
fn a_corrupt_chunk_fails_only_the_files_that_touch_it_naming_the_chunk() {
    let Some(debugfs) = tool("debugfs", "e2fsprogs") else {
        return;
    };
    let env = Env::new(None);
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "guest\n").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let data: Vec<u8> = (0..1_000_000).map(|_| rng.gen()).collect();
    std::fs::write(src.join("victim.bin"), &data).unwrap();
    std::fs::hard_link(src.join("victim.bin"), src.join("victim-link.bin")).unwrap();
    for i in 0..10 {
        let d: Vec<u8> = (0..50_000).map(|_| rng.gen()).collect();
        std::fs::write(src.join(format!("other{i}.bin")), d).unwrap();
    }
    let img = env.path("disk.img");
    std::fs::File::create(&img).unwrap();
    mkfs(&img, &src, &["-t", "ext4", "-b", "4096"], 0, 32 << 10);
    let img_s = img.to_str().unwrap();
    env.backup(&img, "ns/vm", "root");

    // The 64 KiB chunk in the middle of victim.bin holds only its blocks (checked).
    let blocks: Vec<u64> = sh(&debugfs, &["-R", "blocks /victim.bin", img_s])
        .split_whitespace()
        .map(|b| b.parse().unwrap())
        .collect();
    let mid = blocks[blocks.len() / 2] * 4096;
    let chunk = mid / 65536;
    for b in (chunk * 16)..(chunk * 16 + 16) {
        assert!(
            blocks.contains(&b),
            "chunk {chunk} holds block {b}, not victim.bin's"
        );
    }
    let repo = env.path("repo");
    let hexid = chunk_hex(&backup_dir(&repo, "ns", "vm"), "root", chunk);
    let key = format!("chunks/{}/{hexid}", &hexid[..2]);
    let path = repo.join(&key);
    let mut blob = std::fs::read(&path).unwrap();
    let n = blob.len();
    blob[n / 2] ^= 0xff;
    std::fs::write(&path, blob).unwrap();

    let out = env.path("out");
    let o = env.run(&[
        "files",
        "get",
        "ns/vm@latest",
        "root",
        "/",
        "-o",
        out.to_str().unwrap(),
    ]);
    let t = common::text(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the work failed (not a usage error): {t}"
    );
    assert!(t.contains(&key), "the error names the chunk: {t}");
    assert!(t.contains("2 object(s) could not be fetched"), "{t}");
    assert!(
        t.contains("/victim.bin:") && t.contains("/victim-link.bin:"),
        "{t}"
    );
    assert!(
        !out.join("victim.bin").exists(),
        "a failed file's partial output is removed"
    );
    // Everything else came out intact.
    let rdump = env.path("rdump");
    std::fs::create_dir(&rdump).unwrap();
    sh(
        &debugfs,
        &["-R", &format!("rdump / {}", rdump.display()), img_s],
    );
    std::fs::remove_file(rdump.join("victim.bin")).unwrap();
    std::fs::remove_file(rdump.join("victim-link.bin")).unwrap();
    assert_same_tree(&out, &rdump);
    // Listing still works; the damaged file alone fails.
    env.ok(&["files", "ls", "ns/vm@latest", "root", "/", "-l"]);
    let o = env.run(&[
        "files",
        "get",
        "ns/vm@latest",
        "root",
        "/victim.bin",
        "-o",
        env.path("v").to_str().unwrap(),
    ]);
    assert!(!o.status.success() && common::text(&o).contains(&key));
}

#[test]
fn diff_reports_added_removed_and_modified_files_between_backups() {
    let Some(debugfs) = tool("debugfs", "e2fsprogs") else {
        return;
    };
    let env = Env::new(None);
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("etc/app")).unwrap();
    std::fs::create_dir_all(src.join("var/log")).unwrap();
    std::fs::write(src.join("etc/hostname"), "guest\n").unwrap();
    std::fs::write(src.join("etc/app/app.conf"), "listen = 8080\n").unwrap();
    for i in 0..5 {
        std::fs::write(
            src.join(format!("var/log/f{i}.log")),
            format!("line {i}\n").repeat(100),
        )
        .unwrap();
    }
    let img = env.path("disk.img");
    std::fs::File::create(&img).unwrap();
    mkfs(&img, &src, &["-t", "ext4"], 0, 16 << 10);
    let img_s = img.to_str().unwrap();
    let first = env.backup(&img, "ns/vm", "root");

    let w = |req: &str| sh(&debugfs, &["-w", "-R", req, img_s]);
    let host = env.path("host");
    std::fs::create_dir(&host).unwrap();
    // Removed, added, resized, mtime only.
    w("rm /var/log/f1.log");
    std::fs::write(host.join("new.txt"), "new\n").unwrap();
    w(&format!(
        "write {} /etc/new.txt",
        host.join("new.txt").display()
    ));
    w("rm /etc/hostname");
    std::fs::write(host.join("hostname"), "renamed-guest\n").unwrap();
    w(&format!(
        "write {} /etc/hostname",
        host.join("hostname").display()
    ));
    w("set_inode_field /etc/app/app.conf mtime @1577836800");
    // Same size, same mtime, other bytes: only --content sees it.
    let md = std::fs::metadata(src.join("var/log/f2.log")).unwrap();
    w("rm /var/log/f2.log");
    let changed = "LINE 2\n".repeat(100);
    std::fs::write(host.join("f2.log"), &changed).unwrap();
    w(&format!(
        "write {} /var/log/f2.log",
        host.join("f2.log").display()
    ));
    w(&format!(
        "set_inode_field /var/log/f2.log mtime @{}",
        md.mtime()
    ));
    w(&format!(
        "set_inode_field /var/log/f2.log mode 0{:o}",
        md.mode()
    ));
    w(&format!("set_inode_field /var/log/f2.log uid {}", md.uid()));
    w(&format!("set_inode_field /var/log/f2.log gid {}", md.gid()));
    env.backup(&img, "ns/vm", "root");

    let a = format!("ns/vm/{first}");
    let plain = env.ok(&["files", "diff", &a, "ns/vm@latest", "root"]);
    let lines: Vec<&str> = plain
        .lines()
        .filter(|l| !l.contains("/lost+found"))
        .collect();
    // Directories whose entries changed are modified too (their mtime moved).
    assert!(lines.contains(&"A /etc/new.txt"), "{plain}");
    assert!(lines.contains(&"D /var/log/f1.log"), "{plain}");
    assert!(
        lines.iter().any(|l| l.starts_with("M /etc/hostname (size")),
        "{plain}"
    );
    assert!(lines.contains(&"M /etc/app/app.conf (mtime)"), "{plain}");
    assert!(!plain.contains("f2.log"), "{plain}");
    assert!(
        !plain.contains("f0.log") && !plain.contains("f3.log"),
        "{plain}"
    );
    let content = env.ok(&[
        "files",
        "diff",
        &a,
        "ns/vm@latest",
        "root",
        "/var/log",
        "--content",
    ]);
    assert!(
        content.lines().any(|l| l == "M /var/log/f2.log (content)"),
        "{content}"
    );
    assert!(
        !content.contains("/etc/"),
        "PATH limits the diff: {content}"
    );
    let v: Value = serde_json::from_str(&env.ok(&[
        "files",
        "diff",
        &a,
        "ns/vm@latest",
        "root",
        "/etc",
        "-o",
        "json",
    ]))
    .unwrap();
    let added: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["change"] == "added")
        .map(|c| c["entry"]["path"].as_str().unwrap())
        .collect();
    assert_eq!(added, vec!["/etc/new.txt"]);
}

#[test]
fn files_get_from_an_s3_repository_reads_only_the_chunks_it_needs() {
    let Some(server) = common::S3Server::start() else {
        return;
    };
    let mut env = Env::new(Some("s3-files-key"));
    env.s3 = Some(("s3://vgbucket/files".into(), server.endpoint()));
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let want: Vec<u8> = (0..300_000).map(|_| rng.gen()).collect();
    std::fs::write(src.join("wanted.bin"), &want).unwrap();
    for i in 0..40 {
        let d: Vec<u8> = (0..200_000).map(|_| rng.gen()).collect();
        std::fs::write(src.join(format!("filler{i}.bin")), d).unwrap();
    }
    let img = env.path("disk.img");
    std::fs::File::create(&img).unwrap();
    mkfs(&img, &src, &["-t", "ext4"], 0, 32 << 10);
    env.backup(&img, "ns/vm", "root");
    let out = env.path("wanted.bin");
    let o = env.run(&[
        "files",
        "get",
        "ns/vm@latest",
        "root",
        "/wanted.bin",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = check_stderr(o);
    assert_eq!(std::fs::read(&out).unwrap(), want);
    // "read N of M chunk(s)": a small part of the 32 MiB image (512 chunks of 64 KiB).
    let read: u64 = stderr
        .split("read ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(read > 0 && read < 40, "{stderr}");
}

/// Waits until `path` exists (the FUSE mount is up), at most 30 s.
fn wait_for(path: &Path, child: &mut std::process::Child) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("virtguard mount exited early: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Stops a `virtguard mount` left running by a failed assertion and unmounts its directory.
struct MountGuard(Option<std::process::Child>, PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        if self.1.exists() && is_mounted(&self.1) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.1)
                .status();
        }
    }
}

fn is_mounted(dir: &Path) -> bool {
    let canon = dir.canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(canon.to_str().unwrap()))
}

#[test]
fn mount_serves_images_lazily_and_ctrl_c_unmounts() {
    if !Path::new("/dev/fuse").exists() || tool("fusermount3", "fuse3").is_none() {
        if std::env::var("VIRTGUARD_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!("SKIP: /dev/fuse or fusermount3 missing");
            return;
        }
        panic!("/dev/fuse or fusermount3 missing (apt-get install fuse3; or set VIRTGUARD_ALLOW_SKIP=1)");
    }
    let env = Env::new(Some("mount-key"));
    env.init();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "mounted-guest\n").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let data: Vec<u8> = (0..2_000_000).map(|_| rng.gen()).collect();
    std::fs::write(src.join("data.bin"), &data).unwrap();
    let img = env.path("disk.img");
    std::fs::File::create(&img).unwrap();
    mkfs(&img, &src, &["-t", "ext4"], 0, 24 << 10);
    let id1 = env.backup(&img, "ns/vm", "root");
    let id2 = env.backup(&img, "ns/vm", "root");
    let mnt = env.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let child = env
        .cmd(&["mount", "ns/vm", mnt.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = MountGuard(Some(child), mnt.clone());
    let image = mnt.join(format!("ns/vm/{id2}/root.img"));
    wait_for(&image, guard.0.as_mut().unwrap());
    assert!(mnt.join(format!("ns/vm/{id1}/root.img")).exists());
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 24 << 20);
    assert_eq!(sha256_file(&image), sha256_file(&img));
    // As root (CI): the image loop-mounts read-only and its files are the originals.
    let root = rustix::process::geteuid().is_root();
    if root {
        let lm = env.path("loop");
        std::fs::create_dir(&lm).unwrap();
        let o = Command::new("mount")
            .args([
                "-o",
                "loop,ro",
                image.to_str().unwrap(),
                lm.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "loop mount: {}", common::text(&o));
        let hostname = std::fs::read_to_string(lm.join("etc/hostname"));
        let same = std::fs::read(lm.join("data.bin")).map(|d| d == data);
        let u = Command::new("umount").arg(&lm).output().unwrap();
        assert!(u.status.success(), "umount: {}", common::text(&u));
        assert_eq!(hostname.unwrap(), "mounted-guest\n");
        assert!(same.unwrap());
    } else {
        eprintln!("not root: the loop mount of the FUSE image is not tested");
    }
    // Ctrl-C (SIGINT) unmounts and exits 0.
    let child = guard.0.take().unwrap();
    let k = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(
        common::text(&o).contains("unmounted"),
        "{}",
        common::text(&o)
    );
    assert!(!is_mounted(&mnt), "still mounted after Ctrl-C");
    assert!(!image.exists());
}

/// `ntfsls -l -p DIR`: (name, size) of each entry but `.` and `..`.
fn ntfsls(ntfsls: &Path, img: &Path, dir: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = sh(ntfsls, &["-l", "-p", dir, img.to_str().unwrap()])
        .lines()
        .filter_map(|l| {
            // "   size Mon DD HH:MM YYYY name"
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            let size = f[0].parse().ok()?;
            // The name is everything after the year (it may contain spaces).
            let idx = l.find(f[4]).map(|i| i + f[4].len() + 1)?;
            Some((l[idx..].to_string(), size))
        })
        .filter(|(n, _)| n != "." && n != "..")
        .collect();
    v.sort();
    v
}

#[test]
fn ntfs_in_an_mbr_partition_written_by_ntfs_3g_and_ntfscp() {
    let Some(mkntfs) = tool("mkntfs", "ntfs-3g") else {
        return;
    };
    let ntfscp = tool("ntfscp", "ntfs-3g").unwrap();
    let ntfsls_bin = tool("ntfsls", "ntfs-3g").unwrap();
    let env = Env::new(None);
    env.init();
    let vol = env.path("ntfs.img");
    std::fs::File::create(&vol)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    sh(
        &mkntfs,
        &["-q", "-F", "-Q", "-L", "C", vol.to_str().unwrap()],
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let host = env.path("host");
    std::fs::create_dir_all(&host).unwrap();
    let big: Vec<u8> = (0..3_000_000).map(|_| rng.gen()).collect();
    std::fs::write(host.join("big.bin"), &big).unwrap();
    // ntfscp writes into an existing volume without mounting it (no root, no FUSE).
    std::fs::write(host.join("pagefile.txt"), "written by ntfscp\n").unwrap();
    sh(
        &ntfscp,
        &[
            vol.to_str().unwrap(),
            host.join("big.bin").to_str().unwrap(),
            "big.bin",
        ],
    );
    sh(
        &ntfscp,
        &[
            vol.to_str().unwrap(),
            host.join("pagefile.txt").to_str().unwrap(),
            "Notes.txt",
        ],
    );
    // ntfs-3g (FUSE, as root in CI) for directories, unicode names and a file with holes.
    let fuse = rustix::process::geteuid().is_root() && Path::new("/dev/fuse").exists();
    let mut expected: Vec<(&str, Vec<u8>)> = vec![
        ("/big.bin", big.clone()),
        ("/Notes.txt", b"written by ntfscp\n".to_vec()),
    ];
    let mut holes = vec![0u8; 3 << 20];
    holes[..5].copy_from_slice(b"start");
    holes[(3 << 20) - 3..].copy_from_slice(b"end");
    if fuse {
        let mnt = env.path("ntfs-mnt");
        std::fs::create_dir(&mnt).unwrap();
        sh(
            &tool("ntfs-3g", "ntfs-3g").unwrap(),
            &[vol.to_str().unwrap(), mnt.to_str().unwrap()],
        );
        let res = std::panic::catch_unwind(|| {
            std::fs::create_dir_all(mnt.join("Users/Public/Documents")).unwrap();
            std::fs::write(
                mnt.join("Users/Public/Documents/readme.txt"),
                "hello windows\n",
            )
            .unwrap();
            std::fs::write(mnt.join("Users/ünïcødé 名前.txt"), "ünï\n").unwrap();
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(mnt.join("holes.dat")).unwrap();
            f.write_all_at(b"start", 0).unwrap();
            f.write_all_at(b"end", (3 << 20) - 3).unwrap();
        });
        let u = Command::new("umount").arg(&mnt).output().unwrap();
        assert!(u.status.success(), "umount: {}", common::text(&u));
        res.unwrap();
        expected.push((
            "/Users/Public/Documents/readme.txt",
            b"hello windows\n".to_vec(),
        ));
        expected.push(("/Users/ünïcødé 名前.txt", "ünï\n".as_bytes().to_vec()));
        expected.push(("/holes.dat", holes.clone()));
    } else {
        eprintln!("not root or no /dev/fuse: only the files written by ntfscp are tested");
    }
    // The volume as partition 1 of an MBR disk (type 0x07), as a Windows VM's C: drive.
    let disk = env.path("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(40 << 20)
        .unwrap();
    let sfdisk = tool("sfdisk", "fdisk").unwrap();
    let mut child = Command::new(&sfdisk)
        .args(["-q", disk.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=65536, type=7\n")
        .unwrap();
    check(child.wait_with_output().unwrap(), "sfdisk");
    {
        use std::os::unix::fs::FileExt;
        let data = std::fs::read(&vol).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&disk)
            .unwrap()
            .write_all_at(&data, 2048 * 512)
            .unwrap();
    }
    env.backup(&disk, "win/desktop", "c");

    let parts = env.json(&["files", "parts", "win/desktop@latest", "c", "-o", "json"]);
    assert_eq!(parts["partitions"][0]["fs"], "ntfs", "{parts}");
    // VOLUME alone picks the NTFS partition (no Linux filesystem on the disk).
    let root: Vec<(String, u64)> = {
        let v = env.json(&["files", "ls", "win/desktop@latest", "c", "/", "-o", "json"]);
        let mut r: Vec<(String, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "file")
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["size"].as_u64().unwrap(),
                )
            })
            .collect();
        r.sort();
        r
    };
    let theirs: Vec<(String, u64)> = ntfsls(&ntfsls_bin, &vol, "/")
        .into_iter()
        .filter(|(n, _)| n != "Users")
        .collect();
    assert_eq!(root, theirs);
    if fuse {
        let docs = env.json(&[
            "files",
            "ls",
            "win/desktop@latest",
            "c:1",
            "/Users/Public/Documents",
            "-o",
            "json",
        ]);
        let ours: Vec<(String, u64)> = docs
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["size"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(ours, ntfsls(&ntfsls_bin, &vol, "/Users/Public/Documents"));
        // Case-insensitive lookup, as Windows.
        env.ok(&[
            "files",
            "ls",
            "win/desktop@latest",
            "c",
            "/users/public/DOCUMENTS/README.TXT",
        ]);
    }
    let out = env.path("out");
    let paths: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
    let mut args = vec!["files", "get", "win/desktop@latest", "c"];
    args.extend(paths.iter());
    args.extend(["-o", out.to_str().unwrap()]);
    env.ok(&args);
    for (p, want) in &expected {
        let got = out.join(base(p));
        assert_eq!(sha256_file(&got), hex::encode(Sha256::digest(want)), "{p}");
    }
    if fuse {
        let md = std::fs::metadata(out.join("holes.dat")).unwrap();
        assert!(md.blocks() * 512 < 1 << 20, "holes.dat not sparse");
        let found = env.ok(&[
            "files",
            "find",
            "win/desktop@latest",
            "c",
            "--name",
            "*.txt",
        ]);
        let mut found: Vec<&str> = found.lines().collect();
        found.sort();
        assert_eq!(
            found,
            vec![
                "/Notes.txt",
                "/Users/Public/Documents/readme.txt",
                "/Users/ünïcødé 名前.txt"
            ]
        );
    }
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap()
}
