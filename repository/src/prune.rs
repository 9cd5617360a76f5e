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
    /// Backups the rules remove but whose manifest is under S3 Object Lock: kept until the
    /// date (RFC 3339), removed by a prune after it.
    pub locked: Vec<(BackupRef, String)>,
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
        let mut removed = Vec::new();
        for d in &decisions {
            let b = BackupRef {
                namespace: ns.clone(),
                vm: vm.clone(),
                id: d.id.clone(),
            };
            if d.keep() {
                report.kept.push(b);
            } else {
                removed.push(b);
            }
        }
        // Object Lock: a manifest still retained cannot go (its chunks are retained as long).
        if repo.config().object_lock.is_some() && !removed.is_empty() {
            let now = chrono::Utc::now();
            let mut free = Vec::new();
            for b in removed {
                match repo.store().retention(&b.manifest_key()).await? {
                    Some(r) if r.active(now) => {
                        report.locked.push((b.clone(), r.until.to_rfc3339()));
                        report.kept.push(b);
                    }
                    _ => free.push(b),
                }
            }
            removed = free;
        }
        if !dry_run && !removed.is_empty() {
            delete_backups(repo, &ns, &vm, &removed).await?;
        }
        report.removed.extend(removed);
        report.plans.push(VmPlan {
            namespace: ns,
            vm,
            policy,
            decisions,
        });
    }
    Ok(report)
}

/// Deletes in flight while pruning.
const DELETES_IN_FLIGHT: usize = 16;

/// Deletes the backups `removed` of one VM: every manifest first (uncommitting them), then
/// their other objects, found by one listing of the VM's prefix (not one per backup).
async fn delete_backups(
    repo: &Arc<Repository>,
    ns: &str,
    vm: &str,
    removed: &[BackupRef],
) -> Result<()> {
    let delete_all = |keys: Vec<String>| {
        stream::iter(keys)
            .map(|k| async move { repo.store().delete(&k).await })
            .buffer_unordered(DELETES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
    };
    let manifests: Vec<String> = removed.iter().map(BackupRef::manifest_key).collect();
    delete_all(manifests.clone()).await?;
    let manifests: HashSet<String> = manifests.into_iter().collect();
    let prefixes: HashSet<String> = removed.iter().map(BackupRef::prefix).collect();
    let rest: Vec<String> = repo
        .store()
        .list(&format!("backups/{ns}/{vm}/"))
        .await?
        .into_iter()
        .filter(|o| {
            BackupRef::from_key(&o.key).is_some_and(|(r, _)| prefixes.contains(&r.prefix()))
                && !manifests.contains(&o.key)
        })
        .map(|o| o.key)
        .collect();
    delete_all(rest).await?;
    Ok(())
}

/// Outcome of a gc.
#[derive(Debug, Clone, Default)]
pub struct GcReport {
    pub chunks_total: usize,
    /// Stored bytes of every chunk object (before deletion).
    pub bytes_total: u64,
    pub chunks_referenced: usize,
    pub chunks_deleted: usize,
    pub bytes_deleted: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub chunks_in_grace: usize,
    /// Chunks unreferenced when gc looked, kept because a backup committed while gc was
    /// looking reuses them.
    pub chunks_reused_meanwhile: usize,
    /// Objects of uncommitted backups deleted.
    pub leftovers_deleted: usize,
    /// Debris of interrupted writes (local temporary files) removed.
    pub incomplete_removed: usize,
    /// Unreferenced objects kept because they are under S3 Object Lock (a later gc frees them).
    pub objects_locked: usize,
    /// The latest retain-until date among them (RFC 3339): every one is free after it.
    pub locked_until: Option<String>,
}

/// How a gc runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Unreferenced objects younger than this are kept.
    pub grace: Duration,
    /// Report what would go, delete nothing (and take no exclusive lock).
    pub dry_run: bool,
    pub concurrency: usize,
    /// How long the delete phase waits for running backups to finish (their shared locks)
    /// before it gives up with [`Error::Locked`]; zero fails at once.
    pub lock_wait: Duration,
}

/// What the mark phase found: the objects that go unless a backup committed meanwhile uses them.
#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    /// Manifests (backup prefixes) whose references are in the plan.
    seen: HashSet<String>,
    /// Unreferenced chunks older than the grace period: (id, key, stored size).
    chunks: Vec<(Option<ChunkId>, String, u64)>,
    /// Objects of backups without a manifest, older than the grace period: (backup prefix, key).
    leftovers: Vec<(String, String)>,
    report: GcReport,
}

impl GcPlan {
    /// The counts as the mark phase saw them (what a dry run reports).
    pub fn report(&self) -> &GcReport {
        &self.report
    }
}

/// Deletes unreferenced chunks older than the grace period: [`gc_mark`] under a shared lock
/// (backups go on), then [`gc_sweep`] under the exclusive lock. Refuses to run if any manifest
/// or index cannot be read (it could not know what that backup references).
pub async fn gc(repo: &Arc<Repository>, opts: &GcOptions) -> Result<GcReport> {
    let plan = gc_mark(repo, opts).await?;
    if opts.dry_run {
        return Ok(plan.report);
    }
    gc_sweep(repo, plan, opts).await
}

/// The long phase: reads every manifest and index and lists the chunks, under a shared lock
/// (backups and restores run meanwhile; prune and another gc's sweep cannot).
pub async fn gc_mark(repo: &Arc<Repository>, opts: &GcOptions) -> Result<GcPlan> {
    let lock = repo.lock(LockKind::Shared, "gc (mark)").await?;
    let res = mark_locked(repo, opts.grace).await;
    lock.release().await;
    res
}

/// The short phase, under the exclusive lock (waiting up to `opts.lock_wait` for running
/// backups): reads the manifests committed since [`gc_mark`] (a backup may reuse any stored
/// chunk, also one the plan holds unreferenced), spares what they use, deletes the rest.
pub async fn gc_sweep(repo: &Arc<Repository>, plan: GcPlan, opts: &GcOptions) -> Result<GcReport> {
    let lock = repo
        .lock_waiting(LockKind::Exclusive, "gc (delete)", opts.lock_wait)
        .await?;
    let res = sweep_locked(repo, plan, opts).await;
    lock.release().await;
    res
}

/// Chunk ids referenced by the indexes of `b`'s manifest.
async fn referenced_by(
    repo: &Repository,
    b: &BackupRef,
    used: &mut HashSet<ChunkId>,
) -> Result<()> {
    let m = repo
        .load_manifest(b)
        .await
        .map_err(|e| Error::Invalid(format!("gc stopped: {e}; fix or prune that backup first")))?;
    for v in &m.volumes {
        let idx = repo.load_index(&m, &v.name).await.map_err(|e| {
            Error::Invalid(format!("gc stopped: {e}; fix or prune backup {b} first"))
        })?;
        used.extend(idx.chunks.into_iter().filter(|c| !c.is_zero_marker()));
    }
    Ok(())
}

/// Prefixes of the backups that have a manifest, from a listing of `backups/`.
fn committed_prefixes(objects: &[crate::store::ObjectInfo]) -> HashSet<String> {
    objects
        .iter()
        .filter_map(|o| BackupRef::from_key(&o.key))
        .filter(|(_, f)| *f == "manifest.json")
        .map(|(r, _)| r.prefix())
        .collect()
}

async fn mark_locked(repo: &Arc<Repository>, grace: Duration) -> Result<GcPlan> {
    let mut plan = GcPlan::default();
    let mut used: HashSet<ChunkId> = HashSet::new();
    let objects = repo.store().list("backups/").await?;
    let committed = committed_prefixes(&objects);
    for b in repo.list_backups(None, None).await? {
        referenced_by(repo, &b, &mut used).await?;
        plan.seen.insert(b.prefix());
    }
    plan.report.chunks_referenced = used.len();
    let now = SystemTime::now();
    let old = |t: SystemTime| {
        now.duration_since(t)
            .map(|age| age > grace)
            .unwrap_or(false)
    };
    for o in repo.store().list("chunks/").await? {
        plan.report.chunks_total += 1;
        plan.report.bytes_total += o.size;
        let id = o.key.rsplit('/').next().and_then(ChunkId::from_hex);
        if id.is_some_and(|id| used.contains(&id)) {
            continue;
        }
        if old(o.modified) {
            plan.report.chunks_deleted += 1;
            plan.report.bytes_deleted += o.size;
            plan.chunks.push((id, o.key, o.size));
        } else {
            plan.report.chunks_in_grace += 1;
        }
    }
    for o in objects {
        if let Some((r, _)) = BackupRef::from_key(&o.key) {
            let prefix = r.prefix();
            if !committed.contains(&prefix) && old(o.modified) {
                plan.report.leftovers_deleted += 1;
                plan.leftovers.push((prefix, o.key));
            }
        }
    }
    Ok(plan)
}

async fn sweep_locked(repo: &Arc<Repository>, plan: GcPlan, opts: &GcOptions) -> Result<GcReport> {
    let mut report = plan.report;
    // Backups committed since the mark phase: no backup runs now (we hold the exclusive lock),
    // so this set is complete.
    let objects = repo.store().list("backups/").await?;
    let committed = committed_prefixes(&objects);
    let mut reused: HashSet<ChunkId> = HashSet::new();
    for b in repo.list_backups(None, None).await? {
        if !plan.seen.contains(&b.prefix()) {
            referenced_by(repo, &b, &mut reused).await?;
        }
    }
    let mut doomed = Vec::new();
    let sizes: std::collections::HashMap<String, u64> = plan
        .chunks
        .iter()
        .map(|(_, k, n)| (k.clone(), *n))
        .collect();
    for (id, key, size) in plan.chunks {
        if id.is_some_and(|id| reused.contains(&id)) {
            report.chunks_deleted -= 1;
            report.bytes_deleted -= size;
            report.chunks_reused_meanwhile += 1;
        } else {
            doomed.push(key);
        }
    }
    for (prefix, key) in plan.leftovers {
        // A backup that was in flight during the mark phase may have committed since.
        if committed.contains(&prefix) {
            report.leftovers_deleted -= 1;
        } else {
            doomed.push(key);
        }
    }
    // Objects under Object Lock are skipped (and counted), never an error.
    let locked: Vec<Option<(String, String)>> = stream::iter(doomed)
        .map(|k| {
            let repo = repo.clone();
            async move {
                match repo.store().delete(&k).await {
                    Ok(()) => Ok(None),
                    Err(Error::Retained { until, .. }) => Ok(Some((k, until))),
                    Err(e) => Err(e),
                }
            }
        })
        .buffer_unordered(opts.concurrency.max(1))
        .try_collect()
        .await?;
    for (key, until) in locked.into_iter().flatten() {
        report.objects_locked += 1;
        match sizes.get(&key) {
            Some(size) => {
                report.chunks_deleted -= 1;
                report.bytes_deleted -= size;
            }
            None => report.leftovers_deleted -= 1,
        }
        if report.locked_until.as_ref().is_none_or(|u| *u < until) {
            report.locked_until = Some(until);
        }
    }
    // A temporary file lives only while one write runs, but writers not bound by the lock
    // (e.g. a contender writing its own lock object) may be mid-write right now: only
    // debris at least an hour old is removed, whatever the grace period.
    let debris_age = opts.grace.max(Duration::from_secs(3600));
    report.incomplete_removed = repo.store().remove_incomplete(debris_age).await?;
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
