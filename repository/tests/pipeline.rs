//! Library-level tests of the whole pipeline on a local store: backup, incremental dedup,
//! sparse restore with digest check, encryption, corruption detection, gc rules.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use virtguard_repo::backup::ParentPolicy;
use virtguard_repo::prune::{gc, gc_mark, gc_sweep, prune, GcOptions, KeepPolicy};
use virtguard_repo::repository::InitOptions;
use virtguard_repo::restore::{restore_to_file, restore_to_writer};
use virtguard_repo::verify::verify;
use virtguard_repo::Error;
use virtguard_repo::{
    BackupOptions, BackupSession, FileSource, LocalStore, Repository, RestoreOptions, Store,
};

const CS: u32 = 64 * 1024;

/// An image of `chunks` chunks: pattern per chunk index (zero, text, random), plus a short tail.
fn make_image(path: &Path, chunks: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = Vec::new();
    for i in 0..chunks {
        match i % 3 {
            0 => data.extend(std::iter::repeat_n(0u8, CS as usize)),
            1 => {
                let line = format!("line {i} of a text-like chunk, seed {seed}\n");
                data.extend(line.bytes().cycle().take(CS as usize));
            }
            _ => data.extend((0..CS).map(|_| rng.gen::<u8>())),
        }
    }
    data.extend((0..1234).map(|_| rng.gen::<u8>()));
    std::fs::write(path, &data).unwrap();
    data
}

async fn repo_at(dir: &Path, key: Option<&[u8]>) -> Arc<Repository> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir));
    let opts = InitOptions {
        chunk_size: CS,
        key: key.map(|k| k.to_vec()),
        kdf_memory_kib: 256,
        kdf_iterations: 1,
        ..Default::default()
    };
    Repository::init(store.clone(), opts).await.unwrap();
    Arc::new(Repository::open(store, key).await.unwrap())
}

async fn backup(repo: &Arc<Repository>, img: &Path) -> virtguard_repo::Manifest {
    let mut s = BackupSession::start(repo.clone(), "ns1", "vm1", BackupOptions::default())
        .await
        .unwrap();
    s.write_volume("disk0", Arc::new(FileSource::open(img).unwrap()), None)
        .await
        .unwrap();
    s.commit().await.unwrap()
}

async fn roundtrip(key: Option<&[u8]>) {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_at(&dir.path().join("repo"), key).await;
    let img = dir.path().join("disk.img");
    let data = make_image(&img, 30, 1);

    let m1 = backup(&repo, &img).await;
    let v = &m1.volumes[0];
    assert_eq!(v.size, data.len() as u64);
    assert_eq!(v.chunks, 31);
    assert_eq!(v.zero_chunks, 10);
    assert_eq!(
        v.new_chunks, 21,
        "text chunks differ per index, random ones too"
    );
    assert!(v.bytes_stored < v.bytes_new, "text compresses");

    // Change two chunks: the incremental uploads exactly those.
    let mut changed = data.clone();
    changed[5 * CS as usize] ^= 0xff;
    changed[(CS as usize) * 30 + 10] ^= 0xff;
    std::fs::write(&img, &changed).unwrap();
    let m2 = backup(&repo, &img).await;
    assert_eq!(m2.parent.as_ref(), Some(&m1.id));
    assert_eq!(m2.volumes[0].new_chunks, 2);

    // Restore both; check bytes, sparseness, digest.
    for (m, want) in [(&m1, &data), (&m2, &changed)] {
        let out = dir.path().join(format!("restored-{}", m.id));
        let stats = restore_to_file(&repo, m, "disk0", &out, &RestoreOptions::default(), None)
            .await
            .unwrap();
        assert_eq!(stats.zero_chunks, 10);
        assert_eq!(&std::fs::read(&out).unwrap(), want);
        let md = std::fs::metadata(&out).unwrap();
        assert!(
            md.blocks() * 512 < md.len() - 9 * u64::from(CS),
            "zero chunks are holes: {} blocks for {} bytes",
            md.blocks(),
            md.len()
        );
        let mut streamed = Vec::new();
        restore_to_writer(&repo, m, "disk0", &mut streamed, &RestoreOptions::default())
            .await
            .unwrap();
        assert_eq!(&streamed, want);
    }
    let report = verify(&repo, None, true, 4, None).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.backups, 2);
}

#[tokio::test]
async fn roundtrip_unencrypted() {
    roundtrip(None).await;
}

#[tokio::test]
async fn roundtrip_encrypted_and_content_hidden() {
    roundtrip(Some(b"correct horse")).await;
    // Content and manifests are not readable in the store.
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_at(&dir.path().join("repo"), Some(b"k")).await;
    let img = dir.path().join("disk.img");
    make_image(&img, 3, 2);
    let m = backup(&repo, &img).await;
    let raw_manifest = std::fs::read(
        dir.path()
            .join("repo")
            .join(m.prefix())
            .join("manifest.json"),
    )
    .unwrap();
    assert!(!String::from_utf8_lossy(&raw_manifest).contains("disk0"));
    for entry in walk(&dir.path().join("repo/chunks")) {
        let blob = std::fs::read(entry).unwrap();
        assert!(!blob.windows(20).any(|w| w == b"line 1 of a text-lik"));
    }
    // Wrong key: a clear error, not garbage.
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("repo")));
    assert!(matches!(
        Repository::open(store.clone(), Some(b"bad")).await,
        Err(Error::WrongKey { .. })
    ));
    assert!(matches!(
        Repository::open(store, None).await,
        Err(Error::KeyRequired { .. })
    ));
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

#[tokio::test]
async fn corruption_is_named_and_restore_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let repo = repo_at(&root, None).await;
    let img = dir.path().join("disk.img");
    make_image(&img, 6, 3);
    let m = backup(&repo, &img).await;
    let idx = repo.load_index(&m, "disk0").await.unwrap();
    let victim = idx.chunks.iter().find(|c| !c.is_zero_marker()).unwrap();
    let chunk_path = root.join(victim.key());

    // Flipped byte in a chunk: structure verify passes, read-data names the chunk, restore fails.
    let mut blob = std::fs::read(&chunk_path).unwrap();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    std::fs::write(&chunk_path, &blob).unwrap();
    assert!(verify(&repo, None, false, 4, None)
        .await
        .unwrap()
        .problems
        .is_empty());
    let problems = verify(&repo, None, true, 4, None).await.unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains(&victim.key()), "{problems:?}");
    let out = dir.path().join("out.img");
    let err = restore_to_file(&repo, &m, "disk0", &out, &RestoreOptions::default(), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&victim.key()), "{err}");
    assert!(
        !out.exists(),
        "a failed restore removes the file it created"
    );

    // Missing chunk.
    std::fs::remove_file(&chunk_path).unwrap();
    let problems = verify(&repo, None, false, 4, None).await.unwrap().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing") && p.contains(&victim.key())),
        "{problems:?}"
    );

    // Truncated index.
    let idx_path = root.join(m.prefix()).join("disk0.idx");
    let idx_bytes = std::fs::read(&idx_path).unwrap();
    std::fs::write(&idx_path, &idx_bytes[..idx_bytes.len() - 7]).unwrap();
    let problems = verify(&repo, None, false, 4, None).await.unwrap().problems;
    assert!(
        problems.iter().any(|p| p.contains("disk0.idx")),
        "{problems:?}"
    );

    // Malformed manifest.
    let man_path = root.join(m.prefix()).join("manifest.json");
    std::fs::write(&man_path, b"{\"format_version\": 1, \"id\": ").unwrap();
    let problems = verify(&repo, None, false, 4, None).await.unwrap().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("manifest.json") && p.contains("malformed")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn gc_keeps_referenced_and_young_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_at(&dir.path().join("repo"), None).await;
    let img = dir.path().join("disk.img");
    make_image(&img, 9, 4);
    let m1 = backup(&repo, &img).await;
    make_image(&img, 9, 5);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m2 = backup(&repo, &img).await;
    assert_ne!(m1.id, m2.id);
    // Nothing unreferenced yet.
    let r = gc(&repo, &gc_opts(Duration::ZERO)).await.unwrap();
    assert_eq!(r.chunks_deleted, 0);
    let before = r.chunks_total;
    // Prune the first backup; with a long grace nothing goes, with zero grace its chunks go.
    let p = prune(
        &repo,
        &KeepPolicy {
            last: 1,
            ..Default::default()
        },
        None,
        None,
        false,
    )
    .await
    .unwrap();
    assert_eq!(p.removed.len(), 1);
    let r = gc(&repo, &gc_opts(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(r.chunks_deleted, 0);
    assert!(r.chunks_in_grace > 0);
    let r = gc(&repo, &gc_opts(Duration::ZERO)).await.unwrap();
    assert!(r.chunks_deleted > 0 && r.chunks_deleted < before, "{r:?}");
    let report = verify(&repo, None, true, 4, None).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let out = dir.path().join("out.img");
    restore_to_file(&repo, &m2, "disk0", &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
}

#[tokio::test]
async fn gc_cannot_run_during_a_backup_and_backup_chunks_survive() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_at(&dir.path().join("repo"), None).await;
    let img = dir.path().join("disk.img");
    make_image(&img, 12, 6);
    // A backup in flight: chunks written, no manifest yet.
    let mut s = BackupSession::start(
        repo.clone(),
        "ns1",
        "vm1",
        BackupOptions {
            parent: ParentPolicy::None,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    s.write_volume("disk0", Arc::new(FileSource::open(&img).unwrap()), None)
        .await
        .unwrap();
    // gc with zero grace would delete every (unreferenced) chunk: its delete phase needs the
    // exclusive lock, and (not told to wait) gives up.
    let err = gc(&repo, &gc_opts(Duration::ZERO)).await.unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    let m = s.commit().await.unwrap();
    let r = gc(&repo, &gc_opts(Duration::ZERO)).await.unwrap();
    assert_eq!(r.chunks_deleted, 0, "committed chunks are referenced");
    let out = dir.path().join("out.img");
    restore_to_file(&repo, &m, "disk0", &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
}

#[tokio::test]
async fn concurrent_backups_and_gc_never_lose_committed_data() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_at(&dir.path().join("repo"), None).await;
    let mut imgs = Vec::new();
    for i in 0..3u64 {
        let p = dir.path().join(format!("d{i}.img"));
        make_image(&p, 8, 10 + i);
        imgs.push(p);
    }
    let backups = imgs.iter().enumerate().map(|(i, p)| {
        let repo = repo.clone();
        let p = p.clone();
        async move {
            let mut committed = Vec::new();
            for _ in 0..3 {
                let vm = format!("vm{i}");
                match BackupSession::start(repo.clone(), "ns", &vm, BackupOptions::default()).await
                {
                    Ok(mut s) => {
                        s.write_volume("disk0", Arc::new(FileSource::open(&p).unwrap()), None)
                            .await
                            .unwrap();
                        committed.push(s.commit().await.unwrap());
                    }
                    Err(Error::Locked { .. }) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            committed
        }
    });
    let gcs = async {
        let mut ran = 0;
        for _ in 0..20 {
            match gc(&repo, &gc_opts(Duration::ZERO)).await {
                Ok(_) => ran += 1,
                Err(Error::Locked { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ran
    };
    let (results, _ran) = tokio::join!(futures::future::join_all(backups), gcs);
    let report = verify(&repo, None, true, 4, None).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let total: usize = results.iter().map(Vec::len).sum();
    assert_eq!(report.backups, total);
    assert!(total > 0);
}

/// A backup may reuse any stored chunk, also one gc's mark phase found unreferenced (the
/// backup only checks that the chunk exists): the delete phase must spare it.
#[tokio::test]
async fn gc_spares_chunks_a_backup_reused_while_gc_marked() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_at(&dir.path().join("repo"), None).await;
    let img1 = dir.path().join("one.img");
    let img2 = dir.path().join("two.img");
    let data1 = make_image(&img1, 9, 21);
    make_image(&img2, 9, 22);
    backup(&repo, &img1).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    backup(&repo, &img2).await;
    let policy = KeepPolicy {
        last: 1,
        ..Default::default()
    };
    let p = prune(&repo, &policy, None, None, false).await.unwrap();
    assert_eq!(p.removed.len(), 1, "the backup of one.img is gone");
    tokio::time::sleep(Duration::from_millis(20)).await;

    let opts = gc_opts(Duration::ZERO);
    let plan = gc_mark(&repo, &opts).await.unwrap();
    assert!(plan.report().chunks_deleted > 0, "{:?}", plan.report());
    // Meanwhile one.img is backed up again: its chunks are still stored, so none is uploaded.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = backup(&repo, &img1).await;
    assert_eq!(again.volumes[0].bytes_stored, 0, "every chunk reused");
    let r = gc_sweep(&repo, plan, &opts).await.unwrap();
    assert!(r.chunks_reused_meanwhile > 0, "{r:?}");
    assert_eq!(r.chunks_deleted, 0, "{r:?}");

    let report = verify(&repo, None, true, 4, None).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let out = dir.path().join("out.img");
    restore_to_file(
        &repo,
        &again,
        "disk0",
        &out,
        &RestoreOptions::default(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data1);
}

/// gc reads the repository beside a running backup; its delete phase waits for the backup to
/// commit and then spares its chunks and objects (unreferenced and uncommitted when gc looked).
#[tokio::test]
async fn gc_marks_beside_a_backup_and_its_delete_phase_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let repo = repo_at(&dir.path().join("repo"), None).await;
    let img = dir.path().join("disk.img");
    let data = make_image(&img, 12, 23);
    let mut s = BackupSession::start(repo.clone(), "ns1", "vm1", BackupOptions::default())
        .await
        .unwrap();
    s.write_volume("disk0", Arc::new(FileSource::open(&img).unwrap()), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let opts = GcOptions {
        lock_wait: Duration::from_secs(120),
        ..gc_opts(Duration::ZERO)
    };
    let plan = gc_mark(&repo, &opts).await.unwrap();
    let doomed = plan.report().chunks_deleted + plan.report().leftovers_deleted;
    assert!(
        doomed > 0,
        "the in-flight backup's objects look like debris: {:?}",
        plan.report()
    );
    let sweep = tokio::spawn({
        let repo = repo.clone();
        let opts = opts.clone();
        async move { gc_sweep(&repo, plan, &opts).await }
    });
    let m = s.commit().await.unwrap();
    let r = sweep.await.unwrap().unwrap();
    assert_eq!((r.chunks_deleted, r.leftovers_deleted), (0, 0), "{r:?}");
    assert!(r.chunks_reused_meanwhile > 0, "{r:?}");

    let report = verify(&repo, None, true, 4, None).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let out = dir.path().join("out.img");
    restore_to_file(&repo, &m, "disk0", &out, &RestoreOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
}

#[test]
fn lying_length_in_blob_header_is_rejected_without_huge_allocation() {
    use virtguard_repo::crypto::Crypto;
    use virtguard_repo::format::CHUNK_MAGIC;
    let c = Crypto::plain(3);
    let text = b"abc".repeat(100_000);
    let mut b = c.encode_blob(CHUNK_MAGIC, "k", &text, true).unwrap();
    assert_eq!(c.decode_blob(CHUNK_MAGIC, "k", &b).unwrap(), text);
    // Header claims 3 GiB: decoding stops at the real frame size and reports the mismatch.
    b[8..16].copy_from_slice(&(3u64 << 30).to_le_bytes());
    let err = c.decode_blob(CHUNK_MAGIC, "k", &b).unwrap_err();
    assert!(err.to_string().contains("header says"), "{err}");
    // Header claims less than the frame holds: detected too.
    b[8..16].copy_from_slice(&10u64.to_le_bytes());
    assert!(c.decode_blob(CHUNK_MAGIC, "k", &b).is_err());
}

fn gc_opts(grace: Duration) -> GcOptions {
    GcOptions {
        grace,
        dry_run: false,
        concurrency: 4,
        lock_wait: Duration::ZERO,
    }
}
