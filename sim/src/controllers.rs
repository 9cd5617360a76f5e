//! Controller wiring: synchronous admission hooks and the background reconcile loop.
//!
//! One task runs every controller pass whenever the store changes and at least every
//! `tickMs` (timers such as "creationTime after 200 ms" need the periodic wake-up). Passes are
//! level-triggered: they read the current objects and converge them, so a missed wake-up only
//! delays work.

use std::sync::Arc;

use serde_json::Value;

use crate::resources::ResId;
use crate::status::ApiError;
use crate::Inner;

/// Called on every create before the object is stored (what admission webhooks would do).
pub(crate) fn on_create(
    _inner: &Arc<Inner>,
    _res: ResId,
    _obj: &mut Value,
) -> Result<(), ApiError> {
    Ok(())
}

/// Start the reconcile loop.
pub(crate) fn spawn(inner: Arc<Inner>) -> Vec<tokio::task::JoinHandle<()>> {
    let h = tokio::spawn(async move {
        let mut notify = inner.store.subscribe();
        let mut storage = crate::snapshot::StorageTimers::default();
        let mut groups = crate::groupsnapshot::GroupTimers::default();
        let mut kv = crate::kubevirt::KubeVirtTimers::default();
        let mut exports = crate::export::ExportTimers::default();
        let tick = crate::ms(inner.timings.tick_ms.max(1));
        let mut saved_rv = inner.store.current_rv();
        let mut last_save = std::time::Instant::now();
        loop {
            if inner.persist && last_save.elapsed() >= std::time::Duration::from_secs(1) {
                let rv = inner.store.current_rv();
                if rv != saved_rv {
                    if let Err(e) = crate::persist::save(&inner) {
                        tracing::warn!("saving state: {e}");
                    }
                    saved_rv = rv;
                }
                last_save = std::time::Instant::now();
            }
            crate::snapshot::reconcile_pvcs(&inner);
            crate::snapshot::reconcile_snapshots(&inner, &mut storage);
            crate::groupsnapshot::reconcile(&inner, &mut groups);
            crate::launcher::reconcile(&inner);
            crate::kubevirt::reconcile(&inner, &mut kv);
            crate::kubevirt::safety_thaws(&inner).await;
            crate::export::reconcile(&inner, &mut exports);
            crate::cbt::reconcile(&inner).await;
            crate::cdi::reconcile(&inner);
            crate::jobs::reconcile(&inner).await;
            tokio::select! {
                _ = inner.stop.cancelled() => break,
                _ = notify.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
        if inner.persist {
            if let Err(e) = crate::persist::save(&inner) {
                tracing::warn!("saving state: {e}");
            }
        }
        inner.jobs.kill_all().await;
        inner.launcher.destroy_all().await;
    });
    vec![h]
}
