//! Cleanup: the objects a restore run created, deleted again (newest first) when the run fails
//! or is interrupted, unless `--keep-partial`.
//!
//! Invariant: once [`Created::commit`] ran — the VM uses the restored disks — nothing is rolled
//! back any more, whatever happens next: a rollback then would take disks from a VM that needs
//! them.

use std::sync::{Arc, Mutex};

use kube::api::DeleteParams;
use kube::Client;

use super::cluster::api_of;

/// Objects created by a restore run (deleted again on failure / interruption).
#[derive(Debug, Default, Clone)]
pub struct Created(Arc<Mutex<CreatedInner>>);

#[derive(Debug, Default)]
struct CreatedInner {
    items: Vec<(String, String, String)>,
    /// Set once the VM uses what was created: nothing may be rolled back any more.
    committed: bool,
}

impl Created {
    pub(super) fn push(&self, kind: &str, ns: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .push((kind.to_string(), ns.to_string(), name.to_string()));
    }

    /// The VM now uses the created disks: forget them, so neither a later failure nor an
    /// interruption deletes a disk the VM needs.
    pub(super) fn commit(&self) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        g.items.clear();
        g.committed = true;
    }

    /// Whether the VM was already switched to the restored disks.
    pub fn committed(&self) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).committed
    }

    /// The recorded objects as `Kind ns/name`.
    pub fn list(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .iter()
            .map(|(k, ns, n)| format!("{k} {ns}/{n}"))
            .collect()
    }

    /// Deletes every recorded object, newest first. Returns what was deleted; failures are
    /// reported as warnings (the objects carry the restore-id label for manual cleanup).
    pub async fn rollback(&self, client: &Client) -> Vec<String> {
        let items: Vec<_> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .items
            .drain(..)
            .rev()
            .collect();
        let mut deleted = Vec::new();
        let dp = DeleteParams::background();
        for (kind, ns, name) in items {
            if let Some((api, k)) = api_of(client, &ns, &kind) {
                match api.delete(&name, &dp).await {
                    Ok(_) => deleted.push(format!("{k} {ns}/{name}")),
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(object = %format!("{k} {ns}/{name}"), error = %e, "could not delete")
                    }
                }
            }
        }
        deleted
    }
}
