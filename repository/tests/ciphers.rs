//! Both blob ciphers end to end through the public API: `init` records the cipher and the config
//! format it needs (AES-256-GCM: format 2, which older binaries refuse; ChaCha20-Poly1305: format
//! 1), and a backup written with each reads back byte for byte.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::sync::Arc;

use virtguard_repo::config::CONFIG_KEY;
use virtguard_repo::crypto::DataCipher;
use virtguard_repo::repository::InitOptions;
use virtguard_repo::{BackupOptions, BackupSession, FileSource, LocalStore, Repository, Store};

#[tokio::test]
async fn both_ciphers_init_record_their_format_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    for (cipher, version) in [
        (DataCipher::Aes256Gcm, 2),
        (DataCipher::ChaCha20Poly1305, 1),
    ] {
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join(cipher.name())));
        let opts = InitOptions {
            chunk_size: 64 * 1024,
            key: Some(b"pw".to_vec()),
            kdf_memory_kib: 256,
            kdf_iterations: 1,
            cipher: Some(cipher),
            ..Default::default()
        };
        Repository::init(store.clone(), opts).await.unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&store.get(CONFIG_KEY).await.unwrap()).unwrap();
        assert_eq!(cfg["format_version"], version, "{cipher:?}");
        assert_eq!(cfg["encryption"]["aead"], cipher.name());
        let repo = Arc::new(Repository::open(store, Some(b"pw")).await.unwrap());
        assert_eq!(repo.crypto().data_cipher(), Some(cipher));
        let mut s = BackupSession::start(repo.clone(), "ns", "vm", BackupOptions::default())
            .await
            .unwrap();
        s.write_volume("disk0", Arc::new(FileSource::open(&img).unwrap()), None)
            .await
            .unwrap();
        let m = s.commit().await.unwrap();
        let mut out = Vec::new();
        virtguard_repo::restore::restore_to_writer(
            &repo,
            &m,
            "disk0",
            &mut out,
            &Default::default(),
        )
        .await
        .unwrap();
        assert_eq!(out, data, "{cipher:?}");
    }
}
