//! Repositories written by format v1, committed under `tests/fixtures/` and never regenerated
//! (one unencrypted, one encrypted with the passphrase `fixture passphrase`; each one backup
//! `fixture/vm` of a 193 KiB image with one volume `root`, 64 KiB chunks). A change of the
//! format, the crypto or the readers that could not read what users already have fails here.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;

use virtguard_repo::restore::restore_to_writer;
use virtguard_repo::verify::verify;
use virtguard_repo::{Error, LocalStore, Repository, Store};

/// The image the fixtures hold: a text chunk, a zero chunk, a byte-pattern chunk, a 1000-byte
/// tail.
fn image() -> Vec<u8> {
    let mut d: Vec<u8> = b"virtguard format v1 fixture\n"
        .iter()
        .copied()
        .cycle()
        .take(65536)
        .collect();
    d.extend(std::iter::repeat_n(0u8, 65536));
    d.extend((0..65536u32).map(|i| ((i * 7 + 3) % 256) as u8));
    for _ in 0..5 {
        d.extend(0..200u8);
    }
    d
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

#[tokio::test]
async fn format_v1_repositories_still_read_verify_and_restore() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let want = image();
    assert_eq!(want.len(), 197_608);
    for (name, key, id) in [
        ("v1-plain", None, "20261207T140639Z-0b7f"),
        (
            "v1-encrypted",
            Some(&b"fixture passphrase"[..]),
            "20261207T140639Z-980b",
        ),
    ] {
        // A copy: readers take locks, and the checkout must stay untouched.
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixtures.join(name), dir.path());
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        if key.is_some() {
            let err = Repository::open(store.clone(), Some(b"wrong"))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::WrongKey { .. }), "{name}: {err}");
        }
        let repo = Arc::new(Repository::open(store, key).await.unwrap());
        assert_eq!(repo.config().format_version, 1, "{name}");
        let backups = repo.list_backups(None, None).await.unwrap();
        assert_eq!(backups.len(), 1, "{name}");
        assert_eq!(backups[0].to_string(), format!("fixture/vm/{id}"), "{name}");
        let m = repo.load_manifest(&backups[0]).await.unwrap();
        assert_eq!(m.volumes.len(), 1);
        assert_eq!(
            (m.volumes[0].name.as_str(), m.volumes[0].size),
            ("root", 197_608)
        );
        let report = verify(&repo, None, true, 4, None).await.unwrap();
        assert!(report.problems.is_empty(), "{name}: {:?}", report.problems);
        let mut out = Vec::new();
        restore_to_writer(&repo, &m, "root", &mut out, &Default::default())
            .await
            .unwrap();
        assert!(out == want, "{name}: restored image differs");
    }
}
