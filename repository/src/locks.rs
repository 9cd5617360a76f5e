//! Repository locks: `locks/<lock-id>.json` objects (protocol in the [`crate`] page).
//!
//! Shared locks (backup, restore, verify, gc mark) coexist; an exclusive lock (prune, gc delete) excludes all
//! others. Acquire = write own lock, list, back off if a live conflicting lock exists. A lock is
//! live while its `refreshed` time is younger than `stale_after`; the holder rewrites it every
//! `stale_after / 4` from a background task.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::Store;

/// Default time after which an unrefreshed lock is stale.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Shared,
    Exclusive,
}

/// Content of a lock object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub id: String,
    pub kind: LockKind,
    pub operation: String,
    pub host: String,
    pub pid: u32,
    pub created: DateTime<Utc>,
    pub refreshed: DateTime<Utc>,
}

impl LockInfo {
    fn describe(&self) -> String {
        format!(
            "{} lock `{}` held by `{}` (pid {} on {}) since {}",
            match self.kind {
                LockKind::Shared => "shared",
                LockKind::Exclusive => "exclusive",
            },
            self.id,
            self.operation,
            self.pid,
            self.host,
            self.created.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }

    /// Whether the lock has not been refreshed for `stale_after`.
    pub fn is_stale(&self, stale_after: Duration) -> bool {
        let age = Utc::now().signed_duration_since(self.refreshed);
        age.to_std().map(|a| a > stale_after).unwrap_or(false)
    }
}

fn lock_key(id: &str) -> String {
    format!("locks/{id}.json")
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Every lock in the repository with its key. Unreadable lock objects are reported as live
/// exclusive locks dated by the object's modification time (so they block until stale).
pub async fn list_locks(store: &dyn Store) -> Result<Vec<(String, LockInfo)>> {
    let mut out = Vec::new();
    for obj in store.list("locks/").await? {
        let info = match store.get(&obj.key).await {
            Ok(data) => serde_json::from_slice::<LockInfo>(&data).ok(),
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        let info = info.unwrap_or_else(|| {
            let t: DateTime<Utc> = obj.modified.into();
            LockInfo {
                id: obj.key.clone(),
                kind: LockKind::Exclusive,
                operation: "unreadable lock object".into(),
                host: "?".into(),
                pid: 0,
                created: t,
                refreshed: t,
            }
        });
        out.push((obj.key, info));
    }
    Ok(out)
}

/// Deletes stale locks; returns what was removed.
pub async fn remove_stale(store: &dyn Store, stale_after: Duration) -> Result<Vec<LockInfo>> {
    let mut removed = Vec::new();
    for (key, info) in list_locks(store).await? {
        if info.is_stale(stale_after) {
            store.delete(&key).await?;
            removed.push(info);
        }
    }
    Ok(removed)
}

/// A held lock. Call [`LockGuard::release`]; dropping it stops the refresh and deletes the lock
/// object in the background (best effort, e.g. on error paths).
#[derive(Debug)]
pub struct LockGuard {
    store: Arc<dyn Store>,
    key: String,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl LockGuard {
    /// Takes a lock of `kind` for `operation`, or fails with [`Error::Locked`] naming the holder.
    pub async fn acquire(
        store: Arc<dyn Store>,
        kind: LockKind,
        operation: &str,
        stale_after: Duration,
    ) -> Result<LockGuard> {
        let now = Utc::now();
        let id = format!(
            "{}-{:08x}",
            now.format("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>()
        );
        let info = LockInfo {
            id: id.clone(),
            kind,
            operation: operation.to_string(),
            host: hostname(),
            pid: std::process::id(),
            created: now,
            refreshed: now,
        };
        let key = lock_key(&id);
        store
            .put(
                &key,
                Bytes::from(serde_json::to_vec(&info).unwrap_or_default()),
            )
            .await?;
        let mut guard = LockGuard {
            store: store.clone(),
            key: key.clone(),
            refresher: None,
        };
        let conflict = list_locks(store.as_ref()).await.map(|locks| {
            locks.into_iter().find(|(k, other)| {
                *k != key
                    && !other.is_stale(stale_after)
                    && (kind == LockKind::Exclusive || other.kind == LockKind::Exclusive)
            })
        });
        match conflict {
            Ok(None) => {}
            Ok(Some((_, other))) => {
                guard.release_inner().await;
                return Err(Error::Locked {
                    holder: other.describe(),
                });
            }
            Err(e) => {
                guard.release_inner().await;
                return Err(e);
            }
        }
        let period = (stale_after / 4).max(Duration::from_millis(100));
        let refresh_store = store.clone();
        guard.refresher = Some(tokio::spawn(async move {
            let mut info = info;
            loop {
                tokio::time::sleep(period).await;
                info.refreshed = Utc::now();
                let data = Bytes::from(serde_json::to_vec(&info).unwrap_or_default());
                if let Err(e) = refresh_store.put(&key, data).await {
                    tracing::warn!(error = %e, "could not refresh repository lock");
                }
            }
        }));
        Ok(guard)
    }

    async fn release_inner(&mut self) {
        if let Some(t) = self.refresher.take() {
            t.abort();
            let _ = t.await;
        }
        if let Err(e) = self.store.delete(&self.key).await {
            tracing::warn!(error = %e, key = %self.key, "could not delete lock object");
        }
        self.key.clear();
    }

    /// Stops refreshing and deletes the lock object.
    pub async fn release(mut self) {
        self.release_inner().await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(t) = self.refresher.take() {
            t.abort();
        }
        if !self.key.is_empty() {
            let store = self.store.clone();
            let key = std::mem::take(&mut self.key);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store.delete(&key).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    const STALE: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn shared_coexist_exclusive_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        let a = LockGuard::acquire(store.clone(), LockKind::Shared, "backup", STALE)
            .await
            .unwrap();
        let b = LockGuard::acquire(store.clone(), LockKind::Shared, "verify", STALE)
            .await
            .unwrap();
        let err = LockGuard::acquire(store.clone(), LockKind::Exclusive, "gc", STALE)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("backup") || err.to_string().contains("verify"),
            "{err}"
        );
        a.release().await;
        b.release().await;
        assert!(
            store.list("locks/").await.unwrap().is_empty(),
            "released locks are deleted"
        );
        let x = LockGuard::acquire(store.clone(), LockKind::Exclusive, "gc", STALE)
            .await
            .unwrap();
        let err = LockGuard::acquire(store.clone(), LockKind::Shared, "backup", STALE)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Locked { .. }));
        assert!(err.to_string().contains("gc"));
        assert_eq!(
            store.list("locks/").await.unwrap().len(),
            1,
            "the loser removed its own lock"
        );
        x.release().await;
    }

    #[tokio::test]
    async fn stale_locks_do_not_block_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        let old = Utc::now() - chrono::Duration::hours(1);
        let dead = LockInfo {
            id: "dead".into(),
            kind: LockKind::Exclusive,
            operation: "gc".into(),
            host: "h".into(),
            pid: 1,
            created: old,
            refreshed: old,
        };
        store
            .put(
                "locks/dead.json",
                Bytes::from(serde_json::to_vec(&dead).unwrap()),
            )
            .await
            .unwrap();
        let g = LockGuard::acquire(store.clone(), LockKind::Shared, "backup", STALE)
            .await
            .unwrap();
        g.release().await;
        let removed = remove_stale(store.as_ref(), STALE).await.unwrap();
        assert_eq!(removed, vec![dead]);
        assert!(store.list("locks/").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn held_lock_is_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
        let stale = Duration::from_millis(400);
        let g = LockGuard::acquire(store.clone(), LockKind::Shared, "backup", stale)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
        let locks = list_locks(store.as_ref()).await.unwrap();
        assert_eq!(locks.len(), 1);
        assert!(!locks[0].1.is_stale(stale), "refresher keeps the lock live");
        assert!(
            LockGuard::acquire(store.clone(), LockKind::Exclusive, "gc", stale)
                .await
                .is_err()
        );
        g.release().await;
    }
}
