//! `virtguard maintain`: prune (each VM's policy, or the `--keep-*` rules) → gc → verify a rotating
//! share of the chunks, for a daily CronJob.
//!
//! Invariant: every step that ran is reported, and corruption known after the run (new, or found
//! earlier and not yet healed) makes the command fail, naming each chunk and its users.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kube::Client;
use serde_json::json;
use virtguard_api::labels::MAINTENANCE_STATUS_CONFIGMAP;
use virtguard_api::status::{BackupResult, MaintenanceStatusRecord, RepositoryCounts};

use super::prune_cmd::Resolved;
use super::util::client;
use super::{prune_cmd, Config, MaintainArgs, Output};
use crate::engine::backup::{read_status_entry, write_status_entry};
use crate::error::{Error, Result};
use crate::repo::maintain::{self, MaintainOptions, MaintainReport, Share};
use crate::repo::prune::PruneReport;
use crate::repo::{Error as RepoError, Repository};

/// What the steps produced, or the failed step's code and its error.
type Outcome =
    std::result::Result<(Option<(PruneReport, Resolved)>, MaintainReport), (&'static str, Error)>;

async fn steps(config: &Config, repo: &Arc<Repository>, a: &MaintainArgs, share: Share) -> Outcome {
    let flags = a.keep.policy();
    let pruned = if a.policy || !flags.is_empty() {
        let pruned = async {
            let (report, resolved) =
                prune_cmd::run(repo, a.policy, flags, None, None, false).await?;
            maintain::record_prune(repo).await?;
            Ok::<_, Error>((report, resolved))
        };
        Some(pruned.await.map_err(|e| ("prune-failed", e))?)
    } else {
        None
    };
    let opts = MaintainOptions {
        grace: a.grace.into(),
        lock_wait: a.lock_wait.into(),
        share,
        budget: a.verify_budget,
        concurrency: config.concurrency,
    };
    let gc = maintain::gc_step(repo, &opts)
        .await
        .map_err(|e| ("gc-failed", e.into()))?;
    let r = maintain::verify_step(repo, &opts, gc)
        .await
        .map_err(|e| ("verify-failed", e.into()))?;
    Ok((pruned, r))
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The record of this run: step times and corrupt chunks from the repository's maintenance
/// state, counts of this run when it completed (else those of the stored record).
async fn status_record(
    client: &Client,
    ns: &str,
    repo: &Repository,
    started: SystemTime,
    outcome: &Outcome,
) -> MaintenanceStatusRecord {
    let key = &repo.config().id;
    let previous: Option<MaintenanceStatusRecord> =
        read_status_entry(client, ns, MAINTENANCE_STATUS_CONFIGMAP, key)
            .await
            .and_then(|v| serde_json::from_str(&v).ok());
    let state = maintain::MaintenanceState::load(repo)
        .await
        .map_err(|e| tracing::warn!(error = %e, "maintenance state unreadable"))
        .ok();
    let (result, reason, counts) = match outcome {
        Ok((_, r)) => (
            BackupResult::Succeeded,
            None,
            Some(RepositoryCounts {
                backups: r.verify.backups as u64,
                chunks: r.gc.chunks_total.saturating_sub(r.gc.chunks_deleted) as u64,
                stored_bytes: r.gc.bytes_total.saturating_sub(r.gc.bytes_deleted),
                gc_deleted_bytes: r.gc.bytes_deleted,
                verify_read_bytes: r.bytes_read,
            }),
        ),
        Err((reason, _)) => (
            BackupResult::Failed,
            Some((*reason).to_string()),
            previous.and_then(|p| p.counts),
        ),
    };
    MaintenanceStatusRecord {
        repository: repo.location(),
        last_attempt_timestamp: unix(started),
        result,
        reason,
        duration_seconds: SystemTime::now()
            .duration_since(started)
            .map_or(0.0, |d| d.as_secs_f64()),
        last_prune_success_timestamp: state.as_ref().and_then(|s| s.last_prune),
        last_gc_success_timestamp: state.as_ref().and_then(|s| s.last_gc),
        last_verify_success_timestamp: state.as_ref().and_then(|s| s.last_verify),
        corrupt_chunks: state.map(|s| s.corrupt_chunks.len() as u64),
        counts,
    }
}

/// Runs the three steps on `repo`, then records the outcome when `--status-namespace` is given.
pub async fn maintain(config: &Config, repo: Arc<Repository>, a: MaintainArgs) -> Result<()> {
    let share: Share = a.verify_share.parse()?;
    // The cluster is reached before anything runs: a status that cannot be written is a
    // configuration error, not something to find out after an hour of verify.
    let status = match &a.status_namespace {
        Some(ns) => Some((client().await?, ns.clone())),
        None => None,
    };
    let started = SystemTime::now();
    let outcome = steps(config, &repo, &a, share).await;
    if let Some((client, ns)) = &status {
        let record = status_record(client, ns, &repo, started, &outcome).await;
        let value = serde_json::to_string(&record).unwrap_or_default();
        let key = &repo.config().id;
        let written =
            write_status_entry(client, ns, MAINTENANCE_STATUS_CONFIGMAP, key, value).await;
        if let Err(e) = written {
            // The run's own failure matters more; a missing update shows as an old timestamp.
            tracing::error!(error = %e, "could not record the maintenance status");
            if outcome.is_ok() {
                return Err(e.into());
            }
        }
    }
    let (pruned, r) = outcome.map_err(|(_, e)| e)?;
    match a.output {
        Output::Json => {
            let out = json!({
                "prune": pruned.as_ref().map(|(p, _)| json!({
                    "removed": p.removed.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
                    "kept": p.kept.len(),
                })),
                "gc": {
                    "chunksDeleted": r.gc.chunks_deleted,
                    "bytesDeleted": r.gc.bytes_deleted,
                    "chunksReferenced": r.gc.chunks_referenced,
                    "chunksInGrace": r.gc.chunks_in_grace,
                    "chunksReusedMeanwhile": r.gc.chunks_reused_meanwhile,
                },
                "verify": {
                    "backups": r.verify.backups,
                    "volumes": r.verify.volumes,
                    "chunksReferenced": r.verify.chunks_referenced,
                    "chunksRead": r.verify.chunks_read,
                    "bytesRead": r.bytes_read,
                    "slots": r.slots,
                    "of": share.of,
                    "budgetExhausted": r.budget_exhausted,
                    "problems": r.verify.problems,
                },
                "corruptChunks": r.corrupt,
                "healed": r.healed,
                // Requests this run sent, for stores that bill by request (S3); null otherwise.
                "requests": repo.store().requests(),
            });
            println!("{out:#}");
        }
        Output::Table => {
            match &pruned {
                Some((p, resolved)) => prune_cmd::print_table(p, resolved, false),
                None => println!("prune skipped: give --policy or --keep-* rules"),
            }
            println!(
                "gc: deleted {} chunks ({} bytes), {} referenced, {} unreferenced within the grace period",
                r.gc.chunks_deleted,
                r.gc.bytes_deleted,
                r.gc.chunks_referenced,
                r.gc.chunks_in_grace
            );
            let slots: Vec<String> = r
                .slots
                .iter()
                .map(|s| format!("{s}/{}", share.of))
                .collect();
            println!(
                "verify: {} backups, {} volumes, {} referenced chunks; read {} chunks ({} bytes) of slot{} {}{}",
                r.verify.backups,
                r.verify.volumes,
                r.verify.chunks_referenced,
                r.verify.chunks_read,
                r.bytes_read,
                if slots.len() == 1 { "" } else { "s" },
                slots.join(", "),
                if r.budget_exhausted {
                    " (budget reached: the next run resumes there)"
                } else {
                    ""
                }
            );
            if r.healed > 0 {
                println!(
                    "{} chunk(s) found corrupt earlier read healthy again",
                    r.healed
                );
            }
            for c in &r.corrupt {
                println!("CORRUPT chunk {}: {}", c.chunk, c.problem);
                for u in &c.used_by {
                    println!("  used by {u}");
                }
            }
        }
    }
    if r.verify.problems.is_empty() && r.corrupt.is_empty() {
        Ok(())
    } else {
        let mut problems = r.verify.problems;
        problems.extend(
            r.corrupt
                .iter()
                .map(|c| format!("chunk {} is corrupt (used by {}); the next backup of that data stores it again — or prune the backups using it", c.chunk, c.used_by.join(", "))),
        );
        problems.dedup();
        Err(RepoError::VerifyFailed { problems }.into())
    }
}
