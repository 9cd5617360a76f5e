//! `verify`: checks that every committed backup is restorable.
//!
//! Structure (always): config opens, every manifest parses and names itself, every volume
//! index exists, matches the manifest's digest and parses, every referenced chunk object exists.
//! With `read_data`: every referenced chunk is also downloaded, decoded and hashed (each unique
//! chunk once). Every problem names the object; verify never stops at the first one.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use indicatif::ProgressBar;

use crate::error::Result;
use crate::format::ChunkId;
use crate::repository::{BackupRef, Repository};

/// Result of a verification.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub backups: usize,
    pub volumes: usize,
    pub chunks_referenced: usize,
    pub chunks_read: usize,
    /// One line per problem, each naming the object.
    pub problems: Vec<String>,
}

/// Verifies all committed backups, or only `only` when given.
pub async fn verify(
    repo: &Arc<Repository>,
    only: Option<Vec<BackupRef>>,
    read_data: bool,
    concurrency: usize,
    progress: Option<ProgressBar>,
) -> Result<VerifyReport> {
    let Structure {
        mut report,
        present,
        users,
    } = structure(repo, only).await?;
    if read_data {
        let ids: Vec<ChunkId> = present.into_iter().map(|(c, _)| c).collect();
        let failed = read_chunks(repo, ids, &users, concurrency, progress).await;
        report.chunks_read = failed.read;
        report
            .problems
            .extend(failed.bad.into_iter().map(|(_, problem)| problem));
    }
    Ok(report)
}

/// What the structure pass found: its report, the referenced chunks that exist (id, stored size;
/// sorted by id) and, for each referenced chunk, the first backup and volume that uses it.
pub(crate) struct Structure {
    pub report: VerifyReport,
    pub present: Vec<(ChunkId, u64)>,
    pub users: HashMap<ChunkId, String>,
}

/// The structure pass of the module page: manifests, indexes, resources, chunk objects present.
/// Reads no chunk data.
pub(crate) async fn structure(
    repo: &Arc<Repository>,
    only: Option<Vec<BackupRef>>,
) -> Result<Structure> {
    let mut report = VerifyReport::default();
    let backups = match only {
        Some(b) => b,
        None => repo.list_backups(None, None).await?,
    };
    report.backups = backups.len();
    let mut referenced: BTreeSet<ChunkId> = BTreeSet::new();
    let mut users: HashMap<ChunkId, String> = Default::default();
    for b in &backups {
        let m = match repo.load_manifest(b).await {
            Ok(m) => m,
            Err(e) => {
                report.problems.push(format!("backup {b}: {e}"));
                continue;
            }
        };
        for v in &m.volumes {
            report.volumes += 1;
            match repo.load_index(&m, &v.name).await {
                Ok(idx) => {
                    for c in idx.chunks.into_iter().filter(|c| !c.is_zero_marker()) {
                        if referenced.insert(c) {
                            users.insert(c, format!("{b} volume {}", v.name));
                        }
                    }
                }
                Err(e) => report
                    .problems
                    .push(format!("backup {b} volume {}: {e}", v.name)),
            }
        }
        if let Some(r) = &m.resources {
            match repo.get_object(&b.resources_key()).await {
                Ok((_, digest)) if digest == r.object_digest => {}
                Ok(_) => report.problems.push(format!(
                    "backup {b}: `{}` does not match its digest",
                    b.resources_key()
                )),
                Err(e) => report.problems.push(format!("backup {b}: {e}")),
            }
        }
    }
    report.chunks_referenced = referenced.len();
    let stored: HashMap<String, u64> = repo
        .store()
        .list("chunks/")
        .await?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let mut present = Vec::new();
    for c in &referenced {
        match stored.get(&c.key()) {
            Some(size) => present.push((*c, *size)),
            None => report.problems.push(format!(
                "chunk `{}` is missing (used by {})",
                c.key(),
                users.get(c).map(String::as_str).unwrap_or("?")
            )),
        }
    }
    Ok(Structure {
        report,
        present,
        users,
    })
}

/// Chunks read, and those that failed with the problem naming the chunk and its user.
pub(crate) struct ReadOutcome {
    pub read: usize,
    pub bad: Vec<(ChunkId, String)>,
}

/// Downloads, decodes and hashes `ids` (`concurrency` at once).
pub(crate) async fn read_chunks(
    repo: &Arc<Repository>,
    ids: Vec<ChunkId>,
    users: &HashMap<ChunkId, String>,
    concurrency: usize,
    progress: Option<ProgressBar>,
) -> ReadOutcome {
    if let Some(p) = &progress {
        p.set_length(ids.len() as u64);
    }
    let read = ids.len();
    let results: Vec<Option<(ChunkId, String)>> = stream::iter(ids)
        .map(|c| {
            let repo = repo.clone();
            let progress = progress.clone();
            let user = users.get(&c).cloned().unwrap_or_default();
            async move {
                let r = repo.get_chunk(&c).await;
                if let Some(p) = &progress {
                    p.inc(1);
                }
                r.err().map(|e| (c, format!("{e} (used by {user})")))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    ReadOutcome {
        read,
        bad: results.into_iter().flatten().collect(),
    }
}
