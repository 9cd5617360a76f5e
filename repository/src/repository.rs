//! [`Repository`]: a store plus its config and keys; typed access to chunks, indexes, manifests
//! and backups. Everything read back is checked (see [`crate`] for the format).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::config::{RepoConfig, CONFIG_KEY};
use crate::crypto::{Crypto, DataCipher};
use crate::error::{Error, Result};
use crate::format::{
    backup_prefix, check_name, BackupId, ChunkId, Index, Manifest, CHUNK_MAGIC, OBJECT_MAGIC,
};
use crate::locks::{LockGuard, LockKind, DEFAULT_STALE_AFTER};
use crate::store::Store;

/// Parameters of `init`.
#[derive(Clone)]
pub struct InitOptions {
    pub chunk_size: u32,
    pub compression_level: i32,
    /// User key (passphrase or key file content); `None` = unencrypted.
    pub key: Option<Vec<u8>>,
    pub kdf_memory_kib: u32,
    pub kdf_iterations: u32,
    /// Blob cipher of an encrypted repository; `None` = [`DataCipher::preferred`] for this CPU.
    pub cipher: Option<DataCipher>,
}

impl fmt::Debug for InitOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InitOptions")
            .field("chunk_size", &self.chunk_size)
            .field("compression_level", &self.compression_level)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_size: crate::format::DEFAULT_CHUNK_SIZE,
            compression_level: crate::config::DEFAULT_COMPRESSION_LEVEL,
            key: None,
            kdf_memory_kib: 64 * 1024,
            kdf_iterations: 3,
            cipher: None,
        }
    }
}

/// A committed backup: namespace, VM and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupRef {
    pub namespace: String,
    pub vm: String,
    pub id: BackupId,
}

impl BackupRef {
    /// `backups/<ns>/<vm>/<id>/`.
    pub fn prefix(&self) -> String {
        backup_prefix(&self.namespace, &self.vm, &self.id)
    }
    /// Key of the manifest.
    pub fn manifest_key(&self) -> String {
        format!("{}manifest.json", self.prefix())
    }
    /// Key of a volume index.
    pub fn index_key(&self, volume: &str) -> String {
        format!("{}{volume}.idx", self.prefix())
    }
    /// Key of the resources archive.
    pub fn resources_key(&self) -> String {
        format!("{}resources.tar.zst", self.prefix())
    }

    /// Parses `backups/<ns>/<vm>/<id>/<file>` keys.
    pub fn from_key(key: &str) -> Option<(BackupRef, &str)> {
        let rest = key.strip_prefix("backups/")?;
        let mut parts = rest.splitn(4, '/');
        let ns = parts.next()?;
        let vm = parts.next()?;
        let id = parts.next()?.parse().ok()?;
        let file = parts.next()?;
        Some((
            BackupRef {
                namespace: ns.to_string(),
                vm: vm.to_string(),
                id,
            },
            file,
        ))
    }
}

impl fmt::Display for BackupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.vm, self.id)
    }
}

/// An open repository.
pub struct Repository {
    store: Arc<dyn Store>,
    config: RepoConfig,
    crypto: Crypto,
    stale_after: Duration,
    /// Id of the wrapped key that unlocked the repository (`None`: not encrypted).
    key_id: Option<String>,
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.store.location())
            .field("encrypted", &self.crypto.is_encrypted())
            .finish_non_exhaustive()
    }
}

impl Repository {
    /// Creates a repository (writes config.json). Fails if one exists.
    pub async fn init(store: Arc<dyn Store>, opts: InitOptions) -> Result<Repository> {
        Self::init_with(store, opts, None, None).await
    }

    /// [`Self::init`] for a copy target of `source`: its chunk size, and (when both are
    /// encrypted) its chunk-id key with a fresh data key, so chunks keep their ids when copied
    /// (`virtguard copy` transfers only the chunks the target lacks). `opts.chunk_size` is
    /// ignored. An encrypted target of an unencrypted source (or the reverse) cannot share ids.
    pub async fn init_sharing_chunk_ids(
        store: Arc<dyn Store>,
        opts: InitOptions,
        source: &Repository,
    ) -> Result<Repository> {
        Self::init_ext(store, opts, Some(source), None).await
    }

    fn check_can_share_ids(source: &Repository, opts: &InitOptions) -> Result<()> {
        if source.crypto.is_encrypted() != opts.key.is_some() {
            return Err(Error::Invalid(format!(
                "{} is {}encrypted and the new repository would {}be: chunk ids can only be \
                 shared when both are encrypted or both are not (give a key to both, or none)",
                source.location(),
                if source.crypto.is_encrypted() {
                    ""
                } else {
                    "not "
                },
                if opts.key.is_some() { "" } else { "not " },
            )));
        }
        Ok(())
    }

    /// [`Self::init`], or [`Self::init_sharing_chunk_ids`] when `source` is given, with an S3
    /// Object Lock policy when `object_lock` is given: the bucket must have Object Lock and
    /// versioning enabled (checked first), and every object written from then on is retained
    /// ([`crate::objectlock`]).
    pub async fn init_ext(
        store: Arc<dyn Store>,
        opts: InitOptions,
        source: Option<&Repository>,
        object_lock: Option<crate::objectlock::ObjectLockPolicy>,
    ) -> Result<Repository> {
        if object_lock.is_some() {
            store.check_object_lock().await?;
        }
        match source {
            Some(src) => {
                Self::check_can_share_ids(src, &opts)?;
                let mut opts = opts;
                opts.chunk_size = src.config.chunk_size;
                Self::init_with(store, opts, Some(&src.crypto), object_lock).await
            }
            None => Self::init_with(store, opts, None, object_lock).await,
        }
    }

    async fn init_with(
        store: Arc<dyn Store>,
        opts: InitOptions,
        share_ids: Option<&Crypto>,
        object_lock: Option<crate::objectlock::ObjectLockPolicy>,
    ) -> Result<Repository> {
        let location = store.location();
        if store.exists(CONFIG_KEY).await? {
            return Err(Error::AlreadyInitialised { location });
        }
        let mut config = RepoConfig::new(opts.chunk_size, opts.compression_level)?;
        config.object_lock = object_lock;
        store.set_object_lock(object_lock);
        let crypto = match &opts.key {
            Some(key) => {
                let shared = match share_ids {
                    Some(src) => src.create_sharing_chunk_ids(
                        key,
                        opts.kdf_memory_kib,
                        opts.kdf_iterations,
                        opts.compression_level,
                    )?,
                    None => None,
                };
                let (crypto, mut enc) = match shared {
                    Some(created) => created,
                    None => Crypto::create(
                        key,
                        opts.kdf_memory_kib,
                        opts.kdf_iterations,
                        opts.compression_level,
                    )?,
                };
                let cipher = opts.cipher.unwrap_or_else(DataCipher::preferred);
                enc.aead = cipher.name().to_string();
                config.format_version = cipher.config_format_version();
                config.encryption = Some(enc);
                config.key = Some(crate::keys::KeyMeta::new());
                crypto.with_data_cipher(cipher)
            }
            None => Crypto::plain(opts.compression_level),
        };
        store.put(CONFIG_KEY, Bytes::from(config.encode())).await?;
        let key_id = config.key.as_ref().map(|k| k.id.clone());
        Ok(Repository {
            store,
            config,
            crypto,
            stale_after: DEFAULT_STALE_AFTER,
            key_id,
        })
    }

    /// Opens an existing repository; `key` is required when it is encrypted.
    pub async fn open(store: Arc<dyn Store>, key: Option<&[u8]>) -> Result<Repository> {
        let location = store.location();
        let data = match store.get(CONFIG_KEY).await {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => return Err(Error::NoRepository { location }),
            Err(e) => return Err(e),
        };
        let config = RepoConfig::decode(&location, &data)?;
        store.set_object_lock(config.object_lock);
        let (crypto, key_id) = match (&config.encryption, key) {
            (Some(_), Some(key)) => crate::keys::unlock(store.as_ref(), &config, key).await?,
            (Some(_), None) => return Err(Error::KeyRequired { location }),
            (None, _) => (Crypto::plain(config.compression_level), None),
        };
        Ok(Repository {
            store,
            config,
            crypto,
            stale_after: DEFAULT_STALE_AFTER,
            key_id,
        })
    }

    /// Sets the lock staleness timeout used by this handle.
    pub fn with_stale_after(mut self, stale_after: Duration) -> Self {
        self.stale_after = stale_after;
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }
    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }
    /// Id of the wrapped key that unlocked this handle (`None` when not encrypted).
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }
    pub fn location(&self) -> String {
        self.store.location()
    }
    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }

    /// Takes a repository lock.
    pub async fn lock(&self, kind: LockKind, operation: &str) -> Result<LockGuard> {
        LockGuard::acquire(self.store.clone(), kind, operation, self.stale_after).await
    }

    /// [`Self::lock`], retrying while the lock is held by someone else, for up to `wait`
    /// (backoff from 1 s to 30 s); the last [`Error::Locked`] when the wait runs out.
    pub async fn lock_waiting(
        &self,
        kind: LockKind,
        operation: &str,
        wait: Duration,
    ) -> Result<LockGuard> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut backoff = Duration::from_secs(1);
        loop {
            match self.lock(kind, operation).await {
                Err(Error::Locked { holder }) if tokio::time::Instant::now() < deadline => {
                    tracing::info!(%holder, "{operation}: waiting for the repository lock");
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    tokio::time::sleep(backoff.min(left)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                r => return r,
            }
        }
    }

    /// Reads a chunk, decodes it and checks that its content matches its id.
    pub async fn get_chunk(&self, id: &ChunkId) -> Result<Vec<u8>> {
        let key = id.key();
        let data = self.store.get(&key).await?;
        let crypto = self.crypto.clone();
        let id = *id;
        cpu(move || {
            let raw = crypto.decode_blob(CHUNK_MAGIC, &key, &data)?;
            if crypto.chunk_id(&raw) != id {
                return Err(Error::corrupt(key, "content does not match the chunk id"));
            }
            Ok(raw)
        })
        .await
    }

    /// [`Self::get_chunk`], also returning the chunk's stored zstd frame when it is stored
    /// compressed (see [`crate::crypto::Crypto::decode_blob_with_frame`]); the raw bytes were
    /// checked against the id, so the frame is known to decode to the right content.
    pub async fn get_chunk_with_frame(&self, id: &ChunkId) -> Result<(Vec<u8>, Option<Bytes>)> {
        let key = id.key();
        let data = self.store.get(&key).await?;
        let crypto = self.crypto.clone();
        let id = *id;
        cpu(move || {
            let (raw, frame) = crypto.decode_blob_with_frame(CHUNK_MAGIC, &key, &data)?;
            if crypto.chunk_id(&raw) != id {
                return Err(Error::corrupt(key, "content does not match the chunk id"));
            }
            Ok((raw, frame.map(Bytes::from)))
        })
        .await
    }

    /// Writes a non-chunk object (sealed when encrypted); returns the stored bytes' BLAKE3 (hex).
    pub async fn put_object(&self, key: &str, raw: Vec<u8>) -> Result<String> {
        let raw = match self.config.object_lock {
            Some(p) if key.starts_with("backups/") && key.ends_with("/manifest.json") => {
                seal_manifest(self, p, key, raw).await?
            }
            _ => raw,
        };
        let stored = if self.crypto.is_encrypted() {
            let crypto = self.crypto.clone();
            let k = key.to_string();
            cpu(move || crypto.encode_blob(OBJECT_MAGIC, &k, &raw, false)).await?
        } else {
            raw
        };
        let digest = blake3::hash(&stored).to_hex().to_string();
        self.store.put(key, Bytes::from(stored)).await?;
        Ok(digest)
    }

    /// Reads a non-chunk object, returning (raw bytes, BLAKE3 hex of the stored bytes).
    pub async fn get_object(&self, key: &str) -> Result<(Vec<u8>, String)> {
        let stored = self.store.get(key).await?;
        let digest = blake3::hash(&stored).to_hex().to_string();
        let raw = if self.crypto.is_encrypted() {
            let crypto = self.crypto.clone();
            let k = key.to_string();
            cpu(move || crypto.decode_blob(OBJECT_MAGIC, &k, &stored)).await?
        } else {
            stored.to_vec()
        };
        Ok((raw, digest))
    }

    /// Committed backups (those with a manifest), optionally filtered, sorted by ns, vm, id.
    pub async fn list_backups(
        &self,
        namespace: Option<&str>,
        vm: Option<&str>,
    ) -> Result<Vec<BackupRef>> {
        let prefix = match (namespace, vm) {
            (Some(ns), Some(vm)) => {
                check_name("namespace", ns)?;
                check_name("vm", vm)?;
                format!("backups/{ns}/{vm}/")
            }
            (Some(ns), None) => {
                check_name("namespace", ns)?;
                format!("backups/{ns}/")
            }
            _ => "backups/".to_string(),
        };
        let mut out: Vec<BackupRef> = self
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| {
                let (r, file) = BackupRef::from_key(&o.key)?;
                (file == "manifest.json").then_some(r)
            })
            .filter(|r| vm.is_none_or(|v| r.vm == v))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Finds a committed backup by id (or `ns/vm/id`).
    pub async fn find_backup(&self, spec: &str) -> Result<BackupRef> {
        let (ns, vm, id) = match spec.split('/').collect::<Vec<_>>()[..] {
            [ns, vm, id] => (Some(ns), Some(vm), id),
            [id] => (None, None, id),
            _ => {
                return Err(Error::Invalid(format!(
                    "`{spec}` is neither a backup id nor ns/vm/id"
                )))
            }
        };
        let id: BackupId = id.parse()?;
        let found: Vec<_> = self
            .list_backups(ns, vm)
            .await?
            .into_iter()
            .filter(|r| r.id == id)
            .collect();
        match found.len() {
            0 => Err(Error::BackupNotFound {
                id: spec.to_string(),
                hint: Some("run `virtguard list` to see the backups".into()),
            }),
            1 => Ok(found.into_iter().next().expect("one element")),
            _ => Err(Error::Invalid(format!(
                "backup id `{id}` exists for several VMs; use ns/vm/id: {}",
                found
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The newest committed backup of a VM. Ids sort by time to the second only (the random
    /// suffix orders backups of the same second arbitrarily), so when several backups share the
    /// newest second their manifests' start times decide.
    pub async fn latest(&self, namespace: &str, vm: &str) -> Result<Option<BackupRef>> {
        let mut all = self.list_backups(Some(namespace), Some(vm)).await?;
        let Some(last) = all.pop() else {
            return Ok(None);
        };
        let second = last.id.time();
        let mut same_second: Vec<BackupRef> = all
            .into_iter()
            .rev()
            .take_while(|r| second.is_some() && r.id.time() == second)
            .collect();
        if same_second.is_empty() {
            return Ok(Some(last));
        }
        same_second.push(last.clone());
        let mut newest: Option<(chrono::DateTime<chrono::Utc>, BackupRef)> = None;
        for r in same_second {
            match self.load_manifest(&r).await {
                Ok(m) => {
                    if newest.as_ref().is_none_or(|(t, _)| m.started > *t) {
                        newest = Some((m.started, r));
                    }
                }
                Err(e) => tracing::warn!(backup = %r, error = %e, "manifest unreadable"),
            }
        }
        Ok(Some(newest.map(|(_, r)| r).unwrap_or(last)))
    }

    /// Reads and checks a manifest.
    pub async fn load_manifest(&self, r: &BackupRef) -> Result<Manifest> {
        let key = r.manifest_key();
        let (raw, _) = self.get_object(&key).await?;
        let m = Manifest::decode(&key, &raw)?;
        if m.id != r.id || m.namespace != r.namespace || m.vm != r.vm {
            return Err(Error::corrupt(key, "manifest names another backup"));
        }
        Ok(m)
    }

    /// Reads a volume's index and checks it against the manifest.
    pub async fn load_index(&self, m: &Manifest, volume: &str) -> Result<Index> {
        let entry =
            m.volumes
                .iter()
                .find(|v| v.name == volume)
                .ok_or_else(|| Error::VolumeNotFound {
                    id: m.id.to_string(),
                    volume: volume.to_string(),
                    available: m
                        .volumes
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
        let key = format!("{}{volume}.idx", m.prefix());
        let (raw, digest) = self.get_object(&key).await?;
        if digest != entry.index_digest {
            return Err(Error::corrupt(
                key,
                "index does not match the digest in the manifest",
            ));
        }
        let idx = Index::decode(&key, &raw)?;
        if idx.size != entry.size || idx.chunk_size != entry.chunk_size {
            return Err(Error::corrupt(
                key,
                "index size or chunk size differs from the manifest",
            ));
        }
        Ok(idx)
    }

    /// The id of an all-zero chunk of `len` bytes (used in image digests).
    pub fn zero_chunk_id(&self, len: usize) -> ChunkId {
        self.crypto.chunk_id(&vec![0u8; len])
    }
}

/// Called for every manifest written to a repository with an Object Lock policy, before it is
/// written: makes sure every chunk the backup references stays retained at least half a period
/// beyond now, and records the date in [`CHUNKS_RETAINED_LABEL`].
///
/// Chunks the backup uploaded, or found present with a HEAD, keep at least 3/4 of a period
/// (written now, or extended when less was left). Chunks it took from its parent's index were
/// not looked at: when the parent's label promises more than half a period from now, they are
/// covered and the label carries over; otherwise every chunk of the backup is HEADed and
/// extended where due ([`crate::store::Store::exists`] on S3 with a policy) and the label
/// becomes now + 3/4 period. So the full pass runs at most once per quarter period per chain of
/// backups of a VM, and every chunk a manifest references stays retained at least half a period
/// beyond the manifest's write.
async fn seal_manifest(
    repo: &Repository,
    policy: crate::objectlock::ObjectLockPolicy,
    key: &str,
    raw: Vec<u8>,
) -> Result<Vec<u8>> {
    use futures::{StreamExt, TryStreamExt};

    let mut m = crate::format::Manifest::decode(key, &raw)?;
    let now = chrono::Utc::now();
    // What written and HEADed (extended where due) chunks keep at least.
    let floor = now + policy.extend_below();
    let parent_until = match &m.parent {
        Some(pid) => {
            let pref = BackupRef {
                namespace: m.namespace.clone(),
                vm: m.vm.clone(),
                id: pid.clone(),
            };
            match repo.load_manifest(&pref).await {
                Ok(p) => p
                    .labels
                    .get(crate::objectlock::CHUNKS_RETAINED_LABEL)
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.with_timezone(&chrono::Utc)),
                Err(_) => None,
            }
        }
        None => None,
    };
    let until = match parent_until {
        Some(p) if p > now + policy.chunk_lead() => p.min(floor),
        _ => {
            let mut ids = std::collections::HashSet::new();
            for v in &m.volumes {
                let idx = repo.load_index(&m, &v.name).await?;
                ids.extend(idx.chunks.into_iter().filter(|c| !c.is_zero_marker()));
            }
            futures::stream::iter(ids)
                .map(|id| async move {
                    let k = id.key();
                    match repo.store().exists(&k).await? {
                        true => Ok(()),
                        false => Err(Error::corrupt(
                            k,
                            "a chunk the new backup references is missing",
                        )),
                    }
                })
                .buffer_unordered(16)
                .try_collect::<Vec<()>>()
                .await?;
            floor
        }
    };
    m.labels.insert(
        crate::objectlock::CHUNKS_RETAINED_LABEL.into(),
        until.to_rfc3339(),
    );
    Ok(m.encode())
}

/// Runs CPU-bound work off the async threads.
pub(crate) async fn cpu<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("internal worker failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn init_open_and_key_errors() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        assert!(matches!(
            Repository::open(store.clone(), None).await,
            Err(Error::NoRepository { .. })
        ));
        let opts = InitOptions {
            key: Some(b"pw".to_vec()),
            kdf_memory_kib: 256,
            kdf_iterations: 1,
            ..Default::default()
        };
        assert!(!format!("{opts:?}").contains("pw"));
        Repository::init(store.clone(), opts.clone()).await.unwrap();
        assert!(matches!(
            Repository::init(store.clone(), opts).await,
            Err(Error::AlreadyInitialised { .. })
        ));
        assert!(matches!(
            Repository::open(store.clone(), None).await,
            Err(Error::KeyRequired { .. })
        ));
        assert!(matches!(
            Repository::open(store.clone(), Some(b"nope")).await,
            Err(Error::WrongKey { .. })
        ));
        let repo = Repository::open(store.clone(), Some(b"pw")).await.unwrap();
        assert!(repo.crypto().is_encrypted());
    }

    #[tokio::test]
    async fn latest_orders_backups_of_the_same_second_by_start_time() {
        use crate::format::{Consistency, Manifest, REPO_FORMAT_VERSION};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        let repo = Repository::init(store, InitOptions::default())
            .await
            .unwrap();
        let second = chrono::Utc::now();
        let put = |suffix: u16, started_ms: i64| {
            let started = second + chrono::Duration::milliseconds(started_ms);
            Manifest {
                format_version: REPO_FORMAT_VERSION,
                id: BackupId::at(second, suffix),
                namespace: "ns".into(),
                vm: "vm".into(),
                started,
                finished: started,
                consistency: Consistency::CrashConsistent,
                parent: None,
                volumes: vec![],
                resources: None,
                tool_version: "t".into(),
                labels: Default::default(),
            }
        };
        // Written later in the same second, but with the smaller random suffix.
        let older = put(0xffff, 1);
        let newer = put(0x0001, 500);
        for m in [&older, &newer] {
            let r = BackupRef {
                namespace: "ns".into(),
                vm: "vm".into(),
                id: m.id.clone(),
            };
            repo.put_object(&r.manifest_key(), m.encode())
                .await
                .unwrap();
        }
        let latest = repo.latest("ns", "vm").await.unwrap().unwrap();
        assert_eq!(latest.id, newer.id);
        let earlier = BackupId::at(second - chrono::Duration::seconds(5), 0xffff);
        assert!(earlier < newer.id && newer.id < older.id);
    }

    #[test]
    fn backup_ref_keys() {
        let r = BackupRef {
            namespace: "ns".into(),
            vm: "vm".into(),
            id: "20261121T233302Z-3f9a".parse().unwrap(),
        };
        assert_eq!(
            r.manifest_key(),
            "backups/ns/vm/20261121T233302Z-3f9a/manifest.json"
        );
        let key = r.index_key("disk");
        let (back, file) = BackupRef::from_key(&key).unwrap();
        assert_eq!(back, r);
        assert_eq!(file, "disk.idx");
        assert!(BackupRef::from_key("backups/ns/vm/notanid/manifest.json").is_none());
    }
}
