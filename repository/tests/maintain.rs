//! `maintain` on a local store: the verify rotation reads every chunk once per cycle and survives
//! reopening the repository, a byte budget resumes where it stopped, a corrupt chunk is named with
//! its users, stays recorded until a later backup of the same data stores it again, and is then
//! forgotten.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: panics are failures

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use virtguard_repo::maintain::{maintain, MaintainOptions, MaintenanceState, Share};
use virtguard_repo::repository::InitOptions;
use virtguard_repo::{BackupOptions, BackupSession, FileSource, LocalStore, Repository, Store};

const CS: u32 = 64 * 1024;
const CHUNKS: usize = 24;

async fn open(dir: &Path) -> Arc<Repository> {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir));
    Arc::new(Repository::open(store, None).await.unwrap())
}

async fn setup(dir: &Path) -> (Arc<Repository>, std::path::PathBuf) {
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.join("repo")));
    let opts = InitOptions {
        chunk_size: CS,
        ..Default::default()
    };
    Repository::init(store, opts).await.unwrap();
    let img = dir.join("disk.img");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let data: Vec<u8> = (0..CS as usize * CHUNKS).map(|_| rng.gen()).collect();
    std::fs::write(&img, data).unwrap();
    let repo = open(&dir.join("repo")).await;
    backup(&repo, &img).await;
    (repo, img)
}

async fn backup(repo: &Arc<Repository>, img: &Path) {
    let mut s = BackupSession::start(repo.clone(), "ns1", "vm1", BackupOptions::default())
        .await
        .unwrap();
    s.write_volume("disk0", Arc::new(FileSource::open(img).unwrap()), None)
        .await
        .unwrap();
    s.commit().await.unwrap();
}

fn opts(share: &str, budget: Option<u64>) -> MaintainOptions {
    MaintainOptions {
        grace: Duration::from_secs(3600),
        lock_wait: Duration::ZERO,
        share: share.parse().unwrap(),
        budget,
        concurrency: 4,
    }
}

fn chunk_files(repo_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(repo_dir.join("chunks")).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            for f in std::fs::read_dir(&d).unwrap() {
                out.push(f.unwrap().path());
            }
        } else {
            out.push(d);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_rotation_reads_every_chunk_once_per_cycle_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = setup(dir.path()).await;
    let stored: u64 = chunk_files(&dir.path().join("repo"))
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum();
    let mut slots = Vec::new();
    let (mut read, mut bytes) = (0, 0);
    for _ in 0..4 {
        // A fresh process each time: the cursor comes from the repository.
        let repo = open(&dir.path().join("repo")).await;
        let r = maintain(&repo, &opts("1/4", None)).await.unwrap();
        assert!(r.verify.problems.is_empty(), "{:?}", r.verify.problems);
        assert_eq!(r.verify.chunks_referenced, CHUNKS);
        slots.extend(r.slots);
        read += r.verify.chunks_read;
        bytes += r.bytes_read;
    }
    assert_eq!(slots, [0, 1, 2, 3]);
    assert_eq!(read, CHUNKS, "each chunk once per cycle");
    assert_eq!(bytes, stored);
    let state = MaintenanceState::load(&*open(&dir.path().join("repo")).await)
        .await
        .unwrap();
    assert_eq!((state.share_of, state.next_slot), (4, 0));
    assert!(state.last_gc.is_some() && state.last_verify.is_some());
    // A different share restarts the rotation at slot 0.
    let r = maintain(&open(&dir.path().join("repo")).await, &opts("2/3", None))
        .await
        .unwrap();
    assert_eq!(r.slots, [0, 1]);
}

#[tokio::test]
async fn a_budget_stops_inside_a_slot_and_the_next_run_resumes_there() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = setup(dir.path()).await;
    let mut seen = Vec::new();
    let mut total = 0;
    loop {
        let r = maintain(&repo, &opts("1/1", Some(1))).await.unwrap();
        let state = MaintenanceState::load(&repo).await.unwrap();
        total += r.verify.chunks_read;
        if !r.budget_exhausted {
            assert_eq!(state.resume_after, None);
            break;
        }
        assert_eq!(
            r.verify.chunks_read, 1,
            "a budget below one chunk still reads one"
        );
        let at = state.resume_after.clone().unwrap();
        assert!(
            seen.last().is_none_or(|l: &String| *l < at),
            "resumes after {at}"
        );
        seen.push(at);
        assert!(seen.len() <= CHUNKS, "never finishes");
    }
    assert_eq!(total, CHUNKS, "every chunk once, in budget-sized runs");
}

#[tokio::test]
async fn a_corrupt_chunk_is_named_kept_on_record_and_healed_by_the_next_backup() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, img) = setup(dir.path()).await;
    let victim = chunk_files(&dir.path().join("repo"))[5].clone();
    let mut bad = std::fs::read(&victim).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&victim, &bad).unwrap();

    let r = maintain(&repo, &opts("1/1", None)).await.unwrap();
    assert_eq!(r.corrupt.len(), 1, "{:?}", r.verify.problems);
    let c = &r.corrupt[0];
    assert!(victim.to_string_lossy().ends_with(&c.chunk), "{c:?}");
    assert_eq!(c.used_by.len(), 1);
    assert!(c.used_by[0].starts_with("ns1/vm1/") && c.used_by[0].ends_with("volume disk0"));
    assert_eq!(r.verify.problems.len(), 1);

    // Still corrupt on the next run (whatever its share): recorded chunks are always re-read.
    let r = maintain(&repo, &opts("1/256", None)).await.unwrap();
    assert_eq!((r.corrupt.len(), r.healed), (1, 0));

    // A backup that reads the same data stores the chunk again instead of trusting the store.
    backup(&repo, &img).await;
    assert_ne!(std::fs::read(&victim).unwrap(), bad, "stored again");
    let r = maintain(&repo, &opts("1/256", None)).await.unwrap();
    assert_eq!((r.corrupt.len(), r.healed), (0, 1));
    assert!(r.verify.problems.is_empty(), "{:?}", r.verify.problems);
    let ids: BTreeSet<_> = MaintenanceState::load(&repo).await.unwrap().corrupt_ids();
    assert!(ids.is_empty());
    let share: Share = "1/7".parse().unwrap();
    assert_eq!((share.part, share.of), (1, 7));
    for bad in ["0/7", "8/7", "1/0", "1/257", "x", "1/"] {
        let e = bad.parse::<Share>().unwrap_err().to_string();
        assert!(e.contains("PART/OF"), "{bad}: {e}");
    }
}
