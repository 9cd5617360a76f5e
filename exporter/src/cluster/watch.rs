//! One reflector per Kubernetes kind, with its health.
//!
//! Each kind cluster mode reads is followed by exactly one `kube::runtime::watcher` (initial LIST,
//! then WATCH from that resourceVersion; a new LIST only when the watch cannot be resumed, e.g.
//! 410 Gone) feeding a `reflector` store. Scrapes only read the stores: no API call per scrape.
//!
//! Failures: every list/watch error is retried by kube's default backoff (exponential from
//! 0.8 s to 30 s, as client-go does), counted in `virtguard_exporter_watch_errors_total{kind,
//! reason}` with a fixed reason (never the message), and logged — the first error of each reason
//! at `warn`, repeats at `debug`, the recovery at `info`. A kind whose API is not served (404 on
//! the initial list: its CRD is not installed) is marked *absent*: it never blocks readiness or
//! the other kinds, its series are simply missing, and it starts working without a restart once
//! the CRD appears.
//!
//! Sync: a kind is *synced* once its first complete list has landed in the store; it stays synced
//! afterwards (later relists swap the store atomically, so a scrape never sees a half list).

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;

/// Why a list or watch call failed: the `reason` label of the error counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    /// 404: the resource is not served (CRD missing) or the namespace does not exist.
    NotFound,
    /// 401/403: the ServiceAccount may not list/watch it (check the ClusterRole).
    Forbidden,
    /// 410: the watch's resourceVersion was compacted; the watcher lists again.
    Expired,
    /// Anything else (connection errors, 5xx, undecodable objects).
    Other,
}

impl ErrorReason {
    /// Every reason, in the order they are rendered.
    pub const ALL: [ErrorReason; 4] = [
        ErrorReason::NotFound,
        ErrorReason::Forbidden,
        ErrorReason::Expired,
        ErrorReason::Other,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorReason::NotFound => "not_found",
            ErrorReason::Forbidden => "forbidden",
            ErrorReason::Expired => "expired",
            ErrorReason::Other => "other",
        }
    }

    fn of(e: &watcher::Error) -> ErrorReason {
        let code = match e {
            watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
            watcher::Error::WatchError(s) => s.code,
            _ => 0,
        };
        match code {
            404 => ErrorReason::NotFound,
            401 | 403 => ErrorReason::Forbidden,
            410 => ErrorReason::Expired,
            _ => ErrorReason::Other,
        }
    }
}

/// Health of one kind's reflector, shared between its task and the scrapes.
#[derive(Debug)]
pub struct KindHealth {
    /// The kind's name (the `kind` label).
    pub kind: &'static str,
    synced: AtomicBool,
    absent: AtomicBool,
    failing: AtomicBool,
    errors: [AtomicU64; 4],
    warned: [AtomicBool; 4],
}

impl KindHealth {
    /// A fresh, unsynced health record.
    pub fn new(kind: &'static str) -> KindHealth {
        KindHealth {
            kind,
            synced: AtomicBool::new(false),
            absent: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            errors: Default::default(),
            warned: Default::default(),
        }
    }

    /// The first complete list has landed in the store.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// The API answered 404 to the initial list and the kind never synced (CRD not installed).
    pub fn absent(&self) -> bool {
        self.absent.load(Ordering::Acquire) && !self.synced()
    }

    /// Synced, or known to be absent: the kind no longer holds up readiness.
    pub fn settled(&self) -> bool {
        self.synced() || self.absent()
    }

    /// Errors so far for `reason`.
    pub fn errors(&self, reason: ErrorReason) -> u64 {
        self.errors[reason as usize].load(Ordering::Relaxed)
    }

    /// Records one watcher item.
    pub fn observe<K>(&self, item: &Result<Event<K>, watcher::Error>) {
        match item {
            Ok(ev) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::info!(kind = self.kind, "watch recovered");
                }
                if matches!(ev, Event::Init) {
                    self.absent.store(false, Ordering::Release);
                }
                if matches!(ev, Event::InitDone) && !self.synced.swap(true, Ordering::AcqRel) {
                    tracing::info!(kind = self.kind, "reflector synced");
                }
            }
            Err(e) => {
                let reason = ErrorReason::of(e);
                self.errors[reason as usize].fetch_add(1, Ordering::Relaxed);
                self.failing.store(true, Ordering::Release);
                let initial_404 = reason == ErrorReason::NotFound
                    && matches!(e, watcher::Error::InitialListFailed(_));
                if initial_404 {
                    self.absent.store(true, Ordering::Release);
                }
                if self.warned[reason as usize].swap(true, Ordering::AcqRel) {
                    tracing::debug!(kind = self.kind, error = %e, "watch error (retrying with backoff)");
                } else if initial_404 {
                    tracing::warn!(kind = self.kind, error = %e,
                        "the API does not serve this kind (is its CRD installed?); its metrics are absent until it appears (retrying with backoff)");
                } else if reason == ErrorReason::Forbidden {
                    tracing::warn!(kind = self.kind, error = %e,
                        "not allowed to list/watch this kind: check the exporter's ClusterRole (deploy/exporter/rbac.yaml); retrying with backoff");
                } else {
                    tracing::warn!(kind = self.kind, error = %e, "watch error; retrying with backoff");
                }
            }
        }
    }
}

/// A kind's store and health.
pub struct Reflected<K: Resource + 'static>
where
    K::DynamicType: Hash + Eq,
{
    /// The reflector's read side.
    pub store: Store<K>,
    /// Its health.
    pub health: Arc<KindHealth>,
}

/// Starts the reflector of one kind on the current tokio runtime. `namespace` restricts it to
/// one namespace (None: all namespaces); `labels` is a label selector ("" for none). Returns the
/// store and the task, which runs until aborted.
pub fn spawn<K>(
    client: Client,
    kind: &'static str,
    namespace: Option<&str>,
    labels: &str,
) -> (Reflected<K>, tokio::task::JoinHandle<()>)
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Hash + Eq + Clone + Send + Sync,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let mut cfg = watcher::Config::default();
    if !labels.is_empty() {
        cfg = cfg.labels(labels);
    }
    let (store, writer) = reflector::store();
    let health = Arc::new(KindHealth::new(kind));
    let h = health.clone();
    let task = tokio::spawn(async move {
        // managedFields can be most of an object's size and are never read here.
        let events = watcher::watcher(api, cfg)
            .modify(|o| o.managed_fields_mut().clear())
            .default_backoff();
        let stream = reflector::reflector(writer, events);
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            h.observe(&item);
        }
    });
    (Reflected { store, health }, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_err(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("x", "y").with_code(code)))
    }

    #[test]
    fn health_tracks_sync_absence_and_error_reasons() {
        let h = KindHealth::new("VirtualMachineSnapshot");
        assert!(!h.settled());
        h.observe::<()>(&Err(watcher::Error::InitialListFailed(api_err(404))));
        assert!(h.absent() && h.settled() && !h.synced());
        assert_eq!(h.errors(ErrorReason::NotFound), 1);
        // The CRD appears: a list starts and completes.
        h.observe::<()>(&Ok(Event::Init));
        assert!(!h.absent() && !h.settled());
        h.observe::<()>(&Ok(Event::InitDone));
        assert!(h.synced() && h.settled());
        // Later failures keep the (stale but complete) store usable.
        h.observe::<()>(&Err(watcher::Error::WatchFailed(api_err(403))));
        h.observe::<()>(&Err(watcher::Error::WatchStartFailed(api_err(500))));
        h.observe::<()>(&Err(watcher::Error::WatchError(Box::new(
            Status::failure("gone", "Expired").with_code(410),
        ))));
        assert!(h.synced());
        assert_eq!(h.errors(ErrorReason::Forbidden), 1);
        assert_eq!(h.errors(ErrorReason::Other), 1);
        assert_eq!(h.errors(ErrorReason::Expired), 1);
    }

    #[test]
    fn a_404_on_a_running_watch_is_not_absence() {
        let h = KindHealth::new("ConfigMap");
        h.observe::<()>(&Err(watcher::Error::WatchStartFailed(api_err(404))));
        assert!(!h.absent() && !h.settled());
        h.observe::<()>(&Err(watcher::Error::InitialListFailed(api_err(500))));
        assert!(!h.settled());
    }
}
