//! Bandwidth limits: a [`RateLimiter`] (bytes per second, shared by every concurrent transfer of
//! one kind), a [`ThrottleStore`] that applies an upload and a download limiter to a store, and a
//! [`ThrottledSource`] that applies one to reads of a volume source.
//!
//! Invariant: over any period longer than the burst window (100 ms of traffic), the bytes let
//! through stay within `rate × period + burst`. A transfer is admitted at once and its cost
//! charged to the bucket (which may go into debt); the caller then waits until the debt is
//! paid, so one large object does not need a bucket as large as itself, concurrent callers
//! queue fairly in arrival order, and the long-run rate is exactly the limit. Uploads are
//! charged before they are sent, downloads after they arrived (their size is known then).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;

use crate::error::Result;
use crate::objectlock::{ObjectLockPolicy, Retention};
use crate::source::VolumeSource;
use crate::store::{ObjectInfo, RequestCounts, Store};

/// A token bucket in bytes per second.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_second` (at least 1), with a burst of 100 ms of traffic.
    pub fn new(bytes_per_second: u64) -> RateLimiter {
        let rate = bytes_per_second.max(1) as f64;
        let burst = rate / 10.0;
        RateLimiter {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The limit, bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Charges `bytes` and waits until the bucket is out of debt.
    pub async fn acquire(&self, bytes: u64) {
        let wait = {
            // A poisoned lock only means another task panicked mid-update: the numbers are
            // still usable.
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let refill = now.saturating_duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - bytes as f64;
            s.1 = now;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A store whose uploads (`put`) and downloads (`get`, `get_range`) are limited; listings,
/// existence checks and deletes carry no payload and pass freely.
#[derive(Debug)]
pub struct ThrottleStore<S> {
    inner: S,
    upload: Option<Arc<RateLimiter>>,
    download: Option<Arc<RateLimiter>>,
}

impl<S: Store> ThrottleStore<S> {
    pub fn new(
        inner: S,
        upload: Option<Arc<RateLimiter>>,
        download: Option<Arc<RateLimiter>>,
    ) -> Self {
        ThrottleStore {
            inner,
            upload,
            download,
        }
    }
}

async fn charge(limiter: &Option<Arc<RateLimiter>>, bytes: u64) {
    if let Some(l) = limiter {
        l.acquire(bytes).await;
    }
}

#[async_trait]
impl<S: Store> Store for ThrottleStore<S> {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn get(&self, key: &str) -> Result<Bytes> {
        let b = self.inner.get(key).await?;
        charge(&self.download, b.len() as u64).await;
        Ok(b)
    }
    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes> {
        let b = self.inner.get_range(key, offset, len).await?;
        charge(&self.download, b.len() as u64).await;
        Ok(b)
    }
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        charge(&self.upload, data.len() as u64).await;
        self.inner.put(key, data).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool> {
        self.inner.exists(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
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
        self.inner.check_object_lock().await
    }
    async fn retention(&self, key: &str) -> Result<Option<Retention>> {
        self.inner.retention(key).await
    }
}

/// A volume source whose reads are limited (`--limit-read`: spare the disk or the export link).
pub struct ThrottledSource {
    inner: Arc<dyn VolumeSource>,
    limiter: Arc<RateLimiter>,
}

impl ThrottledSource {
    /// `inner` limited by `limiter`, or `inner` itself when there is no limit.
    pub fn wrap(
        inner: Arc<dyn VolumeSource>,
        limiter: Option<Arc<RateLimiter>>,
    ) -> Arc<dyn VolumeSource> {
        match limiter {
            Some(limiter) => Arc::new(ThrottledSource { inner, limiter }),
            None => inner,
        }
    }
}

#[async_trait]
impl VolumeSource for ThrottledSource {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes> {
        let b = self.inner.read_at(offset, len).await?;
        self.limiter.acquire(b.len() as u64).await;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the clock paused, time only moves by the limiter's sleeps: the elapsed (virtual)
    /// time is exactly what the limit demands, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn long_run_rate_is_the_limit_also_for_concurrent_callers() {
        let l = Arc::new(RateLimiter::new(1_000_000));
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        l.acquire(100_000).await; // 4 MB in all
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        // 4 MB at 1 MB/s, less the initial burst of 100 ms.
        assert!((3.85..=4.0).contains(&secs), "{secs}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_object_larger_than_the_burst_waits_its_share_and_idle_time_refills_only_the_burst()
    {
        let l = RateLimiter::new(1_000_000);
        let start = Instant::now();
        l.acquire(2_000_000).await;
        let first = start.elapsed().as_secs_f64();
        assert!((1.85..=1.95).contains(&first), "{first}");
        // A long pause does not bank more than the burst.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let start = Instant::now();
        l.acquire(1_100_000).await;
        let second = start.elapsed().as_secs_f64();
        assert!((0.95..=1.05).contains(&second), "{second}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_store_charges_uploads_before_and_downloads_after() {
        let dir = tempfile::tempdir().unwrap();
        let up = Arc::new(RateLimiter::new(1_000_000));
        let down = Arc::new(RateLimiter::new(500_000));
        let s = ThrottleStore::new(
            crate::store::LocalStore::new(dir.path()),
            Some(up.clone()),
            Some(down.clone()),
        );
        let start = Instant::now();
        s.put("a", Bytes::from(vec![7u8; 1_100_000])).await.unwrap();
        let put = start.elapsed().as_secs_f64();
        assert!((0.95..=1.05).contains(&put), "{put}");
        let start = Instant::now();
        assert_eq!(s.get("a").await.unwrap().len(), 1_100_000);
        let get = start.elapsed().as_secs_f64();
        assert!((2.0..=2.1).contains(&get), "{get}");
        // No payload, no wait.
        let start = Instant::now();
        assert!(s.exists("a").await.unwrap());
        assert_eq!(s.list("").await.unwrap().len(), 1);
        assert!(start.elapsed() < Duration::from_millis(1));
    }
}
