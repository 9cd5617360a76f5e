//! `virtguard-repo`: the virtguard backup repository, as a library.
//!
//! It knows nothing of Kubernetes (no kube, k8s-openapi or virtguard-api dependency): the
//! `virtguard` crate's engine joins it to the cluster layer. Everything it returns is its own
//! [`Error`] (rules in [`error`]).
//!
//! A repository is a set of objects under one prefix of a [`Store`] (a local directory — the
//! embedded default — or an S3 bucket prefix). Keys are `/`-separated and relative to the prefix.
//!
//! # Use as a library
//!
//! Create a repository in a local directory, back up a byte source as one volume of a VM,
//! list the backups and read the volume back (checked against its image digest):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> virtguard_repo::Result<()> {
//! use std::sync::Arc;
//! use virtguard_repo::repository::InitOptions;
//! use virtguard_repo::restore::restore_to_writer;
//! use virtguard_repo::{BackupOptions, BackupSession, FileSource, LocalStore, Repository, Store};
//!
//! let dir = tempfile::tempdir().expect("a temporary directory");
//! let disk = dir.path().join("disk.img");
//! let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
//! std::fs::write(&disk, &data).expect("writing the image");
//!
//! let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("repo")));
//! let opts = InitOptions { chunk_size: 64 * 1024, ..Default::default() };
//! Repository::init(store.clone(), opts).await?;
//! let repo = Arc::new(Repository::open(store, None).await?);
//!
//! let mut session = BackupSession::start(repo.clone(), "prod", "db", BackupOptions::default()).await?;
//! session.write_volume("disk0", Arc::new(FileSource::open(&disk)?), None).await?;
//! let manifest = session.commit().await?;
//!
//! let backups = repo.list_backups(Some("prod"), Some("db")).await?;
//! assert_eq!(backups.len(), 1);
//! let mut restored = Vec::new();
//! let m = repo.load_manifest(&backups[0]).await?;
//! assert_eq!(m.id, manifest.id);
//! restore_to_writer(&repo, &m, "disk0", &mut restored, &Default::default()).await?;
//! assert_eq!(restored, data);
//! # Ok(())
//! # }
//! ```
//!
//! `examples/list.rs` lists the backups of a repository given on the command line.
//!
//! # Object layout
//!
//! ```text
//! config.json                          repository config (format version, chunk size, hash,
//!                                      compression, encryption parameters + wrapped key); plain JSON
//! chunks/<2 hex>/<64 hex>              one chunk blob (see "Chunk blob")
//! backups/<ns>/<vm>/<backup-id>/
//!     <volume>.idx                     fixed-size chunk index of one volume (see "Index")
//!     resources.tar.zst                the VM's Kubernetes objects (tar, zstd-compressed), optional
//!     manifest.json                    written LAST: its presence commits the backup
//! locks/<lock-id>.json                 shared or exclusive lock objects (see "Locks")
//! keys/<key-id>.json                   further wrapped copies of the master key, plain JSON
//!                                      (see [`keys`]; the first one is in config.json)
//! ```
//!
//! Backup ids are `YYYYMMDDTHHMMSSZ-xxxx` (UTC time + 4 random hex digits), so lexical order is
//! time order. Namespace, VM and volume names are Kubernetes names (`[a-z0-9.-]`), checked before
//! they become parts of keys. They are visible in keys even when the repository is encrypted.
//!
//! # Chunks and chunk ids
//!
//! Volumes are cut into fixed-size chunks (`chunk_size` in config.json, 4 MiB by default; the
//! last chunk may be shorter). The chunk id is the 32-byte BLAKE3 hash of the raw chunk bytes,
//! or, in an encrypted repository, BLAKE3 in keyed mode with a 32-byte id key derived from the
//! master key, so ids leak nothing about content. BLAKE3 rather than SHA-256: it is several times
//! faster per core without SHA extensions (these machines have none), it is a single
//! well-analysed function for both the plain and the keyed (MAC) case, and the hashing cost is
//! what bounds backup throughput once zero chunks and dedup hits are skipped.
//!
//! All-zero chunks are never stored: the index marks them (see below).
//!
//! # Chunk blob (`chunks/<2 hex>/<id>`), and the envelope of every binary object
//!
//! ```text
//! offset size  field
//! 0      4     magic  "VGCB" (chunk blob) | "VGOB" (other sealed object: index, manifest, resources)
//! 4      2     format version (u16 LE) = 1
//! 6      2     flags (u16 LE): bit 0 = payload zstd-compressed, bit 1 = payload encrypted
//! 8      8     raw length (u64 LE): length of the original bytes
//! 16     ..    payload: zstd frame or raw bytes; if encrypted: 12-byte nonce ‖ AEAD ciphertext ‖ 16-byte tag
//! ```
//!
//! The header is 16 bytes (checked at compile time). With encryption the AEAD
//! (config.json's `encryption.aead`: `chacha20poly1305`, or `aes256gcm` in config format 2,
//! see [`config::CONFIG_FORMAT_VERSION_MAX`]) additional data is the 16-byte header followed by the object's key, so
//! a blob cannot be moved to another name or have its flags changed without detection.
//! A payload is stored raw when zstd does not make it smaller. Reading a chunk always
//! recomputes its id from the decoded bytes and compares it with the name.
//!
//! In an unencrypted repository `manifest.json` is plain JSON, `<volume>.idx` is the index bytes
//! and `resources.tar.zst` is the tar.zst itself. In an encrypted repository all three are
//! sealed in the `VGOB` envelope (encrypted, not compressed again).
//!
//! # Index (`<volume>.idx`)
//!
//! ```text
//! 0      4     magic "VGIX"
//! 4      2     format version (u16 LE) = 1
//! 6      2     reserved, 0
//! 8      4     chunk size (u32 LE)
//! 12     4     reserved, 0
//! 16     8     volume size in bytes (u64 LE)
//! 24     8     chunk count (u64 LE) = ceil(size / chunk size)
//! 32     32*n  chunk ids in offset order; 32 zero bytes mark an all-zero chunk (not stored)
//! ..     32    BLAKE3 of all preceding bytes (detects truncation and bit flips)
//! ```
//!
//! # Manifest and commit order
//!
//! A backup writes chunks first, then each volume's index, then `resources.tar.zst`, and the
//! manifest **last**. A backup without a manifest does not exist for list/restore/verify; its
//! chunks are reused by the next backup (content addressing) and its leftovers are removed by
//! gc after the grace period. The manifest records for each volume its size, chunk size, the
//! BLAKE3 of its index object and the image digest: BLAKE3 over the concatenated chunk ids of
//! all chunks in order (zero chunks contribute the id of a zero chunk of their length), which
//! restore recomputes from the bytes it wrote.
//!
//! # Locks (`locks/<lock-id>.json`)
//!
//! Shared locks are taken by backup, restore, verify and gc's mark phase; exclusive ones by
//! prune and gc's delete phase. A
//! process writes its lock object, then lists `locks/`; if it finds a conflicting lock that is
//! not stale (shared vs exclusive, or exclusive vs anything), it deletes its own and fails
//! (callers that may wait retry with backoff). Two
//! racing processes may thus both back off, but never both proceed. Holders rewrite their lock
//! (`refreshed` time) every `stale_after / 4`; a lock not refreshed for `stale_after` is stale:
//! it no longer blocks anyone and `virtguard unlock --stale` deletes it.
//!
//! # Garbage collection
//!
//! `gc` marks under a shared lock, so backups go on meanwhile: it reads every committed
//! manifest and its indexes and lists the chunks; candidates are chunks that no index references
//! **and** whose object is older than the grace period (default 24 h). It then takes the
//! exclusive lock (waiting for running backups if told to) for the short delete phase, reads
//! the manifests committed since it marked (a backup reuses any chunk that exists, so also a
//! candidate) and spares what they reference, and deletes the rest. The grace period also
//! protects a backup whose lock went stale while it still
//! runs. Leftover objects of uncommitted backups (no manifest) older than the grace period are
//! removed too. `prune` only deletes manifests (first, uncommitting the backup) and then the
//! backup's other objects; the chunks go at the next gc.

pub mod backup;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod error;
pub mod format;
pub mod keyring;
pub mod keys;
pub mod locks;
pub mod maintain;
pub mod objectlock;
pub mod prune;
pub mod repository;
pub mod restore;
pub mod retention;
pub mod s3;
pub mod source;
pub mod store;
pub mod throttle;
pub mod verify;
pub mod volume_reader;

pub use backup::{BackupOptions, BackupSession, VolumeStats};
pub use config::RepoConfig;
pub use error::{Error, Result};
pub use format::{BackupId, ChunkId, Index, Manifest, VolumeEntry};
pub use repository::{BackupRef, Repository};
pub use restore::{RestoreOptions, RestoreStats};
pub use source::{FileSource, HttpSource, VolumeSource};
pub use store::{LocalStore, ObjectInfo, Store};
pub use volume_reader::{BlockingVolumeReader, ReadStats, VolumeReader, VolumeReaderOptions};
