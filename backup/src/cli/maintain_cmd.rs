//! `virtguard maintain`: prune (each VM's policy, or the `--keep-*` rules) → gc → verify a rotating
//! share of the chunks, for a daily CronJob.
//!
//! Invariant: every step that ran is reported, and corruption known after the run (new, or found
//! earlier and not yet healed) makes the command fail, naming each chunk and its users.

use std::sync::Arc;

use serde_json::json;

use super::{prune_cmd, Config, MaintainArgs, Output};
use crate::error::Result;
use crate::repo::maintain::{self, MaintainOptions, Share};
use crate::repo::{Error as RepoError, Repository};

/// Runs the three steps on `repo`.
pub async fn maintain(config: &Config, repo: Arc<Repository>, a: MaintainArgs) -> Result<()> {
    let share: Share = a.verify_share.parse()?;
    let flags = a.keep.policy();
    let pruned = if a.policy || !flags.is_empty() {
        let (report, resolved) = prune_cmd::run(&repo, a.policy, flags, None, None, false).await?;
        maintain::record_prune(&repo).await?;
        Some((report, resolved))
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
    let r = maintain::maintain(&repo, &opts).await?;
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
