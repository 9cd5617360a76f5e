//! The object store behind a repository: one small trait, two backends (local directory here,
//! S3 in [`crate::s3`]) and layers that wrap any store (retry with jittered backoff, concurrency
//! limit). Keys are relative, `/`-separated, and never contain `..`.
//!
//! [`conformance`] is the one behaviour suite every backend must pass; the unit tests run it on
//! [`LocalStore`] and the integration tests on S3 (a real s3s-fs).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::objectlock::{ObjectLockPolicy, Retention};

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// An object store. Implementations must be safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Human-readable location without secrets, e.g. `/var/lib/repo` or `s3://bucket/prefix`.
    fn location(&self) -> String;
    /// Whole object. [`Error::NotFound`] when absent.
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// `len` bytes from `offset` (fewer at the end of the object).
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes>;
    /// Creates or replaces an object atomically (readers see the old or the new one, whole).
    async fn put(&self, key: &str, data: Bytes) -> Result<()>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Whether an object exists.
    async fn exists(&self, key: &str) -> Result<bool>;
    /// All objects whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Removes debris of interrupted writes older than `older_than` (temporary files of the
    /// local store); returns how many were removed. Stores without such debris return 0.
    async fn remove_incomplete(&self, _older_than: Duration) -> Result<usize> {
        Ok(0)
    }
    /// The requests sent so far, for stores that bill by request (S3); `None` for the others.
    fn requests(&self) -> Option<RequestCounts> {
        None
    }
    /// From now on, write objects with this Object Lock retention and delete them only when it
    /// has passed ([`crate::objectlock`]). Stores without Object Lock ignore it (a copy of an
    /// S3 repository on a disk stays readable).
    fn set_object_lock(&self, _policy: Option<ObjectLockPolicy>) {}
    /// Checks that the store can lock objects (S3: Object Lock enabled and versioning on);
    /// a clear [`Error::Invalid`] otherwise.
    async fn check_object_lock(&self) -> Result<()> {
        Err(Error::Invalid(format!(
            "{}: Object Lock needs an S3 repository (s3://bucket/prefix) whose bucket has Object \
             Lock enabled",
            self.location()
        )))
    }
    /// The retention of the current version of `key` (`None`: none, or no Object Lock).
    async fn retention(&self, _key: &str) -> Result<Option<Retention>> {
        Ok(None)
    }
}

/// Requests a store sent, by kind (an S3 bill's line items). Reads of chunk data are counted
/// apart from reads of everything else, so a structure-only check shows none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestCounts {
    /// LIST pages (one request returns up to 1000 keys).
    pub list: u64,
    /// GETs of chunk objects (whole or ranged).
    pub get_chunk: u64,
    /// GETs of every other object (manifests, indexes, config, state).
    pub get_other: u64,
    /// HEADs (existence checks).
    pub head: u64,
    /// PUTs, multipart parts and their create/complete calls.
    pub put: u64,
    pub delete: u64,
}

/// Counters behind [`RequestCounts`], shared by the store's concurrent calls.
#[derive(Debug, Default)]
pub struct RequestCounters {
    list: AtomicU64,
    get_chunk: AtomicU64,
    get_other: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
}

/// Kinds of [`RequestCounters`].
#[derive(Debug, Clone, Copy)]
pub enum Request {
    List,
    Get,
    Head,
    Put,
    Delete,
}

impl RequestCounters {
    /// Counts one request of `kind` on `key`.
    pub fn count(&self, kind: Request, key: &str) {
        let c = match kind {
            Request::List => &self.list,
            Request::Get if key.starts_with("chunks/") => &self.get_chunk,
            Request::Get => &self.get_other,
            Request::Head => &self.head,
            Request::Put => &self.put,
            Request::Delete => &self.delete,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            list: self.list.load(Ordering::Relaxed),
            get_chunk: self.get_chunk.load(Ordering::Relaxed),
            get_other: self.get_other.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
        }
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    fn location(&self) -> String {
        (**self).location()
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        (**self).get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        (**self).get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        (**self).put(key, data).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        (**self).exists(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        (**self).list(prefix).await
    }
    async fn remove_incomplete(&self, older_than: Duration) -> Result<usize> {
        (**self).remove_incomplete(older_than).await
    }
    fn requests(&self) -> Option<RequestCounts> {
        (**self).requests()
    }
    fn set_object_lock(&self, policy: Option<ObjectLockPolicy>) {
        (**self).set_object_lock(policy)
    }
    async fn check_object_lock(&self) -> Result<()> {
        (**self).check_object_lock().await
    }
    async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        (**self).retention(key).await
    }
}

pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.starts_with('/') || key.split('/').any(|p| p == ".." || p == ".") {
        return Err(Error::Invalid(format!("invalid object key `{key}`")));
    }
    Ok(())
}

/// A repository in a local directory. Writes go to a temporary file in the target directory,
/// are fsynced, renamed into place, and the directory is fsynced, so a crash leaves either the
/// old object or the new one, never a partial one. Temporary files start with `.tmp-` and are
/// ignored by `list`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> LocalStore {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn err(&self, op: &'static str, key: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Error::NotFound {
                store: self.location(),
                key: key.to_string(),
            };
        }
        // Local I/O errors are not retried, except interruptions.
        let transient = matches!(
            e.kind(),
            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
        );
        Error::Store {
            store: self.location(),
            op,
            key: key.to_string(),
            message: e.to_string(),
            transient,
        }
    }

    fn put_blocking(path: &Path, data: &[u8]) -> std::io::Result<()> {
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("object path has no parent"))?;
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
        tmp.write_all(data)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        std::fs::File::open(dir)?.sync_all()
    }

    fn list_blocking(root: &Path, prefix: &str) -> std::io::Result<Vec<ObjectInfo>> {
        // Walk the deepest directory that the prefix fully names, then filter by prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = root.join(dir_part);
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".tmp-") {
                    continue;
                }
                let ft = entry.file_type()?;
                let path = entry.path();
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(root)
                    .map_err(std::io::Error::other)?
                    .to_string_lossy()
                    .replace('\\', "/");
                if !rel.starts_with(prefix) {
                    continue;
                }
                let md = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                out.push(ObjectInfo {
                    key: rel,
                    size: md.len(),
                    modified: md.modified()?,
                });
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| std::io::Error::other(format!("blocking task failed: {e}")))?
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        blocking(move || std::fs::read(path))
            .await
            .map(Bytes::from)
            .map_err(|e| self.err("read", key, e))
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let path = self.path(key)?;
        blocking(move || {
            let f = std::fs::File::open(path)?;
            let size = f.metadata()?.len();
            let end = size.min(offset.saturating_add(len));
            let n = end.saturating_sub(offset) as usize;
            let mut buf = vec![0u8; n];
            f.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| self.err("read", key, e))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        blocking(move || Self::put_blocking(&path, &data))
            .await
            .map_err(|e| self.err("write", key, e))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match blocking(move || std::fs::remove_file(path)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key)?;
        blocking(move || path.try_exists())
            .await
            .map_err(|e| self.err("stat", key, e))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let p = prefix.to_string();
        blocking(move || Self::list_blocking(&root, &p))
            .await
            .map_err(|e| self.err("list", prefix, e))
    }

    async fn remove_incomplete(&self, older_than: Duration) -> Result<usize> {
        let root = self.root.clone();
        blocking(move || {
            let mut removed = 0;
            let mut stack = vec![root];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for entry in entries {
                    let entry = entry?;
                    let ft = entry.file_type()?;
                    if ft.is_dir() {
                        stack.push(entry.path());
                        continue;
                    }
                    let is_tmp = entry.file_name().to_string_lossy().starts_with(".tmp-");
                    let old = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > older_than);
                    if is_tmp && old && std::fs::remove_file(entry.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| self.err("cleanup", ".tmp-*", e))
    }
}

/// Retries transient errors with exponential backoff and full jitter.
#[derive(Debug)]
pub struct RetryStore<S> {
    inner: S,
    attempts: u32,
    base: Duration,
    max: Duration,
}

impl<S: Store> RetryStore<S> {
    /// `attempts` tries in total, backoff from `base` doubling up to `max`, with full jitter.
    pub fn new(inner: S, attempts: u32, base: Duration, max: Duration) -> Self {
        RetryStore {
            inner,
            attempts: attempts.max(1),
            base,
            max,
        }
    }

    async fn run<T, F, Fut>(&self, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>> + Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f().await {
                Err(e) if e.is_transient() && attempt < self.attempts => {
                    let cap = self
                        .base
                        .saturating_mul(1 << (attempt - 1).min(16))
                        .min(self.max);
                    let sleep = cap.mul_f64(rand::random::<f64>());
                    tracing::debug!(attempt, error = %e, ?sleep, "retrying store operation");
                    tokio::time::sleep(sleep).await;
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl<S: Store> Store for RetryStore<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        self.run(|| self.inner.get(key)).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        self.run(|| self.inner.get_range(key, offset, len)).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.run(|| self.inner.put(key, data.clone())).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.run(|| self.inner.delete(key)).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.run(|| self.inner.exists(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.run(|| self.inner.list(prefix)).await
    }
    async fn remove_incomplete(&self, older_than: Duration) -> Result<usize> {
        self.inner.remove_incomplete(older_than).await
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
    fn set_object_lock(&self, policy: Option<ObjectLockPolicy>) {
        self.inner.set_object_lock(policy)
    }
    async fn check_object_lock(&self) -> Result<()> {
        self.run(|| self.inner.check_object_lock()).await
    }
    async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        self.run(|| self.inner.retention(key)).await
    }
}

/// Bounds the number of operations in flight on the inner store.
#[derive(Debug)]
pub struct LimitStore<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S: Store> LimitStore<S> {
    /// At most `limit` concurrent operations.
    pub fn new(inner: S, limit: usize) -> Self {
        LimitStore {
            inner,
            permits: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("store concurrency limiter closed".into()))
    }
}

#[async_trait]
impl<S: Store> Store for LimitStore<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        let _p = self.permit().await?;
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let _p = self.permit().await?;
        self.inner.get_range(key, offset, len).await
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let _p = self.permit().await?;
        self.inner.put(key, data).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        let _p = self.permit().await?;
        self.inner.delete(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        let _p = self.permit().await?;
        self.inner.exists(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let _p = self.permit().await?;
        self.inner.list(prefix).await
    }
    async fn remove_incomplete(&self, older_than: Duration) -> Result<usize> {
        let _p = self.permit().await?;
        self.inner.remove_incomplete(older_than).await
    }
    fn requests(&self) -> Option<RequestCounts> {
        self.inner.requests()
    }
    fn set_object_lock(&self, policy: Option<ObjectLockPolicy>) {
        self.inner.set_object_lock(policy)
    }
    async fn check_object_lock(&self) -> Result<()> {
        self.inner.check_object_lock().await
    }
    async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        self.inner.retention(key).await
    }
}

/// The behaviour every [`Store`] must have. Panics (it is a test helper) on the first deviation,
/// naming the store. Uses only keys under `conformance/`.
pub mod conformance {
    use super::*;

    /// Runs the whole suite against `store`.
    pub async fn run(store: &dyn Store) {
        let loc = store.location();
        let k1 = "conformance/a/one";
        let k2 = "conformance/a/two";
        let k3 = "conformance/b/three";
        assert!(
            matches!(store.get(k1).await, Err(Error::NotFound { .. })),
            "{loc}: get of a missing object must be NotFound"
        );
        assert!(
            !store.exists(k1).await.expect("exists"),
            "{loc}: missing object exists"
        );
        store
            .put(k1, Bytes::from_static(b"hello"))
            .await
            .expect("put k1");
        store
            .put(k2, Bytes::from(vec![7u8; 100_000]))
            .await
            .expect("put k2");
        store.put(k3, Bytes::new()).await.expect("put empty object");
        assert_eq!(
            &store.get(k1).await.expect("get")[..],
            b"hello",
            "{loc}: get"
        );
        assert!(store.exists(k1).await.expect("exists"), "{loc}: exists");
        assert_eq!(
            store.get(k3).await.expect("get empty").len(),
            0,
            "{loc}: empty object"
        );
        // Replace is atomic and whole.
        store
            .put(k1, Bytes::from_static(b"world!"))
            .await
            .expect("overwrite");
        assert_eq!(
            &store.get(k1).await.expect("get")[..],
            b"world!",
            "{loc}: overwrite"
        );
        // Ranges, including one running past the end.
        assert_eq!(
            &store.get_range(k1, 1, 3).await.expect("range")[..],
            b"orl",
            "{loc}: range"
        );
        assert_eq!(
            &store.get_range(k1, 4, 100).await.expect("range")[..],
            b"d!",
            "{loc}: range past end"
        );
        let r = store.get_range(k2, 99_990, 10).await.expect("range");
        assert_eq!(&r[..], &[7u8; 10], "{loc}: range at the end");
        // Listing by prefix, sorted, with sizes.
        let all = store.list("conformance/").await.expect("list");
        let keys: Vec<_> = all.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec![k1, k2, k3], "{loc}: list");
        assert_eq!(all[1].size, 100_000, "{loc}: list size");
        let a = store.list("conformance/a/").await.expect("list");
        assert_eq!(a.len(), 2, "{loc}: list with a directory prefix");
        let partial = store.list("conformance/a/t").await.expect("list");
        assert_eq!(partial.len(), 1, "{loc}: list with a partial-name prefix");
        assert!(
            store
                .list("conformance/none/")
                .await
                .expect("list")
                .is_empty(),
            "{loc}: empty list"
        );
        let age = SystemTime::now()
            .duration_since(all[0].modified)
            .unwrap_or_default();
        assert!(
            age < Duration::from_secs(600),
            "{loc}: modification time is recent"
        );
        // Delete, twice.
        store.delete(k1).await.expect("delete");
        store
            .delete(k1)
            .await
            .expect("delete of a missing object is ok");
        assert!(
            !store.exists(k1).await.expect("exists"),
            "{loc}: deleted object exists"
        );
        // Invalid keys are refused by every store before they reach a path or URL.
        for bad in ["", "/abs", "a/../b", "./a"] {
            assert!(
                store.put(bad, Bytes::new()).await.is_err(),
                "{loc}: key `{bad}` accepted"
            );
        }
        // Concurrency: many parallel puts and gets.
        let futs = (0..32).map(|i| async move {
            let key = format!("conformance/par/{i:02}");
            let data = Bytes::from(vec![i as u8; 10_000 + i]);
            store.put(&key, data.clone()).await.expect("parallel put");
            assert_eq!(store.get(&key).await.expect("parallel get"), data);
        });
        futures::future::join_all(futs).await;
        assert_eq!(
            store.list("conformance/par/").await.expect("list").len(),
            32
        );
        for o in store.list("conformance/").await.expect("list") {
            store.delete(&o.key).await.expect("cleanup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn local_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        conformance::run(&LocalStore::new(dir.path().join("repo"))).await;
    }

    #[tokio::test]
    async fn layered_local_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = LimitStore::new(
            RetryStore::new(
                LocalStore::new(dir.path()),
                3,
                Duration::from_millis(1),
                Duration::from_millis(5),
            ),
            4,
        );
        conformance::run(&s).await;
    }

    #[tokio::test]
    async fn local_put_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        s.put("x/y", Bytes::from_static(b"1")).await.unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("x"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names, vec!["y"]);
    }

    #[tokio::test]
    async fn local_incomplete_writes_are_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::new(dir.path());
        s.put("chunks/ab/x", Bytes::from_static(b"1"))
            .await
            .unwrap();
        std::fs::write(dir.path().join("chunks/ab/.tmp-dead"), b"partial").unwrap();
        assert_eq!(
            s.remove_incomplete(Duration::from_secs(3600))
                .await
                .unwrap(),
            0,
            "young debris stays"
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            s.remove_incomplete(Duration::from_millis(1)).await.unwrap(),
            1
        );
        assert!(s.exists("chunks/ab/x").await.unwrap());
        assert!(!dir.path().join("chunks/ab/.tmp-dead").exists());
    }

    /// Fails the first `fail` calls with a transient error.
    #[derive(Debug)]
    struct Flaky {
        fail: u32,
        calls: AtomicU32,
        transient: bool,
    }

    #[async_trait]
    impl Store for Flaky {
        fn location(&self) -> String {
            "flaky".into()
        }
        async fn get(&self, key: &str) -> Result<Bytes> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
                return Err(Error::Store {
                    store: "flaky".into(),
                    op: "read",
                    key: key.into(),
                    message: "503".into(),
                    transient: self.transient,
                });
            }
            Ok(Bytes::from_static(b"ok"))
        }
        async fn get_range(&self, key: &str, _: u64, _: u64) -> Result<Bytes> {
            self.get(key).await
        }
        async fn put(&self, _: &str, _: Bytes) -> Result<()> {
            Ok(())
        }
        async fn delete(&self, _: &str) -> Result<()> {
            Ok(())
        }
        async fn exists(&self, _: &str) -> Result<bool> {
            Ok(true)
        }
        async fn list(&self, _: &str) -> Result<Vec<ObjectInfo>> {
            Ok(vec![])
        }
    }

    #[tokio::test]
    async fn retry_retries_transient_only() {
        let ms = Duration::from_millis(1);
        let s = RetryStore::new(
            Flaky {
                fail: 3,
                calls: 0.into(),
                transient: true,
            },
            5,
            ms,
            ms,
        );
        assert_eq!(&s.get("k").await.unwrap()[..], b"ok");
        assert_eq!(s.inner.calls.load(Ordering::SeqCst), 4);
        let s = RetryStore::new(
            Flaky {
                fail: 10,
                calls: 0.into(),
                transient: true,
            },
            3,
            ms,
            ms,
        );
        assert!(s.get("k").await.is_err());
        assert_eq!(
            s.inner.calls.load(Ordering::SeqCst),
            3,
            "gives up after the attempt budget"
        );
        let s = RetryStore::new(
            Flaky {
                fail: 1,
                calls: 0.into(),
                transient: false,
            },
            5,
            ms,
            ms,
        );
        assert!(s.get("k").await.is_err());
        assert_eq!(
            s.inner.calls.load(Ordering::SeqCst),
            1,
            "permanent errors are not retried"
        );
    }
}
