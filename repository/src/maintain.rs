//! Unattended upkeep of a repository: garbage collection, then verification of the structure of
//! every backup and of the data of a rotating share of the chunks, with a state that survives
//! restarts and lets the next backup heal a corrupt chunk.
//!
//! Invariants:
//! - The state lives in the repository ([`STATE_KEY`], encrypted like every non-chunk object) and
//!   is written after each step that completes: a run killed mid-way repeats at most that step.
//! - Rotation: a chunk's slot is its id's first byte modulo `of` (ids are uniform hashes); a run
//!   with share `k/of` reads `k` slots, starting after the last slot a previous run finished, so
//!   every chunk present is read once every `of / k` runs, new ones included. A byte budget may
//!   stop a run inside a slot; the next run resumes after the last chunk read.
//! - A chunk whose data does not match its id (or cannot be decoded) is recorded in
//!   `corruptChunks` with every backup and volume that uses it. Backup sessions treat recorded
//!   chunks as absent and upload them again when they read the same data; each run re-reads the
//!   recorded chunks first and forgets those that are healthy again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::ChunkId;
use crate::locks::LockKind;
use crate::prune::{self, GcOptions, GcReport};
use crate::repository::Repository;
use crate::verify::{self, VerifyReport};

/// Where the maintenance state is stored.
pub const STATE_KEY: &str = "maintenance/state.json";

/// What earlier runs left for the next one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceState {
    /// The `of` of the share the cursor counts in (a different share restarts the rotation).
    #[serde(default)]
    pub share_of: u32,
    /// The next slot to read.
    #[serde(default)]
    pub next_slot: u32,
    /// Inside `next_slot`: the last chunk read when a budget stopped the run (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_after: Option<String>,
    /// Unix seconds of the last completed step of each kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_prune: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gc: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verify: Option<i64>,
    /// Chunks found corrupt and not yet healthy again.
    #[serde(default)]
    pub corrupt_chunks: Vec<CorruptChunk>,
}

/// One corrupt chunk and what it breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorruptChunk {
    /// The chunk id, hex.
    pub chunk: String,
    /// The problem as verify reported it.
    pub problem: String,
    /// `namespace/vm/backup-id volume NAME` of every use.
    pub used_by: Vec<String>,
    /// Unix seconds when it was first found.
    pub found: i64,
}

impl MaintenanceState {
    /// The backups (`namespace/vm/backup-id`) that use a chunk known to be corrupt, with how
    /// many such chunks each uses: what `list` marks until a backup heals the chunks.
    pub fn affected_backups(&self) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for c in &self.corrupt_chunks {
            let mut seen = BTreeSet::new();
            for u in &c.used_by {
                let backup = u.split(' ').next().unwrap_or(u).to_string();
                if seen.insert(backup.clone()) {
                    *out.entry(backup).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// The stored state, or the empty one when none was written yet.
    pub async fn load(repo: &Repository) -> Result<MaintenanceState> {
        match repo.get_object(STATE_KEY).await {
            Ok((raw, _)) => serde_json::from_slice(&raw)
                .map_err(|e| Error::corrupt(STATE_KEY, format!("not a maintenance state: {e}"))),
            Err(Error::NotFound { .. }) => Ok(MaintenanceState::default()),
            Err(e) => Err(e),
        }
    }

    /// Stores the state.
    pub async fn save(&self, repo: &Repository) -> Result<()> {
        let raw = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Codec(format!("encoding the maintenance state: {e}")))?;
        repo.put_object(STATE_KEY, raw).await.map(|_| ())
    }

    /// The ids of the recorded corrupt chunks (what a backup session must upload again).
    pub fn corrupt_ids(&self) -> BTreeSet<ChunkId> {
        self.corrupt_chunks
            .iter()
            .filter_map(|c| ChunkId::from_hex(&c.chunk))
            .collect()
    }
}

/// The share of the chunks one run reads: `part` slots of `of`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub part: u32,
    pub of: u32,
}

impl std::str::FromStr for Share {
    type Err = Error;

    fn from_str(s: &str) -> Result<Share> {
        let bad = || {
            Error::Invalid(format!(
                "--verify-share `{s}`: expected PART/OF with 1 <= PART <= OF <= 256, e.g. 1/7 (a seventh of the chunks per run: each chunk read once a week when run daily)"
            ))
        };
        let (p, o) = s.split_once('/').ok_or_else(bad)?;
        let part: u32 = p.trim().parse().map_err(|_| bad())?;
        let of: u32 = o.trim().parse().map_err(|_| bad())?;
        if part == 0 || of == 0 || part > of || of > 256 {
            return Err(bad());
        }
        Ok(Share { part, of })
    }
}

/// What `maintain` is asked to do after pruning (pruning needs policies, which the caller has).
#[derive(Debug, Clone)]
pub struct MaintainOptions {
    /// gc's grace period for unreferenced objects.
    pub grace: Duration,
    /// How long gc's delete phase waits for running backups (see [`GcOptions::lock_wait`]).
    pub lock_wait: Duration,
    pub share: Share,
    /// Stop reading chunk data after this many stored bytes (the run resumes there next time).
    pub budget: Option<u64>,
    pub concurrency: usize,
}

/// Outcome of the gc and verify steps.
#[derive(Debug, Clone, Default)]
pub struct MaintainReport {
    pub gc: GcReport,
    pub verify: VerifyReport,
    /// The slots read this run, e.g. `[3, 4]` of `share.of`.
    pub slots: Vec<u32>,
    /// Stored bytes of the chunks read.
    pub bytes_read: u64,
    /// True when the budget stopped the run inside a slot.
    pub budget_exhausted: bool,
    /// Corrupt chunks known after this run (new and still corrupt).
    pub corrupt: Vec<CorruptChunk>,
    /// Recorded corrupt chunks that read healthy again (healed by a later backup).
    pub healed: usize,
}

/// Records that a prune completed (the caller prunes: it knows the policies).
pub async fn record_prune(repo: &Repository) -> Result<()> {
    let mut state = MaintenanceState::load(repo).await?;
    state.last_prune = Some(now());
    state.save(repo).await
}

/// gc, then verify (structure of everything; data of this run's share), under the locks each
/// needs; updates the state after each step.
pub async fn maintain(repo: &Arc<Repository>, opts: &MaintainOptions) -> Result<MaintainReport> {
    let gc = gc_step(repo, opts).await?;
    verify_step(repo, opts, gc).await
}

/// The gc step of [`maintain`]: gc, then the state records it.
pub async fn gc_step(repo: &Arc<Repository>, opts: &MaintainOptions) -> Result<GcReport> {
    let gc = prune::gc(
        repo,
        &GcOptions {
            grace: opts.grace,
            dry_run: false,
            concurrency: opts.concurrency,
            lock_wait: opts.lock_wait,
        },
    )
    .await?;
    let mut state = MaintenanceState::load(repo).await?;
    state.last_gc = Some(now());
    state.save(repo).await?;
    Ok(gc)
}

/// The verify step of [`maintain`] (after [`gc_step`], whose report it carries on).
pub async fn verify_step(
    repo: &Arc<Repository>,
    opts: &MaintainOptions,
    gc: GcReport,
) -> Result<MaintainReport> {
    let mut report = MaintainReport {
        gc,
        ..Default::default()
    };
    let mut state = MaintenanceState::load(repo).await?;
    let lock = repo.lock(LockKind::Shared, "maintain verify").await?;
    let res = verify_share(repo, opts, &mut state, &mut report).await;
    lock.release().await;
    res?;
    state.last_verify = Some(now());
    state.save(repo).await?;
    report.corrupt = state.corrupt_chunks.clone();
    Ok(report)
}

async fn verify_share(
    repo: &Arc<Repository>,
    opts: &MaintainOptions,
    state: &mut MaintenanceState,
    report: &mut MaintainReport,
) -> Result<()> {
    let verify::Structure {
        report: structure,
        present,
        users,
    } = verify::structure(repo, None).await?;
    report.verify = structure;
    let of = opts.share.of;
    if state.share_of != of {
        state.share_of = of;
        state.next_slot = 0;
        state.resume_after = None;
    }
    let sizes: HashMap<ChunkId, u64> = present.iter().copied().collect();

    // Recorded corrupt chunks first: healed ones are forgotten, the others stay recorded.
    let recorded = state.corrupt_ids();
    let still_used: Vec<ChunkId> = recorded
        .iter()
        .filter(|c| sizes.contains_key(c))
        .copied()
        .collect();
    let again = verify::read_chunks(repo, still_used.clone(), &users, opts.concurrency, None).await;
    let bad_again: BTreeSet<ChunkId> = again.bad.iter().map(|(c, _)| *c).collect();
    report.healed = still_used.iter().filter(|c| !bad_again.contains(c)).count();
    state
        .corrupt_chunks
        .retain(|c| ChunkId::from_hex(&c.chunk).is_some_and(|id| bad_again.contains(&id)));
    report.verify.chunks_read += again.read;
    report
        .verify
        .problems
        .extend(again.bad.into_iter().map(|(_, p)| p));

    // This run's slots, in id order, from where the last run stopped.
    let mut to_read = Vec::new();
    let mut budget_left = opts.budget;
    let resume = state.resume_after.as_deref().and_then(ChunkId::from_hex);
    let mut slot = state.next_slot % of;
    let mut finished_slots = 0;
    'slots: while finished_slots < opts.share.part {
        for (c, size) in &present {
            if u32::from(c.0[0]) % of != slot || recorded.contains(c) {
                continue;
            }
            if finished_slots == 0 && resume.is_some_and(|r| *c <= r) {
                continue;
            }
            if let Some(left) = budget_left {
                if *size > left && !to_read.is_empty() {
                    report.budget_exhausted = true;
                    break 'slots;
                }
                budget_left = Some(left.saturating_sub(*size));
            }
            to_read.push(*c);
            report.bytes_read += size;
        }
        report.slots.push(slot);
        finished_slots += 1;
        slot = (slot + 1) % of;
    }
    if report.budget_exhausted {
        report.slots.push(slot);
    }
    let outcome = verify::read_chunks(repo, to_read.clone(), &users, opts.concurrency, None).await;
    report.verify.chunks_read += outcome.read;
    if report.budget_exhausted {
        state.next_slot = slot;
        state.resume_after = to_read.last().map(ChunkId::to_hex);
    } else {
        state.next_slot = slot;
        state.resume_after = None;
    }
    if !outcome.bad.is_empty() {
        let bad: BTreeSet<ChunkId> = outcome.bad.iter().map(|(c, _)| *c).collect();
        let uses = users_of(repo, &bad).await?;
        for (c, problem) in outcome.bad {
            state.corrupt_chunks.push(CorruptChunk {
                chunk: c.to_hex(),
                problem: problem.clone(),
                used_by: uses.get(&c).cloned().unwrap_or_default(),
                found: now(),
            });
            report.verify.problems.push(problem);
        }
    }
    Ok(())
}

/// Every backup and volume that uses one of `ids`.
async fn users_of(
    repo: &Repository,
    ids: &BTreeSet<ChunkId>,
) -> Result<HashMap<ChunkId, Vec<String>>> {
    let mut out: HashMap<ChunkId, Vec<String>> = HashMap::new();
    for b in repo.list_backups(None, None).await? {
        let Ok(m) = repo.load_manifest(&b).await else {
            continue;
        };
        for v in &m.volumes {
            let Ok(idx) = repo.load_index(&m, &v.name).await else {
                continue;
            };
            let used: BTreeSet<ChunkId> =
                idx.chunks.into_iter().filter(|c| ids.contains(c)).collect();
            for c in used {
                out.entry(c)
                    .or_default()
                    .push(format!("{b} volume {}", v.name));
            }
        }
    }
    Ok(out)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}
