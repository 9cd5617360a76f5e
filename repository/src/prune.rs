//! Retention (`prune`) and garbage collection (`gc`).
//!
//! Retention is evaluated per VM (namespace + name) by the rules of [`crate::retention`]
//! (`last`, `hourly`, `daily`, `weekly`, `monthly`; the guard that keeps the newest consistent
//! backup), with one policy for all VMs or each VM's own. A backup kept by any rule is kept.
//! Pruning deletes the manifest first (uncommitting the backup), then its other objects. Chunks
//! are only removed by gc (module page: gc rule).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt, TryStreamExt};

use crate::error::{Error, Result};
use crate::format::{BackupId, ChunkId};
use crate::locks::LockKind;
use crate::repository::{BackupRef, Repository};
use crate::retention::{self, Candidate, Decision};

pub use crate::retention::KeepPolicy;

/// Splits `ids` (one VM's backups) into (keep, remove), newest first, by the rules alone (every
/// backup counted as application-consistent). Ids whose time cannot be parsed are kept.
pub fn select(ids: &[BackupId], policy: &KeepPolicy) -> (Vec<BackupId>, Vec<BackupId>) {
    let candidates: Vec<Candidate> = ids
        .iter()
        .map(|id| Candidate {
            id: id.clone(),
            application_consistent: true,
        })
        .collect();
    let (k, r): (Vec<Decision>, Vec<Decision>) = retention::decide(&candidates, policy)
        .into_iter()
        .partition(Decision::keep);
    (
        k.into_iter().map(|d| d.id).collect(),
        r.into_iter().map(|d| d.id).collect(),
    )
}

/// One VM's verdicts, newest first. `policy` is `None` when the caller gave none for this VM
/// (e.g. its per-VM policy is broken): then every backup is kept, each with
/// [`KeepReason::NoUsablePolicy`](crate::retention::KeepReason::NoUsablePolicy).
#[derive(Debug, Clone)]
pub struct VmPlan {
    pub namespace: String,
    pub vm: String,
    pub policy: Option<KeepPolicy>,
    pub decisions: Vec<Decision>,
}

/// Outcome of a prune.
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    pub kept: Vec<BackupRef>,
    pub removed: Vec<BackupRef>,
    /// Every VM's verdicts with their reasons (what `--dry-run` prints).
    pub plans: Vec<VmPlan>,
}

/// Applies `policy` to every VM (or one namespace / VM). With `dry_run` nothing is deleted.
pub async fn prune(
    repo: &Arc<Repository>,
    policy: &KeepPolicy,
    namespace: Option<&str>,
    vm: Option<&str>,
    dry_run: bool,
) -> Result<PruneReport> {
    if policy.is_empty() {
        return Err(Error::Invalid(
            "prune needs at least one --keep-* rule (it would remove every backup)".into(),
        ));
    }
    prune_by(repo, &|_, _| Some(policy.clone()), namespace, vm, dry_run).await
}

/// Applies each VM's own policy: `policy_of(namespace, vm)`; `None` (or an empty policy) keeps
/// every backup of that VM. Holds the exclusive lock while it decides and deletes (not for
/// `dry_run`).
pub async fn prune_by(
    repo: &Arc<Repository>,
    policy_of: &(dyn Fn(&str, &str) -> Option<KeepPolicy> + Sync),
    namespace: Option<&str>,
    vm: Option<&str>,
    dry_run: bool,
) -> Result<PruneReport> {
    let lock = if dry_run {
        None
    } else {
        Some(repo.lock(LockKind::Exclusive, "prune").await?)
    };
    let res = prune_inner(repo, policy_of, namespace, vm, dry_run).await;
    if let Some(l) = lock {
        l.release().await;
    }
    res
}

/// How many manifests are read at once for their consistency.
const MANIFEST_READS: usize = 8;

/// One VM's backups as retention sees them. A manifest that cannot be read counts as not
/// consistent: rules still apply to it by its id's time, only the guard does not pick it.
async fn candidates(repo: &Repository, refs: Vec<BackupRef>) -> Vec<Candidate> {
    stream::iter(refs)
        .map(|r| async move {
            let consistent = repo.load_manifest(&r).await.is_ok_and(|m| {
                m.consistency.is_application_consistent()
                    || m.consistency == virtguard_model::Consistency::Offline
            });
            Candidate {
                id: r.id,
                application_consistent: consistent,
            }
        })
        .buffer_unordered(MANIFEST_READS)
        .collect()
        .await
}

async fn prune_inner(
    repo: &Arc<Repository>,
    policy_of: &(dyn Fn(&str, &str) -> Option<KeepPolicy> + Sync),
    namespace: Option<&str>,
    vm: Option<&str>,
    dry_run: bool,
) -> Result<PruneReport> {
    let mut groups: BTreeMap<(String, String), Vec<BackupRef>> = BTreeMap::new();
    for b in repo.list_backups(namespace, vm).await? {
        groups
            .entry((b.namespace.clone(), b.vm.clone()))
            .or_default()
            .push(b);
    }
    let mut report = PruneReport::default();
    for ((ns, vm), refs) in groups {
        let policy = policy_of(&ns, &vm).filter(|p| !p.is_empty());
        let decisions = match &policy {
            Some(p) => retention::decide(&candidates(repo, refs).await, p),
            None => retention::keep_all(refs.into_iter().map(|r| r.id)),
        };
        for d in &decisions {
            let b = BackupRef {
                namespace: ns.clone(),
                vm: vm.clone(),
                id: d.id.clone(),
            };
            if d.keep() {
                report.kept.push(b);
                continue;
            }
            if !dry_run {
                repo.store().delete(&b.manifest_key()).await?;
                for o in repo.store().list(&b.prefix()).await? {
                    repo.store().delete(&o.key).await?;
                }
            }
            report.removed.push(b);
        }
        report.plans.push(VmPlan {
            namespace: ns,
            vm,
            policy,
            decisions,
        });
    }
    Ok(report)
}

/// Outcome of a gc.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub chunks_total: usize,
    pub chunks_referenced: usize,
    pub chunks_deleted: usize,
    pub bytes_deleted: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub chunks_in_grace: usize,
    /// Objects of uncommitted backups deleted.
    pub leftovers_deleted: usize,
    /// Debris of interrupted writes (local temporary files) removed.
    pub incomplete_removed: usize,
}

/// Deletes unreferenced chunks older than `grace`, under the exclusive lock. Refuses to run if
/// any manifest or index cannot be read (it could not know what that backup references).
pub async fn gc(
    repo: &Arc<Repository>,
    grace: Duration,
    dry_run: bool,
    concurrency: usize,
) -> Result<GcReport> {
    let lock = repo.lock(LockKind::Exclusive, "gc").await?;
    let res = gc_locked(repo, grace, dry_run, concurrency).await;
    lock.release().await;
    res
}

async fn gc_locked(
    repo: &Arc<Repository>,
    grace: Duration,
    dry_run: bool,
    concurrency: usize,
) -> Result<GcReport> {
    let mut report = GcReport::default();
    let mut used: HashSet<ChunkId> = HashSet::new();
    let objects = repo.store().list("backups/").await?;
    let committed: HashSet<String> = objects
        .iter()
        .filter_map(|o| BackupRef::from_key(&o.key))
        .filter(|(_, f)| *f == "manifest.json")
        .map(|(r, _)| r.prefix())
        .collect();
    for b in repo.list_backups(None, None).await? {
        let m = repo.load_manifest(&b).await.map_err(|e| {
            Error::Invalid(format!("gc stopped: {e}; fix or prune that backup first"))
        })?;
        for v in &m.volumes {
            let idx = repo.load_index(&m, &v.name).await.map_err(|e| {
                Error::Invalid(format!("gc stopped: {e}; fix or prune backup {b} first"))
            })?;
            used.extend(idx.chunks.into_iter().filter(|c| !c.is_zero_marker()));
        }
    }
    report.chunks_referenced = used.len();
    let now = SystemTime::now();
    let old = |t: SystemTime| {
        now.duration_since(t)
            .map(|age| age > grace)
            .unwrap_or(false)
    };
    let mut doomed = Vec::new();
    for o in repo.store().list("chunks/").await? {
        report.chunks_total += 1;
        let id = o.key.rsplit('/').next().and_then(ChunkId::from_hex);
        let referenced = id.is_some_and(|id| used.contains(&id));
        if referenced {
            continue;
        }
        if old(o.modified) {
            report.chunks_deleted += 1;
            report.bytes_deleted += o.size;
            doomed.push(o.key);
        } else {
            report.chunks_in_grace += 1;
        }
    }
    for o in &objects {
        let uncommitted = match BackupRef::from_key(&o.key) {
            Some((r, _)) => !committed.contains(&r.prefix()),
            None => false,
        };
        if uncommitted && old(o.modified) {
            report.leftovers_deleted += 1;
            doomed.push(o.key.clone());
        }
    }
    if !dry_run {
        stream::iter(doomed)
            .map(|k| {
                let repo = repo.clone();
                async move { repo.store().delete(&k).await }
            })
            .buffer_unordered(concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        // A temporary file lives only while one write runs, but writers not bound by the lock
        // (e.g. a contender writing its own lock object) may be mid-write right now: only
        // debris at least an hour old is removed, whatever the grace period.
        let debris_age = grace.max(Duration::from_secs(3600));
        report.incomplete_removed = repo.store().remove_incomplete(debris_age).await?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> BackupId {
        BackupId::at(s.parse().unwrap(), 0)
    }

    #[test]
    fn keep_last_and_daily() {
        let ids = vec![
            id("2026-11-01T10:00:00Z"),
            id("2026-11-01T20:00:00Z"),
            id("2026-11-02T10:00:00Z"),
            id("2026-11-03T09:00:00Z"),
            id("2026-11-03T10:00:00Z"),
        ];
        let (keep, remove) = select(
            &ids,
            &KeepPolicy {
                last: 1,
                ..Default::default()
            },
        );
        assert_eq!(keep, vec![ids[4].clone()]);
        assert_eq!(remove.len(), 4);
        let (keep, _) = select(
            &ids,
            &KeepPolicy {
                daily: 2,
                ..Default::default()
            },
        );
        assert_eq!(
            keep,
            vec![ids[4].clone(), ids[2].clone()],
            "newest of each of the 2 newest days"
        );
        let (keep, _) = select(
            &ids,
            &KeepPolicy {
                last: 1,
                daily: 3,
                ..Default::default()
            },
        );
        assert_eq!(keep, vec![ids[4].clone(), ids[2].clone(), ids[1].clone()]);
    }

    #[test]
    fn weekly_monthly_hourly() {
        let ids = vec![
            id("2026-10-31T10:00:00Z"),
            id("2026-11-01T10:00:00Z"), // Sunday: same ISO week as 10-31
            id("2026-11-02T10:00:00Z"), // Monday: new week
            id("2026-11-02T10:30:00Z"),
        ];
        let (keep, _) = select(
            &ids,
            &KeepPolicy {
                weekly: 5,
                ..Default::default()
            },
        );
        assert_eq!(keep, vec![ids[3].clone(), ids[1].clone()]);
        let (keep, _) = select(
            &ids,
            &KeepPolicy {
                monthly: 5,
                ..Default::default()
            },
        );
        assert_eq!(keep, vec![ids[3].clone(), ids[0].clone()]);
        let (keep, _) = select(
            &ids,
            &KeepPolicy {
                hourly: 2,
                ..Default::default()
            },
        );
        assert_eq!(keep, vec![ids[3].clone(), ids[1].clone()]);
    }

    #[test]
    fn empty_policy_is_detected() {
        assert!(KeepPolicy::default().is_empty());
        assert!(!KeepPolicy {
            last: 1,
            ..Default::default()
        }
        .is_empty());
    }
}
